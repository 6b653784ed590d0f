//! WebDataset shards (`wds:`), built here with the tar crate from the repository's digits: the
//! same samples as the images as a folder, brace ranges and globs, labels, bad shards, the
//! shuffle and the split between ranks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mae_data::{open, DataError, DataSpec, Dataset, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};

use crate::common::{capture_logs, copy_digits, values, write_shard};

fn open_spec(spec: &str) -> mae_data::Result<Arc<dyn Dataset>> {
    open(&spec.parse::<DataSpec>()?, &OpenOptions::default())
}

/// The digits of `files` as shards of `per_shard` samples in `dir` (`shard-000000.tar`, ...),
/// in the files' order, labeled by `.cls`; returns the shard paths.
fn shards_of(dir: &Path, files: &[(PathBuf, u32)], per_shard: usize) -> Vec<PathBuf> {
    files
        .chunks(per_shard)
        .enumerate()
        .map(|(s, chunk)| {
            let samples: Vec<_> = chunk
                .iter()
                .map(|(file, class)| {
                    let key = format!("{class}_{}", file.file_stem().unwrap().to_string_lossy());
                    (
                        key,
                        vec![("png", std::fs::read(file).unwrap()), ("cls", class.to_string().into_bytes())],
                    )
                })
                .collect();
            let path = dir.join(format!("shard-{s:06}.tar"));
            write_shard(&path, &samples);
            path
        })
        .collect()
}

/// A folder of 3 x 5 digits and the same digits as 3 shards of 5.
fn digits(dir: &Path) -> (Vec<(PathBuf, u32)>, String) {
    let files = copy_digits(&dir.join("folder"), 3, 5);
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    shards_of(&dir.join("shards"), &files, 5);
    (files, format!("wds:{}/shards/shard-{{000000..000002}}.tar", dir.display()))
}

fn loader(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Loader {
    Loader::new(dataset, Arc::new(MaeTrainTransform::new(16)), config).unwrap()
}

#[test]
fn shards_give_the_folders_samples_in_the_folders_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, spec) = digits(tmp.path());
    let wds = open_spec(&spec).unwrap();
    let folder = open_spec(&format!("folder:{}/folder", tmp.path().display())).unwrap();
    assert_eq!((wds.len(), folder.len()), (15, 15));
    assert_eq!(wds.class_names(), folder.class_names());
    for (i, (_, class)) in files.iter().enumerate() {
        let (a, b) = (wds.get(i).unwrap(), folder.get(i).unwrap());
        assert_eq!(
            a.image.as_standard().unwrap().as_bytes(),
            b.image.as_standard().unwrap().as_bytes(),
            "sample {i}"
        );
        assert_eq!((a.label, b.label), (Some(*class), Some(*class)));
    }
    let stem = files[7].0.file_stem().unwrap().to_string_lossy().into_owned();
    assert!(wds.origin(7).ends_with(&format!("shard-000001.tar:1_{stem}.png")), "{}", wds.origin(7));
    assert_eq!(wds.sample_name(7), Some(format!("1_{stem}")));
    // Through the loader, augmentations and all: dataset order, bit for bit.
    let config = LoaderConfig { shuffle: false, workers: 2, seed: 3, ..LoaderConfig::train(4) };
    let (a, b) = (loader(wds, config.clone()), loader(folder, config));
    for (x, y) in a.iter_epoch(1).unwrap().zip(b.iter_epoch(1).unwrap()) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!((&x.indices, &x.labels), (&y.indices, &y.labels));
        assert_eq!(values(&x.images), values(&y.images));
    }
}

#[test]
fn a_buffer_holding_one_shard_shuffles_it_as_the_folder_is_shuffled() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_digits(&tmp.path().join("folder"), 2, 6);
    shards_of(tmp.path(), &files, 12);
    let wds = open_spec(&format!("wds:{}/shard-000000.tar", tmp.path().display())).unwrap();
    let folder = open_spec(&format!("folder:{}/folder", tmp.path().display())).unwrap();
    let config = LoaderConfig { seed: 8, workers: 0, ..LoaderConfig::train(4) };
    assert_eq!(loader(wds, config.clone()).epoch_plan(2), loader(folder, config).epoch_plan(2));
}

