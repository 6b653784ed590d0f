//! Which dataset indices go into batch `k` of rank `r` in epoch `e`.
//!
//! The epoch order is a keyed permutation (or 0..n without shuffling). It is cut into GLOBAL
//! batches of `world_size * batch_size` positions, and rank `r` takes the `r`-th `batch_size`
//! slice of each. So N ranks with per-rank batch b see, step for step, exactly the samples one
//! process with batch N*b sees: data-parallel training keeps the single-process trajectory.
//! (PyTorch's `DistributedSampler` instead strides the epoch, `order[r::N]`, which gives every
//! rank its own sequence but changes which samples share a step when N changes.)
//!
//! Without `drop_last`, the order is first padded by wrap-around (repeating its beginning) to a
//! multiple of `world_size`, as `DistributedSampler` does, so every rank gets the same number of
//! samples per epoch; the last global batch is then split into `world_size` equal slices.
//! With `drop_last`, only whole global batches are used.

use crate::error::{DataError, Result};
use crate::rng::permutation;

/// How an epoch is ordered, cut and shared between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Samples per batch on this rank.
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
}

impl SamplerConfig {
    pub(crate) fn check(&self, len: usize) -> Result<()> {
        if self.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DataError::Config(format!(
                "rank {} is not in a world of {} rank(s)",
                self.rank, self.world_size
            )));
        }
        if len == 0 {
            return Err(DataError::Config("the dataset is empty".into()));
        }
        if self.batches_per_epoch(len) == 0 {
            return Err(DataError::Config(format!(
                "drop_last with a global batch of {} (world {} x batch {}) leaves no batch of a \
                 {len}-sample dataset",
                self.global_batch(),
                self.world_size,
                self.batch_size
            )));
        }
        Ok(())
    }

    fn global_batch(&self) -> usize {
        self.world_size * self.batch_size
    }

    /// Positions of the epoch actually used: whole global batches with `drop_last`, else the
    /// dataset padded to a multiple of `world_size`.
    fn used_len(&self, len: usize) -> usize {
        if self.drop_last {
            len / self.global_batch() * self.global_batch()
        } else {
            len.div_ceil(self.world_size) * self.world_size
        }
    }

    /// Batches per epoch, the same on every rank.
    pub fn batches_per_epoch(&self, len: usize) -> usize {
        self.used_len(len).div_ceil(self.global_batch())
    }

    /// Samples per epoch on one rank (duplicates from padding included).
    pub fn samples_per_epoch(&self, len: usize) -> usize {
        self.used_len(len) / self.world_size
    }

    /// The epoch's order of dataset indices, before cutting.
    pub fn epoch_order(&self, len: usize, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            permutation(len, self.seed, epoch)
        } else {
            (0..len).collect()
        }
    }

    /// Dataset indices of this rank's batch `batch` given the epoch `order` (of length `len`);
    /// empty past the end of the epoch.
    pub fn batch_indices(&self, order: &[usize], batch: usize) -> Vec<usize> {
        let len = order.len();
        let used = self.used_len(len);
        let start = batch * self.global_batch();
        if start >= used {
            return Vec::new();
        }
        // A short last global batch is still a multiple of world_size: split it evenly.
        let per_rank = (used - start).min(self.global_batch()) / self.world_size;
        let from = start + self.rank * per_rank;
        (from..from + per_rank).map(|pos| order[pos % len]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_size: usize, world_size: usize, rank: usize, drop_last: bool) -> SamplerConfig {
        SamplerConfig { batch_size, shuffle: true, drop_last, seed: 3, rank, world_size }
    }

    #[test]
    fn ranks_split_each_global_batch_like_one_big_batch() {
        let len = 103;
        let single = config(8, 1, 0, true);
        let order = single.epoch_order(len, 5);
        for rank_count in [2, 4] {
            let per = 8 / rank_count;
            for k in 0..single.batches_per_epoch(len) {
                let mut joined = Vec::new();
                for r in 0..rank_count {
                    let c = config(per, rank_count, r, true);
                    assert_eq!(c.batches_per_epoch(len), single.batches_per_epoch(len));
                    joined.extend(c.batch_indices(&c.epoch_order(len, 5), k));
                }
                assert_eq!(joined, single.batch_indices(&order, k), "world {rank_count} batch {k}");
            }
        }
    }

    #[test]
    fn padding_gives_equal_disjoint_shards() {
        // 10 samples, 3 ranks, batch 2: padded to 12, batches of 6, 6.
        let len = 10;
        let mut all = Vec::new();
        for r in 0..3 {
            let c = config(2, 3, r, false);
            assert_eq!(c.batches_per_epoch(len), 2);
            assert_eq!(c.samples_per_epoch(len), 4);
            let order = c.epoch_order(len, 0);
            let mine: Vec<usize> = (0..2).flat_map(|k| c.batch_indices(&order, k)).collect();
            assert_eq!(mine.len(), 4);
            all.extend(mine);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "every sample is seen; only padding repeats");
    }

    #[test]
    fn short_last_batch_without_drop_last() {
        let c = SamplerConfig { shuffle: false, ..config(4, 1, 0, false) };
        let order = c.epoch_order(10, 0);
        assert_eq!(c.batches_per_epoch(10), 3);
        assert_eq!(c.batch_indices(&order, 2), vec![8, 9]);
        assert!(c.batch_indices(&order, 3).is_empty());
        let dropped = SamplerConfig { drop_last: true, ..c };
        assert_eq!(dropped.batches_per_epoch(10), 2);
        assert!(config(4, 4, 0, true).check(10).is_err());
    }
}
