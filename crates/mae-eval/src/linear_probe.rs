//! The linear probe (facebookresearch/mae `main_linprobe.py`): the encoder is frozen, and only
//! `BatchNorm1d(D, affine=False, eps=1e-6)` + `Linear(D, C)` learn, on the cls token after the
//! final norm (or the mean of the patch tokens).
//!
//! The encoder never changes, so every image is encoded once, with the evaluation transform
//! (resize + centre crop), and the head trains on those cached features for many cheap epochs.
//! (The paper re-augments every epoch with a random resized crop + flip, affordable at its scale
//! on GPUs; on a CPU the encoder passes would dominate the whole run.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use mae_data::{Dataset, Loader, LoaderConfig, Transform};
use mae_train::{BatchSource, Hooks, TrainError, Trainable};
use mae_vit::{Pool, VisionTransformer};

use super::head::{BatchNorm1d, LinearHead};
use super::{smoothed_cross_entropy, Accuracy, AccuracyCounter};
use mae::{MaeError, Result};

fn model_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

fn data_err(e: impl std::fmt::Display) -> MaeError {
    MaeError::Config(e.to_string())
}

/// Pooled encoder features of a labeled dataset.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    /// `[N, D]` f32.
    pub features: Tensor,
    pub labels: Vec<u32>,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn dim(&self) -> Result<usize> {
        Ok(self.features.dim(1)?)
    }
}

/// Encodes every image of `dataset` (evaluation transform at the encoder's size) into one pooled
/// feature vector on `device`. Samples that fail to load are skipped with a warning (the
/// loader's policy); an unlabeled dataset is an error.
pub fn encode_dataset(
    vit: &VisionTransformer,
    dataset: Arc<dyn Dataset>,
    pool: Pool,
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> Result<FeatureSet> {
    let transform = crate::eval_transform(vit.config(), None);
    encode_dataset_with(vit, dataset, pool, (batch_size, workers), device, transform)
}

/// [`encode_dataset`] through `transform` (a run's own normalisation).
pub fn encode_dataset_with(
    vit: &VisionTransformer,
    dataset: Arc<dyn Dataset>,
    pool: Pool,
    (batch_size, workers): (usize, usize),
    device: &Device,
    transform: mae_data::EvalTransform,
) -> Result<FeatureSet> {
    if !dataset.is_labeled() {
        return Err(MaeError::Config(format!("{} has no labels: a probe needs classes", dataset.describe())));
    }
    let transform: Arc<dyn Transform> = Arc::new(transform);
    let what = dataset.describe();
    let config = LoaderConfig { workers, ..LoaderConfig::eval(batch_size.max(1)) };
    let loader = Loader::new(dataset, transform, config).map_err(data_err)?;
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for batch in loader.iter_epoch(0).map_err(data_err)? {
        let batch = batch.map_err(data_err)?;
        if batch.is_empty() {
            continue;
        }
        let f = vit.features(&batch.images.to_device(device)?, pool)?;
        // Detached: the frozen encoder's graph is not needed (nor kept alive).
        features.push(f.detach().to_dtype(DType::F32)?);
        labels.extend(batch.labels.unwrap_or_default());
    }
    if features.is_empty() {
        return Err(MaeError::Config(format!("{what}: no image could be loaded")));
    }
    Ok(FeatureSet { features: Tensor::cat(&features, 0)?.contiguous()?, labels })
}

/// A batch of cached features.
#[derive(Debug, Clone)]
pub struct FeatureBatch {
    /// `[B, D]`.
    pub features: Tensor,
    pub labels: Vec<u32>,
}

/// Cached features as the trainer's batch source: a fresh keyed permutation every epoch (the
/// loader's, so a seed means the same order), the last incomplete batch dropped.
pub struct FeatureBatches<'a> {
    pub set: &'a FeatureSet,
    pub batch_size: usize,
    pub seed: u64,
}

impl BatchSource for FeatureBatches<'_> {
    type Batch = FeatureBatch;

    fn batches_per_epoch(&self) -> usize {
        self.set.len() / self.batch_size.max(1)
    }

    fn epoch(
        &self,
        epoch: usize,
        start_batch: usize,
    ) -> mae_train::Result<Box<dyn Iterator<Item = mae_train::Result<FeatureBatch>> + '_>> {
        let order = mae_data::permutation(self.set.len(), self.seed, epoch as u64);
        let device = self.set.features.device().clone();
        let bs = self.batch_size.max(1);
        let iter = (start_batch..self.batches_per_epoch()).map(move |k| {
            let rows: Vec<u32> = order[k * bs..(k + 1) * bs].iter().map(|&i| i as u32).collect();
            let labels = rows.iter().map(|&i| self.set.labels[i as usize]).collect();
            let index = Tensor::from_vec(rows, bs, &device)?;
            Ok(FeatureBatch { features: self.set.features.index_select(&index, 0)?, labels })
        });
        Ok(Box::new(iter))
    }
}

