//! `mae pretrain` settings: one struct serves as the command-line flags and as the TOML config
//! file (every field optional), merged as defaults < file < flags, then resolved into the full
//! [`Pretrain`] that is saved as `config.toml` in the run folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

/// The quick start's model when neither --preset nor --config is given.
pub const QUICKSTART_PRESET: &str = "mae-vit-micro-patch4-32";

#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(after_help = "\
Without --preset (and without --config) this is the quick start: mae-vit-micro-patch4-32 on
built-in synthetic shapes, 600 steps at base lr 1.5e-3, a few CPU minutes. With a preset the
defaults are the paper's: base lr 1.5e-4 x batch/256, AdamW (0.9, 0.95), weight decay 0.05,
warm-up then cosine.

Examples:
  mae pretrain
  mae pretrain --data mnist:data/mnist@train --preset mae-vit-tiny-patch4-32 --steps 1000 --base-lr 1.5e-3
               # data/mnist: the 5,000 real digits the repository carries (run from the checkout)
  mae pretrain --data folder:/data/imagenet/train --preset mae-vit-base-patch16 --epochs 400 \\
               --batch-size 64 --accum 4 --norm-pix-loss --warmup-epochs 40
  mae pretrain --config run.toml --seed 1         # TOML keys are the flag names with underscores
  mae pretrain --resume runs/20261128-190203      # or --resume alone: the newest run under runs/")]
pub struct PretrainArgs {
    /// A TOML file with any of these settings (flags override it).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue a run folder exactly where its last checkpoint stopped (default: the newest under runs/).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Training data: synthetic[:N], folder:PATH, mnist:PATH[@train|test], cifar10:PATH[@train|test], hf:REPO[@SPLIT].
    #[arg(long, value_name = "SPEC")]
    pub data: Option<String>,
    /// Model preset (see `mae info --presets`); default: the quick start's mae-vit-micro-patch4-32.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Train for this many epochs...
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// ...or for this many optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Images per micro-batch (per process).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long)]
    pub accum: Option<usize>,
    /// Learning rate per 256 images: lr = base_lr x effective batch / 256 (paper: 1.5e-4).
    #[arg(long)]
    pub base_lr: Option<f64>,
    /// Floor of the cosine schedule.
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear warm-up length, in epochs (may be fractional).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Fraction of patches hidden (paper: 0.75).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Predict per-patch normalised pixels (the paper's better-features option).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub norm_pix_loss: Option<bool>,
    /// Image side in pixels (default: the preset's).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Data loading threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seeds the initialisation, data order, augmentations and masks.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Data parallel over these GPUs, one process each, joined by NCCL: e.g. `0,1,2,3`
    /// (--batch-size is per GPU). Needs a build with the cargo feature `nccl`.
    #[arg(long, value_name = "N,N,...", conflicts_with = "device")]
    #[serde(skip)]
    pub devices: Option<String>,
    /// Compute precision: f32, or bf16 (mixed precision for GPUs: matrix products in bf16,
    /// weights, optimizer state, norms and the loss in f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Run folder (default: runs/<timestamp>). A folder that already holds a run is refused.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start a new run in an --out that holds one, moving the old run aside to
    /// <out>.replaced-<timestamp> (never mixing the two).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    pub overwrite: bool,
    /// Save a checkpoint every N steps (0: at the end of each epoch only).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept (plus best/).
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Stop after this many non-finite steps in a row.
    #[arg(long)]
    pub max_nonfinite: Option<usize>,
    /// Run the k-NN monitor every N epochs on labeled data (0: off).
    #[arg(long)]
    pub knn_every: Option<usize>,
    /// Labeled data for the k-NN monitor (default: the training data's train/test splits).
    #[arg(long, value_name = "SPEC")]
    pub knn_train: Option<String>,
    #[arg(long, value_name = "SPEC")]
    pub knn_test: Option<String>,
    /// auto (a bar on a terminal, lines otherwise), bar, lines or silent.
    #[arg(long)]
    pub progress: Option<String>,
    /// Log a metrics line every N steps.
    #[arg(long)]
    pub log_every: Option<usize>,
}

macro_rules! merge_fields {
    ($base:ident, $over:ident, $($f:ident),*) => { $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )* };
}

