//! A kill sweep: `mae pretrain` killed with SIGKILL at many moments (inside steps, inside
//! checkpoint writes, while the loader's workers prefetch), resumed after each kill, ends
//! bit-identical to an uninterrupted run, and every checkpoint a kill leaves behind is readable.
//!
//! The kill moments are spread over the uninterrupted run's duration by a fixed pseudo-random
//! sequence; where exactly each lands depends on the machine, and the assertions hold wherever
//! it lands. `MAE_KILL_SWEEP=N` makes N kills (default 6; CI runs the default).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const RUN: &[&str] = &[
    "pretrain",
    "--data",
    "synthetic:64",
    "--batch-size",
    "16",
    "--steps",
    "12",
    // A checkpoint every step: many kills land inside a checkpoint write.
    "--checkpoint-every",
    "1",
    "--workers",
    "2",
    "--progress",
    "silent",
    "--seed",
    "3",
];

fn mae() -> Command {
    let mut cmd = crate::run_mae::command("");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// The complete checkpoints of a run folder (what `--resume` may read).
fn checkpoints(run: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else { return Vec::new() };
    let mut all: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    all.sort();
    all
}

/// Every checkpoint folder parses (its state, its model and its optimizer state), and so does
/// `best/` when there is one.
fn assert_readable(run: &Path, after: &str) {
    let best = Some(run.join("checkpoints/best")).filter(|b| b.exists());
    for dir in checkpoints(run).into_iter().chain(best) {
        let state = std::fs::read(dir.join("state.json")).unwrap_or_default();
        assert!(serde_json::from_slice::<serde_json::Value>(&state).is_ok(), "{dir:?} state.json, {after}");
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
            assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok(), "{dir:?} {file}, {after}");
        }
    }
}

/// A fixed pseudo-random sequence in [0, 1) (SplitMix64).
fn fractions(n: usize) -> Vec<f64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        })
        .collect()
}

/// Starts the run, or resumes it when it has a complete checkpoint (a run killed before its
/// first checkpoint is started again from scratch, as a user would).
fn start_or_resume(dir: &Path, extra: &[&str]) -> Command {
    let run = dir.join("killed");
    let mut cmd = mae();
    cmd.current_dir(dir);
    if checkpoints(&run).is_empty() {
        if run.exists() {
            std::fs::remove_dir_all(&run).unwrap();
        }
        cmd.args(RUN).args(extra).args(["--out", "killed"]);
    } else {
        cmd.args(["pretrain", "--resume", "killed", "--progress", "silent"]);
    }
    cmd
}

#[test]
fn killed_at_random_moments_and_resumed_it_ends_bit_identical() {
    sweep(&[]);
}

/// The same in bf16 (on the CPU: the linear layers' products on the bf16 kernel where the CPU
/// has AVX512-BF16): the products are deterministic, the checkpoints f32.
#[test]
fn killed_at_random_moments_and_resumed_in_bf16_it_ends_bit_identical() {
    sweep(&["--dtype", "bf16"]);
}

/// Runs straight, then killed and resumed, with `extra` flags; compares the last weights.
fn sweep(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = mae().args(RUN).args(extra).args(["--out", "straight"]).current_dir(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let duration = started.elapsed();

    let kills: usize = std::env::var("MAE_KILL_SWEEP").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let run = dir.path().join("killed");
    let mut finished_early = 0;
    for (i, f) in fractions(kills).into_iter().enumerate() {
        let mut child = start_or_resume(dir.path(), extra).spawn().unwrap();
        std::thread::sleep(duration.mul_f64(f));
        if child.try_wait().unwrap().is_some() {
            // The rest of the run took less than the delay: start the next kill from scratch.
            finished_early += 1;
            std::fs::remove_dir_all(&run).unwrap();
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_readable(&run, &format!("after kill {i} at {:.0}% of a run", f * 100.0));
        let mid_write = std::fs::read_dir(run.join("checkpoints"))
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp-")))
            .unwrap_or(false);
        eprintln!(
            "kill {i} at {:.0}%: newest checkpoint {:?}{}",
            f * 100.0,
            checkpoints(&run).last().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            if mid_write { ", a .tmp- folder left (a write or a prune cut short)" } else { "" }
        );
    }
    let o = start_or_resume(dir.path(), extra).output().unwrap();
    assert!(o.status.success(), "the last resume: {}", String::from_utf8_lossy(&o.stderr));
    assert!(kills == 0 || finished_early < kills, "every kill came too late to test anything");

    let last = "checkpoints/step-00000012/model.safetensors";
    let a = std::fs::read(dir.path().join("straight").join(last)).unwrap();
    let b = std::fs::read(run.join(last)).unwrap();
    assert!(a == b, "a run killed {kills} times and resumed ends bit-identical to an uninterrupted one");
    assert_readable(&run, "at the end");
}