#[test]
fn brace_ranges_and_globs_name_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _) = digits(tmp.path());
    let dir = tmp.path().join("shards");
    let d = dir.display();
    let count = |spec: String| open_spec(&spec).unwrap().len();
    assert_eq!(count(format!("wds:{d}/shard-*.tar")), 15);
    assert_eq!(count(format!("wds:{d}/shard-{{000001..000002}}.tar")), 10);
    assert_eq!(count(format!("wds:{d}/shard-00000{{0..1}}.t*")), 10);
    assert_eq!(count(format!("wds:{d}/*-000002.tar")), 5);
    assert_eq!(count(format!("wds:{d}/shard-000001.tar#shuffle=7")), 5);
    let missing = open_spec(&format!("wds:{d}/shard-{{000002..000003}}.tar")).err().unwrap();
    assert!(
        matches!(&missing, DataError::NotFound { path, .. } if path.ends_with("shard-000003.tar")),
        "{missing}"
    );
    let none = open_spec(&format!("wds:{d}/nothing-*.tar")).err().unwrap();
    assert!(matches!(none, DataError::Empty { .. }), "{none}");
    for bad in ["wds:x-{2..1}.tar", "wds:x-{a..b}.tar", "wds:x-{0..1.tar", "wds:", "wds:x.tar#shuffle=0"] {
        assert!(matches!(bad.parse::<DataSpec>(), Err(DataError::Spec { .. })), "{bad}");
    }
}

