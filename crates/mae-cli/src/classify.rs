//! `mae linear-probe` and `mae finetune`: the paper's two supervised evaluations of an encoder,
//! on `mae-train`'s trainer, in a run folder with checkpoints, `metrics.jsonl`, the resolved
//! `config.toml` and `results.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use mae::{Encoder, MaeConfig, MaskedAutoencoder, Pool};
use mae_data::{DataSpec, Dataset, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};
use mae_eval::finetune::{Classifier, FineTune, FineTuneHooks};
use mae_eval::linear_probe::{encode_dataset, FeatureBatches, LinearProbe, ProbeHooks};
use mae_eval::Accuracy;
use mae_train::{AdamWConfig, Checkpoints, LrSchedule, ProgressMode, Trainer, TrainerConfig};
use serde::{Deserialize, Serialize};

use crate::util;
use mae::pretrain::LoaderSource;

/// What both commands take besides the recipe.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Encoder weights: a run folder of `mae pretrain` (its newest checkpoint), a checkpoint
    /// folder, a .safetensors file, a Hugging Face hub id or model folder (ViTMAE, ViT, timm), or
    /// a PyTorch checkpoint (the paper's .pth).
    #[arg(long, required_unless_present_any = ["preset", "resume"])]
    pub weights: Option<PathBuf>,
    /// Instead of --weights: a freshly initialised encoder of this preset (seeded by --seed), the
    /// random-init baseline.
    #[arg(long, value_name = "NAME", conflicts_with = "weights")]
    pub preset: Option<String>,
    /// Labeled training data: mnist:PATH@train, cifar10:PATH@train, folder:PATH, synthetic[:N], ...
    #[arg(long, value_name = "SPEC", required_unless_present = "resume")]
    pub train: Option<String>,
    /// Labeled test data, with the training data's classes.
    #[arg(long, value_name = "SPEC", required_unless_present = "resume")]
    pub test: Option<String>,
    /// Run folder (default: runs/<command>-<timestamp>); must not hold a run already.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its newest checkpoint, with the run's settings (a finished
    /// run is evaluated again).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "preset", "train", "test", "out"])]
    pub resume: Option<PathBuf>,
    /// Seeds the head, the data order, augmentations and drop path (and --preset's encoder). Default 0.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate on --test every N epochs into metrics.jsonl (0: only at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Save a checkpoint every N optimizer steps (default: about every epoch; always at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept. Default 2.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Print one JSON object on stdout (top1, top5 with >= 5 classes, ...).
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data loading threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// auto (a bar on a terminal, lines otherwise), bar, lines or silent.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Print a progress line every N steps (without a terminal).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
}

/// The recipe flags both commands share (their defaults differ; see each command's help).
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Train for this many epochs...
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// ...or this many optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Images (or features) per optimizer step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate per 256 samples: lr = base_lr x batch / 256.
    #[arg(long)]
    pub base_lr: Option<f64>,
    /// Floor of the cosine schedule.
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear warm-up length in epochs (may be fractional).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Features: cls (token) or mean (of the patch tokens).
    #[arg(long, value_name = "cls|mean")]
    pub pool: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The paper's linear probe (main_linprobe.py): the encoder frozen, BatchNorm1d(affine=False,
eps=1e-6) + Linear trained with cross-entropy, warm-up then cosine. Defaults: --pool cls (after
the final norm), --epochs 90, --batch-size 256, --base-lr 0.1, --warmup-epochs 10, --weight-decay 0,
--min-lr 0, --eval-every 10.

What differs from the paper: the paper trains with LARS at batch 16384 (base lr 0.1); here AdamW
(betas 0.9, 0.999) at batch 256 with the same base lr (0.1 x batch / 256): LARS exists for huge
batches, and AdamW on batch-normalised features needs no layer-wise trust ratio at this size. The encoder never changes, so every image is encoded once with the evaluation
transform (resize + centre crop) and the head trains on those cached features; the paper
re-augments (random resized crop + flip) every epoch.

