//! Per-sample random masking, as facebookresearch/mae `random_masking` and Hugging Face
//! `ViTMAEEmbeddings.random_masking` do it:
//!
//! ```text
//! len_keep    = int(L * (1 - mask_ratio))
//! ids_shuffle = argsort(noise)          # ascending: the SMALLEST noise is kept
//! ids_restore = argsort(ids_shuffle)
//! ids_keep    = ids_shuffle[:, :len_keep]
//! mask[b, j]  = 1 if patch j is removed else 0
//! ```
//!
//! The permutation is small (`B x L` integers), so it is computed on the host and the device only
//! sees flat row indices: this is exact on every backend and keeps gathers contiguous.

use candle_core::{bail, DType, Device, Result, Tensor};
use rand::Rng;

/// Which patches each image of a batch keeps, in the order the encoder sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskPlan {
    batch: usize,
    len: usize,
    len_keep: usize,
    /// `[B * L]`: row b is a permutation of `0..L`; its first `len_keep` entries are kept.
    ids_shuffle: Vec<u32>,
    /// `[B * L]`: the inverse permutation of each row of `ids_shuffle`.
    ids_restore: Vec<u32>,
}

impl MaskPlan {
    /// `int(L * (1 - mask_ratio))`, computed in f64 as Python does.
    pub fn len_keep(len: usize, mask_ratio: f64) -> Result<usize> {
        if !(0.0..1.0).contains(&mask_ratio) {
            bail!("mask ratio must be in [0, 1), got {mask_ratio}")
        }
        let keep = (len as f64 * (1.0 - mask_ratio)) as usize;
        if keep == 0 {
            bail!("mask ratio {mask_ratio} leaves no visible patch out of {len}")
        }
        Ok(keep)
    }

    /// The plan for a noise tensor `[B, L]` (any float dtype, any device).
    pub fn from_noise(noise: &Tensor, mask_ratio: f64) -> Result<Self> {
        let (batch, len) = noise.dims2()?;
        let values = noise.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Self::from_noise_values(&values, batch, len, mask_ratio)
    }

