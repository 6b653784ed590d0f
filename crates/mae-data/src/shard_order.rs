//! Epoch order of a sharded dataset (WebDataset): by shard, with a bounded shuffle buffer.
//!
//! The loader is random access (`Dataset::get(index)`), keyed by (seed, epoch, index), and
//! resumes at (epoch, batch) by recomputing the epoch's order: see `sampler`. A sharded dataset
//! fits that contract by giving the loader a different ORDER, not a different access pattern:
//! its index (one pass over the shard headers, `wds`) lets any sample be read by offset, and
//! this module computes, as a pure function of (layout, seed, epoch, rank, world), the order in
//! which WebDataset's streaming pipeline would have produced the samples:
//!
//! 1. the shard list, shuffled per epoch with the seed (the same on every rank);
//! 2. rank `r` takes positions `r, r + world, r + 2 world, ...` of that list;
//! 3. each rank's shards, concatenated in that order, go through a shuffle buffer of `buffer`
//!    samples (WebDataset's `shuffle(n)`): a sample leaves at most `buffer` places away from
//!    where its shard put it, so reads stay near-sequential within a few shards at a time.
//!
//! Every rank must take the same number of steps, so each rank's stream is cut (or, without
//! `drop_last`, wrapped around) to the length the sampler gives every rank for this many
//! samples, as WebDataset's `with_epoch` does: with shards of unequal size a rank may skip or
//! repeat a few of its samples in an epoch. The streams are laid out so that the sampler's cut
//! of global batches (rank r takes the r-th slice of each) hands rank r exactly its own stream.
//!
//! With fewer shards than ranks, splitting by shard would leave ranks without data; the whole
//! shard stream is then ordered as for one rank and split by the sampler's usual cut (every rank
//! reads from every shard). Without shuffling (evaluation, `mae embed`) the order is the shards'
//! in listing order and their members' in archive order.

use crate::rng::{below, sample_rng, stream};
use crate::sampler::SamplerConfig;

/// How a sharded dataset's indices group into shards: shard `s` holds the `sizes[s]` indices
/// after those of shards `0..s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    pub sizes: Vec<usize>,
    /// Samples held by the shuffle buffer (1: no shuffling within the shards' streams).
    pub shuffle_buffer: usize,
}

impl ShardLayout {
    /// Whether the shards are split between `world_size` ranks (else every rank reads all).
    pub fn splits_by_shard(&self, world_size: usize) -> bool {
        world_size > 1 && self.sizes.len() >= world_size
    }
}

/// WebDataset's shuffle buffer over `items`, keyed by `rng`: fill the buffer, then each new item
/// takes the place of a randomly chosen one, which leaves; the rest leave in a random order
/// (the same Fisher-Yates as `rng::permutation`, so that a buffer holding everything with the
/// sampler's key gives the sampler's own permutation).
fn buffer_shuffle(items: &[usize], buffer: usize, rng: &mut impl rand::RngCore) -> Vec<usize> {
    let buffer = buffer.max(1);
    let mut out = Vec::with_capacity(items.len());
    let mut held: Vec<usize> = Vec::with_capacity(buffer.min(items.len()));
    for &item in items {
        if held.len() < buffer {
            held.push(item);
            continue;
        }
        let j = below(rng, buffer as u64) as usize;
        out.push(std::mem::replace(&mut held[j], item));
    }
    for i in (1..held.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        held.swap(i, j);
    }
    out.extend(held);
    out
}

/// The order of the shards this epoch (all of them; the rank split comes after).
fn shard_sequence(layout: &ShardLayout, sampler: &SamplerConfig, epoch: u64) -> Vec<usize> {
    let mut shards: Vec<usize> = (0..layout.sizes.len()).collect();
    if sampler.shuffle {
        let mut rng = sample_rng(sampler.seed, epoch, 0, stream::SHARDS);
        for i in (1..shards.len()).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            shards.swap(i, j);
        }
    }
    shards
}

