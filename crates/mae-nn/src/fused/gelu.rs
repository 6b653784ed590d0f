//! The exact GELU, and its backward: element-wise.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{fill_pieces, output, piece, slice, use_kernels, ELEMS_PER_CHUNK};

/// `Phi(x)` and `phi(x)`: branch-free, so the loops below vectorize (`crate::vmath`), where
/// candle's own `gelu_erf` calls libm's scalar `erff` per value.
use crate::vmath::{normal_cdf, normal_pdf};

/// The exact GELU, `x * Phi(x)` with the normal CDF through erf (timm's and HF's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !use_kernels(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "mae-gelu-erf"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::fused_cuda::gelu((xs, xl))
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(xs, xl, "gelu")?;
        let y = fill_pieces(
            x.len(),
            ELEMS_PER_CHUNK,
            1,
            #[inline(always)]
            |i, yc| {
                let xc = piece(x, i, ELEMS_PER_CHUNK, yc.len());
                for (yi, &xi) in yc.iter_mut().zip(xc) {
                    *yi = xi * normal_cdf(xi);
                }
            },
        );
        output(y, xl.shape())
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// `dx = g * (Phi(x) + x * phi(x))`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "mae-gelu-erf-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::fused_cuda::gelu_grad((xs, xl), (gs, gl))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(xs, xl, "x")?, slice(gs, gl, "grad")?);
        let dx = fill_pieces(
            x.len(),
            ELEMS_PER_CHUNK,
            1,
            #[inline(always)]
            |i, dc| {
                let (xc, gc) =
                    (piece(x, i, ELEMS_PER_CHUNK, dc.len()), piece(g, i, ELEMS_PER_CHUNK, dc.len()));
                for ((di, &xi), &gi) in dc.iter_mut().zip(xc).zip(gc) {
                    *di = gi * (normal_cdf(xi) + xi * normal_pdf(xi));
                }
            },
        );
        output(dx, xl.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, values};

    #[test]
    fn gelu_matches_candles_forward_and_backward() -> Result<()> {
        check(&[values(&[5, 33, 40], 5, 5.0)?], 1e-5, |t| gelu_erf(&t[0]), |t| t[0].gelu_erf())
    }
}
