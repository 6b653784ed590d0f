//! `mae pretrain` settings: one struct serves as the command-line flags and as the TOML config
//! file (every field optional), layered as defaults < file < flags, then resolved into the full
//! [`Pretrain`] that is saved as `config.toml` in the run folder (and read back by `--resume`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::flags::{
    choice, refuse_on_resume, take_given, DtypeArg, GradientFlags, ProgressArg, RecipeFlags, RunFlags,
};
use crate::recipe::{run_length, RecipeNumbers, RunLength};

/// The quick start's model when neither --preset nor --config is given.
pub const QUICKSTART_PRESET: &str = "mae-vit-micro-patch4-32";

/// The flags of `mae pretrain`, and the keys of its `--config` file (the flag names with
/// underscores; the flags only the command line takes are `#[serde(skip)]`).
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[command(after_help = "\
Without --preset (and without --config) this is the quick start: mae-vit-micro-patch4-32 on
built-in synthetic shapes, 600 steps at base lr 1.5e-3, a few CPU minutes. With a preset the
defaults are the paper's: base lr 1.5e-4 x batch/256, AdamW (0.9, 0.95), weight decay 0.05,
warm-up (5% of the run) then cosine, for 1000 steps unless the epochs or steps are given.

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
    /// Training data: synthetic[:N], folder:PATH, list:FILE, wds:SHARDS, mnist:PATH[@train|test], cifar10:PATH[@train|test], hf:REPO[@SPLIT], dicom:PATH (feature `dicom`).
    #[arg(long, value_name = "SPEC")]
    pub data: Option<String>,
    /// Model preset (see `mae info --presets`); default: the quick start's mae-vit-micro-patch4-32.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Start from pre-trained weights (a hub id such as facebook/vit-mae-base, a model folder or
    /// file, a run folder) instead of a fresh model: their architecture and image size; weights
    /// of another channel count are adapted to --in-channels (timm's adapt_input_conv).
    #[arg(long, value_name = "WEIGHTS", conflicts_with_all = ["preset", "img_size"])]
    pub init: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub recipe: RecipeFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub gradient: GradientFlags,
    /// Fraction of patches hidden (paper: 0.75).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Predict per-patch normalised pixels (the paper's better-features option).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub norm_pix_loss: Option<bool>,
    /// Image side in pixels (default: the preset's).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Image channels the model takes: 3 (RGB, the default; gray is replicated, alpha dropped),
    /// 1 (grayscale, 16-bit precision kept), 2 (gray + alpha), 4 (RGBA), or the band count of
    /// multi-band TIFFs (up to 256). An image that cannot give them (RGB for 1, 6 bands for 4)
    /// stops the run with its file named.
    #[arg(long, value_name = "N")]
    pub in_channels: Option<usize>,
    /// Per-channel mean of the [0, 1] pixel values, comma-separated, one per channel (`mae stats`
    /// computes it); default: ImageNet's for 3 channels, 0.5 for other counts.
    #[arg(long, value_name = "M,M,M", value_delimiter = ',', num_args = 1)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, as --mean; default: ImageNet's for 3 channels, 0.25 otherwise.
    #[arg(long, value_name = "S,S,S", value_delimiter = ',', num_args = 1)]
    pub std: Option<Vec<f32>>,
    /// Bands the reconstruction pictures show: auto (the first three as RGB, or the first in grey
    /// below three channels), gray (each band in grey, a row each), or three band numbers
    /// counted from 1 as red, green, blue, e.g. 4,3,2. May change on --resume.
    #[arg(long, value_name = "auto|gray|R,G,B")]
    pub bands: Option<String>,
    /// Compute precision: f32 (default), or bf16 (mixed precision for GPUs: matrix products in
    /// bf16, weights, optimizer state, norms and the loss in f32). f16 is refused: fp16 training
    /// needs loss scaling.
    #[arg(long, value_parser = choice::<DtypeArg>())]
    pub dtype: Option<DtypeArg>,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunFlags,
    /// Data parallel over these GPUs, one process each, joined by NCCL: e.g. `0,1,2,3`
    /// (--batch-size is per GPU). Needs a build with the cargo feature `nccl`.
    #[arg(long, value_name = "N,N,...", conflicts_with = "device")]
    #[serde(skip)]
    pub devices: Option<String>,
    /// Start a new run in an --out that holds one, moving the old run aside to
    /// <out>.replaced-<timestamp> (never mixing the two).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    pub overwrite: bool,
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
}

impl PretrainArgs {
    /// The settings of a new run, layered defaults < the --config file < these flags, and whether
    /// it is the quick start (no preset chosen).
    pub fn resolve_new_run(&self, run_dir_default: impl FnOnce() -> PathBuf) -> Result<(Pretrain, bool)> {
        let (file, file_length) = match &self.config {
            Some(path) => {
                let file = Self::from_toml_file(path)?;
                let length = file.recipe.given_length();
                (file, Some((format!("--config {}", path.display()), length)))
            }
            None => (Self::default(), None),
        };
        let merged = file.overridden_by(self);
        let quickstart = merged.preset.is_none() && merged.init.is_none();
        let default_length = RunLength::Steps(if quickstart { 600 } else { 1000 });
        let file_length = file_length.as_ref().map(|(name, length)| (name.as_str(), *length));
        let length = run_length(self.recipe.given_length(), file_length, default_length)?;
        Ok((merged.resolve(length, run_dir_default)?, quickstart))
    }

    /// `self` with every setting of `over` that is present, but the run's length (see
    /// [`Self::resolve_new_run`]).
    fn overridden_by(mut self, over: &PretrainArgs) -> Self {
        take_given!(
            self,
            over,
            data,
            preset,
            init,
            mask_ratio,
            norm_pix_loss,
            img_size,
            in_channels,
            mean,
            std,
            bands,
            dtype,
            max_nonfinite,
            knn_every,
            knn_train,
            knn_test
        );
        self.recipe = self.recipe.overridden_by(&over.recipe);
        self.gradient = self.gradient.overridden_by(&over.gradient);
        self.run = self.run.overridden_by(&over.run);
        self
    }

    /// A `--config` file: the settings it gives; a key no setting takes is an error naming it.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let file = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("--config {file}"))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("--config {file}: not a valid pretrain config"))?;
        // Key by key: through `flatten` serde neither names the key of a wrong value nor refuses
        // a key no setting takes (it passes over it without a word), so each is tried alone.
        for (key, value) in &table {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            let settings: Self = toml::Value::Table(alone)
                .try_into()
                .with_context(|| format!("--config {file}: {key} = {value}"))?;
            if toml::Table::try_from(&settings)?.is_empty() {
                bail!(
                    "--config {file}: unknown setting `{key}` (the keys are the flag names with underscores, \
                     as batch_size for --batch-size)"
                );
            }
        }
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("--config {file}: not a valid pretrain config"))
    }

    /// Fills every unset field: the quick start when neither a preset nor a config chose a
    /// model, the paper's recipe otherwise.
    fn resolve(&self, length: RunLength, run_dir_default: impl FnOnce() -> PathBuf) -> Result<Pretrain> {
        if self.init.is_some() && (self.preset.is_some() || self.img_size.is_some()) {
            bail!("--init: the weights set the model and its image size (give no --preset or --img-size with it)");
        }
        let quickstart = self.preset.is_none() && self.init.is_none();
        // With --init the model is the weights' (read when the run starts); until then the
        // quick start's stands in, with the flags' channels, mask ratio and loss.
        let preset = match &self.init {
            Some(weights) => format!("init:{weights}"),
            None => self.preset.clone().unwrap_or_else(|| QUICKSTART_PRESET.to_string()),
        };
        let mut model = mae::MaeConfig::preset(self.preset.as_deref().unwrap_or(QUICKSTART_PRESET))
            .context("--preset")?;
        if let Some(size) = self.img_size {
            model.image_size = [size, size];
        }
        if let Some(r) = self.mask_ratio {
            model.mask_ratio = r;
        }
        if let Some(n) = self.norm_pix_loss {
            model.norm_pix_loss = n;
        }
        if let Some(c) = self.in_channels {
            // Checked before anything is sized by it (the fuzzer's --in-channels 2^64-1 made the
            // default statistics allocate 74 GB).
            if !(1..=mae_data::MAX_CHANNELS).contains(&c) {
                bail!("--in-channels {c}: images have 1 to {} channels here", mae_data::MAX_CHANNELS);
            }
            model.in_channels = c;
        }
        let default_stats = mae_data::Normalize::default_for(model.in_channels);
        let (epochs, steps) = length.to_fields();
        let (recipe, run) = (&self.recipe, &self.run);
        let resolved = Pretrain {
            data: self.data.clone().unwrap_or_else(|| "synthetic:20000".into()),
            preset,
            init: self.init.clone(),
            mean: self.mean.clone().unwrap_or_else(|| default_stats.mean.to_vec()),
            std: self.std.clone().unwrap_or_else(|| default_stats.std.to_vec()),
            bands: self.bands.clone(),
            model,
            epochs,
            steps,
            batch_size: recipe.batch_size.unwrap_or(64),
            accum: self.gradient.accum.unwrap_or(1),
            base_lr: recipe.base_lr.unwrap_or(if quickstart { 1.5e-3 } else { 1.5e-4 }),
            min_lr: recipe.min_lr.unwrap_or(0.0),
            weight_decay: recipe.weight_decay.unwrap_or(0.05),
            warmup_epochs: recipe.warmup_epochs,
            workers: run.workers_or_cores(),
            seed: recipe.seed.unwrap_or(0),
            device: run.device_or_cpu().to_string(),
            dtype: self.dtype.unwrap_or_default(),
            out: run.out.clone().unwrap_or_else(run_dir_default),
            checkpoint_every: run.checkpoint_every.unwrap_or(200),
            keep_last: run.keep_last.unwrap_or(3),
            clip_grad: self.gradient.clip_grad,
            max_nonfinite: self.max_nonfinite.unwrap_or(5),
            knn_every: self.knn_every.unwrap_or(0),
            knn_train: self.knn_train.clone(),
            knn_test: self.knn_test.clone(),
            progress: run.progress.unwrap_or_default(),
            log_every: run.log_every.unwrap_or(10),
        };
        resolved.validate()?;
        Ok(resolved)
    }
}

