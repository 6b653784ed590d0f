//! WebDataset `.tar` shards (`wds:PATH`), read in place.
//!
//! Opening makes one streaming pass over each shard's tar headers (seeking over the member data,
//! never reading it) and keeps, per sample, where its image member lies in its shard (offset and
//! size, `tar::Entry::raw_file_position`) and its label. A sample's image is read by offset when
//! the loader asks for it: nothing is unpacked to disk, and memory holds the index (tens of bytes
//! a sample), not the images. Random access by index is what the loader's determinism and resume
//! contract rest on (see `loader`); the streaming ORDER WebDataset gives (shards shuffled per
//! epoch, a bounded shuffle buffer, ranks split by shard) is computed on top of that index by
//! `shard_order`, which the loader uses for datasets that report a [`ShardLayout`].
//!
//! Samples are grouped by key as WebDataset does: a member's key is its path up to the first dot
//! of its file name, the rest is its extension (`a/b.seg.png`: key `a/b`, extension `seg.png`).
//! The image is the member whose extension is an image one ([`IMAGE_EXTENSIONS`]); the label
//! comes from `.cls` (an integer) or `.json` (an integer `"label"` or `"cls"` field).
//!
//! A shard that cannot be read as a tar file, or whose members run past its end (truncated), is
//! skipped as a whole, with a warning naming it; no usable sample in any shard is an error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dataset::{decode_image, out_of_range, Dataset, DecodeLimits, Sample};
use crate::error::{DataError, Result};
use crate::folder::IMAGE_EXTENSIONS;
use crate::shard_order::ShardLayout;

/// Default size of the shuffle buffer, in samples (WebDataset examples use 1000 to 5000).
pub const DEFAULT_SHUFFLE_BUFFER: usize = 1000;

/// The most classes a labeled WebDataset may have (each class gets a name and, in k-NN, a vote
/// counter: a stray label of four billion must not make four billion of them).
pub const MAX_CLASSES: usize = 1 << 20;

/// Label members larger than this are not labels (a mislabeled image, say): the sample is
/// dropped instead of reading the member.
const MAX_LABEL_BYTES: u64 = 1 << 20;

/// One sample of the index.
#[derive(Debug, Clone)]
struct Indexed {
    shard: usize,
    /// The WebDataset key (`__key__`).
    key: String,
    /// The image member's extension, for its name in messages.
    ext: String,
    offset: u64,
    size: u64,
    label: Option<u32>,
}

/// A sample being put together from a shard's members.
#[derive(Default)]
struct Group {
    image: Option<(String, u64, u64)>,
    label: Option<std::result::Result<u32, String>>,
}

/// `(key, extension)` of a member path, as WebDataset's `base_plus_ext`; `None` without a dot in
/// the file name (such members belong to no sample).
fn split_key(name: &str) -> Option<(&str, &str)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')? + file_start;
    (dot > file_start).then(|| (&name[..dot], &name[dot + 1..]))
}

/// The label a `.cls` or `.json` member gives; `None` for JSON without a `label` or `cls` field
/// (metadata such as a caption, not a label).
fn parse_label(ext: &str, text: &str) -> std::result::Result<Option<u32>, String> {
    if ext == "cls" {
        let t = text.trim();
        return t.parse::<u32>().map(Some).map_err(|_| format!("`{t}` is not a class index"));
    }
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(field) = json.get("label").or_else(|| json.get("cls")) else { return Ok(None) };
    match field.as_u64().and_then(|v| u32::try_from(v).ok()) {
        Some(v) => Ok(Some(v)),
        None => Err(format!("the label {field} is not a class index")),
    }
}

fn is_image_ext(ext: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(ext))
}

