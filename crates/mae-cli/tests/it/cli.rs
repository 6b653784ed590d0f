//! The `mae` binary as a user meets it: a short pre-training run with its outputs, an exact
//! resume after a crash, and clear errors (non-zero exit, no panic) for bad input.

use std::path::Path;
use std::process::Command;

use crate::run_mae::{assert_clean_failure, mae, mae_with_fault, stderr};

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
        "memory.png",
        "reconstruction.png",
        "checkpoints/best/model.safetensors",
    ] {
        assert!(run.join(file).is_file(), "{file} missing; {}", stderr(&o));
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 6);
    // The same numbers in metrics.csv and in TensorBoard's event files (records counted by tag;
    // the encoding itself is checked against tensorboard's own writer in mae-train).
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,epoch,metric,value\n"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.split(',').nth(2) == Some("loss")).count(), 6, "{csv}");
    let events = event_records(&run);
    assert_eq!(events.iter().filter(|e| contains(e, b"train/loss")).count(), 6);
    assert_eq!(events.iter().filter(|e| contains(e, b"train/lr")).count(), 6);
    assert!(events.iter().any(|e| contains(e, b"reconstruction") && contains(e, b"\x89PNG")));

    // The same run, killed while writing the checkpoint of step 4, then resumed.
    let crashed = [SHORT_RUN, &["--out", "crashed"]].concat();
    let o = mae_with_fault(&crashed, dir.path(), "abort-in-checkpoint:4");
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
    assert_clean_failure(&mae(&["pretrain", "--resume", "nowhere"], d), &["nowhere", "no such folder"]);
    std::fs::create_dir(d.join("not-a-run")).unwrap();
    assert_clean_failure(&mae(&["pretrain", "--resume", "not-a-run"], d), &["not-a-run", "no config.toml"]);
    assert_clean_failure(&mae(&["info", "--weights", "missing.safetensors"], d), &["missing.safetensors"]);
    std::fs::write(d.join("broken.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    assert_clean_failure(&mae(&["info", "--weights", "broken.safetensors"], d), &["broken.safetensors"]);
    std::fs::write(d.join("bad.toml"), "batch_size = \"big\"\n").unwrap();
    assert_clean_failure(&mae(&["pretrain", "--config", "bad.toml"], d), &["bad.toml"]);
    std::fs::write(d.join("typo.toml"), "batchsize = 3\n").unwrap();
    assert_clean_failure(&mae(&["pretrain", "--config", "typo.toml"], d), &["typo.toml", "batchsize"]);
    std::fs::create_dir(d.join("empty")).unwrap();
    assert_clean_failure(&mae(&["pretrain", "--data", "folder:empty"], d), &["empty"]);
    // Was an index-out-of-bounds panic.
    assert_clean_failure(&mae(&["bench", "--steps", "0"], d), &["--steps"]);
}

/// One rule for the length of a run, in every command that trains: `--epochs` and `--steps`
/// both on the command line is an error naming both; one of them on the command line replaces
/// the length a `--config` file sets; a config file that sets both is an error naming the file.
#[test]
fn epochs_and_steps_follow_one_rule_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data =
        ["--train", "synthetic:64", "--test", "synthetic:16@test", "--preset", "mae-vit-micro-patch4-32"];
    for command in ["pretrain", "linear-probe", "finetune"] {
        let data: &[&str] = if command == "pretrain" { &[] } else { &data };
        let o = mae(&[&[command, "--epochs", "2", "--steps", "5", "--out", "both"], data].concat(), d);
        assert_clean_failure(&o, &["--epochs 2", "--steps 5"]);
        let o = mae(&[&[command, "--steps", "0", "--out", "zero"], data].concat(), d);
        assert_clean_failure(&o, &["--steps", "at least 1"]);
        assert!(
            !d.join("both").exists() && !d.join("zero").exists(),
            "{command}: a refused run leaves no folder"
        );
    }

    // --steps on the command line replaces the file's epochs; the resolved config keeps one length.
    std::fs::write(d.join("epochs.toml"), "epochs = 4\nbatch_size = 16\ndata = \"synthetic:32\"\n").unwrap();
    let run = ["pretrain", "--config", "epochs.toml", "--progress", "silent"];
    let o = mae(&[&run[..], &["--steps", "3", "--out", "flag"]].concat(), d);
    assert!(o.status.success(), "{}", stderr(&o));
    let resolved = std::fs::read_to_string(d.join("flag/config.toml")).unwrap();
    assert!(resolved.contains("steps = 3") && !resolved.contains("epochs ="), "{resolved}");
    assert!(stderr(&o).contains("3 steps"), "{}", stderr(&o));
    // Without a flag the file's epochs count: 4 epochs of 2 steps.
    let o = mae(&[&run[..], &["--out", "file"]].concat(), d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("8 steps"), "{}", stderr(&o));

    std::fs::write(d.join("both.toml"), "epochs = 4\nsteps = 3\n").unwrap();
    let o = mae(&["pretrain", "--config", "both.toml", "--out", "x"], d);
    assert_clean_failure(&o, &["both.toml", "epochs", "steps"]);
    assert!(!d.join("x").exists());
}