    /// The plan for row-major noise values of a `[batch, len]` batch.
    pub fn from_noise_values(noise: &[f32], batch: usize, len: usize, mask_ratio: f64) -> Result<Self> {
        if noise.len() != batch * len {
            bail!("noise has {} values, expected {batch} x {len}", noise.len())
        }
        if let Some(bad) = noise.iter().find(|v| !v.is_finite()) {
            bail!("masking noise must be finite, found {bad}")
        }
        let len_keep = Self::len_keep(len, mask_ratio)?;
        let mut ids_shuffle = Vec::with_capacity(batch * len);
        for row in noise.chunks(len.max(1)) {
            let mut order: Vec<u32> = (0..len as u32).collect();
            order.sort_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]));
            ids_shuffle.extend(order);
        }
        Self::from_shuffle(batch, len, len_keep, ids_shuffle)
    }

    /// A plan from explicit shuffles: row b of `ids_shuffle` (`[B * L]`) must be a permutation of
    /// `0..L` whose first `len_keep` entries are the kept patches, in encoder order.
    pub fn from_shuffle(batch: usize, len: usize, len_keep: usize, ids_shuffle: Vec<u32>) -> Result<Self> {
        if ids_shuffle.len() != batch * len {
            bail!("ids_shuffle has {} entries, expected {batch} x {len}", ids_shuffle.len())
        }
        if len_keep == 0 || len_keep > len {
            bail!("len_keep {len_keep} must be in 1..={len}")
        }
        let mut ids_restore = vec![u32::MAX; batch * len];
        for b in 0..batch {
            for (pos, &id) in ids_shuffle[b * len..(b + 1) * len].iter().enumerate() {
                let slot = ids_restore.get_mut(b * len + id as usize).filter(|_| (id as usize) < len);
                match slot {
                    Some(s) if *s == u32::MAX => *s = pos as u32,
                    _ => bail!("row {b} of ids_shuffle is not a permutation of 0..{len} (entry {id})"),
                }
            }
        }
        Ok(Self { batch, len, len_keep, ids_shuffle, ids_restore })
    }

    /// A plan that keeps the given patches (`[B][K]`, in encoder order) and removes the rest.
    pub fn from_ids_keep(ids_keep: &[Vec<u32>], len: usize) -> Result<Self> {
        let len_keep = ids_keep.first().map_or(0, Vec::len);
        let mut ids_shuffle = Vec::with_capacity(ids_keep.len() * len);
        for (b, row) in ids_keep.iter().enumerate() {
            if row.len() != len_keep {
                bail!("row {b} keeps {} patches but row 0 keeps {len_keep}", row.len())
            }
            let mut kept = vec![false; len];
            for &id in row {
                match kept.get_mut(id as usize) {
                    Some(k) if !*k => *k = true,
                    _ => bail!("row {b} of ids_keep has a repeated or out-of-range index {id}"),
                }
            }
            ids_shuffle.extend(row);
            ids_shuffle.extend((0..len as u32).filter(|&j| !kept[j as usize]));
        }
        Self::from_shuffle(ids_keep.len(), len, len_keep, ids_shuffle)
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of patches `L` per image.
    pub fn num_patches(&self) -> usize {
        self.len
    }

    /// Number of kept (visible) patches per image.
    pub fn num_kept(&self) -> usize {
        self.len_keep
    }

    /// `[B, K]` kept patch indices, in encoder order.
    pub fn ids_keep(&self) -> Vec<Vec<u32>> {
        self.rows(&self.ids_shuffle).map(|r| r[..self.len_keep].to_vec()).collect()
    }

    /// `[B, L]` u32: position of each patch in the shuffled order.
    pub fn ids_restore(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.ids_restore, (self.batch, self.len), device)
    }

    /// `[B, L]` 0/1 in `dtype`: 1 = removed, 0 = kept, in original patch order.
    pub fn mask(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let keep = self.len_keep as u32;
        let mask: Vec<f32> = self.ids_restore.iter().map(|&r| if r >= keep { 1.0 } else { 0.0 }).collect();
        Tensor::from_vec(mask, (self.batch, self.len), device)?.to_dtype(dtype)
    }

    /// Keeps the visible tokens: `[B, L, D] -> [B, K, D]`, in encoder order.
    pub fn keep(&self, x: &Tensor) -> Result<Tensor> {
        let flat: Vec<u32> = self
            .rows(&self.ids_shuffle)
            .enumerate()
            .flat_map(|(b, row)| row[..self.len_keep].iter().map(move |&id| (b * self.len) as u32 + id))
            .collect();
        self.select_rows(x, &flat, self.len_keep)
    }

    /// Puts a shuffled sequence back in patch order: `[B, L, D]` whose first K rows are the kept
    /// tokens (encoder order) and the rest mask tokens, to `[B, L, D]` in original patch order.
    pub fn unshuffle(&self, x: &Tensor) -> Result<Tensor> {
        let flat: Vec<u32> = self
            .rows(&self.ids_restore)
            .enumerate()
            .flat_map(|(b, row)| row.iter().map(move |&pos| (b * self.len) as u32 + pos))
            .collect();
        self.select_rows(x, &flat, self.len)
    }

    fn rows<'a>(&self, ids: &'a [u32]) -> impl Iterator<Item = &'a [u32]> {
        ids.chunks(self.len)
    }

    fn select_rows(&self, x: &Tensor, flat_index: &[u32], rows_out: usize) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        if b != self.batch || l != self.len {
            bail!("mask plan is for [{}, {}] tokens, got [{b}, {l}, {d}]", self.batch, self.len)
        }
        let index = Tensor::from_slice(flat_index, flat_index.len(), x.device())?;
        x.reshape((b * l, d))?.index_select(&index, 0)?.reshape((b, rows_out, d))
    }
}

/// `[batch * len]` uniform noise in `[0, 1)` from a seeded RNG (candle's CPU RNG cannot be seeded).
pub fn noise<R: Rng + ?Sized>(batch: usize, len: usize, rng: &mut R) -> Vec<f32> {
    (0..batch * len).map(|_| rng.random::<f32>()).collect()
}

/// A fresh per-sample random mask, drawn from `rng`.
pub fn random_masking<R: Rng + ?Sized>(
    batch: usize,
    len: usize,
    mask_ratio: f64,
    rng: &mut R,
) -> Result<MaskPlan> {
    MaskPlan::from_noise_values(&noise(batch, len, rng), batch, len, mask_ratio)
}

