//! Images to patch rows and back, in the layout of facebookresearch/mae `models_mae.patchify`.

use candle_core::{bail, Result, Tensor};

/// The patch grid of an image: `rows x cols` patches of `patch x patch` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    pub rows: usize,
    pub cols: usize,
    pub patch: usize,
}

impl PatchGrid {
    /// The grid of an `height x width` image; both sides must be multiples of `patch`.
    pub fn new(height: usize, width: usize, patch: usize) -> Result<Self> {
        if patch == 0 {
            bail!("patch size must be positive")
        }
        if height == 0 || width == 0 || !height.is_multiple_of(patch) || !width.is_multiple_of(patch) {
            bail!("image size {height}x{width} is not a positive multiple of the patch size {patch}")
        }
        Ok(Self { rows: height / patch, cols: width / patch, patch })
    }

    /// Number of patches `L`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `[N, C, H, W] -> [N, L, p*p*C]`, patches in row-major order, each patch's pixels row-major with
/// the channels innermost (`nchpwq -> nhwpqc`), as the paper's loss and decoder expect.
pub fn patchify(imgs: &Tensor, patch: usize) -> Result<Tensor> {
    let (n, c, h, w) = imgs.dims4()?;
    let grid = PatchGrid::new(h, w, patch)?;
    // x: [N, C, h, p, w, q] -> [N, h, w, p, q, C]
    imgs.reshape((n, c, grid.rows, patch, grid.cols, patch))?.permute((0, 2, 4, 3, 5, 1))?.reshape((
        n,
        grid.len(),
        patch * patch * c,
    ))
}

/// The inverse of [`patchify`]: `[N, L, p*p*C] -> [N, C, H, W]` for the given grid.
pub fn unpatchify(x: &Tensor, grid: PatchGrid, channels: usize) -> Result<Tensor> {
    let (n, l, d) = x.dims3()?;
    let p = grid.patch;
    if l != grid.len() || d != p * p * channels {
        bail!(
            "unpatchify: got [{n}, {l}, {d}] but a {}x{} grid of {p}px patches with {channels} channels needs [{n}, {}, {}]",
            grid.rows,
            grid.cols,
            grid.len(),
            p * p * channels
        )
    }
    // x: [N, h, w, p, q, C] -> [N, C, h, p, w, q]
    x.reshape((n, grid.rows, grid.cols, p, p, channels))?.permute((0, 5, 1, 3, 2, 4))?.reshape((
        n,
        channels,
        grid.rows * p,
        grid.cols * p,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A plain-loop reference of `nchpwq -> nhwpqc`, independent of reshape/permute.
    fn reference_patchify(img: &[f32], c: usize, h: usize, w: usize, p: usize) -> Vec<Vec<f32>> {
        let (gh, gw) = (h / p, w / p);
        let mut rows = Vec::new();
        for i in 0..gh {
            for j in 0..gw {
                let mut row = Vec::new();
                for y in 0..p {
                    for x in 0..p {
                        for ch in 0..c {
                            row.push(img[ch * h * w + (i * p + y) * w + (j * p + x)]);
                        }
                    }
                }
                rows.push(row);
            }
        }
        rows
    }

    #[test]
    fn non_square_patchify_matches_plain_loops_and_round_trips() -> Result<()> {
        let (n, c, h, w, p) = (2, 3, 8, 12, 4);
        let data: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 * 0.5 - 7.0).collect();
        let imgs = Tensor::from_vec(data.clone(), (n, c, h, w), &Device::Cpu)?;
        let patches = patchify(&imgs, p)?;
        assert_eq!(patches.dims(), &[n, 6, p * p * c]);
        let got = patches.to_vec3::<f32>()?;
        for b in 0..n {
            let img = &data[b * c * h * w..(b + 1) * c * h * w];
            assert_eq!(got[b], reference_patchify(img, c, h, w, p));
        }
        let back = unpatchify(&patches, PatchGrid::new(h, w, p)?, c)?;
        assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, data);
        Ok(())
    }

    #[test]
    fn rejects_sizes_that_are_not_multiples_of_the_patch() {
        let imgs = Tensor::zeros((1, 3, 10, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = patchify(&imgs, 4).unwrap_err().to_string();
        assert!(err.contains("10x8"), "{err}");
        assert!(PatchGrid::new(8, 8, 0).is_err());
    }
}
