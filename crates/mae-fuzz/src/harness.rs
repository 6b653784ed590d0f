//! Running cases: each on a worker thread with a timeout, its panics caught with their
//! backtrace, and its peak allocation measured against the target's limit.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::alloc;
use crate::targets::Target;

/// Name of the worker threads: the panic hook records panics of these threads only.
const WORKER: &str = "mae-fuzz-case";
/// Stack of a worker: the main thread's usual 8 MiB, since readers run on main threads too.
const STACK: usize = 8 << 20;
/// A refused allocation ends the process; the cap keeps a runaway case from taking the
/// machine's memory first. It applies only while a case runs.
const HARD_CAP_MIN: usize = 1 << 30;

/// The message and backtrace of the last panic on a worker thread.
/// The backtrace is kept unresolved: resolving it loads the debug info (~60 MB), which would be
/// charged to the case, and a panic that the reader catches itself (the parquet crate's, in
/// mae-data) is no failure and needs no backtrace.
static PANIC: Mutex<Option<(String, std::backtrace::Backtrace)>> = Mutex::new(None);
/// One case at a time: the allocation counters are process-wide.
static CASE: Mutex<()> = Mutex::new(());

/// Why a case failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureKind {
    /// The reader panicked: message, location and backtrace.
    Panic(String),
    /// The case did not finish within the timeout.
    Timeout(Duration),
    /// The case's peak of live bytes exceeded the target's limit.
    /// `largest`: the largest single allocation of the case.
    OverAlloc { peak: usize, limit: usize, largest: usize },
    /// A property the target checks was broken (e.g. a spec's round trip).
    Check(String),
}

impl FailureKind {
    /// A short signature to tell distinct failures apart (the panic's first line).
    pub fn signature(&self) -> String {
        match self {
            FailureKind::Panic(m) => m.lines().next().unwrap_or("").to_string(),
            FailureKind::Timeout(_) => "timeout".into(),
            FailureKind::OverAlloc { .. } => "over-allocation".into(),
            FailureKind::Check(m) => format!("check: {}", m.chars().take(80).collect::<String>()),
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureKind::Panic(m) => write!(f, "panic: {m}"),
            FailureKind::Timeout(t) => write!(f, "did not finish within {t:?}"),
            FailureKind::OverAlloc { peak, limit, largest } => write!(
                f,
                "allocated {peak} bytes at peak, over the limit of {limit} (largest single allocation {largest} bytes)"
            ),
            FailureKind::Check(m) => write!(f, "check failed: {m}"),
        }
    }
}

/// What a case that passed measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaseStats {
    pub peak: usize,
    pub largest: usize,
    pub elapsed: Duration,
}

/// Runs cases of targets in a scratch folder of their own.
#[derive(Debug)]
pub struct Harness {
    scratch: tempfile::TempDir,
    pub timeout: Duration,
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(WORKER) {
                return previous(info);
            }
            let backtrace = std::backtrace::Backtrace::force_capture();
            *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some((info.to_string(), backtrace));
        }));
    });
}

impl Harness {
    /// A harness with a fresh scratch folder; fails when the counting allocator is not the
    /// global allocator (the allocation limit would pass every case unseen).
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        if !alloc::is_installed() {
            return Err(std::io::Error::other(
                "mae_fuzz::CountingAlloc is not the #[global_allocator] of this binary",
            ));
        }
        // With RUST_BACKTRACE=1, every candle error captures a backtrace and formatting it
        // loads the debug info (~100 MB): measured, that is not the reader's allocation.
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            std::env::set_var("RUST_LIB_BACKTRACE", "0");
        }
        install_panic_hook();
        Ok(Self { scratch: tempfile::tempdir()?, timeout })
    }

    /// The scratch folder of `target` (created on first use).
    pub fn dir(&self, target: &Target) -> PathBuf {
        let dir = self.scratch.path().join(target.name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Runs one case: `input` through `target` on a worker thread.
    pub fn run_case(&self, target: &'static Target, input: &[u8]) -> Result<CaseStats, FailureKind> {
        let _one_at_a_time = CASE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir(target);
        let limit = target.alloc_limit(input.len());
        let input: Arc<[u8]> = input.into();
        let (send, receive) = mpsc::channel();
        let worker = std::thread::Builder::new().name(WORKER.into()).stack_size(STACK);
        let spawned = worker.spawn(move || {
            let baseline = alloc::start_case();
            alloc::set_hard_cap(limit.saturating_mul(4).max(HARD_CAP_MIN));
            let start = Instant::now();
            let result = (target.run)(&dir, &input);
            let elapsed = start.elapsed();
            alloc::set_hard_cap(usize::MAX);
            let _ = send.send((
                result,
                CaseStats { peak: alloc::peak_since(baseline), largest: alloc::largest(), elapsed },
            ));
        });
        let handle = spawned.map_err(|e| FailureKind::Check(format!("cannot start a worker thread: {e}")))?;
        match receive.recv_timeout(self.timeout) {
            Ok((result, stats)) => {
                let _ = handle.join();
                result.map_err(FailureKind::Check)?;
                if stats.peak > limit {
                    return Err(FailureKind::OverAlloc { peak: stats.peak, limit, largest: stats.largest });
                }
                Ok(stats)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(FailureKind::Timeout(self.timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                alloc::set_hard_cap(usize::MAX);
                let panic = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
                let message = panic.map(|(info, backtrace)| format!("{info}\n{backtrace}"));
                Err(FailureKind::Panic(message.unwrap_or_else(|| "panic (no message recorded)".into())))
            }
        }
    }
}

/// Every regression input under `root` (`<target>/<file>`), sorted.
pub fn regression_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(root) else { return out };
    for target in targets.flatten().filter(|e| e.path().is_dir()) {
        let name = target.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(target.path()) else { continue };
        for file in files.flatten().filter(|e| e.path().is_file()) {
            out.push((name.clone(), file.path()));
        }
    }
    out.sort();
    out
}
