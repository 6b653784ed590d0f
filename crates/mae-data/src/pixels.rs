//! Pixel plumbing for the transforms: any decoded image to RGB, crop, bicubic resize, and the
//! final float CHW layout with normalisation.

use std::borrow::Cow;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::error::{DataError, Result};
use crate::transform::{CropBox, Normalize};

/// Pixel data in the narrowest form that loses nothing: 8-bit gray (resized once, then
/// replicated to three channels: a third of the work for MNIST-like data), 8-bit RGB, or float
/// RGB for 16-bit and float images (so 16-bit values are scaled to [0, 1], never clipped).
#[derive(Debug, Clone)]
pub(crate) enum Pixels<'a> {
    Gray8(Cow<'a, [u8]>),
    Rgb8(Cow<'a, [u8]>),
    RgbF32(Cow<'a, [f32]>),
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
            _ => 3,
        }
    }
}

/// The image as gray or RGB. Alpha is dropped, not composited, as PIL's `convert("RGB")` (which
/// torchvision's loaders call) does.
pub(crate) fn to_plane(image: &DynamicImage) -> Plane<'_> {
    let (width, height) = (image.width(), image.height());
    let pixels = match image {
        DynamicImage::ImageLuma8(g) => Pixels::Gray8(Cow::Borrowed(g.as_raw())),
        DynamicImage::ImageLumaA8(g) => {
            Pixels::Gray8(Cow::Owned(g.as_raw().iter().step_by(2).copied().collect()))
        }
        DynamicImage::ImageRgb8(g) => Pixels::Rgb8(Cow::Borrowed(g.as_raw())),
        DynamicImage::ImageRgba8(_) => Pixels::Rgb8(Cow::Owned(image.to_rgb8().into_raw())),
        // 16-bit and float: `to_rgb32f` scales u16 by 1/65535.
        _ => Pixels::RgbF32(Cow::Owned(image.to_rgb32f().into_raw())),
    };
    Plane { width, height, pixels }
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
            Pixels::RgbF32(p) => Pixels::RgbF32(Cow::Borrowed(p.as_ref())),
        };
        return Ok(Plane { width: plane.width, height: plane.height, pixels });
    }
    let pixels = match &plane.pixels {
        Pixels::Gray8(p) => Pixels::Gray8(Cow::Owned(crop_rows(p, plane.width, 1, crop))),
        Pixels::Rgb8(p) => Pixels::Rgb8(Cow::Owned(crop_rows(p, plane.width, 3, crop))),
        Pixels::RgbF32(p) => Pixels::RgbF32(Cow::Owned(crop_rows(p, plane.width, 3, crop))),
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
            let mut dst = Image::from_slice_u8(width, height, &mut out, kind).map_err(|e| fail(&e))?;
            resizer.resize(&src, &mut dst, &options).map_err(|e| fail(&e))?;
            if kind == PixelType::U8 {
                Pixels::Gray8(Cow::Owned(out))
            } else {
                Pixels::Rgb8(Cow::Owned(out))
            }
        }
        Pixels::RgbF32(p) => {
            let bytes: &[u8] = bytemuck::cast_slice(p.as_ref());
            let src =
                ImageRef::new(plane.width, plane.height, bytes, PixelType::F32x3).map_err(|e| fail(&e))?;
            let mut out = vec![0f32; n];
            let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            let mut dst =
                Image::from_slice_u8(width, height, out_bytes, PixelType::F32x3).map_err(|e| fail(&e))?;
            resizer.resize(&src, &mut dst, &options).map_err(|e| fail(&e))?;
            Pixels::RgbF32(Cow::Owned(out))
        }
    };
    Ok(Plane { width, height, pixels })
}

/// Writes `plane` as normalised float CHW into `out` (length 3 * height * width), mirrored
/// left-right when `flip`.
pub(crate) fn write_chw(plane: &Plane<'_>, flip: bool, normalize: &Normalize, out: &mut [f32]) -> Result<()> {
    let (w, h) = (plane.width as usize, plane.height as usize);
    if out.len() != 3 * w * h {
        return Err(DataError::Transform(format!(
            "output buffer of {} floats for a 3x{h}x{w} image",
            out.len()
        )));
    }
    // (v / range - mean) / std as one multiply-add.
    let range = match plane.pixels {
        Pixels::RgbF32(_) => 1.0,
        _ => 255.0,
    };
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (range * normalize.std[c]));
    let bias: [f32; 3] = std::array::from_fn(|c| -normalize.mean[c] / normalize.std[c]);
    let (red, rest) = out.split_at_mut(w * h);
    let (green, blue) = rest.split_at_mut(w * h);
    let planes = [red, green, blue];
    for y in 0..h {
        for x in 0..w {
            let src = y * w + if flip { w - 1 - x } else { x };
            let dst = y * w + x;
            let rgb: [f32; 3] = match &plane.pixels {
                Pixels::Gray8(p) => [p[src] as f32; 3],
                Pixels::Rgb8(p) => [p[3 * src] as f32, p[3 * src + 1] as f32, p[3 * src + 2] as f32],
                Pixels::RgbF32(p) => [p[3 * src], p[3 * src + 1], p[3 * src + 2]],
            };
            for c in 0..3 {
                planes[c][dst] = rgb[c] * scale[c] + bias[c];
            }
        }
    }
    Ok(())
}
