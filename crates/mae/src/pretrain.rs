//! MAE pre-training on `mae-train`: the model as a [`Trainable`], the data loader as a
//! [`BatchSource`], and the epoch hooks that draw the reconstruction picture, the loss plot and
//! run the optional k-NN monitor.
//!
//! Mask noise is keyed like the augmentations, by (seed, epoch, dataset index): a sample gets the
//! same crop, flip and mask whatever the batch size, number of workers or processes.

use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use mae_data::{stream, Batch, Dataset, Loader, Transform};
use mae_patch::MaskPlan;
use mae_train::{BatchSource, Hooks, TrainError, Trainable};
use rand::RngCore;

use crate::error::{MaeError, Result};
use crate::model::MaskedAutoencoder;
use crate::visualize::{self, Denormalize};

fn model_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

/// `[B * L]` mask noise for the samples of a batch, each row from its own keyed RNG.
pub fn batch_noise(seed: u64, epoch: u64, indices: &[usize], num_patches: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(indices.len() * num_patches);
    for &i in indices {
        let mut rng = mae_data::sample_rng(seed, epoch, i as u64, stream::MASK);
        // 24 random bits per value: exact in f32, stable across rand versions.
        out.extend((0..num_patches).map(|_| (rng.next_u32() >> 8) as f32 / 16_777_216.0));
    }
    out
}

/// The model and the seed that keys its masks.
pub struct MaeTask {
    pub model: MaskedAutoencoder,
    pub seed: u64,
}

impl MaeTask {
    /// The mask plan of a batch (keyed per sample).
    pub fn plan(&self, batch: &Batch) -> Result<MaskPlan> {
        let l = self.model.config().num_patches();
        let noise = batch_noise(self.seed, batch.epoch, &batch.indices, l);
        Ok(MaskPlan::from_noise_values(&noise, batch.len(), l, self.model.config().mask_ratio)?)
    }
}

impl Trainable for MaeTask {
    type Batch = Batch;

    fn loss(&self, batch: &Batch) -> mae_train::Result<Tensor> {
        let plan = self.plan(batch).map_err(model_err)?;
        let pixels = batch.images.to_device(self.model.device())?;
        Ok(self.model.forward_with_plan(&pixels, &plan).map_err(model_err)?.loss)
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.model.named_vars()
    }

    fn batch_len(batch: &Batch) -> usize {
        batch.len()
    }

    fn save_weights(&self, path: &Path) -> mae_train::Result<()> {
        self.model.save(path).map_err(model_err)
    }
}

/// A `mae-data` loader as the trainer's batch source.
pub struct LoaderSource<'a>(pub &'a Loader);

impl BatchSource for LoaderSource<'_> {
    type Batch = Batch;

    fn batches_per_epoch(&self) -> usize {
        self.0.batches_per_epoch()
    }

    fn epoch(
        &self,
        epoch: usize,
        start_batch: usize,
    ) -> mae_train::Result<Box<dyn Iterator<Item = mae_train::Result<Batch>> + '_>> {
        let iter = self.0.iter_from(epoch as u64, start_batch).map_err(model_err)?;
        Ok(Box::new(iter.map(|b| b.map_err(model_err))))
    }
}

/// Loads samples `indices` of `dataset` through `transform` into one `[N, 3, H, W]` batch,
/// skipping (and reporting) any that fail.
pub fn load_images(dataset: &dyn Dataset, transform: &dyn Transform, indices: &[usize]) -> Result<Tensor> {
    let mut images = Vec::new();
    for &i in indices {
        let sample = dataset.get(i).map_err(|e| MaeError::Config(e.to_string()))?;
        let mut rng = mae_data::sample_rng(0, 0, i as u64, stream::AUGMENT);
        let t = transform.apply(&sample.image, &mut rng).map_err(|e| MaeError::Config(e.to_string()))?;
        images.push(t);
    }
    Ok(Tensor::stack(&images, 0)?)
}

/// An evaluation of the encoder at the end of some epochs while pre-training (`mae-eval`'s
/// k-NN monitor is one): the metrics it returns are logged with the epoch's.
pub trait EpochProbe: Send {
    /// Whether to run after (0-based) `epoch`.
    fn due(&self, epoch: usize) -> bool;
    /// Named metrics of `encoder` (e.g. `knn_top1`).
    fn evaluate(&self, encoder: &mae_vit::VisionTransformer) -> Result<Vec<(String, f64)>>;
}

