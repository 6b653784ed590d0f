//! Pixel plumbing for the transforms: any decoded image to RGB, crop, bicubic resize, and the
//! final float CHW layout with normalisation.

use std::borrow::Cow;

use fast_image_resize::images::{Image as ResizeImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::bands::Image;

use crate::error::{DataError, Result};
use crate::transform::{CropBox, Normalize};

/// Pixel data in the narrowest form that loses nothing: 8-bit gray (resized once, then
/// replicated to three channels when RGB is asked for: a third of the work for MNIST-like data),
/// 8-bit RGB, or float with any number of interleaved channels for 16-bit and float images,
/// alpha, gray + alpha and band stacks (so 16-bit values are scaled to [0, 1], never cut to 8
/// bits).
#[derive(Debug, Clone)]
pub(crate) enum Pixels<'a> {
    Gray8(Cow<'a, [u8]>),
    Rgb8(Cow<'a, [u8]>),
    F32 { channels: usize, data: Cow<'a, [f32]> },
}

#[derive(Debug, Clone)]
pub(crate) struct Plane<'a> {
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels<'a>,
}

impl Pixels<'_> {
    fn channels(&self) -> usize {
        match self {
            Pixels::Gray8(_) => 1,
            Pixels::Rgb8(_) => 3,
            Pixels::F32 { channels, .. } => *channels,
        }
    }
}

fn float(channels: usize, data: Vec<f32>) -> Pixels<'static> {
    Pixels::F32 { channels, data: Cow::Owned(data) }
}

/// The image as the `channels` channels a transform produces: 3 as gray or RGB (alpha is
/// dropped, not composited, as PIL's `convert("RGB")`, which torchvision's loaders call, does);
/// 1 from grayscale (alpha dropped); 2 from gray + alpha; 4 from RGBA. Anything else is an
/// error: colour is never silently averaged away, nor alpha invented.
///
/// A band stack gives its bands when they are as many as the run takes, and a single band is
/// replicated to 3 as gray is; any other count is an error.
pub(crate) fn to_plane(image: &Image, channels: usize) -> Result<Plane<'_>> {
    match image {
        Image::Standard(image) => standard_plane(image, channels),
        Image::Bands(b) if b.bands == channels || (b.bands == 1 && channels == 3) => Ok(Plane {
            width: b.width,
            height: b.height,
            pixels: Pixels::F32 { channels: b.bands, data: Cow::Borrowed(&b.data) },
        }),
        Image::Bands(b) => Err(DataError::Config(format!(
            "the image has {} band{}, and the run takes {channels} (--in-channels {channels})",
            b.bands,
            if b.bands == 1 { "" } else { "s" }
        ))),
    }
}

fn standard_plane(image: &DynamicImage, channels: usize) -> Result<Plane<'_>> {
    use DynamicImage as D;
    let (width, height) = (image.width(), image.height());
    let has_alpha = image.color().has_alpha();
    let is_gray = !image.color().has_color();
    let pixels = match (channels, image) {
        (3, D::ImageLuma8(g)) => Pixels::Gray8(Cow::Borrowed(g.as_raw())),
        (3, D::ImageLumaA8(g)) => Pixels::Gray8(Cow::Owned(g.as_raw().iter().step_by(2).copied().collect())),
        (3, D::ImageRgb8(g)) => Pixels::Rgb8(Cow::Borrowed(g.as_raw())),
        (3, D::ImageRgba8(_)) => Pixels::Rgb8(Cow::Owned(image.to_rgb8().into_raw())),
        // 16-bit and float: `to_rgb32f` scales u16 by 1/65535.
        (3, _) => float(3, image.to_rgb32f().into_raw()),
        (1, D::ImageLuma8(g)) => Pixels::Gray8(Cow::Borrowed(g.as_raw())),
        (1, D::ImageLumaA8(g)) => Pixels::Gray8(Cow::Owned(g.as_raw().iter().step_by(2).copied().collect())),
        (1, _) if is_gray => float(1, image.to_luma32f().into_raw()),
        (2, _) if is_gray && has_alpha => float(2, image.to_luma_alpha32f().into_raw()),
        (4, _) if has_alpha && !is_gray => float(4, image.to_rgba32f().into_raw()),
        _ => {
            let found = image.color().channel_count();
            return Err(DataError::Config(format!(
                "the image is {:?} ({found} channel{}), and the run takes {channels} (--in-channels {channels})",
                image.color(),
                if found == 1 { "" } else { "s" }
            )));
        }
    };
    Ok(Plane { width, height, pixels })
}

