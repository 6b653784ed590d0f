//! The `Dataset` trait and image decoding shared by every file-backed source.

use std::io::Cursor;
use std::path::Path;

use image::{ImageReader, Limits};

use crate::bands::Image;
use crate::error::{DataError, Result};
use crate::shard_order::ShardLayout;

/// One sample: the decoded image (any colour type, bit depth and number of bands; the
/// transforms give it the run's channels) and its class index when the dataset is labeled.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: Image,
    pub label: Option<u32>,
}

/// A random-access collection of images. `Send + Sync` because the loader's worker threads
/// share one instance; `get` takes `&self` and must be safe to call concurrently.
pub trait Dataset: Send + Sync {
    /// Number of samples, including any that may fail to decode.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`. Errors name the file (or the record) at fault; `DataError::is_sample_error`
    /// tells the loader whether it may skip the sample.
    fn get(&self, index: usize) -> Result<Sample>;

    /// Class names, indexed by label; empty for an unlabeled dataset.
    fn class_names(&self) -> &[String];

    fn is_labeled(&self) -> bool {
        !self.class_names().is_empty()
    }

    /// A one-line description for logs, e.g. `MNIST train /data/mnist (5000 images, 10 classes)`.
    fn describe(&self) -> String;

    /// Where sample `index` comes from, for errors about it: its file where it has one.
    fn origin(&self, index: usize) -> String {
        format!("sample {index} of {}", self.describe())
    }

    /// The file name of sample `index` as the dataset knows it (a folder's path below its root,
    /// a list's line, a WebDataset key), for outputs that name their rows (`mae embed`); `None`
    /// for datasets without file names (MNIST, CIFAR-10, synthetic), which go by index.
    fn sample_name(&self, _index: usize) -> Option<String> {
        None
    }

    /// How the samples group into shards meant to be read in sequence (WebDataset): the loader
    /// then orders epochs by shard with a bounded shuffle buffer and splits ranks by shard (see
    /// `shard_order`) instead of permuting all indices. `None` for random-access datasets.
    fn shard_layout(&self) -> Option<ShardLayout> {
        None
    }
}

/// An `OutOfRange` error for `dataset`, for implementations of [`Dataset::get`].
pub fn out_of_range(index: usize, dataset: &dyn Dataset) -> DataError {
    DataError::OutOfRange { index, len: dataset.len(), dataset: dataset.describe() }
}

/// Caps on what a decoder may allocate, against decompression bombs (a small file whose header
/// claims a huge image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width x height) an image may have; checked on the header, before decoding.
    /// Default 89,478,485: PIL's `Image.MAX_IMAGE_PIXELS`, so the files Python pipelines accept
    /// are accepted here too.
    pub max_pixels: u64,
    /// Most bytes a decoder may allocate at once (passed to `image::Limits::max_alloc`).
    /// Default 1 GiB, enough for a max_pixels RGBA 16-bit image.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 89_478_485, max_alloc: 1 << 30 }
    }
}