/// Gathers tokens along the sequence: `x: [B, L, D]`, `ids: [B, K]` (integer) -> `[B, K, D]`.
pub fn gather_tokens(x: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let (ib, k) = ids.dims2()?;
    if ib != b {
        bail!("gather_tokens: {b} sequences but {ib} index rows")
    }
    let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= l) {
        bail!("gather_tokens: index {bad} out of range for {l} tokens")
    }
    let flat: Vec<u32> = ids.iter().enumerate().map(|(n, &i)| (n / k * l) as u32 + i).collect();
    let index = Tensor::from_slice(&flat, flat.len(), x.device())?;
    x.reshape((b * l, d))?.index_select(&index, 0)?.reshape((b, k, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keeps_the_smallest_noise_and_marks_the_rest_removed() -> Result<()> {
        let noise = [0.9f32, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4];
        let plan = MaskPlan::from_noise_values(&noise, 2, 4, 0.5)?;
        assert_eq!(plan.ids_keep(), vec![vec![1, 3], vec![1, 3]]);
        let mask = plan.mask(DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(mask, vec![vec![1., 0., 1., 0.], vec![1., 0., 1., 0.]]);
        // ids_restore is the inverse of argsort: row 0 sorted is [1, 3, 2, 0].
        let restore = plan.ids_restore(&Device::Cpu)?.to_vec2::<u32>()?;
        assert_eq!(restore[0], vec![3, 0, 2, 1]);
        Ok(())
    }

    #[test]
    fn len_keep_truncates_like_python_int() -> Result<()> {
        assert_eq!(MaskPlan::len_keep(196, 0.75)?, 49);
        assert_eq!(MaskPlan::len_keep(36, 0.6)?, 14);
        assert_eq!(MaskPlan::len_keep(16, 0.5)?, 8);
        assert!(MaskPlan::len_keep(16, 1.0).is_err());
        assert!(MaskPlan::len_keep(3, 0.9).is_err());
        Ok(())
    }

    #[test]
    fn keep_then_unshuffle_restores_the_kept_tokens_in_place() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let plan = random_masking(3, 10, 0.7, &mut rng)?;
        let x = Tensor::arange(0f32, 60., &Device::Cpu)?.reshape((3, 10, 2))?;
        let kept = plan.keep(&x)?;
        assert_eq!(kept.dims(), &[3, 3, 2]);
        // Fill the removed slots with -1 and put everything back.
        let filler = Tensor::full(-1f32, (3, 7, 2), &Device::Cpu)?;
        let restored = plan.unshuffle(&Tensor::cat(&[&kept, &filler], 1)?)?;
        let mask = plan.mask(DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        let (x, restored) = (x.to_vec3::<f32>()?, restored.to_vec3::<f32>()?);
        for b in 0..3 {
            for j in 0..10 {
                let expected = if mask[b][j] == 0. { x[b][j].clone() } else { vec![-1., -1.] };
                assert_eq!(restored[b][j], expected, "batch {b} patch {j}");
            }
        }
        Ok(())
    }

    #[test]
    fn same_seed_same_mask_and_masks_differ_per_sample() -> Result<()> {
        let draw = |seed| random_masking(4, 16, 0.75, &mut rand::rngs::StdRng::seed_from_u64(seed));
        assert_eq!(draw(1)?, draw(1)?);
        assert_ne!(draw(1)?, draw(2)?);
        let keep = draw(1)?.ids_keep();
        assert!(keep.windows(2).any(|w| w[0] != w[1]));
        Ok(())
    }

    #[test]
    fn rejects_bad_plans() {
        assert!(MaskPlan::from_shuffle(1, 3, 1, vec![0, 0, 1]).is_err());
        assert!(MaskPlan::from_shuffle(1, 3, 1, vec![0, 1, 3]).is_err());
        assert!(MaskPlan::from_ids_keep(&[vec![0, 0]], 4).is_err());
        assert!(MaskPlan::from_noise_values(&[0.1, f32::NAN], 1, 2, 0.5).is_err());
    }

    #[test]
    fn gather_tokens_matches_plan_keep() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let plan = random_masking(2, 8, 0.5, &mut rng)?;
        let x = Tensor::arange(0f32, 48., &Device::Cpu)?.reshape((2, 8, 3))?;
        let ids: Vec<u32> = plan.ids_keep().concat();
        let ids = Tensor::from_vec(ids, (2, 4), &Device::Cpu)?;
        let a = gather_tokens(&x, &ids)?.to_vec3::<f32>()?;
        assert_eq!(a, plan.keep(&x)?.to_vec3::<f32>()?);
        Ok(())
    }
}
