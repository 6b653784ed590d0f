//! `nn.Linear` on the CPU as one op with its own backward: `y = x W^T + b`.
//!
//! Composed of candle ops, the product is `x.matmul(W.t())` plus a bias add, and candle's
//! backward returns the weight gradient as `(x^T g)^T`: a transposed view that then has to be
//! copied element by element into the weight's layout (9% of a ViT-B/32 training step, all on
//! one thread). Here the backward computes `g^T x` straight into the weight's `[out, in]`
//! layout, `g W` for the input and the bias gradient as column sums of `g`; the forward starts
//! the output from the bias rows and lets gemm add the product into it (one buffer, one pass).
//!
//! Elsewhere (CUDA, Metal, other dtypes, `MAE_FUSED_CPU=0`) the composed ops run
//! ([`composed`]). Both agree within f32 rounding: adding the bias before the product's partial
//! sums rather than after them moves a value by an ulp or so.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::fused::{self, on_cpu_f32, slice};
use crate::product::{self, MatRef, Precision};

/// `x W^T + b` for `x` `[rows, in]`, `weight` `[out, in]` and `bias` `[out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !applies(x, weight, bias) {
        return composed::linear(x, weight, bias);
    }
    linear_op(x, weight, bias, Precision::F32)
}

/// [`linear`] with its three products (the forward and both of the backward) in `precision`,
/// on f32 tensors on the CPU: with [`Precision::Bf16`], mixed precision ([`crate::product`]):
/// the operands rounded to bf16 as they are packed, the sums, the output and the gradients in
/// f32. Fails where [`applies`] does not hold (the caller casts instead).
pub fn linear_in(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Result<Tensor> {
    if !applies(x, weight, bias) {
        candle_core::bail!(
            "linear_in: needs 2-D f32 tensors on the CPU (x {:?}, weight {:?})",
            x.layout(),
            weight.dtype()
        )
    }
    linear_op(x, weight, bias, precision)
}

/// Whether this op runs `x W^T + b` (2-D f32 tensors on the CPU, kernels on).
pub fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let operands: Vec<&Tensor> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
    on_cpu_f32(&operands) && x.rank() == 2 && weight.rank() == 2
}

fn linear_op(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let op = LinearOp { precision };
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

/// The same with candle's ops and backward: the fallback, and what the op is tested against.
pub mod composed {
    use candle_core::{Result, Tensor};

    pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = x.matmul(&weight.t()?)?;
        match bias {
            Some(b) => crate::fused::add_bias(&y, b),
            None => Ok(y),
        }
    }
}

struct LinearOp {
    precision: Precision,
}

impl LinearOp {
    /// `x W^T (+ b)` into a new `[rows, out]` buffer.
    fn forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inner) = xl.shape().dims2()?;
        let (out, w_inner) = wl.shape().dims2()?;
        if inner != w_inner {
            candle_core::bail!("linear: input rows of {inner} for a weight of [{out}, {w_inner}]");
        }
        let (x, w) = (slice(xs, xl, "linear input")?, slice(ws, wl, "linear weight")?);
        let mut y = match bias {
            Some((bs, bl)) => {
                let b = slice(bs, bl, "linear bias")?;
                if b.len() != out {
                    candle_core::bail!("linear: a bias of {} for {out} outputs", b.len());
                }
                fused::fill_pieces(rows * out, out, fused::ROWS_PER_CHUNK, |_, row| {
                    row.copy_from_slice(&b[..row.len()])
                })
            }
            None => vec![0f32; rows * out],
        };
        // y (+)= x W^T: W is [out, in] row-major, read as its transpose through the strides.
        product::matmul_into(
            &mut y,
            out,
            MatRef::row_major(x, rows, inner),
            MatRef::row_major(w, out, inner).t(),
            bias.is_some(),
            self.precision,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    /// The gradients of `x` (`g W`) and of the weight (`g^T x`, in the weight's own layout),
    /// on detached operands so that no graph is recorded: candle's matmuls in f32, our products
    /// in another precision.
    fn grads(&self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        if self.precision != Precision::F32 {
            let dx = product::matmul(&grad, &weight.detach(), self.precision)?;
            let dw = product::matmul(&grad.t()?, &x.detach(), self.precision)?;
            return Ok((dx, dw));
        }
        let dx = grad.matmul(&weight.detach())?;
        let dw = grad.t()?.matmul(&x.detach())?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "mae-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "mae-linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, grad)?;
        let db = fused::column_sums_of(grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, on_threads, values};
    use candle_core::{DType, Var};

    #[test]
    fn matches_the_composed_ops_forward_and_backward() -> Result<()> {
        // Odd sizes: widths that are no multiple of the SIMD width, one row, one output.
        for (rows, inner, out) in [(37, 24, 40), (1, 5, 3), (70, 19, 1), (130, 64, 96)] {
            let (x, w, b) =
                (values(&[rows, inner], 1, 2.0)?, values(&[out, inner], 2, 0.5)?, values(&[out], 3, 1.0)?);
            check(
                &[x.clone(), w.clone(), b],
                1e-5,
                |t| linear(&t[0], &t[1], Some(&t[2])),
                |t| composed::linear(&t[0], &t[1], Some(&t[2])),
            )?;
            check(&[x, w], 1e-5, |t| linear(&t[0], &t[1], None), |t| composed::linear(&t[0], &t[1], None))?;
        }
        Ok(())
    }

    #[test]
    fn weight_gradient_arrives_in_the_weights_layout() -> Result<()> {
        let w = Var::from_tensor(&values(&[6, 4], 4, 1.0)?)?;
        let y = linear(&values(&[9, 4], 5, 1.0)?, w.as_tensor(), None)?;
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(&w).expect("weight gradient");
        assert_eq!(g.dims(), &[6, 4]);
        assert!(g.is_contiguous());
        Ok(())
    }

    #[test]
    fn the_same_bits_on_one_and_two_threads() -> Result<()> {
        // Large enough that gemm splits the work and the bias sums run in several chunks.
        let (x, w, b) = (values(&[300, 96], 6, 1.0)?, values(&[128, 96], 7, 0.3)?, values(&[128], 8, 1.0)?);
        let run = || -> Result<Vec<Vec<u32>>> {
            let vars = [Var::from_tensor(&x)?, Var::from_tensor(&w)?, Var::from_tensor(&b)?];
            let y = linear(vars[0].as_tensor(), vars[1].as_tensor(), Some(vars[2].as_tensor()))?;
            let g = (&y * values(&[300, 128], 9, 1.0)?)?.sum_all()?.backward()?;
            let mut out = vec![y];
            out.extend(vars.iter().map(|v| g.get(v).expect("gradient").clone()));
            out.iter()
                .map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect()))
                .collect()
        };
        assert_eq!(on_threads(1, run)?, on_threads(2, run)?);
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() -> Result<()> {
        let err =
            linear(&values(&[4, 8], 10, 1.0)?, &values(&[3, 7], 11, 1.0)?, None).unwrap_err().to_string();
        assert!(err.contains("linear"), "{err}");
        let b = values(&[5], 12, 1.0)?;
        let err =
            linear(&values(&[4, 8], 10, 1.0)?, &values(&[3, 8], 11, 1.0)?, Some(&b)).unwrap_err().to_string();
        assert!(err.contains("bias"), "{err}");
        let y = linear(
            &values(&[4, 8], 10, 1.0)?.to_dtype(DType::F64)?,
            &values(&[3, 8], 11, 1.0)?.to_dtype(DType::F64)?,
            None,
        )?;
        assert_eq!(y.dtype(), DType::F64, "other dtypes take the composed ops");
        Ok(())
    }
}
