//! The heads: a linear layer, and the linear probe's `BatchNorm1d` without affine parameters.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};

use mae::{MaeError, Result};

/// `nn.Linear(in_dim, num_classes)` with its weight from [`super::trunc_normal`] (`std`) and a
/// zero bias, as both of the paper's heads are initialised (std 0.01 for the linear probe,
/// following MoCo v3; 2e-5 for fine-tuning).
#[derive(Debug, Clone)]
pub struct LinearHead {
    pub weight: Var,
    pub bias: Var,
}

impl LinearHead {
    pub fn new(in_dim: usize, num_classes: usize, std: f64, seed: u64, device: &Device) -> Result<Self> {
        let w = super::trunc_normal(num_classes * in_dim, std, seed);
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (num_classes, in_dim), device)?)?,
            bias: Var::zeros(num_classes, DType::F32, device)?,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.bias.elem_count()
    }

    /// `[B, D] -> [B, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.as_tensor();
        let x = x.to_dtype(w.dtype())?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(self.bias.as_tensor())?)
    }
}

/// `BatchNorm1d(dim, affine=False, eps)` as PyTorch computes it: in training, each feature is
/// normalised by the batch's mean and (biased) variance, and the running estimates move by
/// `momentum` towards the batch's mean and unbiased variance; at evaluation, the running
/// estimates normalise. The estimates start at mean 0, variance 1.
#[derive(Debug)]
pub struct BatchNorm1d {
    running_mean: Mutex<Tensor>,
    running_var: Mutex<Tensor>,
    eps: f64,
    momentum: f64,
}

fn poisoned() -> MaeError {
    MaeError::Config("batch-norm statistics lock poisoned by an earlier panic".into())
}

impl BatchNorm1d {
    /// The paper's probe: eps 1e-6, PyTorch's momentum 0.1.
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        Self::with(dim, 1e-6, 0.1, device)
    }

    pub fn with(dim: usize, eps: f64, momentum: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            running_mean: Mutex::new(Tensor::zeros(dim, DType::F32, device)?),
            running_var: Mutex::new(Tensor::ones(dim, DType::F32, device)?),
            eps,
            momentum,
        })
    }

    /// Training: `[B, D]` normalised by the batch's statistics; updates the running ones.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _) = x.dims2()?;
        if b < 2 {
            return Err(MaeError::Config(format!(
                "batch norm needs at least 2 samples per training batch, got {b}"
            )));
        }
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(0)?; // [1, D]
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(0)?; // biased, [1, D]
        let out = centered.broadcast_div(&(&var + self.eps)?.sqrt()?)?;
        {
            let m = self.momentum;
            let unbiased = (var.squeeze(0)?.detach() * (b as f64 / (b - 1) as f64))?;
            let mut rm = self.running_mean.lock().map_err(|_| poisoned())?;
            *rm = ((&*rm * (1.0 - m))? + (mean.squeeze(0)?.detach() * m)?)?;
            let mut rv = self.running_var.lock().map_err(|_| poisoned())?;
            *rv = ((&*rv * (1.0 - m))? + (unbiased * m)?)?;
        }
        Ok(out)
    }

    /// Evaluation: `[B, D]` normalised by the running statistics.
    pub fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let (mean, var) = self.running_stats()?;
        let x = x.to_dtype(DType::F32)?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?)
    }

    /// `(running_mean, running_var)`, each `[D]`.
    pub fn running_stats(&self) -> Result<(Tensor, Tensor)> {
        let mean = self.running_mean.lock().map_err(|_| poisoned())?.clone();
        let var = self.running_var.lock().map_err(|_| poisoned())?.clone();
        Ok((mean, var))
    }

    /// Restores the running statistics (from a checkpoint); `source` names it in errors.
    pub fn set_running_stats(&self, mean: &Tensor, var: &Tensor, source: &str) -> Result<()> {
        let mut rm = self.running_mean.lock().map_err(|_| poisoned())?;
        let mut rv = self.running_var.lock().map_err(|_| poisoned())?;
        for (name, t, ours) in [("running_mean", mean, &*rm), ("running_var", var, &*rv)] {
            if t.dims() != ours.dims() {
                return Err(MaeError::ShapeMismatch {
                    origin: source.to_string(),
                    name: format!("bn.{name}"),
                    expected: ours.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        *rm = mean.to_dtype(DType::F32)?.to_device(rm.device())?;
        *rv = var.to_dtype(DType::F32)?.to_device(rv.device())?;
        Ok(())
    }
}