fn crop_rows<T: Copy>(data: &[T], width: u32, channels: usize, crop: CropBox) -> Vec<T> {
    let mut out = Vec::with_capacity(crop.width as usize * crop.height as usize * channels);
    for row in crop.top..crop.top + crop.height {
        let start = (row as usize * width as usize + crop.left as usize) * channels;
        out.extend_from_slice(&data[start..start + crop.width as usize * channels]);
    }
    out
}

/// Crops `crop` out of `plane` (copying, so that, as in torchvision's crop-then-resize, no pixel
/// outside the crop enters the resampling kernel). Returns the plane unchanged for a full crop.
pub(crate) fn crop<'a>(plane: &'a Plane<'a>, crop: CropBox) -> Result<Plane<'a>> {
    if crop.left + crop.width > plane.width
        || crop.top + crop.height > plane.height
        || crop.width == 0
        || crop.height == 0
    {
        return Err(DataError::Transform(format!(
            "crop {crop:?} does not fit a {}x{} image",
            plane.width, plane.height
        )));
    }
    if crop.width == plane.width && crop.height == plane.height {
        let pixels = match &plane.pixels {
            Pixels::Gray8(p) => Pixels::Gray8(Cow::Borrowed(p.as_ref())),
            Pixels::Rgb8(p) => Pixels::Rgb8(Cow::Borrowed(p.as_ref())),
            Pixels::F32 { channels, data } => {
                Pixels::F32 { channels: *channels, data: Cow::Borrowed(data.as_ref()) }
            }
        };
        return Ok(Plane { width: plane.width, height: plane.height, pixels });
    }
    let pixels = match &plane.pixels {
        Pixels::Gray8(p) => Pixels::Gray8(Cow::Owned(crop_rows(p, plane.width, 1, crop))),
        Pixels::Rgb8(p) => Pixels::Rgb8(Cow::Owned(crop_rows(p, plane.width, 3, crop))),
        Pixels::F32 { channels, data } => float(*channels, crop_rows(data, plane.width, *channels, crop)),
    };
    Ok(Plane { width: crop.width, height: crop.height, pixels })
}

