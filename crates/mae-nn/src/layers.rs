//! Transformer building blocks shared by the encoder and the decoder, in timm's names
//! (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`).
//!
//! Every op here has a real backward: candle-nn 0.11's fused `LayerNorm`, `softmax_last_dim` and
//! `sdpa` do not, and gradients would silently stop there. LayerNorm, softmax, GELU and the bias
//! add run on our CPU kernels with their own backward ([`crate::fused`]), and so does attention
//! ([`crate::attention`]); composed candle ops elsewhere.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use crate::fused::softmax_last_dim;
use crate::product::Precision;
use crate::{attention, fused, linear};

/// Mixed precision the way PyTorch's autocast does it: the weights (and the optimizer state)
/// stay in their own dtype (f32), the matrix products run in `dtype` (bf16 on a GPU, where the
/// tensor cores are), and everything else (LayerNorm, softmax, GELU, residual sums, the loss)
/// stays in f32. `None` computes in the dtype of the weights.
///
/// The casts are ordinary candle ops, so gradients flow back through them into the f32
/// weights.
pub fn cast_for_compute(x: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    match compute {
        Some(dtype) if dtype != x.dtype() => x.to_dtype(dtype),
        _ => Ok(x.clone()),
    }
}

/// `nn.Linear`: `y = x W^T + b`, weight `[out, in]`.
///
/// Inputs of any rank are flattened to one `[rows, in]` matmul ([`crate::linear`]: one op with
/// its own backward on the CPU). candle-nn's `Linear` instead broadcasts the weight over the
/// batch, which makes the weight gradient a batch of small matmuls summed afterwards: several
/// times slower on CPU for the same result.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Matmul dtype ([`cast_for_compute`]); the output has the input's dtype either way.
    compute: Option<DType>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, compute: None }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Run the product in `dtype` (e.g. bf16) while the weights stay as they are.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute = dtype;
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap_or(&mut 0) = self.weight.dim(0)?;
        let x2 = x.reshape((rows, in_dim))?;
        if self.compute == Some(DType::BF16) && linear::applies(&x2, &self.weight, self.bias.as_ref()) {
            // On the CPU, bf16 is mixed precision inside the op: f32 in and out, bf16 operands
            // of the products (converted while packed), no cast ops in the graph.
            let y = linear::linear_in(&x2, &self.weight, self.bias.as_ref(), Precision::Bf16)?;
            return y.reshape(out_dims);
        }
        let lhs = cast_for_compute(&x2, self.compute)?;
        let weight = cast_for_compute(&self.weight, self.compute)?;
        let bias = self.bias.as_ref().map(|b| cast_for_compute(b, self.compute)).transpose()?;
        let y = linear::linear(&lhs, &weight, bias.as_ref())?;
        y.reshape(out_dims)?.to_dtype(x.dtype())
    }
}

/// A [`Linear`] with weight `[out, in]` (and bias `[out]`) read from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Ok(Linear::new(weight, bias))
}

/// LayerNorm over the last dimension ([`fused::layer_norm`]).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Multi-head self-attention with a fused `qkv` projection (rows ordered q, k, v).
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
    compute: Option<DType>,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            candle_core::bail!("width {dim} is not divisible by {num_heads} attention heads")
        }
        Ok(Self {
            qkv: linear(dim, 3 * dim, qkv_bias, vb.pp("qkv"))?,
            proj: linear(dim, dim, true, vb.pp("proj"))?,
            num_heads,
            scale: 1.0 / ((dim / num_heads) as f64).sqrt(),
            compute: None,
        })
    }

    /// Matmul dtype of the projections and of both attention products; softmax stays in f32.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.qkv.set_compute_dtype(dtype);
        self.proj.set_compute_dtype(dtype);
        self.compute = dtype;
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // [B, N, 3D], q, k, v heads side by side

        // bf16 on the CPU: the attention op's own products stay f32 (its kernel has no bf16
        // path yet); the projections around it are bf16.
        let compute = match self.compute {
            Some(DType::BF16) if fused::on_cpu_f32(&[&qkv]) => None,
            other => other,
        };
        let out = attention::attention(&qkv, self.num_heads, self.scale, compute)?; // [B, N, D]
        self.proj.forward(&out)
    }
}