/// The samples of `shards` in stream order, through the shuffle buffer keyed by `key`.
fn stream_of(
    layout: &ShardLayout,
    starts: &[usize],
    shards: &[usize],
    sampler: &SamplerConfig,
    epoch: u64,
    key: u64,
) -> Vec<usize> {
    let items: Vec<usize> = shards.iter().flat_map(|&s| starts[s]..starts[s] + layout.sizes[s]).collect();
    if !sampler.shuffle {
        return items;
    }
    // Key 0 with the sampler's stream: the single-stream case with a buffer holding everything
    // is exactly the folder datasets' permutation of the same indices.
    let mut rng = sample_rng(sampler.seed, epoch, key, stream::SHUFFLE);
    buffer_shuffle(&items, layout.shuffle_buffer, &mut rng)
}

/// The epoch's order for the sampler to cut (see the module comment): its length is the dataset's
/// when every rank reads all shards, else `world_size` x this rank's samples per epoch.
pub(crate) fn epoch_order(layout: &ShardLayout, sampler: &SamplerConfig, epoch: u64) -> Vec<usize> {
    let mut starts = Vec::with_capacity(layout.sizes.len());
    let mut total = 0;
    for &size in &layout.sizes {
        starts.push(total);
        total += size;
    }
    let shards = shard_sequence(layout, sampler, epoch);
    let world = sampler.world_size;
    if !layout.splits_by_shard(world) {
        return stream_of(layout, &starts, &shards, sampler, epoch, 0);
    }
    let per_rank = sampler.samples_per_epoch(total);
    let streams: Vec<Vec<usize>> = (0..world)
        .map(|r| {
            let mine: Vec<usize> = shards.iter().skip(r).step_by(world).copied().collect();
            stream_of(layout, &starts, &mine, sampler, epoch, 1 + r as u64)
        })
        .collect();
    // WebDataset drops shards without samples; a layout from elsewhere might leave a rank
    // with nothing to read, and then every rank reads all shards instead.
    if streams.iter().any(Vec::is_empty) {
        return stream_of(layout, &starts, &shards, sampler, epoch, 0);
    }
    // Each stream cut to, or wrapped around to, the common length.
    let streams: Vec<Vec<usize>> =
        streams.iter().map(|s| (0..per_rank).map(|i| s[i % s.len()]).collect()).collect();
    let b = sampler.batch_size;
    let mut order = Vec::with_capacity(world * per_rank);
    let mut at = 0;
    while at < per_rank {
        let take = b.min(per_rank - at);
        for s in &streams {
            order.extend_from_slice(&s[at..at + take]);
        }
        at += take;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::permutation;

    fn sampler(world: usize, rank: usize, shuffle: bool, drop_last: bool) -> SamplerConfig {
        SamplerConfig { batch_size: 2, shuffle, drop_last, seed: 5, rank, world_size: world }
    }

    #[test]
    fn a_buffer_holding_everything_is_the_samplers_permutation() {
        let layout = ShardLayout { sizes: vec![10], shuffle_buffer: 1000 };
        assert_eq!(epoch_order(&layout, &sampler(1, 0, true, false), 3), permutation(10, 5, 3));
        let one = ShardLayout { shuffle_buffer: 1, ..layout };
        assert_eq!(epoch_order(&one, &sampler(1, 0, true, false), 3), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_small_buffer_moves_samples_a_bounded_distance() {
        let layout = ShardLayout { sizes: vec![100], shuffle_buffer: 4 };
        let order = epoch_order(&layout, &sampler(1, 0, true, false), 0);
        assert_ne!(order, (0..100).collect::<Vec<_>>());
        // Item i enters the buffer once i - 4 items have left, so it cannot leave earlier.
        for (pos, &item) in order.iter().enumerate() {
            assert!(pos + 4 >= item, "item {item} at {pos}");
        }
    }

    #[test]
    fn ranks_get_disjoint_shards_and_batches_of_their_own() {
        let layout = ShardLayout { sizes: vec![3, 3, 3, 3], shuffle_buffer: 2 };
        let s = sampler(2, 0, true, true);
        let order = epoch_order(&layout, &s, 1);
        assert_eq!(order.len(), 12);
        let shard = |i: usize| i / 3;
        let rank0: Vec<usize> = (0..3).flat_map(|k| s.batch_indices(&order, k)).collect();
        let rank1: Vec<usize> =
            (0..3).flat_map(|k| sampler(2, 1, true, true).batch_indices(&order, k)).collect();
        let shards0: Vec<usize> = rank0.iter().map(|&i| shard(i)).collect();
        assert!(rank1.iter().all(|&i| !shards0.contains(&shard(i))), "{rank0:?} {rank1:?}");
    }
}
