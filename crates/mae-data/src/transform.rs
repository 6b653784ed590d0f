//! The MAE train transform (the paper's and lightly's `MAETransform`) and the eval transform.
//!
//! Both produce a normalised float image in CHW layout `[C, size, size]`, C being the number of
//! channels of their [`Normalize`] (3 by default): for 3, grayscale is replicated to RGB and
//! alpha dropped; for 1, grayscale stays one channel; for 4, RGBA keeps its alpha. 16-bit and
//! float images are scaled to [0, 1] in f32 (no 8-bit step). An image that cannot give the
//! channels asked for (RGB for 1) is an error naming the channels. Multi-band images (see
//! [`crate::BandImage`]) give their bands when their count is the run's.

use std::borrow::Cow;
use std::fmt::Debug;

use candle_core::{Device, Tensor};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

use crate::bands::Image;
use crate::error::{DataError, Result};
use crate::pixels::{crop, resize, to_plane, write_chw};
use crate::rng::{below, uniform, unit_f64};

/// Per-channel normalisation `(x - mean) / std` of [0, 1] pixel values. It has one mean and one
/// std per channel, so it also says how many channels a transform produces (see
/// [`Normalize::channels`]): ImageNet's three for RGB, one for grayscale, four for RGBA.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Cow<'static, [f32]>,
    pub std: Cow<'static, [f32]>,
}

impl Normalize {
    /// torchvision's ImageNet statistics, the MAE and lightly default.
    pub const IMAGENET: Self =
        Self { mean: Cow::Borrowed(&[0.485, 0.456, 0.406]), std: Cow::Borrowed(&[0.229, 0.224, 0.225]) };
    /// No normalisation of RGB: pixels stay in [0, 1].
    pub const IDENTITY: Self = Self { mean: Cow::Borrowed(&[0.0; 3]), std: Cow::Borrowed(&[1.0; 3]) };

    /// Given statistics, one per channel.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self { mean: Cow::Owned(mean), std: Cow::Owned(std) }
    }

    /// No normalisation of `channels` channels.
    pub fn identity(channels: usize) -> Self {
        Self::new(vec![0.0; channels], vec![1.0; channels])
    }

    /// The default of a run without `--mean`/`--std`: ImageNet's for 3 channels; otherwise 0.5
    /// and 0.25 per channel (which maps [0, 1] to [-2, 2], about ImageNet's spread) until the
    /// data's own statistics are given (`mae stats`).
    pub fn default_for(channels: usize) -> Self {
        if channels == 3 {
            Self::IMAGENET
        } else {
            Self::new(vec![0.5; channels], vec![0.25; channels])
        }
    }

    /// The number of channels the transforms produce.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return Err(DataError::Config(format!(
                "normalisation needs one mean and one std per channel, got {} and {}",
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.mean.len() > MAX_CHANNELS {
            return Err(DataError::Config(format!("{} channels: at most {MAX_CHANNELS}", self.mean.len())));
        }
        if self.std.iter().chain(self.mean.iter()).any(|v| !v.is_finite())
            || self.std.iter().any(|&s| s <= 0.0)
        {
            return Err(DataError::Config(format!("normalisation {self:?} needs finite values and std > 0")));
        }
        Ok(())
    }
}

/// The most channels a run takes: images have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)
/// channels, or as many bands as a multi-band TIFF holds (up to `tiff_bands::MAX_PAGES` pages).
pub const MAX_CHANNELS: usize = 256;

/// A region of an image, in pixels, as torchvision's `(i, j, h, w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// A per-sample image transform run by the loader's workers. `rng` is the sample's own keyed
/// generator (see [`crate::sample_rng`]); deterministic transforms ignore it.
pub trait Transform: Send + Sync + Debug {
    /// Output (height, width).
    fn output_size(&self) -> (usize, usize);

    /// Output channels.
    fn channels(&self) -> usize;

    /// Checks the parameters; the loader calls it once before starting.
    fn check(&self) -> Result<()>;

