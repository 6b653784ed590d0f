//! Multi-band TIFF through the `tiff` crate: what the image crate (at most 4 channels, unsigned
//! 8/16-bit or float RGB(A)) cannot hold.
//!
//! A TIFF is read here when its first image has more than 4 samples (or 2 gray ones), signed or
//! 32/64-bit integer samples, or float gray samples, or when it is a stack of one-sample pages:
//! further pages of the first page's size and sample type are then bands (as tifffile and
//! ImageJ write a `(bands, height, width)` array); pages of another size (reduced-resolution
//! overviews, thumbnails) are ignored, and so are further pages of multi-sample images. Every
//! other TIFF goes to the image crate as before. Chunky and planar sample layouts are both read.

use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::{PlanarConfiguration, SampleFormat, Tag};
use tiff::ColorType;

use crate::bands::BandImage;
use crate::dataset::DecodeLimits;
use crate::error::{DataError, Result};

/// Most pages read as bands; more than any multispectral or hyperspectral tile we know of needs
/// a model input of (Sentinel-2 has 13 bands, AVIRIS 224).
pub const MAX_PAGES: usize = 256;

/// The first page's layout, for deciding who reads the file and which pages are bands.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PageKind {
    width: u32,
    height: u32,
    color: ColorType,
    format: SampleFormat,
}

fn page_kind<R: std::io::Read + std::io::Seek>(d: &mut Decoder<R>) -> tiff::TiffResult<PageKind> {
    let (width, height) = d.dimensions()?;
    let color = d.colortype()?;
    let format = match d.find_tag_unsigned_vec::<u16>(Tag::SampleFormat)? {
        Some(v) => v.first().map_or(SampleFormat::Uint, |&f| SampleFormat::from_u16_exhaustive(f)),
        None => SampleFormat::Uint,
    };
    Ok(PageKind { width, height, color, format })
}

/// Samples per pixel of a page's colour type.
fn samples(color: ColorType) -> usize {
    match color {
        ColorType::Gray(_) | ColorType::Palette(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) | ColorType::YCbCr(_) | ColorType::Lab(_) => 3,
        ColorType::RGBA(_) | ColorType::CMYK(_) => 4,
        ColorType::CMYKA(_) => 5,
        ColorType::Multiband { num_samples, .. } => num_samples as usize,
        _ => 0,
    }
}

/// Whether the image crate decodes this first page faithfully (what it did before this reader):
/// its TIFF decoder's own list of colour types (image 0.25's `codecs/tiff.rs`).
fn image_crate_reads(kind: &PageKind) -> bool {
    use ColorType as C;
    match kind.format {
        SampleFormat::Uint => matches!(
            kind.color,
            C::Gray(1 | 8 | 16) | C::GrayA(8 | 16) | C::RGB(8 | 16) | C::RGBA(8 | 16) | C::CMYK(8 | 16)
        ),
        SampleFormat::IEEEFP => matches!(kind.color, C::RGB(32) | C::RGBA(32)),
        _ => false,
    }
}