#[test]
fn labels_come_from_cls_or_json_and_are_optional() {
    let tmp = tempfile::tempdir().unwrap();
    let png = std::fs::read(&copy_digits(tmp.path(), 1, 1)[0].0).unwrap();
    let sample = |key: &str, extra: Vec<(&'static str, Vec<u8>)>| {
        let mut members = vec![("png", png.clone())];
        members.extend(extra);
        (key.to_string(), members)
    };
    let json = |text: &str| ("json", text.as_bytes().to_vec());
    let shard = tmp.path().join("labels.tar");
    write_shard(
        &shard,
        &[
            sample("a", vec![("cls", b"4\n".to_vec())]),
            sample("b", vec![json(r#"{"label": 2, "caption": "two"}"#)]),
            sample("c", vec![json(r#"{"cls": 0}"#)]),
            ("d".to_string(), vec![("txt", b"no image".to_vec())]),
        ],
    );
    let ds = open_spec(&format!("wds:{}", shard.display())).unwrap();
    let labels: Vec<_> = (0..ds.len()).map(|i| ds.get(i).unwrap().label).collect();
    assert_eq!(labels, [Some(4), Some(2), Some(0)], "d has no image: not a sample");
    assert_eq!(ds.class_names().len(), 5);

    let unlabeled = tmp.path().join("unlabeled.tar");
    write_shard(&unlabeled, &[sample("a", vec![json(r#"{"caption": "x"}"#)]), sample("b", vec![])]);
    let ds = open_spec(&format!("wds:{}", unlabeled.display())).unwrap();
    assert_eq!((ds.len(), ds.is_labeled()), (2, false));
}

#[test]
fn bad_shards_are_skipped_by_name_and_all_bad_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, spec) = digits(tmp.path());
    let shards = tmp.path().join("shards");
    let truncated = shards.join("shard-000001.tar");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (ds, logs) = capture_logs(|| open_spec(&spec));
    let ds = ds.unwrap();
    assert_eq!(ds.len(), 10, "the two whole shards");
    let warned = logs.iter().find(|l| l.contains("shard-000001.tar")).unwrap_or_else(|| panic!("{logs:?}"));
    assert!(warned.starts_with("WARN") && warned.contains("truncated"), "{warned}");
    // Every sample still reads: the index points into the good shards only.
    assert!((0..ds.len()).all(|i| ds.get(i).is_ok()));

    std::fs::write(shards.join("shard-000000.tar"), b"not a tar file at all").unwrap();
    std::fs::write(shards.join("shard-000002.tar"), vec![7u8; 1536]).unwrap();
    let (all_bad, logs) = capture_logs(|| open_spec(&spec));
    let err = all_bad.err().unwrap();
    assert!(matches!(err, DataError::Empty { .. }) && err.to_string().contains("3 unreadable"), "{err}");
    assert_eq!(logs.iter().filter(|l| l.contains("skipping shard")).count(), 3, "{logs:?}");
}

#[test]
fn the_shuffle_is_keyed_by_the_seed_and_covers_every_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, spec) = digits(tmp.path());
    let plan = |seed: u64, epoch: u64, buffer: &str| {
        let ds = open_spec(&format!("{spec}{buffer}")).unwrap();
        let l = loader(ds, LoaderConfig { seed, workers: 0, drop_last: false, ..LoaderConfig::train(4) });
        l.epoch_plan(epoch)
    };
    let a = plan(1, 0, "#shuffle=3");
    assert_eq!(a, plan(1, 0, "#shuffle=3"), "deterministic for a seed");
    assert_ne!(a, plan(2, 0, "#shuffle=3"), "another seed, another order");
    assert_ne!(a, plan(1, 1, "#shuffle=3"), "another epoch, another order");
    let seen: BTreeSet<usize> = a.iter().flatten().copied().collect();
    assert_eq!(seen, (0..15).collect(), "every sample once");
    assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 15);
    // A buffer of 1 keeps each shard's order: shards move as wholes.
    let whole = plan(1, 0, "#shuffle=1").concat();
    for chunk in whole.chunks(5) {
        assert!(chunk.windows(2).all(|w| w[1] == w[0] + 1) && chunk[0] % 5 == 0, "{whole:?}");
    }
}

#[test]
fn ranks_split_by_shard_disjoint_and_covering() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_digits(&tmp.path().join("folder"), 4, 5);
    shards_of(tmp.path(), &files, 5);
    let spec = format!("wds:{}/shard-*.tar", tmp.path().display());
    let plans = |world: usize, spec: &str| -> Vec<Vec<usize>> {
        (0..world)
            .map(|rank| {
                let config = LoaderConfig {
                    seed: 4,
                    rank,
                    world_size: world,
                    workers: 0,
                    drop_last: false,
                    ..LoaderConfig::train(2)
                };
                loader(open_spec(spec).unwrap(), config).epoch_plan(3).concat()
            })
            .collect()
    };
    let ranks = plans(2, &spec);
    let shards = |plan: &[usize]| plan.iter().map(|i| i / 5).collect::<BTreeSet<_>>();
    assert_eq!(ranks[0].len(), 10);
    assert_eq!(ranks[1].len(), 10);
    assert!(shards(&ranks[0]).is_disjoint(&shards(&ranks[1])), "{ranks:?}");
    let all: BTreeSet<usize> = ranks.concat().into_iter().collect();
    assert_eq!(all, (0..20).collect(), "covering");
    // Fewer shards than ranks: split by sample, still disjoint and covering.
    let one = format!("wds:{}/shard-000000.tar", tmp.path().display());
    let ranks = plans(2, &one);
    let all: BTreeSet<usize> = ranks.concat().into_iter().collect();
    assert_eq!((ranks[0].len(), ranks[1].len()), (3, 3), "5 samples padded to 6 (the sampler's split)");
    assert_eq!(all, (0..5).collect(), "covering");
}

#[test]
fn a_run_resumes_at_a_batch_of_a_shard_ordered_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, spec) = digits(tmp.path());
    let l = loader(
        open_spec(&format!("{spec}#shuffle=4")).unwrap(),
        LoaderConfig { seed: 6, workers: 2, ..LoaderConfig::train(3) },
    );
    let full: Vec<_> = l.iter_epoch(2).unwrap().map(|b| b.unwrap()).collect();
    let resumed: Vec<_> = l.iter_from(2, 2).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(full.len(), 5);
    for (x, y) in full[2..].iter().zip(&resumed) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(values(&x.images), values(&y.images));
    }
}
