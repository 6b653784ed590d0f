//! End-to-end fine-tuning (facebookresearch/mae `main_finetune.py`, `util/lr_decay.py`): the
//! whole encoder trains with a linear head on the mean of the patch tokens after `fc_norm` (the
//! paper's default `global_pool`; the final `norm` is then unused) or on the cls token after the
//! final norm; AdamW with layer-wise learning-rate decay, no weight decay on biases, norms,
//! `cls_token` and `pos_embed`; drop path growing linearly over depth; label smoothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mae_data::{Batch, Dataset, Loader, LoaderConfig};
use mae_train::{Hooks, ParamOptions, TrainError, Trainable};
use mae_vit::layers::{LayerNorm, ResidualKeep};
use mae_vit::{Pool, PosEmbed, VisionTransformer, VitConfig};
use rand::RngCore;

use super::head::LinearHead;
use super::{smoothed_cross_entropy, Accuracy, AccuracyCounter};
use mae::Encoder;
use mae::{MaeError, Result};

/// Stream id of the drop-path draws in [`mae_data::sample_rng`] (the loader uses 0..=3).
pub const DROP_PATH_STREAM: u64 = 0x6472_6f70;

/// safetensors header key of a fine-tuned classifier's [`ClassifierMeta`].
pub use mae::io::CLASSIFIER_METADATA_KEY;

fn model_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

/// The layer of a parameter for layer-wise lr decay (BEiT's `get_layer_id_for_vit`):
/// `cls_token`, `pos_embed`, `patch_embed.*` are layer 0, `blocks.i.*` layer `i + 1`, the rest
/// (`norm`, `fc_norm`, `head`) layer `depth + 1`.
pub fn layer_id(name: &str, depth: usize) -> usize {
    if name == "cls_token" || name == "pos_embed" || name.starts_with("patch_embed.") {
        return 0;
    }
    name.strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(depth + 1, |i| (i + 1).min(depth + 1))
}

/// The learning-rate multiplier of a parameter: `decay ^ (depth + 1 - layer_id)`, so the head
/// gets the full rate and every block down the stack `decay` times less than the one above.
pub fn layer_scale(name: &str, depth: usize, decay: f64) -> f64 {
    decay.powi((depth + 1 - layer_id(name, depth)) as i32)
}

/// Whether fine-tuning decays a parameter: weights only (not 1-D parameters nor biases), and
/// not `cls_token` / `pos_embed` (timm's `no_weight_decay`).
pub fn decays(name: &str, var: &Var) -> bool {
    mae_train::decays(name, var) && name != "cls_token" && name != "pos_embed"
}

/// The drop rate of each block: `linspace(0, rate, depth)`, as timm's stochastic depth decay
/// rule.
pub fn drop_path_rates(rate: f64, depth: usize) -> Vec<f64> {
    match depth {
        0 => Vec::new(),
        1 => vec![0.0],
        _ => (0..depth).map(|i| rate * i as f64 / (depth - 1) as f64).collect(),
    }
}

fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The residual keep-multipliers of a batch: sample `indices[s]` of `epoch` draws, for every
/// block, one uniform per branch from its own keyed generator (so a sample's drops do not
/// depend on the batch it is in); a branch is dropped when its draw falls below the block's rate
/// and otherwise scaled by `1 / (1 - rate)`.
pub fn drop_path_keeps(
    rates: &[f64],
    seed: u64,
    epoch: u64,
    indices: &[usize],
    device: &Device,
) -> Result<Vec<ResidualKeep>> {
    let b = indices.len();
    let mut scales = vec![[vec![1f32; b], vec![1f32; b]]; rates.len()];
    for (s, &index) in indices.iter().enumerate() {
        let mut rng = mae_data::sample_rng(seed, epoch, index as u64, DROP_PATH_STREAM);
        for (block, &p) in scales.iter_mut().zip(rates) {
            for branch in block.iter_mut() {
                branch[s] = if unit(&mut rng) < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 };
            }
        }
    }
    let as_tensor = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1), device);
    scales
        .into_iter()
        .zip(rates)
        .map(|([attn, mlp], &p)| {
            Ok(if p > 0.0 {
                ResidualKeep { attn: Some(as_tensor(attn)?), mlp: Some(as_tensor(mlp)?) }
            } else {
                ResidualKeep::default()
            })
        })
        .collect()
}

