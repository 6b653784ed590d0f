//! Evaluation of a pre-trained encoder: weighted k-NN on frozen features (lightly's protocol,
//! also run while pre-training through [`KnnMonitor`]), and the paper's two supervised
//! protocols (He et al. 2021, Sec. 4 and A.2; facebookresearch/mae `main_linprobe.py`,
//! `main_finetune.py`):
//!
//! - [`knn`]: weighted k-NN (k = 20, temperature 0.07 by default) of pooled features;
//! - [`linear_probe`]: the encoder frozen, a `BatchNorm1d` without affine parameters and a
//!   linear layer trained on its features;
//! - [`finetune`]: the whole encoder trained with a classification head, layer-wise learning
//!   rate decay, drop path and label smoothing.
//!
//! Both train on `mae-train`'s [`mae_train::Trainer`] (checkpoints with an exact resume,
//! `metrics.jsonl`, the non-finite guard); this module holds what they share: the loss, top-k
//! accuracy and the head initialisation.

pub mod finetune;
pub mod head;
pub mod knn;
pub mod linear_probe;

/// The evaluation transform of an encoder: its image size, and `normalize` (the statistics its
/// pre-training used), else the default of its channel count (ImageNet's for RGB; see
/// `mae_data::Normalize::default_for`).
pub fn eval_transform(
    config: &mae_vit::VitConfig,
    normalize: Option<&mae_data::Normalize>,
) -> mae_data::EvalTransform {
    let normalize =
        normalize.cloned().unwrap_or_else(|| mae_data::Normalize::default_for(config.in_channels));
    mae_data::EvalTransform::new(config.image_size[0]).with_normalize(normalize)
}

pub use knn::{
    extract_feature_rows, extract_features, extract_features_with, knn_accuracy, knn_classify, raw_pixels,
    KnnMonitor, KnnResult,
};

use candle_core::{DType, Device, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use mae::{MaeError, Result};

/// Accuracy of a classifier on a labeled set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    /// Present when there are at least 5 classes.
    pub top5: Option<f64>,
    /// Mean cross-entropy (without label smoothing).
    pub loss: f64,
    pub num_samples: usize,
}

/// Running sums of [`Accuracy`] over batches.
#[derive(Debug, Clone, Default)]
pub struct AccuracyCounter {
    top1: usize,
    top5: usize,
    loss_sum: f64,
    n: usize,
}

impl AccuracyCounter {
    /// Adds a batch of logits `[B, C]` and its labels.
    pub fn add(&mut self, logits: &Tensor, labels: &[u32]) -> Result<()> {
        let (b, c) = logits.dims2()?;
        if b != labels.len() {
            return Err(MaeError::Config(format!("{b} logits for {} labels", labels.len())));
        }
        let loss = smoothed_cross_entropy(logits, labels, 0.0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.loss_sum += loss * b as f64;
        let rows = logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        for (row, &label) in rows.iter().zip(labels) {
            let truth = label as usize;
            if truth >= c {
                return Err(MaeError::Config(format!("label {label} is out of range for {c} classes")));
            }
            // Rank of the true class: how many classes score strictly higher (ties go to the
            // lower index, as a stable descending sort would place them).
            let rank = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| v > row[truth] || (v == row[truth] && j < truth))
                .count();
            self.top1 += usize::from(rank == 0);
            self.top5 += usize::from(rank < 5);
        }
        self.n += b;
        Ok(())
    }

    /// The accuracy so far; `num_classes` decides whether top-5 is reported.
    pub fn finish(&self, num_classes: usize) -> Result<Accuracy> {
        if self.n == 0 {
            return Err(MaeError::Config("no labeled sample to evaluate".into()));
        }
        let n = self.n as f64;
        Ok(Accuracy {
            top1: self.top1 as f64 / n,
            top5: (num_classes >= 5).then(|| self.top5 as f64 / n),
            loss: self.loss_sum / n,
            num_samples: self.n,
        })
    }
}

/// `log_softmax` over the last dimension from differentiable ops (the max is a constant shift,
/// detached as in `mae_vit::layers::softmax_last_dim`).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Cross-entropy with label smoothing `eps`, averaged over the batch, as timm's
/// `LabelSmoothingCrossEntropy`: `(1 - eps) * NLL(y) + eps * mean_c(-log p_c)`. That is the
/// cross-entropy against the target `(1 - eps) * onehot(y) + eps / C`; `eps = 0` is the plain
/// cross-entropy. `logits: [B, C]`; the loss is f32 whatever their dtype.
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &[u32], eps: f64) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if b != labels.len() || b == 0 {
        return Err(MaeError::Config(format!(
            "cross-entropy of {b} logits rows with {} labels",
            labels.len()
        )));
    }
    if !(0.0..1.0).contains(&eps) {
        return Err(MaeError::Config(format!("label smoothing {eps} is outside [0, 1)")));
    }
    let mut target = vec![(eps / c as f64) as f32; b * c];
    for (i, &y) in labels.iter().enumerate() {
        if y as usize >= c {
            return Err(MaeError::Config(format!("label {y} is out of range for {c} classes")));
        }
        target[i * c + y as usize] += (1.0 - eps) as f32;
    }
    let target = Tensor::from_vec(target, (b, c), logits.device())?;
    let log_p = log_softmax_last_dim(&logits.to_dtype(DType::F32)?)?; // [B, C]
    Ok((log_p * target)?.sum_all()?.neg()?.affine(1.0 / b as f64, 0.0)?)
}

/// `n` values of timm's `trunc_normal_(std=std)`: normal(0, std) redrawn outside [-2, 2]
/// (absolute bounds, as timm's defaults: for the small heads' std it is a plain normal),
/// reproducible from `seed`.
pub fn trunc_normal(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let Ok(normal) = Normal::new(0.0f64, std.abs()) else { return vec![0.0; n] };
    (0..n)
        .map(|_| loop {
            let v = normal.sample(&mut rng);
            if (-2.0..=2.0).contains(&v) {
                break v as f32;
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_the_rank_of_the_true_class() -> Result<()> {
        let logits = Tensor::new(
            &[
                [0.1f32, 0.9, 0.0, 0.0, 0.0, 0.0],
                [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
                [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
            ],
            &Device::Cpu,
        )?;
        let mut acc = AccuracyCounter::default();
        acc.add(&logits, &[1, 4, 0])?; // rank 0, rank 4, rank 5
        let r = acc.finish(6)?;
        assert!((r.top1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.top5, Some(2.0 / 3.0));
        assert_eq!(acc.finish(4)?.top5, None, "no top-5 under 5 classes");
        assert!(acc.add(&logits, &[0, 6, 0]).is_err(), "label out of range");
        Ok(())
    }

    #[test]
    fn trunc_normal_has_its_std_and_is_reproducible() {
        let v = trunc_normal(20_000, 0.01, 3);
        let std = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((std - 0.01).abs() < 5e-4, "{std}");
        assert_eq!(v, trunc_normal(20_000, 0.01, 3));
        assert!(trunc_normal(1000, 5.0, 0).iter().all(|x| x.abs() <= 2.0), "cut at +-2");
    }
}