/// `--progress` is parsed by one parser in every command, strictly: an unknown value is an error
/// naming the flag, the value and the values there are (a resumed run too, where it once meant
/// `auto` without a word).
#[test]
fn an_unknown_progress_value_is_an_error_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expected = ["--progress fancy", "auto, bar, lines or silent"];
    let data =
        ["--preset", "mae-vit-micro-patch4-32", "--train", "synthetic:64", "--test", "synthetic:16@test"];
    assert_clean_failure(&mae(&["pretrain", "--progress", "fancy"], d), &expected);
    assert_clean_failure(&mae(&[&["linear-probe", "--progress", "fancy"], &data[..]].concat(), d), &expected);
    assert_clean_failure(&mae(&[&["finetune", "--progress", "fancy"], &data[..]].concat(), d), &expected);
    let o =
        mae(&["pretrain", "--data", "synthetic:32", "--batch-size", "16", "--steps", "1", "--out", "r"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean_failure(&mae(&["pretrain", "--resume", "r", "--progress", "fancy"], d), &expected);
    std::fs::write(d.join("fancy.toml"), "progress = \"fancy\"\n").unwrap();
    assert_clean_failure(
        &mae(&["pretrain", "--config", "fancy.toml"], d),
        &["fancy.toml", "progress", "fancy"],
    );
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
    let subcommands = [
        "pretrain",
        "reconstruct",
        "embed",
        "knn",
        "linear-probe",
        "finetune",
        "info",
        "bench",
        "export",
        "stats",
    ];
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

/// `file` with every value of its tensor `name` set to NaN (header and other tensors kept).
fn poison(file: &Path, name: &str, out: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.clone(), v.data().to_vec(), v.shape().to_vec(), v.dtype()))
        .collect();
    let target = owned.iter_mut().find(|t| t.0 == name).expect("the tensor exists");
    target.1 = f32::NAN.to_le_bytes().repeat(target.1.len() / 4);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, data, shape, dtype)| {
            (n.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, meta.metadata().clone(), out).unwrap();
}