/// What a classifier file's header says about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierMeta {
    pub vit: VitConfig,
    pub num_classes: usize,
    pub pool: Pool,
}

/// A ViT with a classification head; owns its variables (encoder in timm's names, `fc_norm.*`,
/// `head.*`).
pub struct Classifier {
    vit: VisionTransformer,
    config: VitConfig,
    varmap: VarMap,
    fc_norm: LayerNorm,
    head: LinearHead,
    pool: Pool,
    device: Device,
    /// The pixel statistics of the encoder's pre-training (evaluation); `None`: the default.
    normalize: Option<mae_data::Normalize>,
}

impl Classifier {
    /// The classifier evaluating with `normalize` (the statistics its encoder was trained with).
    pub fn with_normalize(self, normalize: Option<mae_data::Normalize>) -> Self {
        Self { normalize, ..self }
    }

    /// A head for `num_classes` on `encoder`: `fc_norm` at identity, the linear weight
    /// trunc-normal with std 2e-5 and a zero bias, as the paper's fine-tuning starts.
    pub fn new(encoder: Encoder, num_classes: usize, pool: Pool, seed: u64) -> Result<Self> {
        let device = encoder.device().clone();
        let (config, vit, varmap) = encoder.into_parts();
        let d = config.embed_dim;
        let head = LinearHead::new(d, num_classes, 2e-5, seed, &device)?;
        {
            let mut vars =
                varmap.data().lock().map_err(|_| MaeError::Config("variable map lock poisoned".into()))?;
            vars.insert("fc_norm.weight".into(), Var::ones(d, DType::F32, &device)?);
            vars.insert("fc_norm.bias".into(), Var::zeros(d, DType::F32, &device)?);
            vars.insert("head.weight".into(), head.weight.clone());
            vars.insert("head.bias".into(), head.bias.clone());
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let fc_norm = LayerNorm::new(d, config.layer_norm_eps, vb.pp("fc_norm"))?;
        Ok(Self { vit, config, varmap, fc_norm, head, pool, device, normalize: None })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn num_classes(&self) -> usize {
        self.head.num_classes()
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every variable, sorted by name.
    pub fn all_vars(&self) -> Vec<(String, Var)> {
        let Ok(vars) = self.varmap.data().lock() else { return Vec::new() };
        let mut out: Vec<_> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The variables the forward pass uses: all but the unused norm (`norm` with mean pooling,
    /// `fc_norm` with the cls token).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let unused = match self.pool {
            Pool::Mean => "norm.",
            Pool::Cls => "fc_norm.",
        };
        self.all_vars().into_iter().filter(|(name, _)| !name.starts_with(unused)).collect()
    }

    /// Logits `[B, C]` of images `[B, C, H, W]`, with the residual multipliers `drop_path` (empty:
    /// none, as at evaluation).
    pub fn forward(&self, imgs: &Tensor, drop_path: &[ResidualKeep]) -> Result<Tensor> {
        let x = self.vit.forward_train(imgs, drop_path)?; // [B, 1 + L, D], before the final norm
        let n = x.dim(1)?;
        let pooled = match self.pool {
            Pool::Mean => self.fc_norm.forward(&x.narrow(1, 1, n - 1)?.mean(1)?)?, // [B, D]
            Pool::Cls => self.vit.final_norm(&x.narrow(1, 0, 1)?.squeeze(1)?)?,
        };
        self.head.forward(&pooled)
    }

    /// Saves every weight (and the position table) with a [`ClassifierMeta`] header.
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta =
            ClassifierMeta { vit: self.config.clone(), num_classes: self.num_classes(), pool: self.pool };
        let json = serde_json::to_string(&meta).map_err(|e| MaeError::Config(e.to_string()))?;
        let mut tensors = Vec::new();
        for (name, var) in self.all_vars() {
            tensors.push((name, var.as_tensor().to_device(&Device::Cpu)?));
        }
        if self.config.pos_embed == PosEmbed::Sincos {
            tensors.push(("pos_embed".into(), self.vit.pos_embed().to_device(&Device::Cpu)?));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let metadata = HashMap::from([(CLASSIFIER_METADATA_KEY.to_string(), json)]);
        let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| MaeError::Format {
            path: path.to_path_buf(),
            what: "safetensors file",
            message: e.to_string(),
        })?;
        mae::io::write_atomically(path, &bytes)
    }

    /// Sets every variable from a file written by [`Classifier::save`].
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        mae_train::load_vars(path, &self.all_vars()).map_err(|e| MaeError::Config(e.to_string()))
    }

    /// Top-1 / top-5 on `dataset` through the evaluation transform.
    pub fn evaluate(&self, dataset: Arc<dyn Dataset>, batch_size: usize, workers: usize) -> Result<Accuracy> {
        let what = dataset.describe();
        let config = LoaderConfig { workers, ..LoaderConfig::eval(batch_size.max(1)) };
        let loader = Loader::new(
            dataset,
            Arc::new(crate::eval_transform(&self.config, self.normalize.as_ref())),
            config,
        )
        .map_err(|e| MaeError::Config(e.to_string()))?;
        let mut acc = AccuracyCounter::default();
        for batch in loader.iter_epoch(0).map_err(|e| MaeError::Config(e.to_string()))? {
            let batch = batch.map_err(|e| MaeError::Config(e.to_string()))?;
            if batch.is_empty() {
                continue;
            }
            let labels =
                batch.labels.as_ref().ok_or_else(|| MaeError::Config(format!("{what} has no labels")))?;
            let logits = self.forward(&batch.images.to_device(&self.device)?, &[])?.detach();
            acc.add(&logits, labels)?;
        }
        acc.finish(self.num_classes())
    }
}

/// Fine-tuning as the trainer's [`Trainable`]: the classifier and the recipe's regularisers.
pub struct FineTune {
    pub classifier: Classifier,
    /// Keys the drop-path draws.
    pub seed: u64,
    /// Stochastic depth of the last block (0.1 in the paper for ViT-B).
    pub drop_path: f64,
    pub label_smoothing: f64,
    pub layer_decay: f64,
}

impl Trainable for FineTune {
    type Batch = Batch;

