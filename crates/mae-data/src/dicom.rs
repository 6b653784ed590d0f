//! DICOM images (`dicom:PATH`, cargo feature `dicom`) through the dicom-rs crates
//! (`dicom-object` parses, `dicom-pixeldata` decapsulates and decodes; pure Rust).
//!
//! A sample is one frame: opening reads each file's header only (up to the pixel data) for its
//! NumberOfFrames, so a multi-frame file gives one sample per frame, in frame order. Decoding
//! gives [`BandImage`]s of the values as measured: for MONOCHROME1/2 the stored values through
//! the modality LUT (`slope * stored + intercept`: Hounsfield units for CT), with MONOCHROME1
//! inverted within its value range so that higher is brighter; RGB and YBR_FULL (converted to
//! RGB) as stored. Nothing is scaled to [0, 1]: DICOM stored values rarely fill their bit depth,
//! so users normalise with the data's own `--mean`/`--std` (`mae stats`). See docs/data.md.

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    DecodedPixelData, PhotometricInterpretation, PixelDecoder, PixelRepresentation, PlanarConfiguration,
};

use crate::bands::{BandImage, Image};
use crate::dataset::{out_of_range, Dataset, DecodeLimits, Sample};
use crate::error::{DataError, Result};
use crate::folder::{scan_tree, LabeledFiles};

/// Where the `DICM` magic of a DICOM file (part 10) sits: after the 128-byte preamble.
const MAGIC_AT: usize = 128;

/// Whether `path` is a DICOM file: `DICM` at byte 128, whatever the extension.
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; MAGIC_AT + 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok()
        && &head[MAGIC_AT..] == b"DICM"
}

/// One file of the dataset.
#[derive(Debug, Clone)]
struct DicomFile {
    path: PathBuf,
    label: Option<u32>,
    frames: u32,
}

/// The frames of the DICOM files under a folder (labeled by first-level sub-folders like
/// [`crate::ImageFolder`]) or of one file. Sample order: files sorted by path (within classes
/// sorted by name), then frames in order.
#[derive(Debug, Clone)]
pub struct DicomDataset {
    root: PathBuf,
    files: Vec<DicomFile>,
    /// (file index, frame) of each sample.
    samples: Vec<(u32, u32)>,
    classes: Vec<String>,
    limits: DecodeLimits,
}

impl DicomDataset {
    /// Indexes the DICOM files under `path` (a folder, searched recursively; or one file),
    /// reading their headers only. A file whose header cannot be read counts as one sample,
    /// which fails (and is skipped by the loader, with a warning naming it) when read.
    pub fn open(path: impl AsRef<Path>, limits: DecodeLimits) -> Result<Self> {
        let root = path.as_ref();
        let expected = "a DICOM file, or a directory of DICOM files (or of class sub-directories of them)";
        let LabeledFiles { files, classes } = if root.is_file() {
            if !is_dicom_file(root) {
                return Err(DataError::format(root, "DICOM file", "no `DICM` magic at byte 128"));
            }
            LabeledFiles { files: vec![(root.to_path_buf(), None)], classes: Vec::new() }
        } else {
            scan_tree(root, expected, "DICOM files", &is_dicom_file)?
        };
        if files.is_empty() {
            return Err(DataError::Empty {
                path: root.into(),
                expected: format!("{expected}: files with `DICM` at byte 128, any extension"),
            });
        }
        let mut indexed = Vec::with_capacity(files.len());
        let mut samples = Vec::new();
        for (path, label) in files {
            let frames = match frame_count(&path) {
                Ok(n) => n,
                Err(message) => {
                    tracing::warn!(
                        "{}: {message}; indexed as one frame, which will fail when read",
                        path.display()
                    );
                    1
                }
            };
            let file = u32::try_from(indexed.len())
                .map_err(|_| DataError::format(root, "DICOM folder", "more than 4294967295 files"))?;
            samples.extend((0..frames).map(|frame| (file, frame)));
            indexed.push(DicomFile { path, label, frames });
        }
        Ok(Self { root: root.into(), files: indexed, samples, classes, limits })
    }

    /// The file and frame of sample `index`.
    pub fn frame(&self, index: usize) -> Option<(&Path, u32)> {
        let &(file, frame) = self.samples.get(index)?;
        Some((self.files[file as usize].path.as_path(), frame))
    }
}