/// The samples of one shard, in order of their keys' first members; an error (a reason) when
/// the shard is unreadable or truncated, for the caller to skip it.
fn index_shard(path: &Path, shard: usize) -> std::result::Result<Vec<Indexed>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut archive = tar::Archive::new(file);
    let (mut keys, mut groups): (Vec<String>, HashMap<String, Group>) = (Vec::new(), HashMap::new());
    for entry in archive.entries_with_seek().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("truncated or corrupt tar file: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(format!("truncated: member `{name}` runs past the end of the {file_len}-byte file"));
        }
        let Some((key, ext)) = split_key(&name) else { continue };
        let ext = ext.to_ascii_lowercase();
        if !groups.contains_key(key) {
            keys.push(key.to_string());
        }
        let group = groups.entry(key.to_string()).or_default();
        if is_image_ext(&ext) && group.image.is_none() {
            group.image = Some((ext, offset, size));
        } else if ext == "cls" || ext == "json" {
            let mut text = String::new();
            let read = if size > MAX_LABEL_BYTES {
                Err(format!("{size} bytes is too large for a label"))
            } else {
                entry.read_to_string(&mut text).map_err(|e| e.to_string())
            };
            match read.and_then(|_| parse_label(&ext, &text)) {
                Ok(None) => {}
                Ok(Some(label)) => group.label = Some(Ok(label)),
                Err(e) => group.label = Some(Err(format!("{name}: {e}"))),
            }
        }
    }
    let (mut samples, mut without_image) = (Vec::new(), 0usize);
    for key in keys {
        let Some(group) = groups.remove(&key) else { continue };
        let Some((ext, offset, size)) = group.image else {
            without_image += 1;
            continue;
        };
        let label = match group.label {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(why)) => {
                tracing::warn!("{}: skipping sample `{key}`: bad label ({why})", path.display());
                continue;
            }
        };
        samples.push(Indexed { shard, key, ext, offset, size, label });
    }
    if without_image > 0 {
        tracing::warn!("{}: {without_image} sample(s) without an image member are skipped", path.display());
    }
    Ok(samples)
}

/// [`index_shard`] with a panic of the tar reader on a malformed header made a reason to skip.
fn index_shard_guarded(path: &Path, shard: usize) -> std::result::Result<Vec<Indexed>, String> {
    std::panic::catch_unwind(|| index_shard(path, shard)).unwrap_or_else(|panic| {
        Err(format!("malformed (the tar reader failed: {})", crate::epoch::panic_message(&*panic)))
    })
}

/// WebDataset shards, indexed (see the module comment).
#[derive(Debug, Clone)]
pub struct WebDataset {
    pattern: String,
    /// The shards that gave samples, in listing order.
    shards: Vec<PathBuf>,
    samples: Vec<Indexed>,
    /// Samples per usable shard: the layout the loader orders epochs by.
    sizes: Vec<usize>,
    classes: Vec<String>,
    limits: DecodeLimits,
    shuffle_buffer: usize,
}

impl WebDataset {
    /// Indexes the shards `pattern` names (see `shard_paths::resolve` for its syntax).
    pub fn open(pattern: &str, shuffle_buffer: usize, limits: DecodeLimits) -> Result<Self> {
        let listed = crate::shard_paths::resolve(pattern)?;
        let (mut shards, mut samples, mut sizes, mut bad) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for path in listed.iter() {
            match index_shard_guarded(path, shards.len()) {
                Ok(found) if found.is_empty() => tracing::warn!("{}: shard has no samples", path.display()),
                Ok(found) => {
                    sizes.push(found.len());
                    samples.extend(found);
                    shards.push(path.clone());
                }
                Err(why) => {
                    bad += 1;
                    tracing::warn!("skipping shard {}: {why}", path.display());
                }
            }
        }
        if samples.is_empty() {
            return Err(DataError::Empty {
                path: pattern.into(),
                expected: format!(
                    "WebDataset samples with an image member ({} shard(s), {bad} unreadable or truncated: see the warnings)",
                    listed.len()
                ),
            });
        }
        let classes = classes_of(pattern, &mut samples)?;
        Ok(Self {
            pattern: pattern.into(),
            shards,
            samples,
            sizes,
            classes,
            limits,
            shuffle_buffer: shuffle_buffer.max(1),
        })
    }

