//! `mae bench`: times full training steps through the same trainer `mae pretrain` runs
//! (`mae_train::Trainer::fit` with `mae::pretrain::MaeTask`: forward, masked loss, backward,
//! gradient norm, non-finite guard, AdamW), on seeded stand-in images, so what the benchmark
//! measures is what a run does. Only the data loader and checkpoints are left out.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use mae::pretrain::MaeTask;
use mae::{MaeConfig, MaskedAutoencoder};
use mae_data::Batch;
use mae_train::{
    AdamWConfig, BatchSource, LrSchedule, NoHooks, PhaseTimes, ProgressMode, Trainer, TrainerConfig,
};

use crate::flags::{choice, DtypeArg};
use crate::util;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  mae bench\n  mae bench --preset lightly-vit-b32-224 --batch-size 16 --json\n  \
                        CANDLE_NUM_THREADS=2 mae bench   # compare candle's element-wise thread pool"
)]
pub struct BenchArgs {
    #[arg(long, default_value = "mae-vit-tiny-patch4-32")]
    pub preset: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16 (mixed precision: matrix products in bf16, weights and AdamW in f32).
    #[arg(long, default_value = "f32", value_parser = choice::<DtypeArg>())]
    pub dtype: DtypeArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Warm-up steps left out of the timings (kernels loaded, memory pools filled).
const WARMUP_STEPS: usize = 2;

impl BenchArgs {
    /// The checks of the flags alone, made before a model is built.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            bail!(
                "--steps and --batch-size must be at least 1 (got --steps {} --batch-size {})",
                self.steps,
                self.batch_size
            );
        }
        MaeConfig::preset(&self.preset).context("--preset")?;
        Ok(())
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    args.check()?;
    let device = util::parse_device(&args.device)?;
    let config = MaeConfig::preset(&args.preset).context("--preset")?;
    let mut model = MaskedAutoencoder::new(&config, 0, &device)?;
    model.set_compute_dtype(args.dtype.compute_dtype(&device)?);
    let phases = time_steps(model, args.batch_size, args.steps)?;
    let record = record(&phases[WARMUP_STEPS.min(phases.len())..], &args, &device);
    if args.json {
        println!("{record}");
    } else {
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    Ok(())
}

/// Runs `steps` + the warm-up through the trainer, timing each step's phases.
fn time_steps(model: MaskedAutoencoder, batch: usize, steps: usize) -> Result<Vec<PhaseTimes>> {
    let [h, w] = model.config().image_size;
    let channels = model.config().in_channels;
    let images = stand_in_pixels(batch * channels * h * w)?.reshape((batch, channels, h, w))?;
    let total = steps + WARMUP_STEPS;
    // The trainer writes its metrics.jsonl into the run folder: a scratch one.
    let scratch = std::env::temp_dir().join(format!("mae-bench-{}", std::process::id()));
    let trainer_cfg = TrainerConfig {
        // What `mae pretrain` uses by default; the lr stays low and flat.
        adamw: AdamWConfig { weight_decay: 0.05, ..AdamWConfig::default() },
        max_nonfinite_in_a_row: usize::MAX,
        log_every: usize::MAX,
        progress: ProgressMode::Silent,
        save_checkpoints: false,
        time_phases: true,
        ..TrainerConfig::new(
            &scratch,
            LrSchedule { peak_lr: 1e-4, min_lr: 1e-4, warmup_steps: 0.0, total_steps: total },
        )
    };
    let fitted = Trainer::new(MaeTask { model, seed: 0 }, trainer_cfg)
        .and_then(|mut t| t.fit(&StandInBatches { images, steps: total }, &mut NoHooks));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(fitted?.phases)
}

/// The same stand-in images every step with a new mask each step (a batch's `epoch` keys its
/// masks, as the loader's epoch does).
struct StandInBatches {
    images: Tensor,
    steps: usize,
}

impl BatchSource for StandInBatches {
    type Batch = Batch;

    fn batches_per_epoch(&self) -> usize {
        self.steps
    }

    fn epoch(
        &self,
        _epoch: usize,
        start_batch: usize,
    ) -> mae_train::Result<Box<dyn Iterator<Item = mae_train::Result<Batch>> + '_>> {
        let n = self.images.dim(0)?;
        Ok(Box::new((start_batch..self.steps).map(move |k| {
            Ok(Batch {
                images: self.images.clone(),
                labels: None,
                indices: (0..n).collect(),
                skipped: Vec::new(),
                epoch: k as u64,
                batch_index: k,
            })
        })))
    }
}

/// What `mae bench` prints: one JSON object (read by `cargo xtask bench`).
fn record(timed: &[PhaseTimes], args: &BenchArgs, device: &Device) -> serde_json::Value {
    let mut steps: Vec<f64> = timed.iter().map(PhaseTimes::step_s).collect();
    steps.sort_by(f64::total_cmp);
    // At least one timed step: `bench` refuses --steps 0.
    let n = timed.len().max(1) as f64;
    let mean = |f: fn(&PhaseTimes) -> f64| timed.iter().map(f).sum::<f64>() / n;
    let median = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
    serde_json::json!({
        "preset": args.preset,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype.name(),
        // The kernel of the linear layers' products: f32, or the bf16 kernel bf16 runs on
        // this CPU (`MAE_PRODUCT` forces one).
        "product_kernel": args.dtype.product_kernel(device),
        "step_s_median": median,
        "step_s_min": steps.first(),
        "step_s_max": steps.last(),
        "img_per_s": args.batch_size as f64 / median,
        "forward_s": mean(|p| p.forward_s),
        "backward_s": mean(|p| p.backward_s),
        // The update: gradient norm, guard, clipping and AdamW.
        "optimizer_s": mean(|p| p.update_s),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
    })
}

/// Seeded stand-in pixels in the normalised range.
fn stand_in_pixels(n: usize) -> Result<Tensor> {
    let mut rng = mae_data::sample_rng(7, 0, 0, 0);
    use rand::RngCore;
    let v: Vec<f32> = (0..n).map(|_| (rng.next_u32() >> 8) as f32 / 8_388_608.0 - 1.0).collect();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}
