//! The MAE reconstruction loss (facebookresearch/mae `forward_loss`, HF `ViTMAEForPreTraining`):
//! per-patch mean squared error, averaged over the REMOVED patches only, against raw patch pixels
//! or, with `norm_pix_loss`, against pixels normalised per patch (mean, unbiased variance, eps 1e-6).

use candle_core::{bail, Result, Tensor, D};

/// The paper's epsilon inside `sqrt(var + eps)` for `norm_pix_loss`.
pub const NORM_PIX_EPS: f64 = 1e-6;

/// Normalises each patch row `[B, L, P]` by its own mean and unbiased variance.
pub fn normalize_patches(target: &Tensor) -> Result<Tensor> {
    let p = target.dim(D::Minus1)?;
    if p < 2 {
        bail!("norm_pix_loss needs at least 2 values per patch, got {p}")
    }
    let mean = target.mean_keepdim(D::Minus1)?;
    let centered = target.broadcast_sub(&mean)?;
    // Unbiased variance, as torch.Tensor.var's default.
    let var = (centered.sqr()?.sum_keepdim(D::Minus1)? / (p - 1) as f64)?;
    centered.broadcast_div(&(var + NORM_PIX_EPS)?.sqrt()?)
}

/// Mean over removed patches of the per-patch MSE: `pred, target: [B, L, P]`, `mask: [B, L]`
/// with 1 = removed. Returns a scalar.
pub fn masked_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() {
        bail!("prediction {:?} and target {:?} differ in shape", pred.dims(), target.dims())
    }
    let (b, l, _) = pred.dims3()?;
    if mask.dims() != [b, l] {
        bail!("mask {:?} does not match predictions [{b}, {l}, _]", mask.dims())
    }
    let per_patch = (pred - target)?.sqr()?.mean(D::Minus1)?; // [B, L]
    let mask = mask.to_dtype(per_patch.dtype())?;
    (per_patch * &mask)?.sum_all()? / mask.sum_all()?
}

/// The full MAE loss from images `[B, C, H, W]`, predictions `[B, L, p*p*C]` and the mask.
pub fn mae_loss(
    imgs: &Tensor,
    pred: &Tensor,
    mask: &Tensor,
    patch: usize,
    norm_pix_loss: bool,
) -> Result<Tensor> {
    let mut target = mae_patch::patchify(imgs, patch)?;
    if norm_pix_loss {
        target = normalize_patches(&target)?;
    }
    masked_mse(pred, &target.to_dtype(pred.dtype())?, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn averages_only_over_removed_patches() -> Result<()> {
        let dev = Device::Cpu;
        // Two patches of two values; patch 0 is kept (error ignored), patch 1 removed.
        let pred = Tensor::new(&[[[10f32, 10.], [1., 2.]]], &dev)?;
        let target = Tensor::new(&[[[0f32, 0.], [0., 0.]]], &dev)?;
        let mask = Tensor::new(&[[0f32, 1.]], &dev)?;
        let loss = masked_mse(&pred, &target, &mask)?.to_scalar::<f32>()?;
        assert!((loss - 2.5).abs() < 1e-6, "{loss}");
        Ok(())
    }

    #[test]
    fn norm_pix_uses_unbiased_variance() -> Result<()> {
        let t = Tensor::new(&[[[1f32, 2., 3., 4.]]], &Device::Cpu)?;
        let n = normalize_patches(&t)?.flatten_all()?.to_vec1::<f32>()?;
        // mean 2.5, unbiased var 5/3.
        let sd = (5.0f64 / 3.0 + NORM_PIX_EPS).sqrt();
        for (got, x) in n.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((*got as f64 - (x - 2.5) / sd).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn shape_errors_are_reported() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((1, 2, 3), candle_core::DType::F32, &dev).unwrap();
        let m = Tensor::zeros((1, 3), candle_core::DType::F32, &dev).unwrap();
        assert!(masked_mse(&a, &a, &m).is_err());
    }
}
