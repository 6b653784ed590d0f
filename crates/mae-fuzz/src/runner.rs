//! A fuzzing run of one target: the seeds as they are, then mutated cases, each reproducible
//! from the run's seed and its index.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{FailureKind, Harness};
use crate::mutate::mutate;
use crate::rng::{case_seed, fnv1a, SplitMix64};
use crate::seeds::Seed;
use crate::targets::Target;

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Cases(u64),
    Time(Duration),
}

/// A failing case.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub case: u64,
    pub kind: FailureKind,
    pub input: Vec<u8>,
}

impl Failure {
    /// The file name a regression input is saved under: the hash of its bytes.
    pub fn file_name(&self) -> String {
        format!("{:016x}.bin", fnv1a(&self.input))
    }

    /// Writes the input to `dir/<target>/<hash>.bin`; returns the path.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let dir = dir.join(self.target);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(self.file_name());
        std::fs::write(&path, &self.input)?;
        Ok(path)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub cases: u64,
    pub elapsed: Duration,
    pub failures: Vec<Failure>,
    /// The largest peak of live bytes over input length seen in a passing case of at least
    /// [`RATIO_MIN_LEN`] bytes (below, the fixed base dominates), with its input length and peak.
    pub max_ratio: f64,
    pub max_ratio_len: usize,
    pub max_ratio_peak: usize,
    /// The largest peak of a passing case.
    pub max_peak: usize,
    /// The largest fraction of its allocation limit a passing case used.
    pub max_limit_use: f64,
    /// The slowest passing case.
    pub slowest: Duration,
}

/// Inputs shorter than this are left out of [`RunStats::max_ratio`].
pub const RATIO_MIN_LEN: usize = 4096;

impl RunStats {
    fn record(&mut self, len: usize, limit: usize, peak: usize, elapsed: Duration) {
        let ratio = peak as f64 / len.max(1) as f64;
        self.max_limit_use = self.max_limit_use.max(peak as f64 / limit.max(1) as f64);
        if len >= RATIO_MIN_LEN && ratio > self.max_ratio {
            (self.max_ratio, self.max_ratio_len, self.max_ratio_peak) = (ratio, len, peak);
        }
        self.max_peak = self.max_peak.max(peak);
        self.slowest = self.slowest.max(elapsed);
    }
}

/// The input of case `index`: the seeds first, as they are, then mutations of them.
pub fn case_input(target: &Target, seeds: &[Seed], run_seed: u64, index: u64) -> Vec<u8> {
    if seeds.is_empty() {
        return Vec::new();
    }
    if (index as usize) < seeds.len() {
        return seeds[index as usize].bytes.clone();
    }
    let mut rng = SplitMix64::new(case_seed(run_seed, target.name, index));
    let others: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    let base = rng.below(seeds.len());
    mutate(&mut rng, &seeds[base].bytes, &others, target.dict)
}

/// Runs `target` within `budget`, calling `on_failure` for each failing case (a timeout ends
/// the run: the stuck worker cannot be stopped). `progress` is called with each case's index
/// before it runs.
pub fn run_target(
    harness: &Harness,
    target: &'static Target,
    run_seed: u64,
    budget: Budget,
    mut progress: impl FnMut(u64),
    mut on_failure: impl FnMut(&Failure),
) -> RunStats {
    let seeds = (target.seeds)();
    let start = Instant::now();
    let mut stats = RunStats::default();
    for index in 0.. {
        let done = match budget {
            Budget::Cases(n) => index >= n,
            Budget::Time(t) => start.elapsed() >= t,
        };
        if done {
            break;
        }
        let input = case_input(target, &seeds, run_seed, index);
        progress(index);
        stats.cases += 1;
        match harness.run_case(target, &input) {
            Ok(case) => stats.record(input.len(), target.alloc_limit(input.len()), case.peak, case.elapsed),
            Err(kind) => {
                let timeout = matches!(kind, FailureKind::Timeout(_));
                let failure = Failure { target: target.name, case: index, kind, input };
                on_failure(&failure);
                stats.failures.push(failure);
                if timeout {
                    break;
                }
            }
        }
    }
    stats.elapsed = start.elapsed();
    stats
}
