//! Hub datasets from a hub cache that the test writes itself, and downloaded through the local hub
//! server (`mae_hub::testing`): parquet shards in the layout of `ylecun/mnist`, with the
//! `huggingface` schema metadata that `datasets` writes.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use image::ImageFormat;
use mae_data::{open, DataError, DataSpec, OpenOptions};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::common::{encode, test_card, write};

const SCHEMA: &str = "message schema {
    optional group image { optional binary bytes; optional binary path (STRING); }
    optional int64 label;
}";

const FEATURES: &str = r#"{"info": {"features": {
    "image": {"_type": "Image"},
    "label": {"names": ["zero", "one", "two"], "_type": "ClassLabel"}}}}"#;

/// Writes a shard of `images` (None = a null image) and `labels`, snappy-compressed as pyarrow
/// writes them by default.
fn write_shard(path: &Path, images: &[Option<Vec<u8>>], labels: &[i64]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new("huggingface".into(), FEATURES.to_string())]))
        .build();
    let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    // Definition levels: 2 = the struct and its field present, 0 = the whole image null.
    let defs: Vec<i16> = images.iter().map(|i| if i.is_some() { 2 } else { 0 }).collect();
    let bytes: Vec<ByteArray> = images.iter().flatten().map(|b| ByteArray::from(b.clone())).collect();
    let paths: Vec<ByteArray> = images.iter().flatten().map(|_| ByteArray::from("x.png")).collect();
    for values in [bytes, paths] {
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
        column.close().unwrap();
    }
    let mut column = group.next_column().unwrap().unwrap();
    column.typed::<Int64Type>().write_batch(labels, Some(&vec![1; labels.len()]), None).unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// `<cache>/datasets--OWNER--NAME/{refs/main, snapshots/<rev>/<files>}`, with the snapshot
/// files as links into `blobs/` like the real cache (on Unix).
/// A file of a snapshot: its path, image rows, label rows.
type Shard<'a> = (&'a str, &'a [Option<Vec<u8>>], &'a [i64]);

fn cache_repo(cache: &Path, repo: &str, files: &[Shard<'_>]) {
    let dir = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    write(&dir.join("refs/main"), b"0123abcd\n");
    for (i, (name, images, labels)) in files.iter().enumerate() {
        let blob = dir.join("blobs").join(format!("blob{i}"));
        write_shard(&blob, images, labels);
        let link = dir.join("snapshots/0123abcd").join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &link).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, &link).unwrap();
    }
}

/// Reading `cache` only: these tests must never reach the network.
fn offline(cache: &Path) -> OpenOptions {
    OpenOptions { hf_cache: Some(cache.into()), hf_offline: Some(true), ..OpenOptions::default() }
}

fn png(w: u32) -> Option<Vec<u8>> {
    Some(encode(&test_card(w, 10), ImageFormat::Png))
}

#[test]
fn reads_a_mnist_like_repo_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let train: &[Option<Vec<u8>>] = &[png(10), png(11), None, png(13)];
    let test: &[Option<Vec<u8>>] = &[png(20)];
    cache_repo(
        cache.path(),
        "ylecun/mnist",
        &[
            ("mnist/train-00000-of-00001.parquet", train, &[0, 2, 1, 1]),
            ("mnist/test-00000-of-00001.parquet", test, &[2]),
            ("README.md", &[], &[]),
        ],
    );
    let options = offline(cache.path());
    let ds = open(&"hf:ylecun/mnist".parse().unwrap(), &options).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.class_names(), ["zero", "one", "two"]);
    let s = ds.get(1).unwrap();
    assert_eq!((s.image.as_standard().unwrap().width(), s.label), (11, Some(2)));
    assert_eq!(s.image.as_standard().unwrap().to_rgb8(), test_card(11, 10).to_rgb8());
    let err = ds.get(2).unwrap_err();
    assert!(err.is_sample_error() && err.to_string().contains("row 2"), "{err}");
    let test_split = open(&"hf:ylecun/mnist@test".parse().unwrap(), &options).unwrap();
    assert_eq!((test_split.len(), test_split.get(0).unwrap().label), (1, Some(2)));
}

/// Found by mae-fuzz (parquet target): a label of four billion made four billion class names
/// (a 100 GB allocation) before a sample was read.
#[test]
fn a_label_past_the_class_limit_is_an_error_naming_its_row() {
    let cache = tempfile::tempdir().unwrap();
    let rows: &[Option<Vec<u8>>] = &[png(8), png(9)];
    cache_repo(cache.path(), "someone/huge", &[("data/train-0.parquet", rows, &[1, 4_000_000_000])]);
    let err = open(&"hf:someone/huge".parse().unwrap(), &offline(cache.path())).err().unwrap();
    let message = err.to_string();
    assert!(
        message.contains("row 1 has label 4000000000") && message.contains("train-0.parquet"),
        "{message}"
    );
    // Labels past the class names but under the limit still open, with numbers for names.
    cache_repo(cache.path(), "someone/more", &[("data/train-0.parquet", rows, &[1, 4])]);
    let ds = open(&"hf:someone/more".parse().unwrap(), &offline(cache.path())).unwrap();
    assert_eq!(ds.class_names().len(), 5);
}