Examples:
  mae linear-probe --weights runs/20261128-190203 --train mnist:data/mnist@train --test mnist:data/mnist@test
  mae linear-probe --preset mae-vit-micro-patch4-32 --train synthetic:2000 --test synthetic:1000@test --json
  mae linear-probe --resume runs/linprobe-20261129-101500")]
pub struct LinearProbeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Full fine-tuning as the paper (main_finetune.py): a head on the mean of the patch tokens after a
new LayerNorm (fc_norm; --pool cls: the cls token after the final norm), head weight trunc-normal
std 2e-5; AdamW (0.9, 0.999) with layer-wise lr decay, no weight decay on biases, norms,
cls_token and pos_embed; drop path rising linearly over the blocks; label smoothing; warm-up then
cosine; lr = base_lr x batch / 256. Training images get the MAE transform (random resized crop
of --crop-min..1 of the area + flip with --hflip), test images the evaluation transform.

Defaults: --epochs 5, --batch-size 64, --base-lr 1e-3, --layer-decay 0.75, --weight-decay 0.05,
--drop-path 0.1, --label-smoothing 0.1, --warmup-epochs 1, --min-lr 1e-6, --crop-min 0.2,
--hflip 0.5, --eval-every 1.
The paper fine-tunes ViT-B for 100 epochs with 5 of warm-up at batch 1024 (base lr 5e-4 to
1e-3); the short default suits small data on a CPU, where a few hundred steps also gain from a
higher --base-lr (see docs/guide.md). Not implemented: Mixup, CutMix, RandAugment, random erasing
(the paper uses them on ImageNet).

Examples:
  mae finetune --weights runs/20261128-190203 --train mnist:data/mnist@train --test mnist:data/mnist@test \
               --hflip 0 --base-lr 5e-3
  mae finetune --weights facebook/vit-mae-base --train folder:train --test folder:val --epochs 100 --json
  mae finetune --resume runs/finetune-20261129-101500")]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Layer-wise lr decay: block i of N trains at decay^(N-i) of the head's rate.
    #[arg(long)]
    pub layer_decay: Option<f64>,
    /// Drop path (stochastic depth) rate of the last block, rising linearly from 0 at the first.
    #[arg(long)]
    pub drop_path: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Micro-batches per optimizer step (gradient accumulation). Default 1.
    #[arg(long)]
    pub accum: Option<usize>,
    /// Clip the global gradient norm to this value (default: no clipping, as the paper).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Smallest area fraction of the training images' random resized crop. Default 0.2 (MAE's
    /// pre-training transform; timm's fine-tuning transform uses 0.08 with RandAugment).
    #[arg(long, value_name = "FRACTION")]
    pub crop_min: Option<f64>,
    /// Probability of flipping a training image horizontally. Default 0.5; 0 for classes that
    /// are not mirror-symmetric (digits, letters).
    #[arg(long, value_name = "P")]
    pub hflip: Option<f64>,
}

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
    pub pool: String,
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

const PROBE: &str = "linear-probe";
const FINETUNE: &str = "finetune";

fn parse_pool(s: &str) -> Result<Pool> {
    match s {
        "cls" => Ok(Pool::Cls),
        "mean" => Ok(Pool::Mean),
        _ => bail!("--pool {s}: expected cls or mean"),
    }
}

fn parse_progress(s: &str) -> Result<ProgressMode> {
    Ok(match s {
        "auto" => ProgressMode::Auto,
        "bar" => ProgressMode::Bar,
        "lines" => ProgressMode::Lines,
        "silent" => ProgressMode::Silent,
        _ => bail!("--progress {s}: expected auto, bar, lines or silent"),
    })
}

