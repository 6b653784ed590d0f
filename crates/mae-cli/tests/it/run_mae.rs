//! Running the `mae` binary from the tests, and what they check of a failure.

use std::path::Path;
use std::process::{Command, Output};

/// The `mae` binary, offline, with `MAE_FAULT_INJECT=fault` (`""`: no fault).
pub fn command(fault: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mae"));
    cmd.env("MAE_FAULT_INJECT", fault).env("HF_HUB_OFFLINE", "1");
    cmd
}

/// Runs `mae args...` in `dir`, offline, with fault injection off.
pub fn mae(args: &[&str], dir: &Path) -> Output {
    mae_with_fault(args, dir, "")
}

/// Runs `mae args...` in `dir` with the crash tests' `MAE_FAULT_INJECT=fault`.
pub fn mae_with_fault(args: &[&str], dir: &Path, fault: &str) -> Output {
    command(fault).args(args).current_dir(dir).output().expect("the mae binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure as users should meet one: a non-zero exit, no panic, and every needle in the message.
pub fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}
