//! Softmax over the last dimension, and its backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{composed, fill_pieces, output, piece, row_len, slice, use_kernels, ROWS_PER_CHUNK};

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !use_kernels(&[x]) {
        return composed::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "mae-softmax"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(xl, None, "softmax")?;
        crate::fused_cuda::softmax((xs, xl), d)
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(xl, None, "softmax")?;
        let x = slice(xs, xl, "softmax")?;
        let y = fill_pieces(
            x.len(),
            d,
            ROWS_PER_CHUNK,
            #[inline(always)]
            |r, yr| {
                let xr = piece(x, r, d, d);
                let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (yi, &xi) in yr.iter_mut().zip(xr) {
                    *yi = (xi - max).exp();
                    sum += *yi;
                }
                let inv = 1.0 / sum;
                yr.iter_mut().for_each(|v| *v *= inv);
            },
        );
        output(y, xl.shape())
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `dx = y * (g - sum(g * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mae-softmax-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(yl, None, "softmax backward")?;
        crate::fused_cuda::softmax_grad((ys, yl), (gs, gl), d)
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(yl, None, "softmax backward")?;
        let (y, g) = (slice(ys, yl, "y")?, slice(gs, gl, "grad")?);
        let dx = fill_pieces(
            y.len(),
            d,
            ROWS_PER_CHUNK,
            #[inline(always)]
            |r, dr| {
                let (yr, gr) = (piece(y, r, d, d), piece(g, r, d, d));
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for i in 0..d {
                    dr[i] = yr[i] * (gr[i] - dot);
                }
            },
        );
        output(dx, yl.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, values};

    #[test]
    fn softmax_matches_the_composed_ops_forward_and_backward() -> Result<()> {
        check(
            &[values(&[3, 4, 17, 17], 4, 6.0)?],
            1e-5,
            |t| softmax_last_dim(&t[0]),
            |t| composed::softmax_last_dim(&t[0]),
        )
    }
}
