//! `mae linear-probe`: the encoder frozen, so every image is encoded once (evaluation transform)
//! and BatchNorm + a linear head train on the cached features.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mae::Encoder;
use mae_data::Normalize;
use mae_eval::linear_probe::{encode_dataset_with, FeatureBatches, FeatureSet, LinearProbe, ProbeHooks};
use mae_train::Trainer;

use super::run::{report, square_size, Splits, Start};
use super::settings::{Settings, PROBE};
use super::LinearProbeArgs;
use crate::util;

/// Images encoded per batch (inference only: memory, not the recipe, bounds it).
const ENCODE_BATCH: usize = 256;

pub fn linear_probe(args: LinearProbeArgs) -> Result<()> {
    let t0 = Instant::now();
    let args = &args.classify;
    let run = Start::new(PROBE, args, None)?;
    let settings = &run.settings;
    let device = util::parse_device(args.run.device_or_cpu())?;
    let encoder = run.encoder(&device)?;
    let splits = Splits::open(settings, square_size(encoder.config())?)?;
    let (train_set, test_set) = encode_splits(
        &encoder,
        (&splits, run.normalize(encoder.config().in_channels)),
        settings,
        args.run.workers_or_cores(),
        &device,
    )?;
    let encode_s = t0.elapsed().as_secs_f64();
    run.create_run_dir()?;
    let steps_per_epoch = train_set.len() / settings.batch_size;
    let schedule = run.lr_schedule(steps_per_epoch)?;
    eprintln!(
        "mae: linear probe on {}-d features of {}: {} steps of {} ({steps_per_epoch} per epoch), peak lr {:.2e}, run folder {}",
        train_set.dim()?,
        run.describe_source(),
        schedule.total_steps,
        settings.batch_size,
        schedule.peak_lr,
        run.run_dir.display()
    );
    let probe = LinearProbe::new(train_set.dim()?, splits.classes, settings.seed, &device)?;
    let config = run.trainer_config(&args.run, schedule, 10 * steps_per_epoch)?;
    let mut trainer = Trainer::new(probe, config)?;
    if let Some(checkpoint) = &run.resume_from {
        trainer.resume_from(checkpoint).with_context(|| format!("--resume {}", checkpoint.display()))?;
        // The batch-norm statistics are no variables: restore them too.
        trainer.model().load(&checkpoint.join("model.safetensors"))?;
        eprintln!("mae: resumed from {} (step {})", checkpoint.display(), trainer.state().step);
    }
    let source = FeatureBatches { set: &train_set, batch_size: settings.batch_size, seed: settings.seed };
    let mut hooks = ProbeHooks { test: &test_set, every_epochs: settings.eval_every };
    let summary = trainer.fit(&source, &mut hooks)?;
    let acc = trainer.model().evaluate(&test_set, 1024)?;
    let mut record = run.record(splits.classes, train_set.len(), &summary, steps_per_epoch);
    record["encode_seconds"] = encode_s.into();
    record["seconds"] = t0.elapsed().as_secs_f64().into();
    report(args.json, &run.run_dir, record, &acc)
}

/// Both splits through the frozen encoder, once; at least one batch of training features.
fn encode_splits(
    encoder: &Encoder,
    (splits, normalize): (&Splits, Normalize),
    settings: &Settings,
    workers: usize,
    device: &Device,
) -> Result<(FeatureSet, FeatureSet)> {
    let (train, test) = (&splits.train, &splits.test);
    eprintln!(
        "mae: encoding {} and {} with the frozen encoder ({})",
        train.describe(),
        test.describe(),
        settings.pool
    );
    let pool = settings.pool.into();
    let transform = mae_eval::eval_transform(encoder.config(), Some(&normalize));
    let encode = |dataset| {
        encode_dataset_with(encoder.vit(), dataset, pool, (ENCODE_BATCH, workers), device, transform.clone())
    };
    let train_set = encode(train.clone()).context("--train")?;
    let test_set = encode(test.clone()).context("--test")?;
    if train_set.len() < settings.batch_size {
        bail!(
            "--train {}: {} labeled images, fewer than one batch of {} (lower --batch-size)",
            settings.train,
            train_set.len(),
            settings.batch_size
        );
    }
    Ok((train_set, test_set))
}