    /// The usable shards, in listing order.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    fn member(&self, s: &Indexed) -> String {
        format!("{}:{}.{}", self.shards[s.shard].display(), s.key, s.ext)
    }

    fn read_member(&self, s: &Indexed, origin: &str) -> Result<Vec<u8>> {
        let path = &self.shards[s.shard];
        if s.size > self.limits.max_alloc {
            return Err(DataError::decode(
                origin,
                format!("the member is {} bytes, over DecodeLimits::max_alloc", s.size),
            ));
        }
        let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
        file.seek(SeekFrom::Start(s.offset)).map_err(|e| DataError::io(path, e))?;
        // `size` is at most max_alloc, itself a u64 the caller chose to allow in memory.
        let mut bytes = vec![0u8; usize::try_from(s.size).unwrap_or(usize::MAX)];
        file.read_exact(&mut bytes).map_err(|e| DataError::io(path, e))?;
        Ok(bytes)
    }
}

/// Class names for the labels, and the labels cleared when only some samples have one (the
/// dataset is then unlabeled, with a warning, as a hub dataset with missing labels is).
fn classes_of(pattern: &str, samples: &mut [Indexed]) -> Result<Vec<String>> {
    let labeled = samples.iter().filter(|s| s.label.is_some()).count();
    if labeled == 0 {
        return Ok(Vec::new());
    }
    if labeled < samples.len() {
        tracing::warn!(
            "wds:{pattern}: {} of {} samples have no label; opening it unlabeled",
            samples.len() - labeled,
            samples.len()
        );
        samples.iter_mut().for_each(|s| s.label = None);
        return Ok(Vec::new());
    }
    let max = samples.iter().filter_map(|s| s.label).max().unwrap_or(0) as usize;
    if max >= MAX_CLASSES {
        return Err(DataError::Spec {
            input: format!("wds:{pattern}"),
            reason: format!("a sample has label {max}; a dataset may have at most {MAX_CLASSES} classes"),
        });
    }
    Ok((0..=max).map(|c| c.to_string()).collect())
}

impl Dataset for WebDataset {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let s = self.samples.get(index).ok_or_else(|| out_of_range(index, self))?;
        let origin = self.member(s);
        let bytes = self.read_member(s, &origin)?;
        Ok(Sample { image: decode_image(&bytes, &origin, &self.limits)?, label: s.label })
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
        format!(
            "WebDataset {} ({} shards, {} images, {labels})",
            self.pattern,
            self.shards.len(),
            self.samples.len()
        )
    }

    fn origin(&self, index: usize) -> String {
        match self.samples.get(index) {
            Some(s) => self.member(s),
            None => format!("sample {index} of {}", self.describe()),
        }
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        self.samples.get(index).map(|s| s.key.clone())
    }

    fn shard_layout(&self) -> Option<ShardLayout> {
        Some(ShardLayout { sizes: self.sizes.clone(), shuffle_buffer: self.shuffle_buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/b.seg.png"), Some(("a/b", "seg.png")));
        assert_eq!(split_key("x.y/00012.jpg"), Some(("x.y/00012", "jpg")));
        assert_eq!(split_key("README"), None);
        assert_eq!(split_key("dir/.hidden"), None);
    }

    #[test]
    fn labels_from_cls_and_json() {
        assert_eq!(parse_label("cls", " 7\n"), Ok(Some(7)));
        assert_eq!(parse_label("json", r#"{"label": 3}"#), Ok(Some(3)));
        assert_eq!(parse_label("json", r#"{"cls": 4, "caption": "x"}"#), Ok(Some(4)));
        assert_eq!(parse_label("json", r#"{"caption": "x"}"#), Ok(None));
        assert!(parse_label("cls", "seven").is_err());
        assert!(parse_label("json", r#"{"label": -1}"#).is_err());
        assert!(parse_label("json", "{").is_err());
    }
}
