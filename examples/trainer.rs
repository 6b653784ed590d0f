//! The trainer (the "Lightning" tab of the original docs): the same model and data handed to
//! `mae-train`, which adds the schedule, checkpoints and exact resume, metrics, the loss plot,
//! reconstruction pictures and a progress bar.
//!
//! ```text
//! cargo run --release --example trainer                 # 300 steps on MNIST into runs/example-trainer
//! cargo run --release --example trainer -- synthetic 600
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use mae::pretrain::{load_images, LoaderSource, MaeTask, PretrainHooks};
use mae::{MaeConfig, MaskedAutoencoder};
use mae_data::{DataSpec, EvalTransform, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};
use mae_train::{LrSchedule, Trainer, TrainerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .unwrap_or_else(|| concat!("mnist:", env!("CARGO_MANIFEST_DIR"), "/../../data/mnist@train").into());
    let total_steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let (seed, batch_size) = (0u64, 64usize);
    let run_dir = PathBuf::from("runs/example-trainer");

    let config = MaeConfig::preset("mae-vit-micro-patch4-32")?;
    let model = MaskedAutoencoder::new(&config, seed, &Device::Cpu)?;
    let dataset = mae_data::open(&data.parse::<DataSpec>()?, &OpenOptions::default())?;
    let loader = Loader::new(
        dataset.clone(),
        Arc::new(MaeTrainTransform::new(32)),
        LoaderConfig { seed, ..LoaderConfig::train(batch_size) },
    )?;

    let schedule = LrSchedule {
        peak_lr: LrSchedule::scaled_lr(1.5e-3, batch_size),
        min_lr: 0.0,
        warmup_steps: (total_steps / 20) as f64,
        total_steps,
    };
    let trainer_config = TrainerConfig {
        checkpoint_every: 100,
        keep_last: 2,
        log_every: 20,
        seed,
        run_config: serde_json::json!({ "example": "trainer", "data": data }),
        ..TrainerConfig::new(run_dir.clone(), schedule)
    };
    // Pictures of the same 8 images after every epoch and at the end.
    let preview = load_images(dataset.as_ref(), &EvalTransform::new(32), &(0..8).collect::<Vec<_>>())?;
    let mut hooks = PretrainHooks {
        run_dir: run_dir.clone(),
        preview: Some(preview),
        preview_seed: seed,
        denormalize: mae::visualize::Denormalize::default(),
        probe: None,
        title: format!("mae-vit-micro-patch4-32 on {data}"),
    };
    let mut trainer = Trainer::new(MaeTask { model, seed }, trainer_config)?;
    let summary = trainer.fit(&LoaderSource(&loader), &mut hooks)?;
    hooks.finish(trainer.model(), trainer.state().step)?;
    println!("{summary:?}\nsee {}/loss.png and reconstruction.png", run_dir.display());
    Ok(())
}
