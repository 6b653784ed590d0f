//! Fuzzing the readers of untrusted input on stable Rust (no cargo-fuzz, no nightly).
//!
//! - [`targets`]: what is fuzzed: a registry of targets (weights files, configs, dataset files,
//!   images, data specs), each with seeds read from the repository's `fixtures/` and `data/`
//!   and generated from them, and a run function over the readers' public API.
//! - [`mutate`]: byte-level mutations, several stacked per case, deterministic for a seed.
//! - [`alloc`]: a counting global allocator; a case whose peak of live bytes exceeds its
//!   target's `base + factor * input length` fails.
//! - [`harness`]: each case on a worker thread with a timeout; panics caught with their
//!   backtrace.
//! - [`runner`]: a run of one target, and the files of failing inputs.
//!
//! `cargo test -p mae-fuzz` runs a bounded smoke test (tests/smoke.rs); `cargo run --release -p
//! mae-fuzz -- --target all --seconds 120` runs long (docs/robustness.md).

pub mod alloc;
pub mod harness;
pub mod mutate;
pub mod rng;
pub mod runner;
pub mod seeds;
pub mod targets;

pub use alloc::CountingAlloc;
pub use harness::{FailureKind, Harness};
pub use runner::{case_input, run_target, Budget, Failure, RunStats};
pub use targets::{target, Target, TARGETS};

/// Where regression inputs live: `crates/mae-fuzz/regressions/<target>/`.
pub fn regressions_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions")
}