/// Reads a file's header (everything before the pixel data) for its number of frames.
fn frame_count(path: &Path) -> std::result::Result<u32, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut head = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    file.take(HEADER_PREFIX).read_to_end(&mut head).map_err(|e| e.to_string())?;
    check_lengths(&head, len)?;
    let header = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("cannot read the DICOM header: {}", chain(&e)))?;
    number_of_frames(&header, len)
}

/// NumberOfFrames (absent or empty: 1); refused when not positive, or when the file is too
/// small to hold that many frames (a damaged count would otherwise index millions of samples).
fn number_of_frames(obj: &DefaultDicomObject, file_len: u64) -> std::result::Result<u32, String> {
    let text = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => String::new(),
        Some(e) => e.to_str().map_err(|e| format!("NumberOfFrames: {e}"))?.trim().to_string(),
    };
    let frames = if text.is_empty() {
        1
    } else {
        text.parse::<i64>().map_err(|_| format!("NumberOfFrames `{text}` is not a number"))?
    };
    if frames < 1 || frames as u64 > file_len {
        return Err(format!("NumberOfFrames is {frames}, impossible in a file of {file_len} bytes"));
    }
    Ok(frames as u32)
}

/// Bytes of a file read at open to check its header lengths (see [`check_lengths`]): more
/// than the header of any file we know of holds before its pixel data.
const HEADER_PREFIX: u64 = 1 << 16;