/// Every setting of a run, resolved; written to `config.toml` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pretrain {
    pub data: String,
    /// A preset's name, or `init:WEIGHTS` for a run started from weights (`--init`).
    pub preset: String,
    /// The weights a run started from (`--init`); `model` is theirs, adapted.
    #[serde(default)]
    pub init: Option<String>,
    /// The pixel normalisation, one value per channel (runs written before it existed used
    /// ImageNet's, the default).
    #[serde(default = "imagenet_mean")]
    pub mean: Vec<f32>,
    #[serde(default = "imagenet_std")]
    pub std: Vec<f32>,
    /// What the pictures show (`--bands`); none: auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bands: Option<String>,
    pub model: mae::MaeConfig,
    /// Exactly one of `epochs` and `steps` is set (see [`Pretrain::length`]).
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
    pub dtype: DtypeArg,
    pub out: PathBuf,
    pub checkpoint_every: usize,
    pub keep_last: usize,
    pub clip_grad: Option<f64>,
    pub max_nonfinite: usize,
    pub knn_every: usize,
    pub knn_train: Option<String>,
    pub knn_test: Option<String>,
    pub progress: ProgressArg,
    pub log_every: usize,
}

fn imagenet_mean() -> Vec<f32> {
    mae_data::Normalize::IMAGENET.mean.to_vec()
}

