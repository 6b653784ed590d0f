//! Shared helpers: the error type, locating the workspace, running commands.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a subcommand can fail with. `Usage` exits with code 2, `Failed` with 1.
#[derive(Debug)]
pub enum Error {
    /// Bad command line (unknown flag, missing value, ...).
    Usage { cmd: &'static str, msg: String },
    /// Something the subcommand ran (or checked) failed.
    Failed(String),
    /// Exit with this code; the message was already printed.
    Exit(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage { msg, .. } | Error::Failed(msg) => f.write_str(msg),
            Error::Exit(code) => write!(f, "exit code {code}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Failed(msg.into()))
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

/// The cargo that runs us (`$CARGO`, set by `cargo run`), else `cargo`.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A `cargo` command whose working directory is the workspace root.
pub fn cargo_cmd(root: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root);
    cmd
}

/// Render a command for printing: `cargo build --workspace`, with the
/// environment variables that were set on it first.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (k, v) in cmd.get_envs() {
        let Some(v) = v else { continue };
        let v = v.to_string_lossy();
        // Show a prepended PATH as `PATH=/new/bin:$PATH`, not in full.
        let current = std::env::var("PATH").unwrap_or_default();
        let v = match v.strip_suffix(current.as_str()) {
            Some(prefix) if k == "PATH" && !current.is_empty() => {
                format!("{}$PATH", quote(prefix))
            }
            _ => quote(&v),
        };
        out.push_str(&format!("{}={v} ", k.to_string_lossy()));
    }
    let prog = cmd.get_program().to_string_lossy();
    // Print plain `cargo` rather than the full path of the toolchain's binary.
    let prog =
        if Path::new(&*prog).file_stem().is_some_and(|s| s == "cargo") { "cargo".into() } else { prog };
    out.push_str(&quote(&prog));
    for a in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(&a.to_string_lossy()));
    }
    out
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where a subcommand's progress (step headers, command lines) goes: stdout,
/// or stderr for `bench`, whose stdout carries its results only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Log {
    Stdout,
    Stderr,
}

impl Log {
    /// A step header, `\n==> msg`.
    pub fn step(self, msg: &str) {
        match self {
            Log::Stdout => println!("\n==> {msg}"),
            Log::Stderr => {
                flush();
                eprintln!("\n==> {msg}");
            }
        }
    }

    /// The command line about to run, `$ cmd`.
    pub fn command(self, cmd: &Command) {
        match self {
            Log::Stdout => {
                println!("$ {}", display(cmd));
                flush();
            }
            Log::Stderr => eprintln!("$ {}", display(cmd)),
        }
    }
}

/// Print the command line, then run the command with inherited stdio.
/// `step` names the step in the error message.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    run_logged(Log::Stdout, step, cmd)
}

/// [`run`], with the command line printed on `log`.
pub fn run_logged(log: Log, step: &str, cmd: &mut Command) -> Result<()> {
    log.command(cmd);
    let status = spawn_wait(step, cmd)?;
    check(step, cmd, status)
}

fn spawn_wait(step: &str, cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().map_err(|e| {
        Error::Failed(format!(
            "step `{step}`: could not start `{}`: {e}",
            cmd.get_program().to_string_lossy()
        ))
    })
}

fn check(step: &str, cmd: &Command, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        fail(format!("step `{step}` failed ({}): {}", describe(status), display(cmd)))
    }
}

pub fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => format!("{status}"),
    }
}

/// Like [`run`], but stderr is passed through line by line and also scanned:
/// every line for which `scan` returns `Some(x)` has `x` collected and
/// returned along with the result, so the caller can print a hint after a
/// failure (used to spot missing CUDA libraries at link time).
pub fn run_scanning(
    step: &str,
    cmd: &mut Command,
    scan: impl Fn(&str) -> Option<String>,
) -> (Result<()>, Vec<String>) {
    Log::Stdout.command(cmd);
    // Cargo only colours its output for a terminal; keep the colours when
    // our own stderr is one, even though we read its stderr through a pipe.
    if std::io::stderr().is_terminal() && std::env::var_os("CARGO_TERM_COLOR").is_none() {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    cmd.stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                fail(format!(
                    "step `{step}`: could not start `{}`: {e}",
                    cmd.get_program().to_string_lossy()
                )),
                Vec::new(),
            )
        }
    };
    let mut found: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        let mut err = std::io::stderr();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = err.write_all(&line);
                    if let Some(x) = scan(&String::from_utf8_lossy(&line)) {
                        if !found.contains(&x) {
                            found.push(x);
                        }
                    }
                }
            }
        }
    }
    let res = match child.wait() {
        Ok(status) => check(step, cmd, status),
        Err(e) => fail(format!("step `{step}`: waiting for the command: {e}")),
    };
    (res, found)
}

pub fn flush() {
    let _ = std::io::stdout().flush();
}

/// Human-readable duration: `42.1s` or `3m07s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Time a closure.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Find an executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let exe = if cfg!(windows) { format!("{name}.exe") } else { name.to_string() };
    std::env::split_paths(&path).map(|dir| dir.join(&exe)).find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// `$CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// `path` relative to `root` for display, when it is inside it.
pub fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_else(|_| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_odd_args() {
        let mut c = Command::new("cargo");
        c.args(["test", "--", "a b"]).env("X", "1");
        assert_eq!(display(&c), "X=1 cargo test -- 'a b'");
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(187)), "3m07s");
    }
}
