//! What a linear-probe and a fine-tuning run share: where a run starts (its settings, folder and
//! checkpoint), the encoder and the labeled splits it trains on, the trainer's settings, and the
//! report at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mae::Encoder;
use mae_data::Dataset;
use mae_eval::Accuracy;
use mae_train::{AdamWConfig, Checkpoints, LrSchedule, TrainSummary, TrainerConfig};
use serde_json::Value;

use super::settings::{refuse_recipe_flags, Settings};
use super::{ClassifyArgs, FinetuneArgs};
use crate::flags::RunFlags;
use crate::recipe::warmup_steps;
use crate::util;

/// Where a run stands before training: settings, folder, the checkpoint to resume.
pub struct Start {
    pub settings: Settings,
    pub run_dir: PathBuf,
    pub resume_from: Option<PathBuf>,
}

impl Start {
    /// A resumed run (`--resume DIR`) or a new one of `command`.
    pub fn new(command: &str, args: &ClassifyArgs, finetune: Option<&FinetuneArgs>) -> Result<Self> {
        match &args.resume {
            Some(dir) => Self::resumed(command, dir, args, finetune),
            None => Self::fresh(command, args, finetune),
        }
    }

    fn resumed(
        command: &str,
        dir: &Path,
        args: &ClassifyArgs,
        finetune: Option<&FinetuneArgs>,
    ) -> Result<Self> {
        refuse_recipe_flags(args, finetune)?;
        let mut settings = Settings::from_run_dir(dir, command)?;
        if let Some(n) = args.run.checkpoint_every {
            settings.checkpoint_every = Some(n);
        }
        if let Some(n) = args.run.keep_last {
            settings.keep_last = n;
        }
        let latest = Checkpoints::new(dir.join("checkpoints"))
            .latest()?
            .with_context(|| format!("--resume {}: no complete checkpoint to resume from", dir.display()))?;
        Ok(Self { settings, run_dir: dir.to_path_buf(), resume_from: Some(latest) })
    }

    fn fresh(command: &str, args: &ClassifyArgs, finetune: Option<&FinetuneArgs>) -> Result<Self> {
        let settings = Settings::resolve(command, args, finetune)?;
        let run_dir = match &args.run.out {
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
        Ok(Self { settings, run_dir, resume_from: None })
    }

    /// Creates a new run's folder with its `config.toml` (once the weights and data have loaded,
    /// so that a bad flag leaves no half-made run behind).
    pub fn create_run_dir(&self) -> Result<()> {
        if self.resume_from.is_some() {
            return Ok(());
        }
        let dir = &self.run_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        let toml = toml::to_string_pretty(&self.settings).context("cannot write the resolved config")?;
        let path = dir.join("config.toml");
        std::fs::write(&path, toml).with_context(|| format!("{}", path.display()))
    }

    /// The encoder of `--weights`, or a fresh one of `--preset` seeded by the run's seed.
    pub fn encoder(&self, device: &Device) -> Result<Encoder> {
        let s = &self.settings;
        util::load_or_init_encoder(s.weights.as_deref(), s.preset.as_deref(), s.seed, device)
    }

    /// The pixel statistics of the pre-training run of `--weights` (see [`util::run_normalize`]),
    /// else the default of the encoder's `channels`.
    pub fn normalize(&self, channels: usize) -> mae_data::Normalize {
        util::run_normalize(self.settings.weights.as_deref(), channels)
            .unwrap_or_else(|| mae_data::Normalize::default_for(channels))
    }

    /// Warm-up then cosine over the run, with `steps_per_epoch`.
    pub fn lr_schedule(&self, steps_per_epoch: usize) -> Result<LrSchedule> {
        let s = &self.settings;
        let total_steps = s.length()?.total_steps(steps_per_epoch)?;
        Ok(LrSchedule {
            peak_lr: LrSchedule::scaled_lr(s.base_lr, s.effective_batch()),
            min_lr: s.min_lr,
            warmup_steps: warmup_steps(s.warmup_epochs, steps_per_epoch).min(total_steps as f64),
            total_steps,
        })
    }

    /// The trainer's settings: checkpoints every `default_checkpoint_every` steps unless the
    /// run says otherwise; progress and logging as this process's flags say.
    pub fn trainer_config(
        &self,
        flags: &RunFlags,
        schedule: LrSchedule,
        default_checkpoint_every: usize,
    ) -> Result<TrainerConfig> {
        let settings = &self.settings;
        let recipe = settings.finetune.as_ref();
        Ok(TrainerConfig {
            accum: recipe.map_or(1, |f| f.accum),
            adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: settings.weight_decay },
            clip_grad_norm: recipe.and_then(|f| f.clip_grad),
            max_nonfinite_in_a_row: 20,
            checkpoint_every: settings.checkpoint_every.unwrap_or(default_checkpoint_every.max(1)),
            keep_last: settings.keep_last,
            log_every: flags.log_every.unwrap_or(50).max(1),
            seed: settings.seed,
            progress: flags.progress.unwrap_or_default().into(),
            run_config: serde_json::to_value(settings)?,
            ..TrainerConfig::new(&self.run_dir, schedule)
        })
    }