impl PretrainArgs {
    /// `self` with every setting of `over` that is present.
    pub fn overridden_by(mut self, over: &PretrainArgs) -> Self {
        merge_fields!(
            self,
            over,
            data,
            preset,
            epochs,
            steps,
            batch_size,
            accum,
            base_lr,
            min_lr,
            weight_decay,
            warmup_epochs,
            mask_ratio,
            norm_pix_loss,
            img_size,
            workers,
            seed,
            device,
            dtype,
            out,
            checkpoint_every,
            keep_last,
            clip_grad,
            max_nonfinite,
            knn_every,
            knn_train,
            knn_test,
            progress,
            log_every
        );
        if over.epochs.is_some() {
            self.steps = None;
        }
        if over.steps.is_some() {
            self.epochs = None;
        }
        self
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("--config {}: not a valid pretrain config", path.display()))
    }

    /// Fills every unset field: the quick start when neither a preset nor a config chose a
    /// model, the paper's recipe otherwise.
    pub fn resolve(&self, run_dir_default: impl FnOnce() -> PathBuf) -> Result<Pretrain> {
        let quickstart = self.preset.is_none();
        let preset = self.preset.clone().unwrap_or_else(|| QUICKSTART_PRESET.to_string());
        let mut model = mae::MaeConfig::preset(&preset).context("--preset")?;
        if let Some(size) = self.img_size {
            model.image_size = [size, size];
        }
        if let Some(r) = self.mask_ratio {
            model.mask_ratio = r;
        }
        if let Some(n) = self.norm_pix_loss {
            model.norm_pix_loss = n;
        }
        model.validate().context("the model settings (--img-size, --mask-ratio)")?;
        let progress = self.progress.clone().unwrap_or_else(|| "auto".into());
        if !["auto", "bar", "lines", "silent"].contains(&progress.as_str()) {
            bail!("--progress {progress}: expected auto, bar, lines or silent");
        }
        let dtype = self.dtype.clone().unwrap_or_else(|| "f32".into());
        crate::util::parse_compute_dtype(&dtype)?;
        let batch_size = self.batch_size.unwrap_or(64);
        let accum = self.accum.unwrap_or(1);
        if batch_size == 0 || accum == 0 {
            bail!("--batch-size and --accum must be at least 1");
        }
        let resolved = Pretrain {
            data: self.data.clone().unwrap_or_else(|| "synthetic:20000".into()),
            preset,
            model,
            epochs: self.epochs,
            steps: if self.epochs.is_none() {
                Some(self.steps.unwrap_or(if quickstart { 600 } else { 1000 }))
            } else {
                None
            },
            batch_size,
            accum,
            base_lr: self.base_lr.unwrap_or(if quickstart { 1.5e-3 } else { 1.5e-4 }),
            min_lr: self.min_lr.unwrap_or(0.0),
            weight_decay: self.weight_decay.unwrap_or(0.05),
            warmup_epochs: self.warmup_epochs,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            seed: self.seed.unwrap_or(0),
            device: self.device.clone().unwrap_or_else(|| "cpu".into()),
            dtype,
            out: self.out.clone().unwrap_or_else(run_dir_default),
            checkpoint_every: self.checkpoint_every.unwrap_or(200),
            keep_last: self.keep_last.unwrap_or(3),
            clip_grad: self.clip_grad,
            max_nonfinite: self.max_nonfinite.unwrap_or(5),
            knn_every: self.knn_every.unwrap_or(0),
            knn_train: self.knn_train.clone(),
            knn_test: self.knn_test.clone(),
            progress,
            log_every: self.log_every.unwrap_or(10),
        };
        Ok(resolved)
    }
}

/// Every setting of a run, resolved; written to `config.toml` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pretrain {
    pub data: String,
    pub preset: String,
    pub model: mae::MaeConfig,
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub accum: usize,
    pub base_lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    /// None: 5% of the run.
    pub warmup_epochs: Option<f64>,
    pub workers: usize,
    pub seed: u64,
    pub device: String,
    pub dtype: String,
    pub out: PathBuf,
    pub checkpoint_every: usize,
    pub keep_last: usize,
    pub clip_grad: Option<f64>,
    pub max_nonfinite: usize,
    pub knn_every: usize,
    pub knn_train: Option<String>,
    pub knn_test: Option<String>,
    pub progress: String,
    pub log_every: usize,
}

impl Pretrain {
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot write the resolved config")
    }

    pub fn from_run_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("--resume {}", dir.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a run config written by mae", path.display()))
    }
}
