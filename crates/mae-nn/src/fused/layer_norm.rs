//! LayerNorm over the last dimension: the forward, the input's gradient (per row) and the
//! weight's and bias's gradients (column sums over the rows).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{column_sums, composed, fill_pieces, output, piece, row_len, slice, use_kernels, ROWS_PER_CHUNK};
use crate::vmath::{lane_sum, lane_sum2};

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !use_kernels(&[x, weight, bias]) {
        return composed::layer_norm(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps: eps as f32 })
}

/// Mean and 1/std of one row (sums in f64: rows of a few thousand f32 values lose digits).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = lane_sum(row, |v| v as f64) / n;
    let var = lane_sum(row, |v| (v as f64 - mean).powi(2)) / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "mae-layer-norm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(xl, Some(wl), "layer_norm weight")?;
        row_len(xl, Some(bl), "layer_norm bias")?;
        crate::fused_cuda::layer_norm((xs, xl), (ws, wl), (bs, bl), d, self.eps)
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
        let d = row_len(xl, Some(wl), "layer_norm weight")?;
        row_len(xl, Some(bl), "layer_norm bias")?;
        let (x, w, b) = (slice(xs, xl, "layer_norm")?, slice(ws, wl, "weight")?, slice(bs, bl, "bias")?);
        let y = fill_pieces(
            x.len(),
            d,
            ROWS_PER_CHUNK,
            #[inline(always)]
            |r, yr| {
                let xr = piece(x, r, d, d);
                let (mean, rstd) = row_stats(xr, self.eps);
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                }
            },
        );
        output(y, xl.shape())
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(weight, &grad, &LayerNormGradInput { eps: self.eps })?;
        let dwb = x.apply_op2_no_bwd(&grad, &LayerNormGradParams { eps: self.eps })?;
        Ok((Some(dx), Some(dwb.get(0)?), Some(dwb.get(1)?)))
    }
}

/// `dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w * xhat))` per row.
struct LayerNormGradInput {
    eps: f32,
}

impl CustomOp3 for LayerNormGradInput {
    fn name(&self) -> &'static str {
        "mae-layer-norm-grad-input"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(xl, Some(wl), "layer_norm backward")?;
        crate::fused_cuda::layer_norm_grad_input((xs, xl), (ws, wl), (gs, gl), d, self.eps)
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(xl, Some(wl), "layer_norm backward")?;
        let (x, w, g) = (slice(xs, xl, "x")?, slice(ws, wl, "weight")?, slice(gs, gl, "grad")?);
        let dx = fill_pieces(
            x.len(),
            d,
            ROWS_PER_CHUNK,
            #[inline(always)]
            |r, dr| {
                let (xr, gr) = (piece(x, r, d, d), piece(g, r, d, d));
                let (mean, rstd) = row_stats(xr, self.eps);
                // dr holds g * w until the last loop turns it into dx.
                for i in 0..d {
                    dr[i] = gr[i] * w[i];
                }
                let sum_gw = lane_sum(dr, |gw| gw as f64);
                let sum_gw_xhat = lane_sum2(dr, xr, |gw, x| (gw * (x - mean) * rstd) as f64);
                let (m1, m2) = ((sum_gw / d as f64) as f32, (sum_gw_xhat / d as f64) as f32);
                for i in 0..d {
                    let xhat = (xr[i] - mean) * rstd;
                    dr[i] = rstd * (dr[i] - m1 - xhat * m2);
                }
            },
        );
        output(dx, xl.shape())
    }
}

/// `[2, d]`: the weight's gradient `sum_rows(g * xhat)` and the bias's `sum_rows(g)`.
struct LayerNormGradParams {
    eps: f32,
}

impl CustomOp2 for LayerNormGradParams {
    fn name(&self) -> &'static str {
        "mae-layer-norm-grad-params"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(xl, None, "layer_norm backward")?;
        crate::fused_cuda::layer_norm_grad_params((xs, xl), (gs, gl), d, self.eps)
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(xl, None, "layer_norm backward")?;
        let (x, g) = (slice(xs, xl, "x")?, slice(gs, gl, "grad")?);
        let sums = column_sums(
            x.len() / d,
            2 * d,
            #[inline(always)]
            |r, acc| {
                let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                let (mean, rstd) = row_stats(xr, self.eps);
                let (dw, db) = acc.split_at_mut(d);
                for i in 0..d {
                    dw[i] += gr[i] * (xr[i] - mean) * rstd;
                    db[i] += gr[i];
                }
            },
        );
        output(sums, &Shape::from((2, d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, values};

    #[test]
    fn layer_norm_matches_the_composed_ops_forward_and_backward() -> Result<()> {
        // 2 x 37 rows: more than one chunk, the last one partial.
        let (x, w, b) = (values(&[2, 37, 48], 1, 3.0)?, values(&[48], 2, 1.5)?, values(&[48], 3, 0.5)?);
        let x = (x + 2.0)?; // a mean far from zero, as LayerNorm inputs have
        check(
            &[x, w, b],
            1e-4,
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-6),
            |t| composed::layer_norm(&t[0], &t[1], &t[2], 1e-6),
        )
    }
}