/// Bicubic (Catmull-Rom, a = -0.5: PIL's BICUBIC) resize with antialiasing when shrinking (the
/// kernel widens with the scale, as in PIL), to `width` x `height`.
pub(crate) fn resize(plane: &Plane<'_>, width: u32, height: u32) -> Result<Plane<'static>> {
    let fail = |e: &dyn std::fmt::Display| DataError::Transform(format!("resize to {width}x{height}: {e}"));
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut resizer = Resizer::new();
    let n = width as usize * height as usize * plane.pixels.channels();
    let pixels = match &plane.pixels {
        Pixels::Gray8(p) | Pixels::Rgb8(p) => {
            let kind = if plane.pixels.channels() == 1 { PixelType::U8 } else { PixelType::U8x3 };
            let src = ImageRef::new(plane.width, plane.height, p, kind).map_err(|e| fail(&e))?;
            let mut out = vec![0u8; n];
            let mut dst = ResizeImage::from_slice_u8(width, height, &mut out, kind).map_err(|e| fail(&e))?;
            resizer.resize(&src, &mut dst, &options).map_err(|e| fail(&e))?;
            if kind == PixelType::U8 {
                Pixels::Gray8(Cow::Owned(out))
            } else {
                Pixels::Rgb8(Cow::Owned(out))
            }
        }
        Pixels::F32 { channels, data } => {
            let kind = match channels {
                1 => PixelType::F32,
                2 => PixelType::F32x2,
                3 => PixelType::F32x3,
                4 => PixelType::F32x4,
                // The resizer's pixel types stop at 4 channels: resize band by band.
                _ => return resize_bands(plane, *channels, data, width, height),
            };
            let bytes: &[u8] = bytemuck::cast_slice(data.as_ref());
            let src = ImageRef::new(plane.width, plane.height, bytes, kind).map_err(|e| fail(&e))?;
            let mut out = vec![0f32; n];
            let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            let mut dst = ResizeImage::from_slice_u8(width, height, out_bytes, kind).map_err(|e| fail(&e))?;
            resizer.resize(&src, &mut dst, &options).map_err(|e| fail(&e))?;
            float(*channels, out)
        }
    };
    Ok(Plane { width, height, pixels })
}

/// Resizes a float plane of more than 4 channels one band at a time (the same separable kernel
/// per band as the interleaved types use).
fn resize_bands(
    plane: &Plane<'_>,
    channels: usize,
    data: &[f32],
    width: u32,
    height: u32,
) -> Result<Plane<'static>> {
    let mut out = vec![0f32; width as usize * height as usize * channels];
    for b in 0..channels {
        let band: Vec<f32> = data.iter().skip(b).step_by(channels).copied().collect();
        let one = Plane { width: plane.width, height: plane.height, pixels: float(1, band) };
        let resized = resize(&one, width, height)?;
        let Pixels::F32 { data: resized, .. } = resized.pixels else {
            return Err(DataError::Transform("resizing a float band gave another pixel type".into()));
        };
        for (dst, v) in out.iter_mut().skip(b).step_by(channels).zip(resized.iter()) {
            *dst = *v;
        }
    }
    Ok(Plane { width, height, pixels: float(channels, out) })
}

/// Writes `plane` as normalised float CHW into `out` (length C * height * width, C the channels
/// of `normalize`), mirrored left-right when `flip`. A gray plane fills every channel.
pub(crate) fn write_chw(plane: &Plane<'_>, flip: bool, normalize: &Normalize, out: &mut [f32]) -> Result<()> {
    let (w, h) = (plane.width as usize, plane.height as usize);
    let channels = normalize.channels();
    let given = plane.pixels.channels();
    if out.len() != channels * w * h || (given != 1 && given != channels) {
        return Err(DataError::Transform(format!(
            "output buffer of {} floats for a {channels}x{h}x{w} image of {given} channel(s)",
            out.len()
        )));
    }
    // (v / range - mean) / std as one multiply-add.
    let range = match plane.pixels {
        Pixels::F32 { .. } => 1.0,
        _ => 255.0,
    };
    for (c, dst) in out.chunks_exact_mut(w * h).enumerate() {
        let scale = 1.0 / (range * normalize.std[c]);
        let bias = -normalize.mean[c] / normalize.std[c];
        // Pixel `i`'s value in this channel (a gray plane gives its one value to every channel).
        match &plane.pixels {
            Pixels::Gray8(p) => fill(dst, w, flip, |i| p[i] as f32 * scale + bias),
            Pixels::Rgb8(p) => fill(dst, w, flip, |i| p[3 * i + c] as f32 * scale + bias),
            Pixels::F32 { channels: 1, data } => fill(dst, w, flip, |i| data[i] * scale + bias),
            Pixels::F32 { channels, data } => fill(dst, w, flip, |i| data[channels * i + c] * scale + bias),
        }
    }
    Ok(())
}

/// Fills one channel's rows of width `w` with `value(source pixel)`, mirrored when `flip`.
fn fill(dst: &mut [f32], w: usize, flip: bool, value: impl Fn(usize) -> f32) {
    for (y, row) in dst.chunks_exact_mut(w).enumerate() {
        for (x, out) in row.iter_mut().enumerate() {
            *out = value(y * w + if flip { w - 1 - x } else { x });
        }
    }
}
