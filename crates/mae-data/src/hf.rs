//! Hugging Face hub image datasets: parquet shards with an `Image` column (a struct of encoded
//! `bytes` and a `path`) and usually a `ClassLabel` column, read from the local hub cache
//! (downloaded into it first when they are not there and the hub may be reached).
//!
//! The encoded image bytes of the split are read into memory when the dataset is opened (about
//! the size of the shards: 20 MB for MNIST, 120 MB for CIFAR-10) and decoded per sample, so
//! random access during shuffled training costs no parquet work.

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::{Type, TypePtr};

use crate::dataset::{decode_image, out_of_range, Dataset, DecodeLimits, Sample};
use crate::error::{DataError, Result};
pub use crate::hub_cache::hub_cache_dir;
use crate::hub_cache::resolve_shards;
use crate::spec::OpenOptions;

/// The most classes a labeled split may have (ImageNet-21k has 21,841; face datasets up to ~100k).
pub const MAX_CLASSES: usize = 1 << 20;

/// One split of a hub dataset.
#[derive(Debug, Clone)]
pub struct HfDataset {
    repo: String,
    split: String,
    shards: Vec<PathBuf>,
    /// Encoded bytes per row, with (shard, row in shard) for error messages; `None` for a row
    /// whose image is null.
    images: Vec<(Option<Vec<u8>>, usize, usize)>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
    limits: DecodeLimits,
}

/// The columns to read, chosen from the `huggingface` schema metadata that `datasets` writes
/// (feature types `Image` and `ClassLabel`, with the class names), else by conventional names.
struct Columns {
    image: String,
    label: Option<String>,
    names: Vec<String>,
}

fn features(reader: &SerializedFileReader<std::fs::File>) -> Option<serde_json::Value> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let value = kv.iter().find(|k| k.key == "huggingface")?.value.as_deref()?;
    let json: serde_json::Value = serde_json::from_str(value).ok()?;
    json.get("info")?.get("features").cloned()
}

fn choose_columns(repo: &str, path: &Path, reader: &SerializedFileReader<std::fs::File>) -> Result<Columns> {
    let schema = reader.metadata().file_metadata().schema();
    let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    let feats = features(reader);
    let typed = |kind: &str| -> Option<String> {
        let map = feats.as_ref()?.as_object()?;
        map.iter()
            .find(|(_, v)| v.get("_type").and_then(|t| t.as_str()) == Some(kind))
            .map(|(k, _)| k.clone())
    };
    let by_name = |candidates: &[&str]| candidates.iter().find(|c| names.contains(c)).map(|c| c.to_string());
    let image = typed("Image").or_else(|| by_name(&["image", "img", "pixel_values"])).ok_or_else(|| {
        DataError::Hub {
            repo: repo.into(),
            message: format!(
                "{}: no image column (no `Image` feature; columns: {})",
                path.display(),
                names.join(", ")
            ),
        }
    })?;
    let label = typed("ClassLabel").or_else(|| by_name(&["label", "labels", "fine_label"]));
    let class_names = label
        .as_ref()
        .and_then(|l| feats.as_ref()?.get(l)?.get("names")?.as_array().cloned())
        .map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        .unwrap_or_default();
    Ok(Columns { image, label, names: class_names })
}

fn projection(schema: &Type, columns: &Columns) -> Result<Type> {
    let wanted = |f: &&TypePtr| f.name() == columns.image || Some(f.name()) == columns.label.as_deref();
    let fields: Vec<TypePtr> = schema.get_fields().iter().filter(wanted).cloned().collect();
    Type::group_type_builder(schema.name()).with_fields(fields).build().map_err(parquet_error)
}

fn parquet_error(e: parquet::errors::ParquetError) -> DataError {
    DataError::Loader(format!("parquet: {e}"))
}

/// The encoded bytes of an `Image` value: a struct `{bytes, path}`, or a plain binary column.
fn image_bytes(field: &Field) -> Option<Vec<u8>> {
    match field {
        Field::Bytes(b) => Some(b.data().to_vec()),
        Field::Group(row) => {
            row.get_column_iter().find(|(n, _)| n.as_str() == "bytes").and_then(|(_, f)| image_bytes(f))
        }
        _ => None,
    }
}

