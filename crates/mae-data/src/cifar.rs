//! CIFAR-10 in its binary version (`cifar-10-binary.tar.gz`, extracted).

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};

use crate::dataset::{out_of_range, Dataset, Sample};
use crate::error::{DataError, Result};
use crate::spec::Split;

const SIDE: usize = 32;
/// One record: a label byte, then the red, green and blue planes of a 32x32 image.
const RECORD: usize = 1 + 3 * SIDE * SIDE;
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// One CIFAR-10 split in memory (150 MB for the 50k train images).
#[derive(Debug, Clone)]
pub struct Cifar10 {
    dir: PathBuf,
    split: Split,
    records: Vec<u8>,
    classes: Vec<String>,
}

impl Cifar10 {
    /// Opens `data_batch_1.bin` .. `data_batch_5.bin` (train) or `test_batch.bin` (test) in `dir`
    /// or in its `cifar-10-batches-bin/` sub-directory (the tarball's layout).
    pub fn open(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let given = dir.as_ref();
        let nested = given.join("cifar-10-batches-bin");
        let dir = if nested.is_dir() { nested } else { given.to_path_buf() };
        if !dir.is_dir() {
            return Err(DataError::NotFound {
                path: given.into(),
                expected: "a directory holding the CIFAR-10 binary batches (data_batch_1.bin, ...)".into(),
            });
        }
        let names: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".into()],
        };
        let missing: Vec<&str> =
            names.iter().filter(|n| !dir.join(n).is_file()).map(|n| n.as_str()).collect();
        if !missing.is_empty() {
            return Err(DataError::NotFound {
                path: dir.join(missing[0]),
                expected: format!(
                    "the CIFAR-10 {split} batches {} (missing: {})",
                    names.join(", "),
                    missing.join(", ")
                ),
            });
        }
        let mut records = Vec::new();
        for name in &names {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                return Err(DataError::format(
                    &path,
                    "CIFAR-10 binary batch",
                    format!("{} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
                ));
            }
            if let Some(pos) = bytes.chunks_exact(RECORD).position(|r| r[0] as usize >= CIFAR10_CLASSES.len())
            {
                return Err(DataError::format(
                    &path,
                    "CIFAR-10 binary batch",
                    format!("record {pos} has label {}, expected 0-9", bytes[pos * RECORD]),
                ));
            }
            records.extend_from_slice(&bytes);
        }
        let classes = class_names(&dir);
        Ok(Self { dir, split, records, classes })
    }
}

/// Names from `batches.meta.txt` (one per line) when it lists ten, else the standard ones.
fn class_names(dir: &Path) -> Vec<String> {
    let from_meta = std::fs::read_to_string(dir.join("batches.meta.txt")).ok().map(|text| {
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>()
    });
    match from_meta {
        Some(names) if names.len() == CIFAR10_CLASSES.len() => names,
        _ => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.records.len() / RECORD
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            return Err(out_of_range(index, self));
        }
        let record = &self.records[index * RECORD..(index + 1) * RECORD];
        let planes = &record[1..];
        let n = SIDE * SIDE;
        // Planar (all red, all green, all blue) to interleaved RGB.
        let mut rgb = Vec::with_capacity(3 * n);
        for p in 0..n {
            rgb.extend_from_slice(&[planes[p], planes[n + p], planes[2 * n + p]]);
        }
        let image = RgbImage::from_raw(SIDE as u32, SIDE as u32, rgb)
            .ok_or_else(|| DataError::decode(format!("{}#{index}", self.dir.display()), "bad buffer size"))?;
        Ok(Sample { image: DynamicImage::ImageRgb8(image).into(), label: Some(record[0] as u32) })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn describe(&self) -> String {
        format!("CIFAR-10 {} {} ({} images, 10 classes)", self.split, self.dir.display(), self.len())
    }
}