    fn loss(&self, batch: &Batch) -> mae_train::Result<Tensor> {
        let labels = batch.labels.as_ref().ok_or_else(|| model_err("fine-tuning needs labeled data"))?;
        let c = &self.classifier;
        let rates = drop_path_rates(self.drop_path, c.config.depth);
        let keeps =
            drop_path_keeps(&rates, self.seed, batch.epoch, &batch.indices, &c.device).map_err(model_err)?;
        let logits = c.forward(&batch.images.to_device(&c.device)?, &keeps).map_err(model_err)?;
        smoothed_cross_entropy(&logits, labels, self.label_smoothing).map_err(model_err)
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.classifier.trainable_vars()
    }

    fn batch_len(batch: &Batch) -> usize {
        batch.len()
    }

    fn save_weights(&self, path: &Path) -> mae_train::Result<()> {
        self.classifier.save(path).map_err(model_err)
    }

    fn param_options(&self, name: &str, var: &Var) -> ParamOptions {
        ParamOptions {
            weight_decay: decays(name, var),
            lr_scale: layer_scale(name, self.classifier.config.depth, self.layer_decay),
        }
    }
}

/// Evaluates on a held-out set every `every_epochs` epochs (0: never), into `metrics.jsonl`.
pub struct FineTuneHooks {
    pub test: Arc<dyn Dataset>,
    pub every_epochs: usize,
    pub batch_size: usize,
    pub workers: usize,
}

impl Hooks<FineTune> for FineTuneHooks {
    fn on_epoch_end(
        &mut self,
        task: &FineTune,
        epoch: usize,
        _step: usize,
    ) -> mae_train::Result<Vec<(String, f64)>> {
        if self.every_epochs == 0 || !(epoch + 1).is_multiple_of(self.every_epochs) {
            return Ok(Vec::new());
        }
        let r =
            task.classifier.evaluate(self.test.clone(), self.batch_size, self.workers).map_err(model_err)?;
        let mut out = vec![("test_top1".to_string(), r.top1)];
        out.extend(r.top5.map(|t| ("test_top5".to_string(), t)));
        Ok(out)
    }
}
