//! A linear-probe or fine-tuning run's settings: resolved from defaults < flags for a new run,
//! saved as the run's `config.toml`, read back (and checked again) by `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{ClassifyArgs, FinetuneArgs};
use crate::flags::{refuse_on_resume, PoolArg};
use crate::recipe::{run_length, RecipeNumbers, RunLength};

pub const PROBE: &str = "linear-probe";
pub const FINETUNE: &str = "finetune";

/// Fine-tuning's extra settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRecipe {
    pub layer_decay: f64,
    pub drop_path: f64,
    pub label_smoothing: f64,
    pub accum: usize,
    pub clip_grad: Option<f64>,
    pub crop_min: f64,
    pub hflip: f64,
}

/// A run's resolved settings, saved as `config.toml`: what a resume rebuilds the run from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `linear-probe` or `finetune`.
    pub command: String,
    pub weights: Option<PathBuf>,
    pub preset: Option<String>,
    pub train: String,
    pub test: String,
    pub pool: PoolArg,
    /// Exactly one of `epochs` and `steps` is set (see [`Settings::length`]).
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub base_lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub checkpoint_every: Option<usize>,
    pub keep_last: usize,
    pub finetune: Option<FinetuneRecipe>,
}

impl Settings {
    /// A new run of `command`: defaults < flags.
    pub fn resolve(command: &str, args: &ClassifyArgs, finetune: Option<&FinetuneArgs>) -> Result<Self> {
        let probe = command == PROBE;
        let r = &args.recipe;
        let default_length = RunLength::Epochs(if probe { 90 } else { 5 });
        let (epochs, steps) = run_length(r.given_length(), None, default_length)?.to_fields();
        let settings = Self {
            command: command.to_string(),
            weights: args.weights.clone(),
            preset: args.preset.clone(),
            train: args.train.clone().context("give --train")?,
            test: args.test.clone().context("give --test")?,
            pool: args.pool.unwrap_or(if probe { PoolArg::Cls } else { PoolArg::Mean }),
            epochs,
            steps,
            batch_size: r.batch_size.unwrap_or(if probe { 256 } else { 64 }),
            base_lr: r.base_lr.unwrap_or(if probe { 0.1 } else { 1e-3 }),
            min_lr: r.min_lr.unwrap_or(if probe { 0.0 } else { 1e-6 }),
            weight_decay: r.weight_decay.unwrap_or(if probe { 0.0 } else { 0.05 }),
            warmup_epochs: r.warmup_epochs.unwrap_or(if probe { 10.0 } else { 1.0 }),
            seed: r.seed.unwrap_or(0),
            eval_every: args.eval_every.unwrap_or(if probe { 10 } else { 1 }),
            checkpoint_every: args.run.checkpoint_every,
            keep_last: args.run.keep_last.unwrap_or(2),
            finetune: finetune.map(FinetuneRecipe::resolve),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The settings of the `command` run in `dir`, checked as a new run's are.
    pub fn from_run_dir(dir: &Path, command: &str) -> Result<Self> {
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--resume {}: cannot read {}", dir.display(), path.display()))?;
        let settings: Self = toml::from_str(&text).with_context(|| {
            format!("--resume {}: {} is not a {command} run's config", dir.display(), path.display())
        })?;
        if settings.command != command {
            bail!(
                "--resume {}: this is a `mae {}` run, not `mae {command}`",
                dir.display(),
                settings.command
            );
        }
        settings.validate().with_context(|| format!("{}", path.display()))?;
        Ok(settings)
    }

    /// How long the run trains.
    pub fn length(&self) -> Result<RunLength> {
        RunLength::resolved(self.epochs, self.steps)
    }

    /// The images (or features) of one optimizer step.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.finetune.as_ref().map_or(1, |f| f.accum)
    }

    fn validate(&self) -> Result<()> {
        self.length()?;
        RecipeNumbers {
            batch_size: self.batch_size,
            // Batch statistics (the probe's BatchNorm) need two samples.
            min_batch_size: 2,
            accum: self.finetune.as_ref().map_or(1, |f| f.accum),
            base_lr: self.base_lr,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            warmup_epochs: Some(self.warmup_epochs),
            clip_grad: self.finetune.as_ref().and_then(|f| f.clip_grad),
        }
        .check()?;
        match &self.finetune {
            Some(f) => f.validate(),
            None => Ok(()),
        }
    }
}

impl FinetuneRecipe {
    fn resolve(f: &FinetuneArgs) -> Self {
        Self {
            layer_decay: f.layer_decay.unwrap_or(0.75),
            drop_path: f.drop_path.unwrap_or(0.1),
            label_smoothing: f.label_smoothing.unwrap_or(0.1),
            accum: f.gradient.accum.unwrap_or(1),
            clip_grad: f.gradient.clip_grad,
            crop_min: f.crop_min.unwrap_or(0.2),
            hflip: f.hflip.unwrap_or(0.5),
        }
    }

    /// Fine-tuning's own ranges (accum and clip-grad are checked with the recipe).
    fn validate(&self) -> Result<()> {
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            bail!("--layer-decay {}: must be in (0, 1]", self.layer_decay);
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            bail!("--drop-path {}: must be in [0, 1)", self.drop_path);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("--label-smoothing {}: must be in [0, 1)", self.label_smoothing);
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            bail!("--crop-min {}: must be in (0, 1]", self.crop_min);
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            bail!("--hflip {}: must be in [0, 1]", self.hflip);
        }
        Ok(())
    }
}

/// Flags that define a run's trajectory cannot change on --resume (those of how this process
/// runs it may: --device, --workers, --progress, --log-every, --checkpoint-every, --keep-last).
pub fn refuse_recipe_flags(args: &ClassifyArgs, finetune: Option<&FinetuneArgs>) -> Result<()> {
    let mut given = args.recipe.given_on_resume().to_vec();
    given.extend([("--pool", args.pool.is_some()), ("--eval-every", args.eval_every.is_some())]);
    if let Some(f) = finetune {
        given.extend(f.gradient.given_on_resume());
        given.extend([
            ("--layer-decay", f.layer_decay.is_some()),
            ("--drop-path", f.drop_path.is_some()),
            ("--label-smoothing", f.label_smoothing.is_some()),
            ("--crop-min", f.crop_min.is_some()),
            ("--hflip", f.hflip.is_some()),
        ]);
    }
    refuse_on_resume(given)
}
