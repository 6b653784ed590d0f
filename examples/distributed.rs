//! The trainer, data parallel over MPI (the "Lightning distributed" tab of the original docs):
//! the `trainer` example with a collective. Every rank builds the same model and a loader for its
//! shard of each global batch; `mae-train` broadcasts rank 0's weights at the start, averages the
//! gradients over the ranks every step, and lets rank 0 alone write the run folder.
//!
//! ```text
//! cargo build --release -p mae --features mpi --example distributed
//! mpirun -np 2 target/release/examples/distributed                       # MNIST, 300 steps
//! mpirun -np 2 --oversubscribe target/release/examples/distributed synthetic:4000 100
//! target/release/examples/distributed synthetic:4000 100                  # also runs alone
//! ```
//! (As root, Open MPI also wants `--allow-run-as-root`; see docs/distributed.md.)

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::Device;
use mae::pretrain::{load_images, LoaderSource, MaeTask, PretrainHooks};
use mae::{MaeConfig, MaskedAutoencoder};
use mae_data::{DataSpec, EvalTransform, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};
use mae_train::collective::{self, Collective};
use mae_train::{LrSchedule, Trainer, TrainerConfig};

fn run(world: Rc<dyn Collective>) -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .unwrap_or_else(|| concat!("mnist:", env!("CARGO_MANIFEST_DIR"), "/../../data/mnist@train").into());
    let total_steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    // 64 images per process: the global batch, and the learning rate, grow with the processes.
    let (seed, batch_size) = (0u64, 64usize);
    let global_batch = batch_size * world.world_size();
    let run_dir = PathBuf::from("runs/example-distributed");

    let config = MaeConfig::preset("mae-vit-micro-patch4-32")?;
    let model = MaskedAutoencoder::new(&config, seed, &Device::Cpu)?;
    let dataset = mae_data::open(&data.parse::<DataSpec>()?, &OpenOptions::default())?;
    let loader = Loader::new(
        dataset.clone(),
        Arc::new(MaeTrainTransform::new(32)),
        LoaderConfig {
            seed,
            rank: world.rank(),
            world_size: world.world_size(),
            ..LoaderConfig::train(batch_size)
        },
    )?;

    let schedule = LrSchedule {
        peak_lr: LrSchedule::scaled_lr(1.5e-3, global_batch),
        min_lr: 0.0,
        warmup_steps: (total_steps / 20) as f64,
        total_steps,
    };
    let trainer_config = TrainerConfig {
        checkpoint_every: 100,
        keep_last: 2,
        log_every: 20,
        seed,
        world_size: world.world_size(),
        // rank 0 only shows progress: the trainer silences the others
        run_config: serde_json::json!({ "example": "distributed", "data": data }),
        ..TrainerConfig::new(run_dir.clone(), schedule)
    };
    // Pictures are drawn by rank 0 only; the other ranks need no preview images.
    let preview = if world.is_main() {
        Some(load_images(dataset.as_ref(), &EvalTransform::new(32), &(0..8).collect::<Vec<_>>())?)
    } else {
        None
    };
    let mut hooks = PretrainHooks {
        run_dir: run_dir.clone(),
        preview,
        preview_seed: seed,
        denormalize: mae::visualize::Denormalize::default(),
        probe: None,
        title: format!("mae-vit-micro-patch4-32 on {data}, {}", world.describe()),
    };
    if world.is_main() {
        eprintln!("{}: global batch {global_batch} ({batch_size} a process)", world.describe());
    }
    let mut trainer =
        Trainer::new(MaeTask { model, seed }, trainer_config)?.with_collective(world.clone())?;
    let summary = trainer.fit(&LoaderSource(&loader), &mut hooks)?;
    if world.is_main() {
        hooks.finish(trainer.model(), trainer.state().step)?;
        println!("{summary:?}\nsee {}/loss.png and reconstruction.png", run_dir.display());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // MPI when started by mpirun (and built with the `mpi` feature), one process otherwise.
    let world = match collective::from_env() {
        Ok(world) => world,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(world.clone()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One failing rank must stop them all, or the others would wait for it forever.
        Err(e) if world.world_size() > 1 => {
            eprintln!("error (rank {}): {e}", world.rank());
            world.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