/// The run-folder guarantees (each was broken before): a new run refuses a folder holding a run
/// (and `--overwrite` moves it aside), a second process cannot enter a locked run folder,
/// `--resume` passes over a damaged newest checkpoint to the newest good one and ends
/// bit-identical to a run that never broke, and weights holding NaN are refused by name.
#[test]
fn run_folders_are_never_mixed_and_a_damaged_checkpoint_does_not_stop_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = mae(&[SHORT_RUN, &["--out", "r"]].concat(), d);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(d.join("r/metrics.jsonl")).unwrap();

    // A new run into it is refused and changes nothing.
    let o = mae(&[SHORT_RUN, &["--out", "r"]].concat(), d);
    assert_clean_failure(&o, &["already holds a run", "--resume r", "--overwrite"]);
    assert_eq!(std::fs::read_to_string(d.join("r/metrics.jsonl")).unwrap(), metrics);

    // The newest checkpoint damaged: resume warns, takes step 4, and redoes steps 5-6 exactly.
    let newest = d.join("r/checkpoints/step-00000006/model.safetensors");
    let good = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, b"\x08\x00\x00\x00\x00\x00\x00\x00garbage").unwrap();
    let o = mae(&["pretrain", "--resume", "r", "--progress", "lines"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning") && stderr(&o).contains("step-00000006"), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 4"), "resumed from step 4: {}", stderr(&o));
    assert!(std::fs::read(&newest).unwrap() == good, "the redone steps give the same weights");
    // The same with its state.json damaged instead: the warning names that file.
    std::fs::write(d.join("r/checkpoints/step-00000006/state.json"), b"{\"step\": ").unwrap();
    let o = mae(&["pretrain", "--resume", "r", "--progress", "lines"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("state.json") && stderr(&o).contains("step 4"), "{}", stderr(&o));
    assert!(std::fs::read(&newest).unwrap() == good, "the redone steps give the same weights");

    // Weights holding NaN are refused, naming the tensor.
    poison(&newest, "decoder_pred.weight", &d.join("nan.safetensors"));
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/photos/chelsea.png");
    let o = mae(&["reconstruct", "--weights", "nan.safetensors", "--image", photo, "--out", "x.png"], d);
    assert_clean_failure(&o, &["decoder_pred.weight", "NaN"]);
    assert!(!d.join("x.png").exists());

    // A second process in a locked run folder stops, naming the holder.
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::io::AsRawFd;
        let mut lock = std::fs::OpenOptions::new().write(true).open(d.join("r/.lock")).unwrap();
        // SAFETY: flock on a descriptor owned by `lock`, which outlives the call.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        lock.set_len(0).unwrap();
        write!(lock, "4242").unwrap();
        let o = mae(&["pretrain", "--resume", "r"], d);
        assert_clean_failure(&o, &["in use", "4242"]);
        drop(lock);
    }

    // --overwrite moves the old run aside instead of mixing.
    let two_steps =
        ["pretrain", "--data", "synthetic:96", "--batch-size", "16", "--steps", "2", "--progress", "silent"];
    let o = mae(&[&two_steps[..], &["--out", "r", "--overwrite"]].concat(), d);
    assert!(o.status.success(), "{}", stderr(&o));
    let aside: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("r.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old run moved aside");
    assert!(std::fs::read_to_string(aside[0].path().join("metrics.jsonl")).unwrap().starts_with(&metrics));
    let new_metrics = std::fs::read_to_string(d.join("r/metrics.jsonl")).unwrap();
    assert_eq!(new_metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 2, "only the new run's lines");
}

/// The records of every TensorBoard event file in `run` (TFRecord framing: length, CRC, data,
/// CRC), in file order.
fn event_records(run: &std::path::Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("tfevents"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no event file in {}", run.display());
    let mut records = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            records.push(bytes[at + 12..at + 12 + len].to_vec());
            at += len + 16;
        }
        assert_eq!(at, bytes.len(), "{} ends inside a record", file.display());
    }
    records
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A checkpoint whose weights hold a NaN is refused on resume, naming the tensor and the file;
/// the run goes on from the previous good checkpoint with a warning, and with none left it is
/// an error that names every refusal.
#[test]
fn resume_refuses_non_finite_weights_and_falls_back_to_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = [
        "pretrain",
        "--data",
        "synthetic:32",
        "--batch-size",
        "8",
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--progress",
        "silent",
        "--out",
        "run",
    ];
    // Stopped inside the checkpoint of step 6: those of steps 2 and 4 remain; 4's weights go bad.
    let o = mae_with_fault(&run, dir.path(), "abort-in-checkpoint:6");
    assert!(!o.status.success(), "the fault aborts the run");
    let checkpoints = dir.path().join("run/checkpoints");
    let bad = checkpoints.join("step-00000004/model.safetensors");
    poison(&bad, "decoder_pred.weight", &bad);

    let o = mae(&["pretrain", "--resume", "run", "--progress", "silent"], dir.path());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("decoder_pred.weight") && err.contains("NaN"), "names the tensor: {err}");
    assert!(err.contains("step-00000002") && err.contains("instead of the newer"), "falls back: {err}");
    assert!(checkpoints.join("step-00000006/model.safetensors").is_file(), "the run finished");

    // Every checkpoint poisoned: refused, each named.
    let dir = tempfile::tempdir().unwrap();
    let o = mae_with_fault(&run, dir.path(), "abort-in-checkpoint:6");
    assert!(!o.status.success());
    for step in ["step-00000002", "step-00000004"] {
        let file = dir.path().join("run/checkpoints").join(step).join("model.safetensors");
        poison(&file, "decoder_pred.weight", &file);
    }
    let o = mae(&["pretrain", "--resume", "run", "--progress", "silent"], dir.path());
    assert_clean_failure(
        &o,
        &["no checkpoint could be read", "step-00000002", "step-00000004", "decoder_pred.weight"],
    );
}