/// Refuses a file whose top-level elements declare more bytes than the file holds, before the
/// DICOM parser sees it: the parser reserves and zero-fills a declared length (up to 4 GiB)
/// before reading the value, so one damaged length field in a small file would cost gigabytes.
/// `head` is the start of the file (preamble included), `file_len` its whole length. Walks the
/// file meta group and the data set's top-level elements with defined lengths; stops, accepting,
/// at the end of `head`, at the first value of undefined length (a sequence or encapsulated
/// pixel data: what follows is items), in a deflated data set, and after the Pixel Data element.
/// Lengths inside sequences are left to the parser.
fn check_lengths(head: &[u8], file_len: u64) -> std::result::Result<(), String> {
    const LONG_VRS: [&[u8; 2]; 13] =
        [b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"];
    let u16_at = |at: usize, le: bool| {
        let b = [head[at], head[at + 1]];
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |at: usize, le: bool| {
        let b = [head[at], head[at + 1], head[at + 2], head[at + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut pos = MAGIC_AT + 4;
    // The meta group (0002) is explicit VR little endian; the data set as its transfer syntax says.
    let (mut meta, mut explicit, mut little) = (true, true, true);
    let mut transfer_syntax = String::new();
    while pos + 12 <= head.len() {
        if meta && u16_at(pos, true) != 0x0002 {
            meta = false;
            match transfer_syntax.as_str() {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.2" => little = false,
                "1.2.840.10008.1.2.1.99" => return Ok(()), // deflated: lengths are the inflated stream's
                _ => {}
            }
        }
        let (group, element) = (u16_at(pos, little), u16_at(pos + 2, little));
        let (header, len) = if !explicit {
            (8, u32_at(pos + 4, little))
        } else if LONG_VRS.iter().any(|vr| head[pos + 4..pos + 6] == vr[..]) {
            (12, u32_at(pos + 8, little))
        } else {
            (8, u32::from(u16_at(pos + 6, little)))
        };
        if len == u32::MAX {
            return Ok(());
        }
        let value_end = pos as u64 + header + u64::from(len);
        if value_end > file_len {
            return Err(format!(
                "element ({group:04X},{element:04X}) at byte {pos} declares {len} bytes, past the end of the \
                 {file_len}-byte file"
            ));
        }
        if meta && (group, element) == (0x0002, 0x0010) {
            let end = (value_end as usize).min(head.len());
            let value = String::from_utf8_lossy(&head[pos + header as usize..end]);
            transfer_syntax = value.trim_end_matches(['\0', ' ']).to_string();
        }
        if (group, element) == (0x7FE0, 0x0010) {
            return Ok(());
        }
        pos = value_end as usize;
    }
    Ok(())
}

/// An error and its sources, `: `-separated (the dicom crates' top-level messages are terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Decodes frame `frame` (from 0) of the DICOM file `bytes` (preamble and `DICM` magic
/// included) to bands: see the module docs for the values. `origin` names the sample in
/// errors; the pixel cap of `limits` is checked on the header, before any pixel data is
/// decoded.
pub fn decode_dicom_frame(bytes: &[u8], frame: u32, origin: &str, limits: &DecodeLimits) -> Result<Image> {
    let fail = |m: &dyn std::fmt::Display| DataError::decode(origin, m);
    if bytes.len() < MAGIC_AT + 4 || &bytes[MAGIC_AT..MAGIC_AT + 4] != b"DICM" {
        return Err(fail(&"not a DICOM file (no `DICM` magic at byte 128)"));
    }
    check_lengths(bytes, bytes.len() as u64).map_err(|m| fail(&m))?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[MAGIC_AT..])
        .map_err(|e| fail(&chain(&e)))?;
    // Rows and Columns are US (16 bits), so their product cannot overflow.
    let side = |tag, name: &str| -> Result<u16> {
        let e = obj.get(tag).ok_or_else(|| fail(&format!("no {name}")))?;
        e.to_int::<u16>().map_err(|e| fail(&format!("{name}: {e}")))
    };
    let (rows, cols) = (side(tags::ROWS, "Rows")?, side(tags::COLUMNS, "Columns")?);
    if u64::from(rows) * u64::from(cols) > limits.max_pixels {
        return Err(DataError::TooLarge {
            origin: origin.into(),
            width: cols.into(),
            height: rows.into(),
            limit: limits.max_pixels,
        });
    }
    let frames = number_of_frames(&obj, bytes.len() as u64).map_err(|m| fail(&m))?;
    if frame >= frames {
        return Err(fail(&format!("frame {frame} asked of a file of {frames} frame(s)")));
    }
    if obj.get(tags::MODALITY_LUT_SEQUENCE).is_some() {
        return Err(fail(&"a Modality LUT Sequence is not supported (Rescale Slope and Intercept are)"));
    }
    let pixels = obj.decode_pixel_data_frame(frame).map_err(|e| fail(&chain(&e)))?;
    to_bands(&pixels).map(Image::Bands).map_err(|m| fail(&m))
}

/// The decoded frame's samples as f32 bands (see the module docs).
fn to_bands(px: &DecodedPixelData) -> std::result::Result<BandImage, String> {
    let (width, height) = (px.columns(), px.rows());
    let spp = px.samples_per_pixel() as usize;
    let pi = px.photometric_interpretation();
    let bands = match (pi, spp) {
        (PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2, 1) => 1,
        (PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull, 3) => 3,
        _ => {
            return Err(format!(
                "photometric interpretation {pi} with {spp} sample(s) per pixel is not supported \
                 (MONOCHROME1, MONOCHROME2, RGB and YBR_FULL are)"
            ))
        }
    };
    let (allocated, stored, high) = (px.bits_allocated(), px.bits_stored(), px.high_bit());
    if !matches!(allocated, 8 | 16 | 32)
        || stored == 0
        || stored > allocated
        || high >= allocated
        || high + 1 < stored
    {
        return Err(format!(
            "BitsAllocated {allocated}, BitsStored {stored}, HighBit {high} are not supported \
             (8, 16 or 32 bits allocated, stored bits within them)"
        ));
    }
    let signed = px.pixel_representation() == PixelRepresentation::Signed;
    let pixels = width as usize * height as usize;
    let n = pixels * spp;
    let step = allocated as usize / 8;
    let data = px.frame_data(0).map_err(|e| chain(&e))?;
    if data.len() < n * step {
        return Err(format!("the frame has {} bytes of pixel data, {} expected", data.len(), n * step));
    }
    // Stored values: the `stored` bits ending at `high`, sign-extended when signed.
    let shift = u32::from(high + 1 - stored);
    let word = |i: usize| -> i64 {
        let b = &data[i * step..(i + 1) * step];
        let raw = match step {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
            _ => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        };
        let v = (raw >> shift) & ((1u64 << stored) - 1);
        if signed && v >> (stored - 1) & 1 == 1 {
            v as i64 - (1i64 << stored)
        } else {
            v as i64
        }
    };
    // Sample `s` of pixel `p`, whatever the planar configuration.
    let planar = spp > 1 && px.planar_configuration() == PlanarConfiguration::PixelFirst;
    let at = |p: usize, s: usize| if planar { s * pixels + p } else { p * spp + s };
    let mut out = Vec::with_capacity(n);
    match pi {
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
            let rescale = px.rescale().map_err(|e| chain(&e))?.first().copied();
            let (slope, intercept) = rescale.map_or((1.0, 0.0), |r| (r.slope, r.intercept));
            // MONOCHROME1: stored values reflected within their range [lo, hi] before the
            // rescale, which is the rescaled value reflected within the rescaled range.
            let (lo, hi) = if signed {
                (-(1i64 << (stored - 1)), (1i64 << (stored - 1)) - 1)
            } else {
                (0, (1i64 << stored) - 1)
            };
            let invert = *pi == PhotometricInterpretation::Monochrome1;
            for p in 0..pixels {
                let v = word(at(p, 0));
                let v = if invert { lo + hi - v } else { v };
                out.push((slope * v as f64 + intercept) as f32);
            }
        }
        PhotometricInterpretation::YbrFull => {
            if allocated != 8 {
                return Err(format!("YBR_FULL with {allocated} bits allocated is not supported (8 is)"));
            }
            for p in 0..pixels {
                let [y, cb, cr] = [0, 1, 2].map(|s| word(at(p, s)) as f32);
                out.extend(ybr_full_to_rgb(y, cb, cr));
            }
        }
        _ => out.extend((0..n).map(|i| word(at(i / spp, i % spp)) as f32)),
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(format!("sample {} of band {} is {} after the rescale", i / bands, i % bands, out[i]));
    }
    BandImage::new(width, height, bands, out).ok_or_else(|| "the image has zero width or height".into())
}

/// YBR_FULL to RGB, 8-bit (DICOM PS3.3 C.7.6.3.1.2), rounded and clipped to [0, 255] as
/// pydicom's `convert_color_space` does (in f32, with its coefficients).
fn ybr_full_to_rgb(y: f32, cb: f32, cr: f32) -> [f32; 3] {
    let (cb, cr) = (cb - 128.0, cr - 128.0);
    let r = y + 1.402 * cr;
    let g = y + (-0.114 * 1.772 / 0.587) * cb + (-0.299 * 1.402 / 0.587) * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0))
}

impl Dataset for DicomDataset {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let &(file, frame) = self.samples.get(index).ok_or_else(|| out_of_range(index, self))?;
        let file = &self.files[file as usize];
        let origin = self.origin(index);
        let len = std::fs::metadata(&file.path).map_err(|e| DataError::io(&file.path, e))?.len();
        // The whole file is read for its frame: a cap against a file larger than the budget.
        if len > self.limits.max_alloc {
            return Err(DataError::decode(
                origin,
                format!(
                    "the file is {len} bytes, more than a decoder may allocate ({})",
                    self.limits.max_alloc
                ),
            ));
        }
        let bytes = std::fs::read(&file.path).map_err(|e| DataError::io(&file.path, e))?;
        let image = decode_dicom_frame(&bytes, frame, &origin, &self.limits)?;
        Ok(Sample { image, label: file.label })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// `PATH (frame K)`, frames counted from 0 (as pydicom's `pixel_array` indexes them).
    fn origin(&self, index: usize) -> String {
        match self.frame(index) {
            Some((path, frame)) => format!("{} (frame {frame})", path.display()),
            None => format!("sample {index} of {}", self.describe()),
        }
    }

    /// The path below the root (a single file: its name); `PATH#K` for frame K of a multi-frame
    /// file.
    fn sample_name(&self, index: usize) -> Option<String> {
        let &(file, frame) = self.samples.get(index)?;
        let file = &self.files[file as usize];
        // A single file's name is its file name (its path below itself would be empty).
        let relative = file.path.strip_prefix(&self.root).ok().filter(|r| !r.as_os_str().is_empty());
        let name = match (relative, file.path.file_name()) {
            (Some(r), _) => r.display().to_string(),
            (None, Some(n)) => n.to_string_lossy().into_owned(),
            (None, None) => file.path.display().to_string(),
        };
        Some(if file.frames > 1 { format!("{name}#{frame}") } else { name })
    }

    fn describe(&self) -> String {
        let labels = if self.classes.is_empty() {
            "unlabeled".to_string()
        } else {
            format!("{} classes", self.classes.len())
        };
        format!(
            "DICOM {} ({} frames in {} files, {labels})",
            self.root.display(),
            self.samples.len(),
            self.files.len()
        )
    }
}