fn imagenet_std() -> Vec<f32> {
    mae_data::Normalize::IMAGENET.std.to_vec()
}

impl Pretrain {
    /// The normalisation of the run's pixels (its length is the model's channel count).
    pub fn normalize(&self) -> mae_data::Normalize {
        mae_data::Normalize::new(self.mean.clone(), self.std.clone())
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot write the resolved config")
    }

    /// The settings of the run in `dir`, checked as a new run's are.
    pub fn from_run_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.toml");
        if !dir.is_dir() {
            bail!("--resume {}: no such folder (give the run folder a `mae pretrain` wrote)", dir.display());
        }
        if !path.is_file() {
            bail!(
                "--resume {}: not a run folder of `mae pretrain` (it has no config.toml); give the folder \
                 that holds config.toml, metrics.jsonl and checkpoints/",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("--resume {}", path.display()))?;
        let settings: Self = toml::from_str(&text)
            .with_context(|| format!("{}: not a run config written by mae", path.display()))?;
        settings.validate().with_context(|| format!("{}", path.display()))?;
        Ok(settings)
    }

    /// How long the run trains.
    pub fn length(&self) -> Result<RunLength> {
        RunLength::resolved(self.epochs, self.steps)
    }

    /// The checks of the model settings alone (also of a model read from `--init` weights).
    pub fn validate_model(&self) -> Result<()> {
        self.model.validate().context("the model settings (--img-size, --mask-ratio, --in-channels)")?;
        let channels = self.model.in_channels;
        if self.mean.len() != channels || self.std.len() != channels {
            bail!(
                "--mean has {} value(s) and --std {}: give one per channel (--in-channels {channels})",
                self.mean.len(),
                self.std.len()
            );
        }
        mae_data::Transform::check(
            &mae_data::MaeTrainTransform::new(self.model.image_size[0]).with_normalize(self.normalize()),
        )
        .context("--in-channels, --mean, --std")?;
        self.band_view()?;
        let [h, w] = self.model.image_size;
        if h != w {
            bail!("{h}x{w} images: non-square training images are not supported by the data pipeline yet");
        }
        Ok(())
    }

