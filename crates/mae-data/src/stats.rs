//! Per-channel pixel statistics of a dataset: the mean and standard deviation of the [0, 1]
//! pixel values that `--mean` / `--std` (and torchvision's `Normalize`) take, computed as the
//! images are seen in training (decoded to the run's channels, resized and centre-cropped).
//!
//! Streaming (one batch in memory), decoded by the loader's worker threads, and deterministic:
//! batches arrive in dataset order whatever the number of workers, and each is summed in f64
//! in a fixed order, so the same data gives the same bits.

use std::sync::Arc;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::loader::{Loader, LoaderConfig};
use crate::transform::{EvalTransform, Normalize};

/// What [`pixel_stats`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelStats {
    /// Per channel, over every pixel of every image seen.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Images counted, and images the loader skipped (unreadable files).
    pub images: usize,
    pub skipped: usize,
}

/// Options of [`pixel_stats`].
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// Side the images are resized and centre-cropped to (the training size: resizing smooths,
    /// which lowers the std a little).
    pub size: usize,
    /// Channels the images are read as (see [`Normalize::channels`]).
    pub channels: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Count at most this many images (the first ones, in dataset order).
    pub limit: Option<usize>,
}

/// Mean and standard deviation per channel of `dataset`'s pixels in [0, 1]; `progress` is
/// called after each batch with the images counted so far.
pub fn pixel_stats(
    dataset: Arc<dyn Dataset>,
    options: &StatsOptions,
    mut progress: impl FnMut(usize),
) -> Result<PixelStats> {
    let c = options.channels;
    let transform = EvalTransform { crop_pct: 1.0, ..EvalTransform::new(options.size) }
        .with_normalize(Normalize::identity(c));
    let config = LoaderConfig { workers: options.workers, ..LoaderConfig::eval(64) };
    let loader = Loader::new(dataset, Arc::new(transform), config)?;
    let (mut sum, mut sum_sq) = (vec![0f64; c], vec![0f64; c]);
    let (mut images, mut skipped) = (0usize, 0usize);
    let limit = options.limit.unwrap_or(usize::MAX);
    for batch in loader.iter_epoch(0)? {
        let batch = batch?;
        skipped += batch.skipped.len();
        let values = batch.images.flatten_all()?.to_vec1::<f32>()?;
        let plane = options.size * options.size;
        for image in values.chunks_exact(c * plane).take(limit - images) {
            for (ch, pixels) in image.chunks_exact(plane).enumerate() {
                let (s, q) =
                    pixels.iter().fold((0f64, 0f64), |(s, q), &v| (s + v as f64, q + (v as f64).powi(2)));
                sum[ch] += s;
                sum_sq[ch] += q;
            }
            images += 1;
        }
        progress(images);
        if images >= limit {
            break;
        }
    }
    if images == 0 {
        return Err(DataError::Config("no image could be read for statistics".into()));
    }
    let n = (images * options.size * options.size) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sum_sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0).sqrt()).collect();
    Ok(PixelStats { mean, std, images, skipped })
}
