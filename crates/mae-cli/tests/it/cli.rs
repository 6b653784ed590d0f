//! The `mae` binary as a user meets it: a short pre-training run with its outputs, an exact
//! resume after a crash, and clear errors (non-zero exit, no panic) for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn mae(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .current_dir(dir)
        .env("MAE_FAULT_INJECT", "")
        .output()
        .expect("the mae binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

const SHORT_RUN: &[&str] = &[
    "pretrain",
    "--data",
    "synthetic:96",
    "--batch-size",
    "16",
    "--steps",
    "6",
    "--checkpoint-every",
    "2",
    "--workers",
    "2",
    "--progress",
    "lines",
    "--log-every",
    "2",
];

#[test]
fn a_short_run_writes_checkpoints_metrics_and_pictures_and_resumes_exactly_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let straight = [SHORT_RUN, &["--out", "straight"]].concat();
    let o = mae(&straight, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("straight");
    for file in [
        "config.toml",
        "metrics.jsonl",
        "loss.png",
        "reconstruction.png",
        "checkpoints/best/model.safetensors",
    ] {
        assert!(run.join(file).is_file(), "{file} missing; {}", stderr(&o));
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 6);

    // The same run, killed while writing the checkpoint of step 4, then resumed.
    let crashed = [SHORT_RUN, &["--out", "crashed"]].concat();
    let o = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(&crashed)
        .current_dir(dir.path())
        .env("MAE_FAULT_INJECT", "abort-in-checkpoint:4")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault aborts the run");
    let o = mae(&["pretrain", "--resume", "crashed", "--progress", "lines"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 2"), "resumed from the step-2 checkpoint: {}", stderr(&o));
    let a = std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("crashed/checkpoints/step-00000006/model.safetensors")).unwrap();
    assert!(a == b, "a resumed run ends bit-identical to an uninterrupted one");

    // The trained weights serve the other commands.
    let o = mae(&["info", "--weights", "straight"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("step 6"));
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/photos/chelsea.png");
    let o = mae(&["reconstruct", "--weights", "straight", "--image", photo, "--out", "rec.png"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("rec.png").is_file());
    let o = mae(
        &["embed", "--weights", "straight", "--data", "synthetic:40@test", "--out", "f.safetensors"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mae(
        &[
            "knn",
            "--weights",
            "straight",
            "--train",
            "synthetic:64",
            "--test",
            "synthetic:32@test",
            "--k",
            "5",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"top1\""));

    // Resuming with a checkpoint of another preset: the error names the tensor and the file.
    let tiny = ["pretrain", "--data", "synthetic:32", "--batch-size", "16", "--steps", "2", "--out", "tiny"];
    let o = mae(
        &[&tiny[..], &["--preset", "mae-vit-tiny-patch4-32", "--progress", "silent"]].concat(),
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(dir.path().join("tiny/config.toml"), run.join("config.toml")).unwrap();
    let o = mae(&["pretrain", "--resume", "straight"], dir.path());
    assert_clean_failure(&o, &["model.safetensors", "has shape"]);
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_clean_failure(&mae(&["pretrain", "--batch-size", "many"], d), &["--batch-size"]);
    assert_clean_failure(
        &mae(&["pretrain", "--preset", "vit-giant"], d),
        &["vit-giant", "mae-vit-base-patch16"],
    );
    assert_clean_failure(&mae(&["pretrain", "--data", "folder:/no/such/folder"], d), &["/no/such/folder"]);
    assert_clean_failure(&mae(&["pretrain", "--data", "imagenet"], d), &["imagenet", "folder:"]);
    assert_clean_failure(&mae(&["pretrain", "--mask-ratio", "1.5"], d), &["mask"]);
    assert_clean_failure(&mae(&["pretrain", "--device", "tpu"], d), &["--device tpu"]);
    assert_clean_failure(&mae(&["pretrain", "--resume", "nowhere"], d), &["nowhere"]);
    assert_clean_failure(&mae(&["info", "--weights", "missing.safetensors"], d), &["missing.safetensors"]);
    std::fs::write(d.join("broken.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    assert_clean_failure(&mae(&["info", "--weights", "broken.safetensors"], d), &["broken.safetensors"]);
    std::fs::write(d.join("bad.toml"), "batch_size = \"big\"\n").unwrap();
    assert_clean_failure(&mae(&["pretrain", "--config", "bad.toml"], d), &["bad.toml"]);
    std::fs::write(d.join("typo.toml"), "batchsize = 3\n").unwrap();
    assert_clean_failure(&mae(&["pretrain", "--config", "typo.toml"], d), &["typo.toml", "batchsize"]);
    std::fs::create_dir(d.join("empty")).unwrap();
    assert_clean_failure(&mae(&["pretrain", "--data", "folder:empty"], d), &["empty"]);
}

#[test]
fn hugging_face_directories_work_with_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let hf = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/hf_tiny_a");
    let o = mae(&["info", "--weights", hf], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"patch_size\": 4"));
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/photos/rocket.jpg");
    let o = mae(
        &["reconstruct", "--weights", hf, "--image", photo, "--out", "r.png", "--mask-ratio", "0.5"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Export to transformers' layout and read the export back with every command's loader.
    let o = mae(&["export", "--weights", hf, "--format", "hf", "--out", "exported"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mae(&["info", "--weights", "exported"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mae(&["export", "--weights", hf, "--format", "timm", "--out", "timm"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // A hub id that is not in the cache, offline: the error names the id and how to get it.
    let o = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(["info", "--weights", "facebook/vit-mae-base"])
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.path().join("empty-cache"))
        .output()
        .unwrap();
    assert_clean_failure(&o, &["facebook/vit-mae-base"]);
    // A corrupt image is an error naming it.
    std::fs::write(dir.path().join("fake.png"), b"not a png").unwrap();
    let o = mae(&["reconstruct", "--weights", hf, "--image", "fake.png"], dir.path());
    assert_clean_failure(&o, &["fake.png"]);
}

/// The long flags of `mae SUB --help` (and of `mae --help`), in order: the option lines of clap's
/// help (indented at most 6 columns, `-x, --name` or `--name`), not wrapped description text.
fn flag_names(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mae")).args(args).output().expect("the mae binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut flags = Vec::new();
    for line in text.lines() {
        let body = line.trim_start();
        if line.len() - body.len() > 6 {
            continue;
        }
        let body = match body.as_bytes() {
            [b'-', c, b',', b' ', ..] if c.is_ascii_alphanumeric() => &body[4..],
            _ => body,
        };
        if let Some(rest) = body.strip_prefix("--") {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            flags.push(format!("--{name}"));
        }
    }
    flags
}

/// Every subcommand's flag names against a snapshot taken before the crates were reorganised
/// (tests/it/cli_flags.txt): a rename or a lost flag breaks users' scripts. Regenerate it, on
/// purpose only, with `MAE_UPDATE_SNAPSHOT=1`.
#[test]
fn flag_names_match_the_snapshot() {
    let subcommands =
        ["pretrain", "reconstruct", "embed", "knn", "linear-probe", "finetune", "info", "bench", "export"];
    let mut lines = vec![format!("mae: {}", flag_names(&["--help"]).join(" "))];
    for sub in subcommands {
        lines.push(format!("mae {sub}: {}", flag_names(&[sub, "--help"]).join(" ")));
    }
    let now = lines.join("\n") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/cli_flags.txt");
    if std::env::var_os("MAE_UPDATE_SNAPSHOT").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let snapshot = std::fs::read_to_string(&path).unwrap();
    assert_eq!(now, snapshot, "flag names changed (see {})", path.display());
}
