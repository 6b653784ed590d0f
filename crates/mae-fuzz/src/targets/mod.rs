//! The registry of fuzz targets: a name, seeds, a dictionary of tokens, the allocation limit,
//! and a run function that feeds one input to the public reader API.
//!
//! A run function ignores the readers' `Err`s (an error is the right answer to a bad input) and
//! returns `Err` only when a property that must hold for every input is broken. Panics, hangs
//! and over-allocation are caught by [`crate::harness`].

mod cli;
mod data;
mod hub;
mod weights;

use std::path::Path;

use crate::seeds::Seed;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// What is fuzzed, for `--list` and the docs.
    pub about: &'static str,
    /// The seed inputs (files of the repository, and inputs generated from them).
    pub seeds: fn() -> Vec<Seed>,
    /// Tokens the mutator inserts or writes over the input (field names, magic numbers).
    pub dict: &'static [&'static [u8]],
    /// A case fails when its peak of live bytes exceeds `alloc_base + alloc_factor * input
    /// length`; the constants are justified where each target is defined.
    pub alloc_base: usize,
    pub alloc_factor: usize,
    /// Feeds one input to the readers; `dir` is an empty-at-start scratch folder of this target
    /// (reused across cases: a run function overwrites or removes what it wrote).
    pub run: fn(dir: &Path, input: &[u8]) -> Result<(), String>,
}

impl Target {
    /// The most bytes a case of `input_len` bytes may have live at once.
    pub fn alloc_limit(&self, input_len: usize) -> usize {
        self.alloc_base.saturating_add(self.alloc_factor.saturating_mul(input_len))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Every target, in the order runs go through them.
pub static TARGETS: &[Target] = &[
    weights::SAFETENSORS,
    weights::TORCH,
    weights::CONFIG_JSON,
    data::IDX,
    data::CIFAR,
    data::IMAGE,
    data::DATA_SPEC,
    hub::PARQUET,
    cli::TOML_CONFIG,
    cli::CLI,
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Writes `bytes` to `dir/name`, replacing what was there.
pub(crate) fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<std::path::PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| format!("scratch file {}: {e}", path.display()))?;
    Ok(path)
}

/// Removes `dir/name` if present.
pub(crate) fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}