/// The file as bands when it is one the image crate cannot hold (see the module docs);
/// `Ok(None)` to leave it to the image crate. `origin` names the file in errors.
pub(crate) fn decode_bands(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<Option<BandImage>> {
    let fail = |e: &dyn std::fmt::Display| DataError::decode(origin, e);
    let open = || {
        Ok::<_, DataError>(
            Decoder::new(Cursor::new(bytes)).map_err(|e| fail(&e))?.with_limits(tiff_limits(limits)),
        )
    };
    let mut decoder = open()?;
    let first = page_kind(&mut decoder).map_err(|e| fail(&e))?;
    // Count the band pages before deciding, without decoding them.
    let mut pages = 1;
    while samples(first.color) == 1 && decoder.more_images() && pages < MAX_PAGES {
        if decoder.next_image().is_err() || page_kind(&mut decoder).ok() != Some(first) {
            break;
        }
        pages += 1;
    }
    if pages == 1 && image_crate_reads(&first) {
        return Ok(None);
    }
    let per_page = samples(first.color);
    if per_page == 0 || matches!(first.color, ColorType::Palette(_) | ColorType::YCbCr(_) | ColorType::Lab(_))
    {
        return Err(fail(&format!("TIFF colour type {:?} cannot be read as bands", first.color)));
    }
    let bands = per_page * pages;
    let pixels = first.width as u64 * first.height as u64;
    if pixels > limits.max_pixels {
        return Err(DataError::TooLarge {
            origin: origin.into(),
            width: first.width,
            height: first.height,
            limit: limits.max_pixels,
        });
    }
    if pixels.saturating_mul(bands as u64 * 4) > limits.max_alloc {
        return Err(fail(&format!(
            "{bands} bands of {}x{} pixels need more than the {} bytes a decoder may allocate",
            first.width, first.height, limits.max_alloc
        )));
    }
    let mut data = vec![0f32; pixels as usize * bands];
    let mut decoder = open()?;
    for page in 0..pages {
        if page > 0 {
            decoder.next_image().map_err(|e| fail(&e))?;
        }
        let mut buffer = DecodingResult::U8(Vec::new());
        let layout = decoder.read_image_to_buffer(&mut buffer).map_err(|e| fail(&e))?;
        let values = to_f32(buffer);
        let planar = decoder.get_tag_u32(Tag::PlanarConfiguration).ok()
            == Some(PlanarConfiguration::Planar as u32)
            && per_page > 1;
        if values.len() != pixels as usize * per_page || layout.complete_len == 0 {
            return Err(fail(&format!(
                "page {page} gave {} samples for {}x{} pixels of {per_page} samples",
                values.len(),
                first.width,
                first.height
            )));
        }
        for (i, v) in values.iter().enumerate() {
            let (pixel, sample) = if planar {
                (i % pixels as usize, i / pixels as usize)
            } else {
                (i / per_page, i % per_page)
            };
            data[pixel * bands + page * per_page + sample] = *v;
        }
    }
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        let (pixel, band) = (at / bands, at % bands + 1);
        let (x, y) = (pixel % first.width as usize, pixel / first.width as usize);
        return Err(fail(&format!(
            "band {band} is {} at pixel ({x}, {y}) (no-data values must be filled before training: a NaN makes the loss NaN)",
            data[at]
        )));
    }
    BandImage::new(first.width, first.height, bands, data)
        .map(Some)
        .ok_or_else(|| fail(&"image has zero width or height"))
}

fn tiff_limits(limits: &DecodeLimits) -> Limits {
    let mut l = Limits::default();
    l.decoding_buffer_size = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    l
}

/// Samples as f32: unsigned integers scaled to [0, 1] by their type's maximum, signed integers
/// and floats as they are (see [`BandImage`]).
fn to_f32(result: DecodingResult) -> Vec<f32> {
    fn scaled<T: Copy + Into<f64>>(v: Vec<T>, max: f64) -> Vec<f32> {
        v.into_iter().map(|x| (x.into() / max) as f32).collect()
    }
    fn raw<T: Copy + Into<f64>>(v: Vec<T>) -> Vec<f32> {
        v.into_iter().map(|x| x.into() as f32).collect()
    }
    match result {
        DecodingResult::U8(v) => scaled(v, u8::MAX as f64),
        DecodingResult::U16(v) => scaled(v, u16::MAX as f64),
        DecodingResult::U32(v) => scaled(v, u32::MAX as f64),
        DecodingResult::U64(v) => v.into_iter().map(|x| (x as f64 / u64::MAX as f64) as f32).collect(),
        DecodingResult::I8(v) => raw(v),
        DecodingResult::I16(v) => raw(v),
        DecodingResult::I32(v) => raw(v),
        DecodingResult::I64(v) => v.into_iter().map(|x| x as f32).collect(),
        DecodingResult::F16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
    }
}