    /// What both commands report of a finished run (`results.json`, `--json`), besides timings
    /// and the test accuracy.
    pub fn record(
        &self,
        classes: usize,
        num_train: usize,
        summary: &TrainSummary,
        steps_per_epoch: usize,
    ) -> Value {
        let s = &self.settings;
        serde_json::json!({
            "command": s.command,
            "num_classes": classes,
            "num_train": num_train,
            "pool": s.pool,
            "weights": s.weights,
            "preset": s.preset,
            "epochs": summary.steps as f64 / steps_per_epoch as f64,
            "steps": summary.steps,
            "train_loss": summary.last_loss,
        })
    }

    /// What the run starts from, for people: the weights, or the preset and seed.
    pub fn describe_source(&self) -> String {
        let s = &self.settings;
        match (&s.weights, &s.preset) {
            (Some(w), _) => w.display().to_string(),
            (None, Some(p)) => format!("{p} (random init, seed {})", s.seed),
            (None, None) => String::new(),
        }
    }
}

/// The side of the square images the encoder takes.
pub fn square_size(config: &mae::VitConfig) -> Result<usize> {
    let [h, w] = config.image_size;
    if h != w {
        bail!("the encoder takes {h}x{w} images; the data pipeline makes square ones only");
    }
    Ok(h)
}

/// The labeled splits a classifier trains and is tested on.
pub struct Splits {
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    pub classes: usize,
}

impl Splits {
    /// Both splits at the encoder's image `size`, checked to share their classes.
    pub fn open(settings: &Settings, size: usize) -> Result<Self> {
        let train = open_labeled(&settings.train, "--train", size)?;
        let test = open_labeled(&settings.test, "--test", size)?;
        let classes = train.class_names().len();
        let test_classes = test.class_names().len();
        if test_classes > classes {
            bail!(
                "--test {} has {test_classes} classes, --train {} only {classes}",
                settings.test,
                settings.train
            );
        }
        if test.class_names() != &train.class_names()[..test_classes] {
            eprintln!("warning: --test's class names differ from --train's; labels are compared by index");
        }
        Ok(Self { train, test, classes })
    }
}

fn open_labeled(spec: &str, flag: &str, size: usize) -> Result<Arc<dyn Dataset>> {
    let dataset = util::open_dataset(spec, flag, size)?;
    if !dataset.is_labeled() {
        bail!("{flag} {spec}: {} has no labels (a classifier needs classes)", dataset.describe());
    }
    Ok(dataset)
}

/// Prints the result (one JSON object with `json`) and writes it to `results.json`.
pub fn report(json: bool, run_dir: &Path, mut record: Value, acc: &Accuracy) -> Result<()> {
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
    if json {
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