    /// Writes the transformed image as CHW floats into `out` (length channels * height * width).
    fn apply_into(&self, image: &Image, rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()>;

    /// The transformed image as a `[C, H, W]` CPU tensor.
    fn apply(&self, image: &Image, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        self.check()?;
        let (h, w) = self.output_size();
        let c = self.channels();
        let mut out = vec![0f32; c * h * w];
        self.apply_into(image, rng, &mut out)?;
        Ok(Tensor::from_vec(out, (c, h, w), &Device::Cpu)?)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries of a uniform area fraction in `scale`
/// and a log-uniform aspect ratio in `ratio`, then a central crop clamped to the ratio range.
/// Rounding is Python's (half to even), so the same random numbers give the same box.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl RngCore,
) -> CropBox {
    let area = width as f64 * height as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
            let (w, h) = (w as u32, h as u32);
            let top = below(rng, (height - h + 1) as u64) as u32;
            let left = below(rng, (width - w + 1) as u64) as u32;
            return CropBox { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0.min(ratio.1) {
        (width, ((width as f64 / ratio.0.min(ratio.1)).round_ties_even() as u32).clamp(1, height))
    } else if in_ratio > ratio.0.max(ratio.1) {
        (((height as f64 * ratio.0.max(ratio.1)).round_ties_even() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// The MAE pre-training augmentation: `RandomResizedCrop(size, scale=(0.2, 1.0),
/// ratio=(3/4, 4/3), interpolation=BICUBIC)`, `RandomHorizontalFlip(0.5)`, `ToTensor`,
/// `Normalize(ImageNet)`: the paper's `main_pretrain.py` and lightly's `MAETransform`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaeTrainTransform {
    pub size: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub hflip: f64,
    pub normalize: Normalize,
}

impl MaeTrainTransform {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
            normalize: Normalize::IMAGENET,
        }
    }

    /// The transform with `normalize` (which also sets the number of channels).
    pub fn with_normalize(self, normalize: Normalize) -> Self {
        Self { normalize, ..self }
    }
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > 8192 {
        return Err(DataError::Config(format!("transform output size {size} is outside 1..=8192")));
    }
    Ok(())
}

impl Transform for MaeTrainTransform {
    fn output_size(&self) -> (usize, usize) {
        (self.size, self.size)
    }

    fn channels(&self) -> usize {
        self.normalize.channels()
    }

    fn check(&self) -> Result<()> {
        check_size(self.size)?;
        let (s, r) = (self.scale, self.ratio);
        if !(s.0 > 0.0 && s.0 <= s.1 && s.1 <= 1.0) {
            return Err(DataError::Config(format!("crop scale {s:?} must satisfy 0 < lo <= hi <= 1")));
        }
        if !(r.0 > 0.0 && r.0 <= r.1 && r.1.is_finite()) {
            return Err(DataError::Config(format!("crop ratio {r:?} must satisfy 0 < lo <= hi")));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return Err(DataError::Config(format!("flip probability {} is outside [0, 1]", self.hflip)));
        }
        self.normalize.check()
    }

    fn apply_into(&self, image: &Image, rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        let plane = to_plane(image, self.channels())?;
        let crop_box = random_resized_crop_params(plane.width, plane.height, self.scale, self.ratio, rng);
        // Draw the flip after the crop, in torchvision's order.
        let flip = unit_f64(rng) < self.hflip;
        let cropped = crop(&plane, crop_box)?;
        let size = self.size as u32;
        let resized = resize(&cropped, size, size)?;
        write_chw(&resized, flip, &self.normalize, out)
    }
}

/// The evaluation transform (MAE's linear probe and fine-tune eval, timm's default): resize the
/// shorter side to `floor(size / crop_pct)` with bicubic, centre-crop `size` x `size`, normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTransform {
    pub size: usize,
    /// Fraction of the resized image kept by the centre crop; 0.875 (224 of 256) by default,
    /// 1.0 to resize the shorter side straight to `size`.
    pub crop_pct: f64,
    pub normalize: Normalize,
}

impl EvalTransform {
    pub fn new(size: usize) -> Self {
        Self { size, crop_pct: 0.875, normalize: Normalize::IMAGENET }
    }

    /// The transform with `normalize` (which also sets the number of channels).
    pub fn with_normalize(self, normalize: Normalize) -> Self {
        Self { normalize, ..self }
    }

    /// The resized (width, height) for an input of `width` x `height`, as torchvision's
    /// `Resize(int)`: the shorter side becomes the target, the longer one is truncated.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let short_target = (self.size as f64 / self.crop_pct).floor().max(self.size as f64) as u64;
        let (short, long) = (width.min(height) as u64, width.max(height) as u64);
        let long_target = (short_target * long / short).max(short_target) as u32;
        let short_target = short_target as u32;
        if width <= height {
            (short_target, long_target)
        } else {
            (long_target, short_target)
        }
    }
}

/// Images more than this many times longer than wide (or the reverse) are cut to their middle
/// before the eval resize; the centre crop keeps only the middle anyway. Resizing a 65536x2 strip
/// to 1,179,648x36 pixels allocated ~150 MB (found by mae-fuzz); no ordinary picture is cut.
const MAX_ASPECT: u32 = 16;

/// The centred part of a `width` x `height` image at most [`MAX_ASPECT`] times longer than its
/// short side (the whole image when it is not that long).
fn middle_strip(width: u32, height: u32) -> CropBox {
    let (w, h) = (width.min(MAX_ASPECT.saturating_mul(height)), height.min(MAX_ASPECT.saturating_mul(width)));
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

impl Transform for EvalTransform {
    fn output_size(&self) -> (usize, usize) {
        (self.size, self.size)
    }

    fn channels(&self) -> usize {
        self.normalize.channels()
    }

    fn check(&self) -> Result<()> {
        check_size(self.size)?;
        if !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return Err(DataError::Config(format!("crop_pct {} is outside (0, 1]", self.crop_pct)));
        }
        self.normalize.check()
    }

    fn apply_into(&self, image: &Image, _rng: &mut ChaCha8Rng, out: &mut [f32]) -> Result<()> {
        let whole = to_plane(image, self.channels())?;
        let plane = crop(&whole, middle_strip(whole.width, whole.height))?;
        let (w, h) = self.resized_size(plane.width, plane.height);
        let resized = resize(&plane, w, h)?;
        let size = self.size as u32;
        // torchvision's CenterCrop: int(round((h - size) / 2)), Python rounding.
        let offset = |full: u32| ((full - size) as f64 / 2.0).round_ties_even() as u32;
        let centre = CropBox { top: offset(h), left: offset(w), height: size, width: size };
        let cropped = crop(&resized, centre)?;
        write_chw(&cropped, false, &self.normalize, out)
    }
}