/// The probe's head: batch norm without affine parameters, then a linear layer.
#[derive(Debug)]
pub struct LinearProbe {
    pub bn: BatchNorm1d,
    pub head: LinearHead,
}

impl LinearProbe {
    /// A fresh head for `dim`-wide features (weight trunc-normal std 0.01, as the paper).
    pub fn new(dim: usize, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self {
            bn: BatchNorm1d::new(dim, device)?,
            head: LinearHead::new(dim, num_classes, 0.01, seed, device)?,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.head.num_classes()
    }

    /// Training logits (batch statistics; the running ones move): `[B, D] -> [B, C]`.
    pub fn forward_train(&self, features: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.bn.forward_train(features)?)
    }

    /// Evaluation logits (running statistics).
    pub fn forward_eval(&self, features: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.bn.forward_eval(features)?)
    }

    /// `bn.running_mean`, `bn.running_var`, `head.weight`, `head.bias`.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let (mean, var) = self.bn.running_stats()?;
        Ok(HashMap::from([
            ("bn.running_mean".to_string(), mean),
            ("bn.running_var".to_string(), var),
            ("head.weight".to_string(), self.head.weight.as_tensor().clone()),
            ("head.bias".to_string(), self.head.bias.as_tensor().clone()),
        ]))
    }

    /// Restores the head and the batch-norm statistics from a file of [`Self::state_tensors`].
    pub fn load(&self, path: &Path) -> Result<()> {
        let device = self.head.weight.device().clone();
        let tensors = mae_train::read_tensors(path, &device).map_err(|e| MaeError::Config(e.to_string()))?;
        let source = path.display().to_string();
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| MaeError::MissingTensor { origin: source.clone(), name: name.to_string() })
        };
        self.bn.set_running_stats(get("bn.running_mean")?, get("bn.running_var")?, &source)?;
        for (name, var) in [("head.weight", &self.head.weight), ("head.bias", &self.head.bias)] {
            let t = get(name)?;
            if t.dims() != var.dims() {
                return Err(MaeError::ShapeMismatch {
                    origin: source.clone(),
                    name: name.to_string(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Top-1 / top-5 of the probe on `set` (running statistics).
    pub fn evaluate(&self, set: &FeatureSet, batch_size: usize) -> Result<Accuracy> {
        let mut acc = AccuracyCounter::default();
        let bs = batch_size.max(1);
        for start in (0..set.len()).step_by(bs) {
            let rows = bs.min(set.len() - start);
            let logits = self.forward_eval(&set.features.narrow(0, start, rows)?)?;
            acc.add(&logits, &set.labels[start..start + rows])?;
        }
        acc.finish(self.num_classes())
    }
}

impl Trainable for LinearProbe {
    type Batch = FeatureBatch;

    fn loss(&self, batch: &FeatureBatch) -> mae_train::Result<Tensor> {
        let logits = self.forward_train(&batch.features).map_err(model_err)?;
        smoothed_cross_entropy(&logits, &batch.labels, 0.0).map_err(model_err)
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("head.bias".into(), self.head.bias.clone()), ("head.weight".into(), self.head.weight.clone())]
    }

    fn batch_len(batch: &FeatureBatch) -> usize {
        batch.labels.len()
    }

    fn save_weights(&self, path: &Path) -> mae_train::Result<()> {
        mae_train::write_tensors(path, &self.state_tensors().map_err(model_err)?)
    }
}

/// Evaluates the probe on held-out features every `every_epochs` epochs (0: never), into
/// `metrics.jsonl` as `test_top1` / `test_top5`.
pub struct ProbeHooks<'a> {
    pub test: &'a FeatureSet,
    pub every_epochs: usize,
}

impl Hooks<LinearProbe> for ProbeHooks<'_> {
    fn on_epoch_end(
        &mut self,
        probe: &LinearProbe,
        epoch: usize,
        _step: usize,
    ) -> mae_train::Result<Vec<(String, f64)>> {
        if self.every_epochs == 0 || !(epoch + 1).is_multiple_of(self.every_epochs) {
            return Ok(Vec::new());
        }
        let r = probe.evaluate(self.test, 1024).map_err(model_err)?;
        let mut out = vec![("test_top1".to_string(), r.top1)];
        out.extend(r.top5.map(|t| ("test_top5".to_string(), t)));
        Ok(out)
    }
}
