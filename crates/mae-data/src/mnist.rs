//! MNIST (and Fashion-MNIST, KMNIST: same layout) in the original IDX format.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage};

use crate::dataset::{out_of_range, Dataset, Sample};
use crate::error::{DataError, Result};
use crate::spec::Split;

/// IDX magic: two zero bytes, the element type (0x08 = u8), the number of dimensions.
const IMAGES_MAGIC: [u8; 4] = [0, 0, 0x08, 3];
const LABELS_MAGIC: [u8; 4] = [0, 0, 0x08, 1];
const CLASSES: usize = 10;

/// The images and labels of one MNIST split, held in memory (47 MB for the full 60k train set).
#[derive(Debug, Clone)]
pub struct Mnist {
    dir: PathBuf,
    split: Split,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    classes: Vec<String>,
}

/// `dir/{prefix}{stem}` with the spellings in use: `-idx3-ubyte` (LeCun's site), `.idx3-ubyte`
/// (some mirrors), each plain or gzip-compressed.
fn find(dir: &Path, prefix: &str, stem: &str) -> Result<PathBuf> {
    let names: Vec<String> = [format!("{prefix}-{stem}"), format!("{prefix}.{stem}")]
        .into_iter()
        .flat_map(|n| [n.clone(), format!("{n}.gz")])
        .collect();
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| DataError::NotFound {
        path: dir.join(&names[0]),
        expected: format!("an MNIST IDX file, one of {} in {}", names.join(", "), dir.display()),
    })
}

/// Reads an IDX file of u8 elements: checks the magic, then reads exactly the body the header
/// declares. A short body and trailing bytes are both errors: either means the wrong file or a
/// broken download. Returns (dims, body).
fn read_idx(path: &Path, magic: [u8; 4]) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let bad = |message: String| DataError::format(path, "IDX file", message);
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).map_err(|e| bad(format!("cannot read the 4-byte magic: {e}")))?;
    if head != magic {
        return Err(bad(format!(
            "magic is {head:02x?}, expected {magic:02x?} (u8 elements, {} dimensions)",
            magic[3]
        )));
    }
    let mut dims = Vec::new();
    for d in 0..magic[3] {
        let mut b = [0u8; 4];
        reader.read_exact(&mut b).map_err(|e| bad(format!("cannot read dimension {d}: {e}")))?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let expected = expected.ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    // Read at most one byte past the declared body: enough to detect trailing data, and a
    // header that lies about its size cannot make us allocate more than the file holds.
    let mut body = Vec::new();
    reader
        .take((expected as u64).saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| bad(format!("cannot read the body: {e}")))?;
    if body.len() != expected {
        let found = if body.len() > expected { "more".to_string() } else { body.len().to_string() };
        return Err(bad(format!(
            "header declares dimensions {dims:?} = {expected} bytes of data, but the file has {found}"
        )));
    }
    Ok((dims, body))
}

impl Mnist {
    /// Opens `dir/train-*` (train) or `dir/t10k-*` (test).
    pub fn open(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::NotFound {
                path: dir.into(),
                expected: "a directory holding MNIST IDX files (train-images-idx3-ubyte, ...)".into(),
            });
        }
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images_path = find(dir, prefix, "images-idx3-ubyte")?;
        let labels_path = find(dir, prefix, "labels-idx1-ubyte")?;
        let (dims, pixels) = read_idx(&images_path, IMAGES_MAGIC)?;
        let (ldims, labels) = read_idx(&labels_path, LABELS_MAGIC)?;
        let (count, rows, cols) = (dims[0], dims[1], dims[2]);
        if rows == 0 || cols == 0 {
            return Err(DataError::format(&images_path, "IDX file", format!("images are {rows}x{cols}")));
        }
        if ldims[0] != count {
            return Err(DataError::format(
                &labels_path,
                "MNIST labels file",
                format!("{} labels for {count} images in {}", ldims[0], images_path.display()),
            ));
        }
        if let Some(pos) = labels.iter().position(|&l| l as usize >= CLASSES) {
            return Err(DataError::format(
                &labels_path,
                "MNIST labels file",
                format!("label {} at index {pos} is not a digit 0-9", labels[pos]),
            ));
        }
        if count == 0 {
            return Err(DataError::Empty { path: images_path, expected: "at least one image".into() });
        }
        let classes = (0..CLASSES).map(|c| c.to_string()).collect();
        Ok(Self { dir: dir.into(), split, rows, cols, pixels, labels, classes })
    }

    /// Image size as (rows, cols): 28x28 for MNIST.
    pub fn image_size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

impl Dataset for Mnist {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            return Err(out_of_range(index, self));
        }
        let n = self.rows * self.cols;
        let raw = self.pixels[index * n..(index + 1) * n].to_vec();
        // The buffer length is rows*cols by construction, so this cannot fail; map it anyway.
        let image = GrayImage::from_raw(self.cols as u32, self.rows as u32, raw)
            .ok_or_else(|| DataError::decode(format!("{}#{index}", self.dir.display()), "bad buffer size"))?;
        Ok(Sample { image: DynamicImage::ImageLuma8(image).into(), label: Some(self.labels[index] as u32) })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn describe(&self) -> String {
        format!("MNIST {} {} ({} images, {} classes)", self.split, self.dir.display(), self.len(), CLASSES)
    }
}
