//! `metrics.jsonl`: one JSON object per logged step (and per evaluation), appended and flushed,
//! so a killed run keeps everything it logged and a resumed run continues the same file.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

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
}

impl MetricsLog {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends any serialisable record as one line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| TrainError::Model(e.to_string()))?;
        line.push(b'\n');
        self.file.write_all(&line).and_then(|_| self.file.flush()).map_err(|e| TrainError::io(&self.path, e))
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
