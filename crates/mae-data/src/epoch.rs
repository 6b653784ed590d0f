//! One epoch in flight: worker threads decode and augment whole batches in parallel, a bounded
//! number of batches ahead of the training thread, which receives them in order.
//!
//! Determinism does not depend on scheduling: the content of batch `k` is a pure function of
//! (dataset, transform, seed, epoch, rank, k) (see `sampler` and `rng`), each worker builds whole
//! batches, and the iterator hands them out by batch index. So 1 or 16 workers, and a run
//! resumed at batch `k`, give bit-identical batches.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::loader::{Batch, EpochStats};
use crate::rng::{sample_rng, stream};
use crate::sampler::SamplerConfig;
use crate::transform::Transform;

/// State shared by the workers of one epoch.
pub(crate) struct Shared {
    pub(crate) dataset: Arc<dyn Dataset>,
    pub(crate) transform: Arc<dyn Transform>,
    pub(crate) order: Vec<usize>,
    pub(crate) sampler: SamplerConfig,
    pub(crate) epoch: u64,
    pub(crate) strict: bool,
    pub(crate) cancel: AtomicBool,
    pub(crate) warned: Arc<Mutex<HashSet<usize>>>,
}

type BatchResult = (usize, Result<Batch>);

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn worker(shared: &Shared, jobs: &Receiver<usize>, results: &Sender<BatchResult>) {
    while let Ok(k) = jobs.recv() {
        if shared.cancel.load(Ordering::Relaxed) {
            return;
        }
        // A panic must come back as an error: a silently dead worker would leave the consumer
        // waiting for its batch forever.
        let result = catch_unwind(AssertUnwindSafe(|| build_batch(shared, k))).unwrap_or_else(|p| {
            Err(DataError::Loader(format!("worker panicked building batch {k}: {}", panic_message(&*p))))
        });
        if results.send((k, result)).is_err() {
            return;
        }
    }
}

/// Loads, transforms and stacks sample `index` into `out`; returns its label.
fn load_one(shared: &Shared, index: usize, out: &mut [f32]) -> Result<Option<u32>> {
    let mut rng = sample_rng(shared.sampler.seed, shared.epoch, index as u64, stream::AUGMENT);
    let sample = shared.dataset.get(index)?;
    // A sample the run's settings cannot take (an RGB image for --in-channels 1) stops the run:
    // skipping it would skip every such image. The error names its file.
    shared.transform.apply_into(&sample.image, &mut rng, out).map_err(|e| match e {
        DataError::Config(message) => {
            DataError::Config(format!("{}: {message}", shared.dataset.origin(index)))
        }
        e => e,
    })?;
    Ok(sample.label)
}