/// Decodes an encoded image (JPEG, PNG, WebP, BMP, TIFF, or the first frame of a GIF), guessing
/// the format from its content rather than from a file extension. `origin` names the sample in
/// errors. TIFFs of more than 4 bands, signed or float gray samples, or several pages of one
/// size come back as [`Image::Bands`] (see `tiff_bands`); everything else as
/// [`Image::Standard`].
pub fn decode_image(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<Image> {
    if bytes.is_empty() {
        return Err(DataError::decode(origin, "empty file (0 bytes)"));
    }
    let reader = |bytes| -> Result<ImageReader<Cursor<&[u8]>>> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DataError::decode(origin, e))?;
        if reader.format().is_none() {
            return Err(DataError::decode(
                origin,
                "not a recognised image format (expected JPEG, PNG, WebP, BMP, TIFF or GIF)",
            ));
        }
        Ok(reader)
    };
    // Before any decoder runs: the tiff decoder reads tag values while reading the header.
    check_tiff_tags(bytes).map_err(|m| DataError::decode(origin, m))?;
    // TIFFs the image crate cannot hold (its header read already fails on them).
    if reader(bytes)?.format() == Some(image::ImageFormat::Tiff) {
        if let Some(bands) = crate::tiff_bands::decode_bands(bytes, origin, limits)? {
            return Ok(Image::Bands(bands));
        }
    }
    // Header first: the pixel cap must hold before the decoder allocates the output.
    let (width, height) = reader(bytes)?.into_dimensions().map_err(|e| DataError::decode(origin, e))?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DataError::TooLarge { origin: origin.into(), width, height, limit: limits.max_pixels });
    }
    let mut image_limits = Limits::default();
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    image_limits.max_image_width = Some(side);
    image_limits.max_image_height = Some(side);
    image_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = reader(bytes)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills missing scan data with grey instead of failing; PIL (with its
        // default LOAD_TRUNCATED_IMAGES = False) rejects such files, and so do we.
        return Err(DataError::decode(origin, "truncated JPEG (no end-of-image marker after the scan data)"));
    }
    reader.limits(image_limits);
    let image = reader.decode().map_err(|e| DataError::decode(origin, e))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(DataError::decode(origin, "image has zero width or height"));
    }
    Ok(Image::Standard(image))
}

/// The most file data one TIFF tag may hold: the tiff crate's own default limit. The image
/// crate raises that limit to the whole allocation budget, and the tiff decoder keeps each value
/// in a 32-byte enum, so a damaged count allocated 8x the budget (238 MiB from a 4.8 KB file
/// whose RowsPerStrip declared 7.8 million values; found by mae-fuzz).
const MAX_TIFF_TAG_BYTES: u64 = 1 << 20;

/// Refuses a TIFF whose first image (the one decoded) has a tag declaring more values than
/// [`MAX_TIFF_TAG_BYTES`] of data; reads only the header and the first IFD's entries.
fn check_tiff_tags(bytes: &[u8]) -> std::result::Result<(), String> {
    let le = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Ok(()),
    };
    let uint = |at: u64, len: usize| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let b = bytes.get(at..at.checked_add(len)?)?;
        Some(if le {
            b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x))
        } else {
            b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x))
        })
    };
    // Classic TIFF: 12-byte entries with 4-byte counts; BigTIFF (43): 20-byte entries, 8-byte counts.
    let (ifd, count_len, entry_len, head) = match uint(2, 2) {
        Some(42) => (uint(4, 4), 4, 12, 2),
        Some(43) => (uint(8, 8), 8, 20, 8),
        _ => return Ok(()),
    };
    let Some(ifd) = ifd else { return Ok(()) };
    let entries = uint(ifd, head).unwrap_or(0).min(4096);
    for i in 0..entries {
        let entry = ifd + head as u64 + i * entry_len;
        let (Some(tag), Some(kind), Some(count)) =
            (uint(entry, 2), uint(entry + 2, 2), uint(entry + 4, count_len))
        else {
            break;
        };
        let value_size = match kind {
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => 1,
        };
        let data = count.saturating_mul(value_size);
        if data > MAX_TIFF_TAG_BYTES {
            return Err(format!(
                "TIFF tag {tag} declares {count} values ({data} bytes), more than any image needs: the file is damaged"
            ));
        }
    }
    Ok(())
}

/// Whether a JPEG has its end-of-image marker (FF D9) after the start of its first scan. The
/// header segments are skipped by their lengths, so an EXIF thumbnail's own EOI does not count;
/// inside entropy-coded data FF is always stuffed (FF 00) or a restart marker, so FF D9 there
/// is the real end. Bytes after the EOI (phone "motion photo" trailers) are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut i = 2; // after SOI
    loop {
        while i < n && bytes[i] != 0xFF {
            i += 1;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return false;
        }
        let marker = bytes[i];
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => {}
            0xDA => return bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
            _ => {
                if i + 2 > n {
                    return false;
                }
                i += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
            }
        }
    }
}

/// Reads and decodes the image file at `path` (see [`decode_image`]).
pub fn open_image(path: &Path, limits: &DecodeLimits) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, &path.display().to_string(), limits)
}