impl Settings {
    /// Defaults < flags, for a new run of `command`.
    fn resolve(
        command: &str,
        c: &CommonArgs,
        r: &RecipeArgs,
        finetune: Option<&FinetuneArgs>,
    ) -> Result<Self> {
        let probe = command == PROBE;
        let settings = Self {
            command: command.to_string(),
            weights: c.weights.clone(),
            preset: c.preset.clone(),
            train: c.train.clone().context("give --train")?,
            test: c.test.clone().context("give --test")?,
            pool: r.pool.clone().unwrap_or_else(|| if probe { "cls" } else { "mean" }.into()),
            epochs: match (r.epochs, r.steps) {
                (None, None) => Some(if probe { 90 } else { 5 }),
                (e, _) => e,
            },
            steps: r.steps,
            batch_size: r.batch_size.unwrap_or(if probe { 256 } else { 64 }),
            base_lr: r.base_lr.unwrap_or(if probe { 0.1 } else { 1e-3 }),
            min_lr: r.min_lr.unwrap_or(if probe { 0.0 } else { 1e-6 }),
            weight_decay: r.weight_decay.unwrap_or(if probe { 0.0 } else { 0.05 }),
            warmup_epochs: r.warmup_epochs.unwrap_or(if probe { 10.0 } else { 1.0 }),
            seed: c.seed.unwrap_or(0),
            eval_every: c.eval_every.unwrap_or(if probe { 10 } else { 1 }),
            checkpoint_every: c.checkpoint_every,
            keep_last: c.keep_last.unwrap_or(2),
            finetune: finetune.map(|f| FinetuneRecipe {
                layer_decay: f.layer_decay.unwrap_or(0.75),
                drop_path: f.drop_path.unwrap_or(0.1),
                label_smoothing: f.label_smoothing.unwrap_or(0.1),
                accum: f.accum.unwrap_or(1),
                clip_grad: f.clip_grad,
                crop_min: f.crop_min.unwrap_or(0.2),
                hflip: f.hflip.unwrap_or(0.5),
            }),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        parse_pool(&self.pool)?;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let checks = [
            ("--batch-size", self.batch_size >= 2, "must be at least 2".to_string()),
            ("--epochs", self.epochs != Some(0), "must be at least 1".into()),
            ("--steps", self.steps != Some(0), "must be at least 1".into()),
            ("--base-lr", positive(self.base_lr), format!("{} must be a positive number", self.base_lr)),
            (
                "--min-lr",
                self.min_lr >= 0.0 && self.min_lr.is_finite(),
                format!("{} must be >= 0", self.min_lr),
            ),
            (
                "--weight-decay",
                self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
                format!("{} must be >= 0", self.weight_decay),
            ),
            (
                "--warmup-epochs",
                self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite(),
                format!("{} must be >= 0", self.warmup_epochs),
            ),
            ("--checkpoint-every", self.checkpoint_every != Some(0), "must be at least 1".into()),
        ];
        if let Some((flag, _, why)) = checks.iter().find(|(_, ok, _)| !ok) {
            bail!("{flag}: {why}");
        }
        if let Some(f) = &self.finetune {
            if !(f.layer_decay > 0.0 && f.layer_decay <= 1.0) {
                bail!("--layer-decay {}: must be in (0, 1]", f.layer_decay);
            }
            if !(0.0..1.0).contains(&f.drop_path) {
                bail!("--drop-path {}: must be in [0, 1)", f.drop_path);
            }
            if !(0.0..1.0).contains(&f.label_smoothing) {
                bail!("--label-smoothing {}: must be in [0, 1)", f.label_smoothing);
            }
            if f.accum == 0 {
                bail!("--accum: must be at least 1");
            }
            if f.clip_grad.is_some_and(|c| !positive(c)) {
                bail!("--clip-grad: must be a positive number");
            }
            if !(f.crop_min > 0.0 && f.crop_min <= 1.0) {
                bail!("--crop-min {}: must be in (0, 1]", f.crop_min);
            }
            if !(0.0..=1.0).contains(&f.hflip) {
                bail!("--hflip {}: must be in [0, 1]", f.hflip);
            }
        }
        Ok(())
    }

    fn from_run_dir(dir: &Path, command: &str) -> Result<Self> {
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
}

/// Flags that define a run's trajectory cannot change on --resume.
fn reject_recipe_flags(r: &RecipeArgs, c: &CommonArgs, finetune: Option<&FinetuneArgs>) -> Result<()> {
    let mut given = vec![
        ("--epochs", r.epochs.is_some()),
        ("--steps", r.steps.is_some()),
        ("--batch-size", r.batch_size.is_some()),
        ("--base-lr", r.base_lr.is_some()),
        ("--min-lr", r.min_lr.is_some()),
        ("--weight-decay", r.weight_decay.is_some()),
        ("--warmup-epochs", r.warmup_epochs.is_some()),
        ("--pool", r.pool.is_some()),
        ("--seed", c.seed.is_some()),
        ("--eval-every", c.eval_every.is_some()),
    ];
    if let Some(f) = finetune {
        given.extend([
            ("--layer-decay", f.layer_decay.is_some()),
            ("--drop-path", f.drop_path.is_some()),
            ("--label-smoothing", f.label_smoothing.is_some()),
            ("--accum", f.accum.is_some()),
            ("--clip-grad", f.clip_grad.is_some()),
            ("--crop-min", f.crop_min.is_some()),
            ("--hflip", f.hflip.is_some()),
        ]);
    }
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        bail!("{flag} cannot change when resuming: a resumed run continues its own settings (start a new run instead)");
    }
    Ok(())
}

/// Where a run stands before training: settings, folder, the checkpoint to resume.
struct Start {
    settings: Settings,
    run_dir: PathBuf,
    resume_from: Option<PathBuf>,
}

fn start(command: &str, c: &CommonArgs, r: &RecipeArgs, finetune: Option<&FinetuneArgs>) -> Result<Start> {
    if let Some(dir) = &c.resume {
        reject_recipe_flags(r, c, finetune)?;
        let mut settings = Settings::from_run_dir(dir, command)?;
        if let Some(n) = c.checkpoint_every {
            settings.checkpoint_every = Some(n);
        }
        if let Some(n) = c.keep_last {
            settings.keep_last = n;
        }
        let latest = Checkpoints::new(dir.join("checkpoints"))
            .latest()?
            .with_context(|| format!("--resume {}: no complete checkpoint to resume from", dir.display()))?;
        return Ok(Start { settings, run_dir: dir.clone(), resume_from: Some(latest) });
    }
    let settings = Settings::resolve(command, c, r, finetune)?;
    let run_dir = match &c.out {
        Some(dir) => dir.clone(),
        None => {
            // runs/<command>-<timestamp>, with a suffix when a run started in the same second.
            let stamp = format!("{command}-{}", util::timestamp());
            let free = |name: &String| !Path::new("runs").join(name).exists();
            let name = std::iter::once(stamp.clone())
                .chain((2..).map(|i| format!("{stamp}-{i}")))
                .find(free)
                .unwrap_or(stamp);
            PathBuf::from("runs").join(name)
        }
    };
    if run_dir.join("config.toml").exists() {
        bail!(
            "--out {}: already holds a run (continue it with --resume {}, or choose another folder)",
            run_dir.display(),
            run_dir.display()
        );
    }
    Ok(Start { settings, run_dir, resume_from: None })
}

impl Start {
    /// Creates a new run's folder with its `config.toml` (once the weights and data have loaded,
    /// so that a bad flag leaves no half-made run behind).
    fn create_run_dir(&self) -> Result<()> {
        if self.resume_from.is_some() {
            return Ok(());
        }
        let dir = &self.run_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        let toml = toml::to_string_pretty(&self.settings).context("cannot write the resolved config")?;
        let path = dir.join("config.toml");
        std::fs::write(&path, toml).with_context(|| format!("{}", path.display()))
    }
}

/// The encoder of `--weights`, or a fresh one of `--preset` (the same initialisation as
/// `mae pretrain` and `mae knn --preset` with that seed).
fn load_encoder(settings: &Settings, device: &Device) -> Result<Encoder> {
    match (&settings.weights, &settings.preset) {
        (Some(w), _) => util::load_encoder(w, device),
        (None, Some(p)) => {
            let config = MaeConfig::preset(p).with_context(|| format!("--preset {p}"))?;
            let model = MaskedAutoencoder::new(&config, settings.seed, device)?;
            Ok(Encoder::from_tensors(
                &config.encoder_config(),
                model.state_dict(),
                &format!("--preset {p}"),
                device,
            )?)
        }
        (None, None) => bail!("give --weights or --preset"),
    }
}

fn open_labeled(spec: &str, flag: &str, size: usize) -> Result<Arc<dyn Dataset>> {
    let parsed: DataSpec = spec.parse().with_context(|| format!("{flag} {spec}"))?;
    let options = OpenOptions { synthetic_size: size as u32, ..OpenOptions::default() };
    let dataset = mae_data::open(&parsed, &options).with_context(|| format!("{flag} {spec}"))?;
    if !dataset.is_labeled() {
        bail!("{flag} {spec}: {} has no labels (a classifier needs classes)", dataset.describe());
    }
    Ok(dataset)
}

/// The training split, the test split and the number of classes.
type Splits = (Arc<dyn Dataset>, Arc<dyn Dataset>, usize);

/// Both splits, checked to share their classes.
fn open_splits(settings: &Settings, size: usize) -> Result<Splits> {
    let train = open_labeled(&settings.train, "--train", size)?;
    let test = open_labeled(&settings.test, "--test", size)?;
    let classes = train.class_names().len();
    if test.class_names().len() > classes {
        bail!(
            "--test {} has {} classes, --train {} only {classes}",
            settings.test,
            test.class_names().len(),
            settings.train
        );
    }
    if test.class_names() != &train.class_names()[..test.class_names().len()] {
        eprintln!("warning: --test's class names differ from --train's; labels are compared by index");
    }
    Ok((train, test, classes))
}

/// Steps, warm-up and schedule of a run with `steps_per_epoch`.
fn schedule(settings: &Settings, steps_per_epoch: usize, effective_batch: usize) -> (usize, LrSchedule) {
    let total = match (settings.epochs, settings.steps) {
        (_, Some(s)) => s,
        (Some(e), None) => e * steps_per_epoch,
        (None, None) => steps_per_epoch,
    };
    let warmup = ((settings.warmup_epochs * steps_per_epoch as f64).round() as usize).min(total);
    let peak_lr = LrSchedule::scaled_lr(settings.base_lr, effective_batch);
    (total, LrSchedule { peak_lr, min_lr: settings.min_lr, warmup_steps: warmup, total_steps: total })
}

fn trainer_config(
    settings: &Settings,
    common: &CommonArgs,
    run_dir: &Path,
    schedule: LrSchedule,
    default_checkpoint_every: usize,
) -> Result<TrainerConfig> {
    let recipe = settings.finetune.as_ref();
    Ok(TrainerConfig {
        accum: recipe.map_or(1, |f| f.accum),
        adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: settings.weight_decay },
        clip_grad_norm: recipe.and_then(|f| f.clip_grad),
        max_nonfinite_in_a_row: 20,
        checkpoint_every: settings.checkpoint_every.unwrap_or(default_checkpoint_every.max(1)),
        keep_last: settings.keep_last,
        log_every: common.log_every.max(1),
        seed: settings.seed,
        progress: parse_progress(&common.progress)?,
        run_config: serde_json::to_value(settings)?,
        ..TrainerConfig::new(run_dir, schedule)
    })
}