fn build_batch(shared: &Shared, k: usize) -> Result<Batch> {
    let indices = shared.sampler.batch_indices(&shared.order, k);
    let (h, w) = shared.transform.output_size();
    let c = shared.transform.channels();
    let per = c * h * w;
    let labeled = shared.dataset.is_labeled();
    let mut pixels = vec![0f32; indices.len() * per];
    let (mut kept, mut labels, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for &index in &indices {
        if shared.cancel.load(Ordering::Relaxed) {
            return Err(DataError::Loader("cancelled".into()));
        }
        let slot = &mut pixels[kept.len() * per..(kept.len() + 1) * per];
        let result = catch_unwind(AssertUnwindSafe(|| load_one(shared, index, slot))).unwrap_or_else(|p| {
            Err(DataError::Panicked { origin: format!("sample {index}"), message: panic_message(&*p) })
        });
        match result {
            Ok(label) => {
                kept.push(index);
                if labeled {
                    labels.push(label.ok_or_else(|| {
                        DataError::Loader(format!("sample {index} of a labeled dataset has no label"))
                    })?);
                }
            }
            Err(e) if !shared.strict && e.is_sample_error() => {
                let first = shared.warned.lock().map(|mut w| w.insert(index)).unwrap_or(true);
                if first {
                    tracing::warn!("skipping sample {index} of {}: {e}", shared.dataset.describe());
                } else {
                    tracing::debug!("skipping sample {index} again: {e}");
                }
                skipped.push(index);
            }
            Err(e) => return Err(e),
        }
    }
    pixels.truncate(kept.len() * per);
    let images = Tensor::from_vec(pixels, (kept.len(), c, h, w), &Device::Cpu)?;
    Ok(Batch {
        images,
        labels: labeled.then_some(labels),
        indices: kept,
        skipped,
        epoch: shared.epoch,
        batch_index: k,
    })
}

/// The batches of one epoch, in order. Dropping it stops the workers.
///
/// ```text
/// let mut epoch = loader.iter_epoch(e)?;
/// for batch in &mut epoch {
///     let batch = batch?;
/// }
/// let stats = epoch.stats();
/// ```
pub struct EpochIter {
    shared: Arc<Shared>,
    next: usize,
    submitted: usize,
    end: usize,
    prefetch: usize,
    jobs: Option<Sender<usize>>,
    results: Receiver<BatchResult>,
    pending: BTreeMap<usize, Result<Batch>>,
    workers: Vec<JoinHandle<()>>,
    stats: EpochStats,
    done: bool,
}

impl EpochIter {
    /// Starts `workers` threads (none: batches are built inside `next()`) for batches
    /// `start..end`, at most `prefetch` ahead of the consumer.
    pub(crate) fn start(
        shared: Shared,
        start: usize,
        end: usize,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self> {
        let shared = Arc::new(shared);
        let (job_tx, job_rx) = unbounded::<usize>();
        let (result_tx, result_rx) = unbounded();
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (shared, jobs, results) = (shared.clone(), job_rx.clone(), result_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("mae-data-{w}"))
                .spawn(move || worker(&shared, &jobs, &results))
                .map_err(|e| DataError::Loader(format!("cannot start worker thread {w}: {e}")))?;
            handles.push(handle);
        }
        let stats = EpochStats { epoch: shared.epoch, ..EpochStats::default() };
        Ok(Self {
            shared,
            next: start,
            submitted: start,
            end,
            prefetch,
            jobs: Some(job_tx),
            results: result_rx,
            pending: BTreeMap::new(),
            workers: handles,
            stats,
            done: false,
        })
    }

    /// Totals of the batches delivered so far; the epoch's totals once iteration has ended.
    pub fn stats(&self) -> &EpochStats {
        &self.stats
    }

    /// Index of the batch the next call to `next()` returns.
    pub fn next_batch_index(&self) -> usize {
        self.next
    }

    fn receive(&mut self, k: usize) -> Result<Batch> {
        if self.workers.is_empty() {
            return build_batch(&self.shared, k);
        }
        if let Some(jobs) = &self.jobs {
            while self.submitted < self.end && self.submitted < k + self.prefetch {
                if jobs.send(self.submitted).is_err() {
                    break;
                }
                self.submitted += 1;
            }
        }
        loop {
            if let Some(result) = self.pending.remove(&k) {
                return result;
            }
            match self.results.recv() {
                Ok((i, result)) => {
                    self.pending.insert(i, result);
                }
                Err(_) => return Err(DataError::Loader("all worker threads have stopped".into())),
            }
        }
    }

    fn shutdown(&mut self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
        self.jobs = None;
        for handle in self.workers.drain(..) {
            // Workers catch panics themselves; a join error would be a panic in the channel code.
            let _ = handle.join();
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done || self.next >= self.end {
            if !self.done {
                self.done = true;
                self.shutdown();
            }
            return None;
        }
        let k = self.next;
        let result = self.receive(k);
        self.next += 1;
        match result {
            Ok(batch) => {
                self.stats.batches += 1;
                self.stats.samples += batch.len();
                self.stats.skipped += batch.skipped.len();
                self.stats.skipped_indices.extend(&batch.skipped);
                Some(Ok(batch))
            }
            Err(e) => {
                // An error ends the epoch: later batches would no longer be the planned ones.
                self.done = true;
                self.shutdown();
                Some(Err(e))
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shutdown();
    }
}
