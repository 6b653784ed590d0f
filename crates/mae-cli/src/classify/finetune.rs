//! `mae finetune`: the whole encoder trains with a classification head on augmented images
//! (layer-wise lr decay, drop path, label smoothing).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mae::pretrain::LoaderSource;
use mae_data::{Loader, LoaderConfig, MaeTrainTransform, Normalize};
use mae_eval::finetune::{Classifier, FineTune, FineTuneHooks};
use mae_train::Trainer;

use super::run::{report, square_size, Splits, Start};
use super::settings::{FinetuneRecipe, Settings, FINETUNE};
use super::FinetuneArgs;
use crate::util;

/// Test images per evaluation batch.
const EVAL_BATCH: usize = 128;

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let t0 = Instant::now();
    let run = Start::new(FINETUNE, &args.classify, Some(&args))?;
    let args = &args.classify;
    let settings = &run.settings;
    let recipe = settings.finetune.clone().context("the run's config has no [finetune] settings")?;
    let device = util::parse_device(args.run.device_or_cpu())?;
    let encoder = run.encoder(&device)?;
    let size = square_size(encoder.config())?;
    let splits = Splits::open(settings, size)?;
    let workers = args.run.workers_or_cores();
    let normalize = run.normalize(encoder.config().in_channels);
    let loader = training_loader(&splits, settings, &recipe, (size, normalize.clone()), workers)?;
    let steps_per_epoch = loader.batches_per_epoch() / recipe.accum;
    run.create_run_dir()?;
    let schedule = run.lr_schedule(steps_per_epoch)?;
    eprintln!(
        "mae: fine-tuning {} on {}: {} steps of {} ({steps_per_epoch} per epoch), peak lr {:.2e}, layer decay {}, drop path {}, label smoothing {}, run folder {}",
        run.describe_source(),
        splits.train.describe(),
        schedule.total_steps,
        settings.effective_batch(),
        schedule.peak_lr,
        recipe.layer_decay,
        recipe.drop_path,
        recipe.label_smoothing,
        run.run_dir.display()
    );
    let config = run.trainer_config(&args.run, schedule, steps_per_epoch)?;
    let task = FineTune {
        classifier: Classifier::new(encoder, splits.classes, settings.pool.into(), settings.seed)?
            .with_normalize(Some(normalize)),
        seed: settings.seed,
        drop_path: recipe.drop_path,
        label_smoothing: recipe.label_smoothing,
        layer_decay: recipe.layer_decay,
    };
    let mut trainer = Trainer::new(task, config)?;
    if let Some(checkpoint) = &run.resume_from {
        trainer.resume_from(checkpoint).with_context(|| format!("--resume {}", checkpoint.display()))?;
        eprintln!("mae: resumed from {} (step {})", checkpoint.display(), trainer.state().step);
    }
    let test = splits.test.clone();
    let mut hooks = FineTuneHooks {
        test: test.clone(),
        every_epochs: settings.eval_every,
        batch_size: EVAL_BATCH,
        workers,
    };
    let summary = trainer.fit(&LoaderSource(&loader), &mut hooks)?;
    let acc = trainer.model().classifier.evaluate(test, EVAL_BATCH, workers)?;
    let mut record = run.record(splits.classes, splits.train.len(), &summary, steps_per_epoch);
    record["seconds"] = t0.elapsed().as_secs_f64().into();
    report(args.json, &run.run_dir, record, &acc)
}

/// The training images with the MAE transform (random resized crop + flip), in batches; at least
/// one optimizer step of them.
fn training_loader(
    splits: &Splits,
    settings: &Settings,
    recipe: &FinetuneRecipe,
    (size, normalize): (usize, Normalize),
    workers: usize,
) -> Result<Loader> {
    let loader_cfg =
        LoaderConfig { seed: settings.seed, workers, ..LoaderConfig::train(settings.batch_size) };
    let transform = MaeTrainTransform {
        scale: (recipe.crop_min, 1.0),
        hflip: recipe.hflip,
        ..MaeTrainTransform::new(size).with_normalize(normalize)
    };
    let loader = Loader::new(splits.train.clone(), Arc::new(transform), loader_cfg)
        .with_context(|| format!("--train {} with --batch-size {}", settings.train, settings.batch_size))?;
    if loader.batches_per_epoch() / recipe.accum == 0 {
        bail!(
            "--train {}: {} images, fewer than one step of {} x {} (lower --batch-size or --accum)",
            settings.train,
            splits.train.len(),
            settings.batch_size,
            recipe.accum
        );
    }
    Ok(loader)
}
