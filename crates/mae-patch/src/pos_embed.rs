//! Fixed 2-D sin-cos position embeddings, as facebookresearch/mae `util/pos_embed.py`.
//!
//! The paper's code builds `grid = meshgrid(grid_w, grid_h)`, so its first half of the channels
//! (called `emb_h` there) encodes the patch's COLUMN and the second half its ROW. Each half is a
//! 1-D embedding `[sin(pos * omega), cos(pos * omega)]` with `omega_i = 1 / 10000^(i / (D/4))`.
//! Values are computed in f64, as numpy does, then rounded to f32.

use candle_core::{bail, Device, Result, Tensor};

/// `[(1 +) rows * cols, dim]` row-major values; with `cls_token` a leading all-zero row.
pub fn sincos_2d(dim: usize, rows: usize, cols: usize, cls_token: bool) -> Result<Vec<f32>> {
    if dim == 0 || !dim.is_multiple_of(4) {
        bail!("sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    }
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity((rows * cols + usize::from(cls_token)) * dim);
    if cls_token {
        out.extend(std::iter::repeat_n(0f32, dim));
    }
    for row in 0..rows {
        for col in 0..cols {
            // First half: the column (the paper's meshgrid(w, h) quirk); second half: the row.
            for pos in [col as f64, row as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    Ok(out)
}

/// [`sincos_2d`] as a `[1, (1 +) rows * cols, dim]` tensor, the shape the models add to tokens.
pub fn sincos_2d_tensor(
    dim: usize,
    rows: usize,
    cols: usize,
    cls_token: bool,
    device: &Device,
) -> Result<Tensor> {
    let n = rows * cols + usize::from(cls_token);
    Tensor::from_vec(sincos_2d(dim, rows, cols, cls_token)?, (1, n, dim), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_half_encodes_the_column_second_half_the_row() -> Result<()> {
        let (dim, rows, cols) = (8, 2, 3);
        let e = sincos_2d(dim, rows, cols, true)?;
        assert!(e[..dim].iter().all(|&v| v == 0.0), "cls row is zero");
        let at = |row: usize, col: usize| &e[(1 + row * cols + col) * dim..][..dim];
        // Patch (row 1, col 2): first quarter sin(col * omega), third quarter sin(row * omega).
        let p = at(1, 2);
        assert!((p[0] - 2f32.sin()).abs() < 1e-7);
        assert!((p[1] - (2.0f64 * 0.01).sin() as f32).abs() < 1e-7);
        assert!((p[2] - 2f32.cos()).abs() < 1e-7);
        assert!((p[4] - 1f32.sin()).abs() < 1e-7);
        assert!((p[6] - 1f32.cos()).abs() < 1e-7);
        assert_eq!(sincos_2d(8, 2, 3, false)?.len(), 6 * 8);
        assert!(sincos_2d(6, 2, 2, false).is_err());
        Ok(())
    }
}