fn workers(common: &CommonArgs) -> usize {
    common.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Prints the result (one JSON object with --json) and writes it to `results.json`.
fn report(common: &CommonArgs, run_dir: &Path, mut record: serde_json::Value, acc: &Accuracy) -> Result<()> {
    record["top1"] = acc.top1.into();
    if let Some(t) = acc.top5 {
        record["top5"] = t.into();
    }
    record["test_loss"] = acc.loss.into();
    record["num_test"] = acc.num_samples.into();
    record["run_dir"] = run_dir.display().to_string().into();
    let path = run_dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("{}", path.display()))?;
    if common.json {
        println!("{record}");
    } else {
        let top5 = acc.top5.map_or(String::new(), |t| format!(", top-5 {:.2}%", t * 100.0));
        println!(
            "{} ({} classes, {} test images): top-1 {:.2}%{top5}. Run folder: {}",
            record["command"].as_str().unwrap_or_default(),
            record["num_classes"],
            acc.num_samples,
            acc.top1 * 100.0,
            run_dir.display()
        );
    }
    Ok(())
}

fn describe_source(s: &Settings) -> String {
    match (&s.weights, &s.preset) {
        (Some(w), _) => w.display().to_string(),
        (None, Some(p)) => format!("{p} (random init, seed {})", s.seed),
        (None, None) => String::new(),
    }
}

