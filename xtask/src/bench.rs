// ===========================================================================
// BENCH — placeholder for the `cargo xtask bench` subcommand (to be written).
//
// Planned interface (gpu-check calls it exactly like this once IMPLEMENTED is
// true):   cargo xtask bench --config all --device cuda --json
//
// To implement: write `bench` below, flip IMPLEMENTED to true, update HELP
// and docs/xtask.md. Until then it prints "bench: not implemented yet" and
// exits with code 1, and `cargo xtask gpu-check` skips its bench stage.
// ===========================================================================

use crate::util::{Error, Result};

/// Whether `bench` does anything yet; gpu-check skips its bench stage while
/// this is false.
pub const IMPLEMENTED: bool = false;

/// The arguments gpu-check passes to `cargo xtask bench`.
pub const GPU_CHECK_ARGS: [&str; 5] = ["--config", "all", "--device", "cuda", "--json"];

pub const HELP: &str = "\
cargo xtask bench: benchmarks (NOT IMPLEMENTED YET)

USAGE:
    cargo xtask bench --config all --device cuda --json   (planned)

Currently prints \"bench: not implemented yet\" and exits with code 1.
";

/// The `bench` subcommand. Not implemented yet.
pub fn bench(argv: Vec<String>) -> Result<()> {
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Ok(());
    }
    eprintln!("bench: not implemented yet");
    Err(Error::Exit(1))
}