/// Pictures and evaluations at the end of epochs.
pub struct PretrainHooks {
    pub run_dir: PathBuf,
    /// Fixed images (eval transform) shown in every reconstruction picture.
    pub preview: Option<Tensor>,
    pub preview_seed: u64,
    pub denormalize: Denormalize,
    /// Evaluations of the encoder at epoch ends (e.g. `mae_eval::KnnMonitor`).
    pub probe: Option<Box<dyn EpochProbe>>,
    pub title: String,
}

impl PretrainHooks {
    fn draw_loss(&self) -> mae_train::Result<()> {
        let metrics = self.run_dir.join("metrics.jsonl");
        if metrics.is_file() {
            let steps = mae_train::read_steps(&metrics)?;
            mae_train::plot_loss(&steps, &self.title, &self.run_dir.join("loss.png"))?;
            // The process's resident memory per step: flat in a healthy run, a climb is a leak.
            mae_train::plot_memory(&steps, &self.title, &self.run_dir.join("memory.png"))?;
        }
        Ok(())
    }
}

impl PretrainHooks {
    /// Draws the reconstruction of the preview images to `reconstructions/<name>.png` and
    /// `reconstruction.png` (the newest).
    fn draw_reconstruction(&self, task: &MaeTask, name: &str) -> mae_train::Result<()> {
        let Some(preview) = &self.preview else { return Ok(()) };
        let dir = self.run_dir.join("reconstructions");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let pixels = preview.to_device(task.model.device())?;
        let (b, ..) = pixels.dims4()?;
        let l = task.model.config().num_patches();
        // The same masks every time, so pictures are comparable.
        let noise = batch_noise(self.preview_seed, 0, &(0..b).collect::<Vec<_>>(), l);
        let plan = MaskPlan::from_noise_values(&noise, b, l, task.model.config().mask_ratio)?;
        let rec = visualize::reconstruct(&task.model, &pixels, &plan).map_err(model_err)?;
        let path = dir.join(format!("{name}.png"));
        visualize::save_grid(&rec, &self.denormalize, &path).map_err(model_err)?;
        let newest = self.run_dir.join("reconstruction.png");
        std::fs::copy(&path, &newest).map_err(|e| TrainError::io(&newest, e))?;
        Ok(())
    }

    /// The final pictures, after the last step (which may not end an epoch); the reconstruction
    /// also goes to TensorBoard at `step` (in an event file of its own: the trainer's is closed).
    pub fn finish(&mut self, task: &MaeTask, step: usize) -> mae_train::Result<()> {
        self.draw_reconstruction(task, "final")?;
        let images = self.take_images();
        if !images.is_empty() {
            let mut events = mae_train::tensorboard::EventWriter::create(&self.run_dir)?;
            for (tag, png) in images {
                events.png_file(&tag, step as i64, &png)?;
            }
        }
        self.draw_loss()
    }
}

impl Hooks<MaeTask> for PretrainHooks {
    fn on_epoch_end(
        &mut self,
        task: &MaeTask,
        epoch: usize,
        _step: usize,
    ) -> mae_train::Result<Vec<(String, f64)>> {
        self.draw_reconstruction(task, &format!("epoch-{epoch:04}"))?;
        self.draw_loss()?;
        let mut metrics = Vec::new();
        if let Some(probe) = self.probe.as_ref().filter(|p| p.due(epoch)) {
            metrics.extend(probe.evaluate(task.model.encoder()).map_err(model_err)?);
        }
        Ok(metrics)
    }

    fn on_checkpoint(&mut self, _run_dir: &Path) -> mae_train::Result<()> {
        self.draw_loss()
    }

    /// `reconstruction.png`, which `on_epoch_end` has just redrawn (when there are previews).
    fn take_images(&mut self) -> Vec<(String, PathBuf)> {
        match self.preview {
            Some(_) => vec![("reconstruction".into(), self.run_dir.join("reconstruction.png"))],
            None => Vec::new(),
        }
    }
}
