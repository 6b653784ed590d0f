//! Hub datasets: a parquet shard in a hub cache laid out as `datasets` and `huggingface_hub`
//! leave it, opened offline through the `hf:` data spec and read as a loader would.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use mae_data::{DataSpec, DecodeLimits, OpenOptions};

use super::data::read_samples;
use super::{put, Target};
use crate::seeds::{self, Seed};

/// Decode limits of the images inside the shard: 1 Mpx, 32 MiB per decoder allocation.
const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 1 << 20, max_alloc: 32 << 20 };

/// The dataset keeps every row's encoded image (1x the file, a few times more while pages are
/// decompressed: snappy and gzip pages of real shards expand 1-3x, mutated ones more, up to
/// the declared page size parquet checks against the file), and a sample decodes one image
/// under the image target's 1 Mpx cap (64 MiB). 64 MiB plus 32x.
pub const PARQUET: Target = Target {
    name: "parquet",
    about: "an hf: dataset whose shard is the input (offline hub cache), opened and sampled",
    seeds: parquet_seeds,
    dict: &[b"PAR1", b"huggingface", b"ClassLabel", b"Image", b"bytes", b"label", b"\x15\x00", b"\x15\x04"],
    alloc_base: 64 << 20,
    alloc_factor: 32,
    run: run_parquet,
};

const SCHEMA: &str = "message schema {
    optional group image { optional binary bytes; optional binary path (STRING); }
    optional int64 label;
}";

const FEATURES: &str = r#"{"info": {"features": {
    "image": {"_type": "Image"},
    "label": {"names": ["zero", "three", "seven"], "_type": "ClassLabel"}}}}"#;

/// A shard as `datasets` writes one: `None` images are null rows.
fn shard(
    images: &[Option<Vec<u8>>],
    labels: &[i64],
    compression: Compression,
    metadata: bool,
) -> Option<Vec<u8>> {
    let kv = metadata.then(|| vec![KeyValue::new("huggingface".into(), FEATURES.to_string())]);
    let props = WriterProperties::builder().set_compression(compression).set_key_value_metadata(kv).build();
    let schema = Arc::new(parse_message_type(SCHEMA).ok()?);
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, Arc::new(props)).ok()?;
    let mut group = writer.next_row_group().ok()?;
    // Definition levels: 2 = the struct and its field present, 0 = the whole image null.
    let defs: Vec<i16> = images.iter().map(|i| if i.is_some() { 2 } else { 0 }).collect();
    let bytes: Vec<ByteArray> = images.iter().flatten().map(|b| ByteArray::from(b.clone())).collect();
    let paths: Vec<ByteArray> = images.iter().flatten().map(|_| ByteArray::from("x.png")).collect();
    for values in [bytes, paths] {
        let mut column = group.next_column().ok()??;
        column.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).ok()?;
        column.close().ok()?;
    }
    let mut column = group.next_column().ok()??;
    column.typed::<Int64Type>().write_batch(labels, Some(&vec![1; labels.len()]), None).ok()?;
    column.close().ok()?;
    group.close().ok()?;
    writer.close().ok()?;
    Some(out)
}

fn parquet_seeds() -> Vec<Seed> {
    let digits = seeds::files(&[
        "data/mnist-png/train/0/00021.png",
        "data/mnist-png/test/3/00018.png",
        "data/mnist-png/train/7/00017.png",
    ]);
    let images: Vec<Option<Vec<u8>>> = digits.into_iter().map(|s| Some(s.bytes)).collect();
    let mut with_null = images.clone();
    with_null.insert(1, None);
    let variants = [
        ("3 digits, snappy, datasets' metadata", &images, Compression::SNAPPY, true),
        ("3 digits, uncompressed, no metadata", &images, Compression::UNCOMPRESSED, false),
        ("3 digits and a null image, gzip", &with_null, Compression::GZIP(Default::default()), true),
    ];
    let mut seeds = Vec::new();
    for (name, images, compression, metadata) in variants {
        let labels: Vec<i64> = (0..images.len() as i64).map(|i| i % 3).collect();
        if let Some(bytes) = shard(images, &labels, compression, metadata) {
            seeds.push(Seed::new(name, bytes));
        }
    }
    seeds
}

fn run_parquet(dir: &Path, input: &[u8]) -> Result<(), String> {
    let repo = dir.join("datasets--fuzz--set");
    let snapshot = repo.join("snapshots/0123abcd/data");
    std::fs::create_dir_all(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    std::fs::create_dir_all(repo.join("refs")).map_err(|e| format!("{}: {e}", repo.display()))?;
    put(&repo.join("refs"), "main", b"0123abcd")?;
    put(&snapshot, "train-00000-of-00001.parquet", input)?;
    let spec = DataSpec::parse("hf:fuzz/set@train").map_err(|e| e.to_string())?;
    let options = OpenOptions {
        limits: LIMITS,
        hf_cache: Some(dir.to_path_buf()),
        hf_offline: Some(true),
        ..OpenOptions::default()
    };
    if let Ok(dataset) = mae_data::open(&spec, &options) {
        read_samples(dataset.as_ref());
    }
    Ok(())
}
