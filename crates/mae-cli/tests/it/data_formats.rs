//! Data that is not a folder walk, through the binary: `mae pretrain` on WebDataset shards and
//! on the same images as a folder, a truncated shard, and `mae embed --format`.

use std::path::{Path, PathBuf};

use crate::run_mae::{assert_clean_failure, mae, stderr};

/// The repository's digits (`data/mnist-png/train`): the first `per_class` of classes 0 and 1.
fn digits(per_class: usize) -> Vec<(PathBuf, u32)> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-png/train"));
    let mut out = Vec::new();
    for class in 0..2u32 {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(class.to_string())).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        out.extend(files.into_iter().take(per_class).map(|f| (f, class)));
    }
    out
}

/// The digits as a folder `dir/folder/<class>/` and as one shard `dir/shard-000000.tar` in the
/// folder's order, labeled by `.cls`.
fn folder_and_shard(dir: &Path, per_class: usize) {
    let mut builder = tar::Builder::new(std::fs::File::create(dir.join("shard-000000.tar")).unwrap());
    for (file, class) in digits(per_class) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let class_dir = dir.join("folder").join(class.to_string());
        std::fs::create_dir_all(&class_dir).unwrap();
        std::fs::copy(&file, class_dir.join(&name)).unwrap();
        let key = format!("{class}_{}", name.trim_end_matches(".png"));
        for (ext, bytes) in [("png", std::fs::read(&file).unwrap()), ("cls", class.to_string().into_bytes())]
        {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, format!("{key}.{ext}"), bytes.as_slice()).unwrap();
        }
    }
    builder.into_inner().unwrap();
}

fn pretrain(dir: &Path, data: &str, out: &str) -> Vec<String> {
    let args = [
        "pretrain",
        "--preset",
        "mae-vit-micro-patch4-32",
        "--data",
        data,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--progress",
        "silent",
        "--log-every",
        "1",
        "--checkpoint-every",
        "3",
        "--seed",
        "5",
        "--out",
        out,
    ];
    let o = mae(&args, dir);
    assert!(o.status.success(), "mae {}: {}", args.join(" "), stderr(&o));
    let metrics = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap();
    let losses: Vec<String> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").map(|l| l.to_string()))
        .collect();
    assert_eq!(losses.len(), 3, "{metrics}");
    losses
}

/// One shard read in full by the default shuffle buffer (1000 >= 12 samples) is shuffled with
/// the sampler's own permutation (docs/data.md), so the order, the augmentations (keyed by the
/// same indices) and the masks are the folder's: the losses must match bit for bit. With several
/// shards, or a smaller buffer, the order is by design a different one.
#[test]
fn pretraining_on_a_shard_matches_the_same_images_as_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    folder_and_shard(tmp.path(), 6);
    let from_folder = pretrain(tmp.path(), "folder:folder", "run-folder");
    let from_shard = pretrain(tmp.path(), "wds:shard-{000000..000000}.tar", "run-wds");
    assert_eq!(from_folder, from_shard);
    // The comparison can tell orders apart: a buffer of 3 shuffles the shard another way.
    assert_ne!(from_folder, pretrain(tmp.path(), "wds:shard-000000.tar#shuffle=3", "run-buffer-3"));
    // A second, truncated shard is skipped by name and the run trains on the first.
    let bytes = std::fs::read(tmp.path().join("shard-000000.tar")).unwrap();
    std::fs::write(tmp.path().join("shard-000001.tar"), &bytes[..bytes.len() - 2000]).unwrap();
    let o = mae(
        &[
            "pretrain",
            "--preset",
            "mae-vit-micro-patch4-32",
            "--data",
            "wds:shard-*.tar",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "1",
            "--progress",
            "silent",
            "--out",
            "run-cut",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("shard-000001.tar") && stderr(&o).contains("truncated"), "{}", stderr(&o));
    std::fs::write(tmp.path().join("shard-000000.tar"), b"garbage").unwrap();
    let o = mae(
        &[
            "pretrain",
            "--preset",
            "mae-vit-micro-patch4-32",
            "--data",
            "wds:shard-*.tar",
            "--steps",
            "1",
            "--out",
            "run-bad",
        ],
        tmp.path(),
    );
    assert_clean_failure(&o, &["no samples found", "2 unreadable or truncated"]);
}

/// Reads back the `.npy` this crate writes: (shape, little-endian payload).
fn read_npy(path: &Path, descr: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "header padded to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.contains(&format!("'descr': '{descr}'")) && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape =
        shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    (shape, bytes[10 + len..].to_vec())
}

#[test]
fn embed_writes_the_same_vectors_and_names_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    folder_and_shard(tmp.path(), 3);
    pretrain(tmp.path(), "folder:folder", "run");
    let embed = |data: &str, format: &str, out: &str| {
        let o =
            mae(&["embed", "--weights", "run", "--data", data, "--format", format, "--out", out], tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
    };
    embed("folder:folder", "safetensors", "f.safetensors");
    embed("folder:folder", "npy", "f.npy");
    embed("folder:folder", "csv", "f.csv");
    let st_bytes = std::fs::read(tmp.path().join("f.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let features = st.tensor("features").unwrap();
    assert_eq!(features.shape()[0], 6);
    let dim = features.shape()[1];
    let expected: Vec<f32> =
        features.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&st_bytes).unwrap();
    let names: Vec<String> = serde_json::from_str(&metadata.metadata().as_ref().unwrap()["names"]).unwrap();
    let want: Vec<String> =
        digits(3).iter().map(|(f, c)| format!("{c}/{}", f.file_name().unwrap().to_string_lossy())).collect();
    assert_eq!(names, want);
    let indices: Vec<i64> = st
        .tensor("indices")
        .unwrap()
        .data()
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(indices, (0..6).collect::<Vec<_>>());

    let (shape, payload) = read_npy(&tmp.path().join("f.npy"), "<f4");
    assert_eq!(shape, [6, dim]);
    let npy: Vec<f32> = payload.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(npy, expected, "npy holds the safetensors vectors bit for bit");
    assert_eq!(std::fs::read_to_string(tmp.path().join("f.txt")).unwrap(), want.join("\n") + "\n");
    let (shape, labels) = read_npy(&tmp.path().join("f.labels.npy"), "<u4");
    assert_eq!(
        (shape, labels.chunks(4).map(|b| b[0]).collect::<Vec<_>>()),
        (vec![6], vec![0, 0, 0, 1, 1, 1])
    );

    let csv = std::fs::read_to_string(tmp.path().join("f.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("name,label,f0,f1,"));
    for (r, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!((fields[0], fields[1]), (want[r].as_str(), if r < 3 { "0" } else { "1" }));
        let row: Vec<f32> = fields[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(row, expected[r * dim..(r + 1) * dim], "csv row {r} reads back exactly");
    }

    // Without file names (a WebDataset names rows by key; MNIST would by index): keys here.
    embed("wds:shard-000000.tar", "npy", "w.npy");
    let keys = std::fs::read_to_string(tmp.path().join("w.txt")).unwrap();
    assert_eq!(
        keys.lines().next().unwrap(),
        format!("0_{}", want[0].trim_start_matches("0/").trim_end_matches(".png"))
    );
    embed("synthetic:5", "csv", "s.csv");
    let csv = std::fs::read_to_string(tmp.path().join("s.csv")).unwrap();
    let names: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(names, ["0", "1", "2", "3", "4"], "indices where the data has no file names");
}
