//! The bias add of a linear layer, and the column sums of its backward (also the bias gradient
//! of `crate::linear`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{column_sums, fill_pieces, output, piece, row_len, slice, use_kernels, ROWS_PER_CHUNK};

/// `y + bias` with `bias` of the last dimension's size, broadcast over the leading ones.
pub fn add_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !use_kernels(&[y, bias]) || bias.rank() != 1 {
        return y.broadcast_add(bias);
    }
    y.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "mae-add-bias"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(yl, Some(bl), "bias add")?;
        crate::fused_cuda::add_bias((ys, yl), (bs, bl), d)
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(yl, Some(bl), "bias add")?;
        let (y, b) = (slice(ys, yl, "y")?, slice(bs, bl, "bias")?);
        let out = fill_pieces(
            y.len(),
            d,
            ROWS_PER_CHUNK,
            #[inline(always)]
            |r, or| {
                for ((o, &v), &bi) in or.iter_mut().zip(piece(y, r, d, d)).zip(b) {
                    *o = v + bi;
                }
            },
        );
        output(out, yl.shape())
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = column_sums_of(grad)?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// The sums of `grad` over all leading dimensions, `[.., d] -> [d]` (a bias gradient).
pub(crate) fn column_sums_of(grad: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

/// The sums over all leading dimensions: `[.., d] -> [d]`.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "mae-column-sums"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(gl, None, "column sums")?;
        crate::fused_cuda::column_sums((gs, gl), d)
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(gl, None, "column sums")?;
        let g = slice(gs, gl, "grad")?;
        let sums = column_sums(
            g.len() / d,
            d,
            #[inline(always)]
            |r, acc| {
                acc.iter_mut().zip(&g[r * d..(r + 1) * d]).for_each(|(a, v)| *a += v);
            },
        );
        output(sums, &Shape::from(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, values};

    #[test]
    fn bias_add_matches_broadcast_add_forward_and_backward() -> Result<()> {
        let (y, b) = (values(&[70, 24], 6, 2.0)?, values(&[24], 7, 1.0)?);
        check(&[y, b], 1e-5, |t| add_bias(&t[0], &t[1]), |t| t[0].broadcast_add(&t[1]))
    }

    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() -> Result<()> {
        let err = add_bias(&values(&[4, 8], 13, 1.0)?, &values(&[7], 14, 1.0)?).unwrap_err().to_string();
        assert!(err.contains("bias add"), "{err}");
        Ok(())
    }
}