    /// The pictures' bands, checked against the model's channels.
    pub fn band_view(&self) -> Result<mae::visualize::BandView> {
        let Some(bands) = &self.bands else { return Ok(Default::default()) };
        let view: mae::visualize::BandView = bands.parse().map_err(|e| anyhow::anyhow!("--bands {e}"))?;
        view.check(self.model.in_channels).context("--bands")?;
        Ok(view)
    }

    /// What the trainer and the data pipeline would otherwise fail on (or divide by) later.
    fn validate(&self) -> Result<()> {
        self.validate_model()?;
        self.length()?;
        self.dtype.check()?;
        RecipeNumbers {
            batch_size: self.batch_size,
            min_batch_size: 1,
            accum: self.accum,
            base_lr: self.base_lr,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            warmup_epochs: self.warmup_epochs,
            clip_grad: self.clip_grad,
        }
        .check()
    }

    /// A resumed run with what `args` may change: how this process runs it (--device, --workers,
    /// --progress, --log-every, --checkpoint-every, --keep-last). Every other flag would change
    /// the run's trajectory (or its folder) and is refused.
    pub fn resume_with(&mut self, args: &PretrainArgs) -> Result<()> {
        refuse_on_resume(
            args.recipe.given_on_resume().into_iter().chain(args.gradient.given_on_resume()).chain([
                ("--config", args.config.is_some()),
                ("--data", args.data.is_some()),
                ("--preset", args.preset.is_some()),
                ("--init", args.init.is_some()),
                ("--mask-ratio", args.mask_ratio.is_some()),
                ("--norm-pix-loss", args.norm_pix_loss.is_some()),
                ("--img-size", args.img_size.is_some()),
                ("--in-channels", args.in_channels.is_some()),
                ("--mean", args.mean.is_some()),
                ("--std", args.std.is_some()),
                ("--dtype", args.dtype.is_some()),
                ("--out", args.run.out.is_some()),
                ("--max-nonfinite", args.max_nonfinite.is_some()),
                ("--knn-every", args.knn_every.is_some()),
                ("--knn-train", args.knn_train.is_some()),
                ("--knn-test", args.knn_test.is_some()),
            ]),
        )?;
        if let Some(b) = &args.bands {
            self.bands = Some(b.clone());
            self.band_view()?;
        }
        let run = &args.run;
        if let Some(w) = run.workers {
            self.workers = w;
        }
        if let Some(d) = &run.device {
            self.device = d.clone();
        }
        if let Some(p) = run.progress {
            self.progress = p;
        }
        if let Some(n) = run.log_every {
            self.log_every = n;
        }
        if let Some(n) = run.checkpoint_every {
            self.checkpoint_every = n;
        }
        if let Some(n) = run.keep_last {
            self.keep_last = n;
        }
        Ok(())
    }
}
