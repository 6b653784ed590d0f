//! Run folders are never mixed or lost: a new run refuses a folder that holds a run (or moves it
//! aside with `--overwrite`), one process at a time holds a run folder (an OS lock, released
//! when the process dies, so a killed run leaves no stale lock), and `--resume` passes over a
//! damaged newest checkpoint to the newest good one, saying so.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What marks a folder as holding a run of `mae pretrain`.
const RUN_MARKERS: [&str; 3] = ["config.toml", "metrics.jsonl", "checkpoints"];

/// The lock file inside a run folder.
const LOCK_FILE: &str = ".lock";

/// Whether `dir` holds (part of) a run.
pub fn holds_run(dir: &Path) -> bool {
    RUN_MARKERS.iter().any(|m| dir.join(m).exists())
}

/// Makes `out` ready for a new run: refuses a folder that holds a run, unless `overwrite`, which
/// moves the old run aside (`<out>.replaced-<timestamp>`) rather than mixing the two.
pub fn prepare_new_run(out: &Path, overwrite: bool, stamp: &str) -> Result<()> {
    if !holds_run(out) {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "--out {0}: this folder already holds a run (config.toml, metrics.jsonl or checkpoints/); a new run \
             there would mix the two. Continue it with `mae pretrain --resume {0}`, choose a fresh --out, or \
             pass --overwrite to move the old run aside",
            out.display()
        );
    }
    let name = out.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let aside = out.with_file_name(format!("{name}.replaced-{stamp}"));
    std::fs::rename(out, &aside)
        .with_context(|| format!("--overwrite: moving {} aside to {}", out.display(), aside.display()))?;
    eprintln!("mae: --overwrite: the old run in {} was moved to {}", out.display(), aside.display());
    Ok(())
}

/// An exclusive lock on a run folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `dir` (created if needed) for this process; fails, naming the holder's PID, when
    /// another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        if !try_lock(&file) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who =
                if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
            bail!(
                "{} is in use by {who} (another `mae` training in it); wait for it to end, or stop it, before \
                 starting or resuming a run there",
                dir.display()
            );
        }
        file.set_len(0).and_then(|_| file.rewind()).with_context(|| format!("{}", path.display()))?;
        writeln!(file, "{}", std::process::id()).with_context(|| format!("{}", path.display()))?;
        file.flush().ok();
        Ok(Self { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> bool {
    // No advisory locks here: the folder is not protected against a second process.
    true
}

/// Complete checkpoints of a run, newest first (what `--resume` tries, in order).
pub fn resume_candidates(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all = mae_train::Checkpoints::new(run_dir.join("checkpoints")).list()?;
    all.reverse();
    if all.is_empty() {
        bail!("--resume {}: no complete checkpoint to resume from", run_dir.display());
    }
    Ok(all)
}

/// Resumes from the newest of `candidates` that loads, warning about each one passed over;
/// errors (listing every failure) when none does. Never starts over silently.
pub fn resume_newest_good<T>(
    candidates: &[PathBuf],
    mut resume: impl FnMut(&Path) -> Result<T>,
) -> Result<(PathBuf, T)> {
    let mut failures = Vec::new();
    for checkpoint in candidates {
        match resume(checkpoint) {
            Ok(value) => {
                if !failures.is_empty() {
                    eprintln!(
                        "mae: warning: resumed from {} instead of the newer checkpoint(s) that could not be read:\n  {}",
                        checkpoint.display(),
                        failures.join("\n  ")
                    );
                }
                return Ok((checkpoint.clone(), value));
            }
            Err(e) => failures.push(format!("{}: {e:#}", checkpoint.display())),
        }
    }
    bail!("no checkpoint could be read:\n  {}", failures.join("\n  "))
}

/// The file of a run folder that names the kernel of its products (`products.json`).
const PRODUCTS_FILE: &str = "products.json";

/// Records which kernel runs the products of a new run (see `DtypeArg::product_kernel`).
pub fn record_product_kernel(out: &Path, kernel: &str) -> Result<()> {
    let path = out.join(PRODUCTS_FILE);
    let json = serde_json::json!({ "product_kernel": kernel });
    std::fs::write(&path, format!("{json}\n")).with_context(|| format!("{}", path.display()))
}

/// The kernel `products.json` of the run folder `out` names, if it has a readable one.
pub fn recorded_product_kernel(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(PRODUCTS_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("product_kernel")?.as_str().map(String::from)
}

/// On resume: a warning when the run was started on another kernel than the one this machine
/// runs now (the run goes on, but is no longer bit-identical to one that was not interrupted).
/// Runs from before the file existed, or with an unreadable one, say nothing.
pub fn product_kernel_change(out: &Path, kernel: &str) -> Option<String> {
    let before = recorded_product_kernel(out)?;
    (before != kernel).then(|| {
        format!(
            "this run's products ran on the {before} kernel and run on {kernel} here (another CPU, \
             or MAE_PRODUCT): it goes on, but is no longer bit-identical to an uninterrupted run"
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_resume_on_another_product_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(product_kernel_change(dir.path(), "f32"), None, "a run from before the file");
        record_product_kernel(dir.path(), "avx512bf16").unwrap();
        assert_eq!(product_kernel_change(dir.path(), "avx512bf16"), None);
        let warning = product_kernel_change(dir.path(), "f32").expect("a warning");
        assert!(
            warning.contains("avx512bf16") && warning.contains("f32") && warning.contains("bit-identical")
        );
    }

    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()) && err.contains("in use"), "{err}");
        drop(first);
        assert!(RunLock::acquire(dir.path()).is_ok(), "released when dropped");
    }

    #[test]
    fn new_runs_refuse_run_folders_and_overwrite_moves_them_aside() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        prepare_new_run(&out, false, "x").unwrap();
        std::fs::create_dir_all(&out).unwrap();
        prepare_new_run(&out, false, "x").unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let err = prepare_new_run(&out, false, "x").unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
        prepare_new_run(&out, true, "20261203-000000").unwrap();
        assert!(!out.exists());
        assert!(root.path().join("run.replaced-20261203-000000/metrics.jsonl").is_file());
    }

    #[test]
    fn resume_passes_over_bad_checkpoints_and_never_starts_over_silently() {
        let paths: Vec<PathBuf> = ["c3", "c2", "c1"].iter().map(PathBuf::from).collect();
        let (used, v) = resume_newest_good(&paths, |p| {
            if p == Path::new("c3") {
                bail!("not a readable safetensors file")
            }
            Ok(p.display().to_string())
        })
        .unwrap();
        assert_eq!((used, v.as_str()), (PathBuf::from("c2"), "c2"));
        let err = resume_newest_good(&paths, |_| -> Result<()> { bail!("broken") }).unwrap_err().to_string();
        assert!(err.contains("c3") && err.contains("c1"), "{err}");
    }
}
