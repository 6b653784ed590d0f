//! Progress for people: a bar with ETA, loss and images/s on a terminal; plain lines otherwise
//! (CI logs, files), so that a long run is never silent.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::StepRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    Silent,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    total: usize,
}

impl Progress {
    pub fn new(mode: ProgressMode, total_steps: usize, start_step: usize) -> Self {
        let bar = match mode {
            ProgressMode::Bar => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Lines | ProgressMode::Silent => false,
        };
        let bar = bar.then(|| {
            let pb = ProgressBar::new(total_steps as u64);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, ETA {eta} | {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(style);
            pb.set_position(start_step as u64);
            pb.reset_eta();
            pb.enable_steady_tick(Duration::from_millis(250));
            pb
        });
        let lines = bar.is_none() && mode != ProgressMode::Silent;
        Self { bar, lines, total: total_steps }
    }

    /// Reports a finished step; lines mode prints when `log` is set.
    pub fn step(&self, record: &StepRecord, eta_s: f64, log: bool) {
        let msg = format!(
            "epoch {} loss {:.4} lr {:.2e} {:.1} img/s",
            record.epoch, record.loss, record.lr, record.images_per_s
        );
        if let Some(pb) = &self.bar {
            pb.set_position(record.step as u64);
            pb.set_message(msg);
        } else if self.lines && log {
            eprintln!("step {}/{} | {msg} | ETA {}", record.step, self.total, format_duration(eta_s));
        }
    }

    /// A message that must not be overwritten by the bar.
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(pb) => pb.println(text),
            None if self.lines => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}

fn format_duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
