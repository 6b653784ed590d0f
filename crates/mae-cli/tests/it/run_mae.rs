//! Running the `mae` binary from the tests, and what they check of a failure.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `mae args...` in `dir`, offline, with fault injection off.
pub fn mae(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .current_dir(dir)
        .env("MAE_FAULT_INJECT", "")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the mae binary runs")
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
