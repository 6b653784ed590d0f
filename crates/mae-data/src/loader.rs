//! The loader's public face: its configuration, the batches it yields, and epochs to iterate.
//! The threads live in `epoch`.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use crate::dataset::Dataset;
use crate::epoch::{EpochIter, Shared};
use crate::error::{DataError, Result};
use crate::sampler::SamplerConfig;
use crate::transform::Transform;

/// Loader settings. [`LoaderConfig::train`] and [`LoaderConfig::eval`] give the usual ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch on this rank.
    pub batch_size: usize,
    /// A fresh keyed permutation every epoch; otherwise dataset order.
    pub shuffle: bool,
    /// Drop the last, incomplete global batch.
    pub drop_last: bool,
    /// Keys the permutation and every augmentation.
    pub seed: u64,
    /// This process's rank and the number of ranks (see `sampler` for how batches are split).
    pub rank: usize,
    pub world_size: usize,
    /// Decoding threads; 0 decodes on the calling thread inside `next()`.
    pub workers: usize,
    /// Batches queued or in progress ahead of the consumer; `None` = 2 x workers. Memory is about
    /// `prefetch x batch_size x 3 x H x W x 4` bytes.
    pub prefetch: Option<usize>,
    /// A bad sample is an error instead of being skipped.
    pub strict: bool,
}

impl LoaderConfig {
    /// Training: shuffled, last incomplete batch dropped, one worker per available core.
    pub fn train(batch_size: usize) -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed: 0,
            rank: 0,
            world_size: 1,
            workers,
            prefetch: None,
            strict: false,
        }
    }

    /// Embedding and evaluation: dataset order, every sample.
    pub fn eval(batch_size: usize) -> Self {
        Self { shuffle: false, drop_last: false, ..Self::train(batch_size) }
    }

    pub fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            drop_last: self.drop_last,
            seed: self.seed,
            rank: self.rank,
            world_size: self.world_size,
        }
    }
}

/// One batch, ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, C, H, W]` f32 on the CPU, normalised (C = 3 unless the transform says otherwise). B is smaller than the batch size when samples
    /// were skipped (and may be 0: a batch is never dropped, so every rank takes the same number
    /// of steps).
    pub images: Tensor,
    /// Class indices, for a labeled dataset.
    pub labels: Option<Vec<u32>>,
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    /// Dataset indices of the samples that failed and were skipped.
    pub skipped: Vec<usize>,
    pub epoch: u64,
    pub batch_index: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The labels as a `[B]` u32 CPU tensor.
    pub fn labels_tensor(&self) -> Result<Option<Tensor>> {
        Ok(match &self.labels {
            Some(l) => Some(Tensor::from_slice(l, l.len(), &Device::Cpu)?),
            None => None,
        })
    }
}

/// What an epoch (or the part of it iterated so far) delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochStats {
    pub epoch: u64,
    pub batches: usize,
    pub samples: usize,
    /// Samples that failed to load and were skipped; their dataset indices follow.
    pub skipped: usize,
    pub skipped_indices: Vec<usize>,
}

/// A dataset, a transform and a [`LoaderConfig`]; hands out epochs of batches.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    config: LoaderConfig,
    /// Indices already warned about: one warning per bad file per loader, not per epoch.
    warned: Arc<Mutex<HashSet<usize>>>,
}

impl Loader {
    pub fn new(
        dataset: Arc<dyn Dataset>,
        transform: Arc<dyn Transform>,
        config: LoaderConfig,
    ) -> Result<Self> {
        config.sampler().check(dataset.len())?;
        transform.check()?;
        if config.prefetch == Some(0) {
            return Err(DataError::Config("prefetch must be at least 1 batch".into()));
        }
        if let Some(layout) = dataset.shard_layout() {
            if config.world_size > 1 && !layout.splits_by_shard(config.world_size) {
                tracing::warn!(
                    "{}: {} shard(s) for {} ranks: every rank reads from every shard (split by sample, \
                     not by shard); use at least one shard per rank for shard-local reading",
                    dataset.describe(),
                    layout.sizes.len(),
                    config.world_size
                );
            }
        }
        Ok(Self { dataset, transform, config, warned: Arc::default() })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches per epoch, equal on every rank.
    pub fn batches_per_epoch(&self) -> usize {
        self.config.sampler().batches_per_epoch(self.dataset.len())
    }

    /// Samples per epoch on this rank (before any skip).
    pub fn samples_per_epoch(&self) -> usize {
        self.config.sampler().samples_per_epoch(self.dataset.len())
    }

    /// The dataset indices of each of this rank's batches in `epoch`, without loading anything.
    pub fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let sampler = self.config.sampler();
        let order = self.epoch_order(epoch);
        (0..self.batches_per_epoch()).map(|k| sampler.batch_indices(&order, k)).collect()
    }

    /// The order of `epoch` that the sampler cuts into batches: a permutation of all indices, or,
    /// for a sharded dataset (WebDataset), the shard-wise order of `shard_order`. A pure function
    /// of the dataset, the configuration and `epoch`, which is what makes `iter_from` resume.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let sampler = self.config.sampler();
        match self.dataset.shard_layout() {
            Some(layout) => crate::shard_order::epoch_order(&layout, &sampler, epoch),
            None => sampler.epoch_order(self.dataset.len(), epoch),
        }
    }

    /// Iterates over all batches of `epoch`.
    pub fn iter_epoch(&self, epoch: u64) -> Result<EpochIter> {
        self.iter_from(epoch, 0)
    }

    /// Iterates over the batches of `epoch` from `start_batch` on: exactly the batches an
    /// uninterrupted run produces from there, for resuming from a checkpoint.
    pub fn iter_from(&self, epoch: u64, start_batch: usize) -> Result<EpochIter> {
        let end = self.batches_per_epoch();
        if start_batch > end {
            return Err(DataError::Config(format!(
                "cannot start at batch {start_batch}: an epoch has {end} batches"
            )));
        }
        let sampler = self.config.sampler();
        let shared = Shared {
            dataset: self.dataset.clone(),
            transform: self.transform.clone(),
            order: self.epoch_order(epoch),
            sampler,
            epoch,
            strict: self.config.strict,
            cancel: AtomicBool::new(false),
            warned: self.warned.clone(),
        };
        let prefetch = self.config.prefetch.unwrap_or(2 * self.config.workers.max(1));
        EpochIter::start(shared, start_batch, end, self.config.workers, prefetch)
    }
}