#[test]
fn configs_splits_and_missing_repos_are_explained() {
    let cache = tempfile::tempdir().unwrap();
    let one: &[Option<Vec<u8>>] = &[png(8)];
    cache_repo(
        cache.path(),
        "frgfm/imagenette",
        &[("160px/train-0.parquet", one, &[0]), ("320px/train-0.parquet", one, &[1])],
    );
    let options = offline(cache.path());
    let opened = |spec: &str| open(&spec.parse::<DataSpec>().unwrap(), &options);
    let err = opened("hf:frgfm/imagenette").err().unwrap();
    assert!(err.to_string().contains("160px, 320px"), "{err}");
    assert_eq!(opened("hf:frgfm/imagenette/320px").unwrap().get(0).unwrap().label, Some(1));
    let err = opened("hf:frgfm/imagenette/320px@validation").err().unwrap();
    assert!(
        err.to_string().contains("validation") && err.to_string().contains("320px/train-0.parquet"),
        "{err}"
    );
    let err = opened("hf:nobody/nothing").err().unwrap();
    assert!(
        matches!(err, DataError::Hub { .. }) && err.to_string().contains("datasets--nobody--nothing"),
        "{err}"
    );
    assert_eq!(
        mae_data::hub_cache_dir_from(|k| (k == "HF_HOME").then(|| "/h".to_string())),
        Some("/h/hub".into())
    );
}

/// The bytes of a shard as [`write_shard`] writes it.
fn shard_bytes(images: &[Option<Vec<u8>>], labels: &[i64]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.parquet");
    write_shard(&path, images, labels);
    std::fs::read(path).unwrap()
}

#[test]
fn downloads_through_the_hub_api_into_an_empty_cache_then_opens_offline() {
    use mae_hub::testing::HubServer;
    use mae_hub::RepoKind;
    let server = HubServer::start().unwrap();
    let train: &[Option<Vec<u8>>] = &[png(10), png(11), png(12)];
    let test: &[Option<Vec<u8>>] = &[png(20), png(21)];
    server.add_repo(
        RepoKind::Dataset,
        "ylecun/mnist",
        vec![
            ("README.md".into(), b"# mnist".to_vec()),
            ("mnist/train-00000-of-00001.parquet".into(), shard_bytes(train, &[0, 1, 2])),
            ("mnist/test-00000-of-00001.parquet".into(), shard_bytes(test, &[2, 0])),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let online = OpenOptions {
        hf_cache: Some(cache.path().into()),
        hf_offline: Some(false),
        hf_endpoint: Some(server.endpoint().into()),
        ..OpenOptions::default()
    };
    let ds = open(&"hf:ylecun/mnist@test".parse().unwrap(), &online).unwrap();
    assert_eq!((ds.len(), ds.get(1).unwrap().label), (2, Some(0)));
    assert_eq!(ds.class_names(), ["zero", "one", "two"]);
    let fetched = server.requests();
    assert!(fetched.iter().any(|r| r.contains("/api/datasets/ylecun/mnist/revision/main")), "{fetched:?}");
    assert!(!fetched.iter().any(|r| r.contains("train-")), "only the asked split is downloaded: {fetched:?}");
    assert!(cache.path().join("datasets--ylecun--mnist/refs/main").is_file(), "the standard cache layout");

    // Offline now: the cached split opens with no request; the other split is a clear error.
    let before = server.requests().len();
    let again = open(&"hf:ylecun/mnist@test".parse().unwrap(), &offline(cache.path())).unwrap();
    assert_eq!(again.get(0).unwrap().image.as_standard().unwrap().to_rgb8(), test_card(20, 10).to_rgb8());
    let err = open(&"hf:ylecun/mnist@train".parse().unwrap(), &offline(cache.path())).err().unwrap();
    assert!(err.to_string().contains("split `train`"), "{err}");
    assert_eq!(server.requests().len(), before, "offline opens make no request");

    // Online again, the missing split is fetched into the same snapshot.
    let train_split = open(&"hf:ylecun/mnist".parse().unwrap(), &online).unwrap();
    assert_eq!(train_split.len(), 3);
    // A repository the hub does not have, and a split it does not have, say so.
    let err = open(&"hf:nobody/nothing".parse().unwrap(), &online).err().unwrap();
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    let err = open(&"hf:ylecun/mnist@validation".parse().unwrap(), &online).err().unwrap();
    assert!(err.to_string().contains("mnist/test-00000-of-00001.parquet"), "{err}");
}
