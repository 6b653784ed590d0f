//! Python interpreters and the virtual environments that `fixtures` and
//! `bench` make for their scripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{self, fail, Log, Result};

/// A virtual environment in the workspace root, made from a requirements file.
pub struct Venv {
    /// Its folder, relative to the workspace root (`.venv-bench`).
    pub dir: &'static str,
    /// The pinned packages, relative to the workspace root.
    pub requirements: &'static str,
    /// What the requirements are, for the message when the file is missing.
    pub purpose: &'static str,
    /// Added to the message when the base interpreter does not start (may be empty).
    pub hint: &'static str,
}

/// The interpreter a virtual environment is made from by default.
pub fn default_python() -> &'static str {
    if cfg!(windows) {
        "python"
    } else {
        "python3"
    }
}

/// Fail clearly when `py` cannot be run; `hint` (may be empty) follows the
/// message when it does not start at all.
pub fn check(py: &str, hint: &str) -> Result<()> {
    match Command::new(py).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => fail(format!(
            "`{py} --version` failed ({}): is it a Python interpreter?",
            util::describe(out.status)
        )),
        Err(e) => fail(format!("cannot run Python interpreter `{py}`: {e}{hint}")),
    }
}

impl Venv {
    /// The environment's interpreter (which may not exist yet).
    pub fn python(&self, root: &Path) -> PathBuf {
        if cfg!(windows) {
            root.join(self.dir).join("Scripts").join("python.exe")
        } else {
            root.join(self.dir).join("bin").join("python")
        }
    }

    /// Create (or refresh) the environment from `base` and install the
    /// requirements into it; returns its interpreter. Progress, and with
    /// [`Log::Stderr`] the commands' own output too, goes to `log`.
    pub fn create(&self, root: &Path, base: &str, log: Log) -> Result<PathBuf> {
        check(base, self.hint)?;
        if !root.join(self.requirements).is_file() {
            return fail(format!("{} is missing: it lists {}", self.requirements, self.purpose));
        }
        log.step(&format!("create {} (from {base})", self.dir));
        let mut venv = Command::new(base);
        venv.current_dir(root).args(["-m", "venv", self.dir]);
        run(log, "venv", &mut venv)?;
        let py = self.python(root);
        log.step(&format!("install {}", self.requirements));
        let mut pip = Command::new(&py);
        pip.current_dir(root).args(["-m", "pip", "install", "-r", self.requirements]);
        run(log, "pip install", &mut pip)?;
        Ok(py)
    }
}

/// Run `cmd`; with [`Log::Stderr`] its stdout goes to our stderr, keeping
/// our stdout for results.
fn run(log: Log, step: &str, cmd: &mut Command) -> Result<()> {
    if log == Log::Stderr {
        cmd.stdout(Stdio::from(std::io::stderr()));
    }
    util::run_logged(log, step, cmd)
}