pub fn linear_probe(args: LinearProbeArgs) -> Result<()> {
    let t0 = Instant::now();
    let common = &args.common;
    let run = start(PROBE, common, &args.recipe, None)?;
    let (settings, run_dir, resume_from) = (&run.settings, &run.run_dir, &run.resume_from);
    let device = util::parse_device(&common.device)?;
    let encoder = load_encoder(settings, &device)?;
    let size = square_size(encoder.config())?;
    let (train, test, classes) = open_splits(settings, size)?;
    let pool = parse_pool(&settings.pool)?;
    eprintln!(
        "mae: encoding {} and {} with the frozen encoder ({})",
        train.describe(),
        test.describe(),
        settings.pool
    );
    let workers = workers(common);
    let train_set =
        encode_dataset(encoder.vit(), train.clone(), pool, 256, workers, &device).context("--train")?;
    let test_set =
        encode_dataset(encoder.vit(), test.clone(), pool, 256, workers, &device).context("--test")?;
    let encode_s = t0.elapsed().as_secs_f64();
    if train_set.len() < settings.batch_size {
        bail!(
            "--train {}: {} labeled images, fewer than one batch of {} (lower --batch-size)",
            settings.train,
            train_set.len(),
            settings.batch_size
        );
    }
    run.create_run_dir()?;
    let steps_per_epoch = train_set.len() / settings.batch_size;
    let (total, schedule) = schedule(settings, steps_per_epoch, settings.batch_size);
    let probe = LinearProbe::new(train_set.dim()?, classes, settings.seed, &device)?;
    eprintln!(
        "mae: linear probe on {}-d features of {}: {total} steps of {} ({steps_per_epoch} per epoch), peak lr {:.2e}, run folder {}",
        train_set.dim()?,
        describe_source(settings),
        settings.batch_size,
        schedule.peak_lr,
        run_dir.display()
    );
    let config = trainer_config(settings, common, run_dir, schedule, 10 * steps_per_epoch)?;
    let mut trainer = Trainer::new(probe, config)?;
    if let Some(checkpoint) = resume_from {
        trainer.resume_from(checkpoint).with_context(|| format!("--resume {}", checkpoint.display()))?;
        // The batch-norm statistics are no variables: restore them too.
        trainer.model().load(&checkpoint.join("model.safetensors"))?;
        eprintln!("mae: resumed from {} (step {})", checkpoint.display(), trainer.state().step);
    }
    let source = FeatureBatches { set: &train_set, batch_size: settings.batch_size, seed: settings.seed };
    let mut hooks = ProbeHooks { test: &test_set, every_epochs: settings.eval_every };
    let summary = trainer.fit(&source, &mut hooks)?;
    let acc = trainer.model().evaluate(&test_set, 1024)?;
    let record = serde_json::json!({
        "command": PROBE,
        "num_classes": classes,
        "num_train": train_set.len(),
        "pool": settings.pool,
        "weights": settings.weights,
        "preset": settings.preset,
        "epochs": summary.steps as f64 / steps_per_epoch as f64,
        "steps": summary.steps,
        "train_loss": summary.last_loss,
        "encode_seconds": encode_s,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    report(common, run_dir, record, &acc)
}

fn square_size(config: &mae::VitConfig) -> Result<usize> {
    let [h, w] = config.image_size;
    if h != w {
        bail!("the encoder takes {h}x{w} images; the data pipeline makes square ones only");
    }
    Ok(h)
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let t0 = Instant::now();
    let common = &args.common;
    let run = start(FINETUNE, common, &args.recipe, Some(&args))?;
    let (settings, run_dir, resume_from) = (&run.settings, &run.run_dir, &run.resume_from);
    let recipe = settings.finetune.clone().context("the run's config has no [finetune] settings")?;
    let device = util::parse_device(&common.device)?;
    let encoder = load_encoder(settings, &device)?;
    let size = square_size(encoder.config())?;
    let (train, test, classes) = open_splits(settings, size)?;
    let workers = workers(common);
    let loader_cfg =
        LoaderConfig { seed: settings.seed, workers, ..LoaderConfig::train(settings.batch_size) };
    let transform = MaeTrainTransform {
        scale: (recipe.crop_min, 1.0),
        hflip: recipe.hflip,
        ..MaeTrainTransform::new(size)
    };
    let loader = Loader::new(train.clone(), Arc::new(transform), loader_cfg)
        .with_context(|| format!("--train {} with --batch-size {}", settings.train, settings.batch_size))?;
    let steps_per_epoch = loader.batches_per_epoch() / recipe.accum;
    if steps_per_epoch == 0 {
        bail!(
            "--train {}: {} images, fewer than one step of {} x {} (lower --batch-size or --accum)",
            settings.train,
            train.len(),
            settings.batch_size,
            recipe.accum
        );
    }
    run.create_run_dir()?;
    let (total, schedule) = schedule(settings, steps_per_epoch, settings.batch_size * recipe.accum);
    let classifier = Classifier::new(encoder, classes, parse_pool(&settings.pool)?, settings.seed)?;
    eprintln!(
        "mae: fine-tuning {} on {}: {total} steps of {} ({steps_per_epoch} per epoch), peak lr {:.2e}, layer decay {}, drop path {}, label smoothing {}, run folder {}",
        describe_source(settings),
        train.describe(),
        settings.batch_size * recipe.accum,
        schedule.peak_lr,
        recipe.layer_decay,
        recipe.drop_path,
        recipe.label_smoothing,
        run_dir.display()
    );
    let config = trainer_config(settings, common, run_dir, schedule, steps_per_epoch)?;
    let task = FineTune {
        classifier,
        seed: settings.seed,
        drop_path: recipe.drop_path,
        label_smoothing: recipe.label_smoothing,
        layer_decay: recipe.layer_decay,
    };
    let mut trainer = Trainer::new(task, config)?;
    if let Some(checkpoint) = resume_from {
        trainer.resume_from(checkpoint).with_context(|| format!("--resume {}", checkpoint.display()))?;
        eprintln!("mae: resumed from {} (step {})", checkpoint.display(), trainer.state().step);
    }
    let mut hooks =
        FineTuneHooks { test: test.clone(), every_epochs: settings.eval_every, batch_size: 128, workers };
    let summary = trainer.fit(&LoaderSource(&loader), &mut hooks)?;
    let acc = trainer.model().classifier.evaluate(test, 128, workers)?;
    let record = serde_json::json!({
        "command": FINETUNE,
        "num_classes": classes,
        "num_train": train.len(),
        "pool": settings.pool,
        "weights": settings.weights,
        "preset": settings.preset,
        "epochs": summary.steps as f64 / steps_per_epoch as f64,
        "steps": summary.steps,
        "train_loss": summary.last_loss,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    report(common, run_dir, record, &acc)
}
