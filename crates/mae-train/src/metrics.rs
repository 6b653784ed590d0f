//! `metrics.jsonl`: one JSON object per logged step (and per evaluation), appended and flushed,
//! so a killed run keeps everything it logged and a resumed run continues the same file. The
//! same numbers go to `metrics.csv` (long format: `step,epoch,metric,value`, one row per number,
//! so evaluations with any names fit one header) and to a TensorBoard event file
//! ([`crate::tensorboard`]) in the same folder.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::tensorboard::EventWriter;

/// One logged training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
    pub elapsed_s: f64,
    /// Resident memory of the process after the step, in MB (Linux; absent elsewhere): a leak
    /// shows as a line that keeps climbing (`memory.png`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
}

/// This process's resident set size in MB (`VmRSS` of `/proc/self/status`); `None` where there
/// is no procfs.
pub fn resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    csv: (PathBuf, File),
    events: EventWriter,
}

/// The header of `metrics.csv`.
const CSV_HEADER: &str = "step,epoch,metric,value\n";

impl MetricsLog {
    /// Opens (appends to) `path` and `metrics.csv` beside it, and starts an event file there.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let append =
            |p: &Path| OpenOptions::new().create(true).append(true).open(p).map_err(|e| TrainError::io(p, e));
        let file = append(&path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let csv_path = dir.join("metrics.csv");
        let mut csv = append(&csv_path)?;
        let empty = csv.metadata().map(|m| m.len() == 0).map_err(|e| TrainError::io(&csv_path, e))?;
        if empty {
            csv.write_all(CSV_HEADER.as_bytes()).map_err(|e| TrainError::io(&csv_path, e))?;
        }
        let events = EventWriter::create(&dir)?;
        Ok(Self { path, file, csv: (csv_path, csv), events })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends any serialisable record as one line of `metrics.jsonl` (only there).
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| TrainError::Model(e.to_string()))?;
        line.push(b'\n');
        self.file.write_all(&line).and_then(|_| self.file.flush()).map_err(|e| TrainError::io(&self.path, e))
    }

    /// A training step: its line in `metrics.jsonl`, its rows in `metrics.csv`, and `train/*`
    /// scalars in TensorBoard.
    pub fn log_step(&mut self, record: &StepRecord) -> Result<()> {
        self.write(record)?;
        let mut values = vec![
            ("loss", record.loss),
            ("lr", record.lr),
            ("grad_norm", record.grad_norm),
            ("images_per_s", record.images_per_s),
            ("elapsed_s", record.elapsed_s),
        ];
        values.extend(record.rss_mb.map(|mb| ("rss_mb", mb)));
        self.csv_rows(record.step, record.epoch, &values)?;
        for (name, value) in values.into_iter().filter(|(n, _)| *n != "elapsed_s") {
            self.events.scalar(&format!("train/{name}"), record.step as i64, value)?;
        }
        Ok(())
    }

    /// A named value (an evaluation) at `step`: `metrics.jsonl`, `metrics.csv`, and the scalar
    /// `eval/<name>` in TensorBoard.
    pub fn log_value(&mut self, step: usize, epoch: usize, name: &str, value: f64) -> Result<()> {
        self.write(&serde_json::json!({ "step": step, "epoch": epoch, name: value }))?;
        self.csv_rows(step, epoch, &[(name, value)])?;
        self.events.scalar(&format!("eval/{name}"), step as i64, value)
    }

    /// A PNG file (a reconstruction grid) as a TensorBoard image at `step`.
    pub fn log_png(&mut self, tag: &str, step: usize, png: &Path) -> Result<()> {
        self.events.png_file(tag, step as i64, png)
    }

    fn csv_rows(&mut self, step: usize, epoch: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut rows = String::new();
        for (name, value) in values {
            // Metric names are ours or a probe's (`knn_top1`); quote anything CSV would split.
            let name = if name.contains([',', '"', '\n']) {
                format!("\"{}\"", name.replace('"', "\"\""))
            } else {
                name.to_string()
            };
            rows.push_str(&format!("{step},{epoch},{name},{value}\n"));
        }
        let (path, file) = &mut self.csv;
        file.write_all(rows.as_bytes())
            .and_then(|_| file.flush())
            .map_err(|e| TrainError::io(path.as_path(), e))
    }
}

/// Reads back the step records of a metrics file (other kinds of lines are skipped).
pub fn read_steps(path: &Path) -> Result<Vec<StepRecord>> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if let Ok(r) = serde_json::from_str::<StepRecord>(&line) {
            out.push(r);
        }
    }
    // A resumed run re-logs steps after its checkpoint: keep the last record of each step.
    out.reverse();
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| seen.insert(r.step));
    out.reverse();
    out.sort_by_key(|r| r.step);
    Ok(out)
}