/// The transformer MLP: `fc2(GELU(fc1(x)))`, GELU the exact (erf) form as in timm and HF.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(dim, hidden, true, vb.pp("fc1"))?,
            fc2: linear(hidden, dim, true, vb.pp("fc2"))?,
        })
    }
}

impl Mlp {
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.fc1.set_compute_dtype(dtype);
        self.fc2.set_compute_dtype(dtype);
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&fused::gelu_erf(&self.fc1.forward(x)?)?)
    }
}

/// Shape of one pre-norm transformer block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub dim: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &BlockConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(cfg.dim, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg.dim, cfg.num_heads, cfg.qkv_bias, vb.pp("attn"))?,
            norm2: LayerNorm::new(cfg.dim, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(cfg.dim, cfg.mlp_dim, vb.pp("mlp"))?,
        })
    }

    /// `(name, shape)` of every parameter of a block, relative to the block's prefix.
    pub fn parameter_shapes(cfg: &BlockConfig) -> Vec<(String, Vec<usize>)> {
        let (d, m) = (cfg.dim, cfg.mlp_dim);
        let mut out =
            vec![("norm1.weight", vec![d]), ("norm1.bias", vec![d]), ("attn.qkv.weight", vec![3 * d, d])];
        if cfg.qkv_bias {
            out.push(("attn.qkv.bias", vec![3 * d]));
        }
        out.extend([
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![m, d]),
            ("mlp.fc1.bias", vec![m]),
            ("mlp.fc2.weight", vec![d, m]),
            ("mlp.fc2.bias", vec![d]),
        ]);
        out.into_iter().map(|(n, s)| (n.to_string(), s)).collect()
    }

    /// Matmul dtype of every product in the block ([`cast_for_compute`]).
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.attn.set_compute_dtype(dtype);
        self.mlp.set_compute_dtype(dtype);
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// Per-sample multipliers of a block's two residual branches for stochastic depth (timm's
/// `DropPath`, as MAE fine-tuning uses it): `[B, 1, 1]` tensors of 0 (the branch is dropped for
/// that sample) or `1 / keep_prob`. `None` leaves the branch as it is.
#[derive(Debug, Clone, Default)]
pub struct ResidualKeep {
    pub attn: Option<Tensor>,
    pub mlp: Option<Tensor>,
}

impl Block {
    /// [`Block::forward`] with stochastic depth: `x + keep.attn * attn(norm1(x))`, then
    /// `x + keep.mlp * mlp(norm2(x))`, each multiplier broadcast over the tokens of its sample.
    pub fn forward_with_keep(&self, x: &Tensor, keep: &ResidualKeep) -> Result<Tensor> {
        let scaled = |branch: Tensor, keep: &Option<Tensor>| match keep {
            Some(k) => branch.broadcast_mul(&k.to_dtype(branch.dtype())?),
            None => Ok(branch),
        };
        let x = (x + scaled(self.attn.forward(&self.norm1.forward(x)?)?, &keep.attn)?)?;
        &x + scaled(self.mlp.forward(&self.norm2.forward(&x)?)?, &keep.mlp)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn layer_norm_and_softmax_have_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 4.], [0., -1., 3.]], &dev)?)?;
        let w = Var::from_tensor(&Tensor::new(&[1f32, 2., 3.], &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(3, DType::F32, &dev)?)?;
        let ln = LayerNorm { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), eps: 1e-6 };
        let y = softmax_last_dim(&ln.forward(x.as_tensor())?)?;
        let loss = (y * Tensor::new(&[[1f32, 0., 2.], [3., 1., 0.]], &dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        for v in [&x, &w, &b] {
            let g = grads.get(v).expect("gradient reaches every input");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        // Softmax rows sum to one.
        let s = softmax_last_dim(x.as_tensor())?.sum(1)?.to_vec1::<f32>()?;
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
        Ok(())
    }
}