fn label_value(field: &Field) -> Option<i64> {
    match field {
        Field::Byte(v) => Some(*v as i64),
        Field::Short(v) => Some(*v as i64),
        Field::Int(v) => Some(*v as i64),
        Field::Long(v) => Some(*v),
        Field::UByte(v) => Some(*v as i64),
        Field::UShort(v) => Some(*v as i64),
        Field::UInt(v) => Some(*v as i64),
        Field::ULong(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// The rows of one shard: encoded images (`None` when null) and labels, and the columns they
/// came from.
struct ShardRows {
    columns: Columns,
    images: Vec<Option<Vec<u8>>>,
    labels: Vec<Option<i64>>,
}

fn read_shard(repo: &str, path: &Path) -> Result<ShardRows> {
    let bad = |e: parquet::errors::ParquetError| DataError::format(path, "parquet file", e.to_string());
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let columns = choose_columns(repo, path, &reader)?;
    let projected = projection(reader.metadata().file_metadata().schema(), &columns)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for row in reader.get_row_iter(Some(projected)).map_err(bad)? {
        let row: Row = row.map_err(bad)?;
        let (mut image, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            if *name == columns.image {
                image = image_bytes(field);
            } else if Some(name.as_str()) == columns.label.as_deref() {
                label = label_value(field);
            }
        }
        images.push(image);
        labels.push(label);
    }
    Ok(ShardRows { columns, images, labels })
}

/// [`read_shard`], with a panic of the parquet crate made an error naming the file: its record
/// reader asserts on some malformed pages instead of returning an error (found by mae-fuzz:
/// `bit_util.rs` "size <= src.len()" in a dictionary page, `decoder.rs` on a data page).
fn read_shard_guarded(repo: &str, path: &Path) -> Result<ShardRows> {
    std::panic::catch_unwind(|| read_shard(repo, path)).unwrap_or_else(|panic| {
        let why = crate::epoch::panic_message(&*panic);
        Err(DataError::format(path, "parquet file", format!("malformed (the parquet reader failed: {why})")))
    })
}

impl HfDataset {
    /// Opens `split` of `repo` (`OWNER/NAME`), in `config` when the repository has several.
    pub fn open(repo: &str, config: Option<&str>, split: &str, options: &OpenOptions) -> Result<Self> {
        let shards = resolve_shards(&options.hub(), repo, config, split)?;
        let mut images = Vec::new();
        let mut raw_labels: Vec<Option<i64>> = Vec::new();
        let mut class_names = Vec::new();
        let mut has_label_column = false;
        for (s, path) in shards.iter().enumerate() {
            let shard = read_shard_guarded(repo, path)?;
            has_label_column |= shard.columns.label.is_some();
            if class_names.is_empty() {
                class_names = shard.columns.names;
            }
            images.extend(shard.images.into_iter().enumerate().map(|(r, image)| (image, s, r)));
            raw_labels.extend(shard.labels);
        }
        if images.is_empty() {
            return Err(DataError::Empty {
                path: shards.first().cloned().unwrap_or_default(),
                expected: format!("rows in the `{split}` split of {repo}"),
            });
        }
        // A split without labels (or with ClassLabel's -1 for "unknown") is opened unlabeled.
        let labels: Option<Vec<u32>> = if has_label_column {
            raw_labels.iter().map(|l| l.and_then(|v| u32::try_from(v).ok())).collect()
        } else {
            None
        };
        if has_label_column && labels.is_none() {
            tracing::warn!("{repo} {split}: some rows have no label; opening the split unlabeled");
        }
        let classes = match &labels {
            None => Vec::new(),
            Some(l) => {
                let needed = l.iter().max().map_or(0, |m| *m as usize + 1);
                if needed > MAX_CLASSES {
                    // Each class gets a name (and the k-NN monitor a vote counter): a label of
                    // four billion would make four billion of them.
                    let at = l.iter().position(|&v| v as usize >= MAX_CLASSES).unwrap_or(0);
                    let (_, shard, row) = images[at];
                    return Err(DataError::format(
                        &shards[shard],
                        "parquet file",
                        format!(
                            "row {row} has label {}; a dataset may have at most {MAX_CLASSES} classes",
                            l[at]
                        ),
                    ));
                }
                if class_names.len() >= needed {
                    class_names
                } else {
                    (0..needed).map(|c| c.to_string()).collect()
                }
            }
        };
        Ok(Self {
            repo: repo.into(),
            split: split.into(),
            shards,
            images,
            labels,
            classes,
            limits: options.limits,
        })
    }
}

impl Dataset for HfDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (bytes, shard, row) = self.images.get(index).ok_or_else(|| out_of_range(index, self))?;
        let origin = format!("{} row {row}", self.shards[*shard].display());
        let bytes = bytes.as_ref().ok_or_else(|| DataError::decode(&origin, "the image is null"))?;
        let image = decode_image(bytes, &origin, &self.limits)?;
        Ok(Sample { image, label: self.labels.as_ref().map(|l| l[index]) })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn describe(&self) -> String {
        let labels = if self.classes.is_empty() {
            "unlabeled".into()
        } else {
            format!("{} classes", self.classes.len())
        };
        format!("hf:{} {} ({} images, {labels})", self.repo, self.split, self.images.len())
    }
}
