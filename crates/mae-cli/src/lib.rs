//! `mae`: pre-train, inspect and use Masked Autoencoders from the command line.
//!
//! The binary (`src/main.rs`) only chooses the allocator and calls [`main`]; the command line
//! lives in this library so that the fuzzer (`crates/mae-fuzz`) can feed command lines and config
//! files to the same parsing and checks ([`check`]) without starting a process per case.

mod bench;
mod classify;
mod commands;
mod embed_out;
mod export;
mod flags;
mod launch;
mod pretrain;
mod recipe;
mod run_folder;
mod settings;
mod stats;

pub mod check;
mod util;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  mae pretrain                                   # quick start: built-in synthetic shapes, a few CPU minutes
  mae pretrain --data hf:ylecun/mnist --preset mae-vit-tiny-patch4-32 --epochs 20   # MNIST from the hub
  mae pretrain --resume runs/20261128-181500     # continue a run exactly where it stopped
  mpirun -np 4 mae pretrain --batch-size 64      # data parallel over 4 processes (built with --features mpi)
  mae reconstruct --weights runs/20261128-181500 --image photo.png --out rec.png
  mae knn --weights runs/20261128-181500 --train mnist:data/mnist@train --test mnist:data/mnist@test
  mae linear-probe --weights runs/20261128-181500 --train mnist:data/mnist@train --test mnist:data/mnist@test
  mae finetune --weights runs/20261128-181500 --train mnist:data/mnist@train --test mnist:data/mnist@test --json
  mae info --weights runs/20261128-181500";

#[derive(Parser)]
#[command(name = "mae", version, about = "Masked Autoencoder pre-training of Vision Transformers", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-train a Masked Autoencoder (flags override --config; the resolved config is saved).
    Pretrain(Box<settings::PretrainArgs>),
    /// Draw the paper's picture: original | masked | reconstruction | reconstruction + visible.
    Reconstruct(commands::ReconstructArgs),
    /// Write pooled encoder features (and labels) of a dataset to a safetensors file.
    Embed(commands::EmbedArgs),
    /// Weighted k-NN accuracy of encoder features (the standard check of a representation).
    Knn(commands::KnnArgs),
    /// Linear probe: train BatchNorm + a linear layer on frozen encoder features (the paper's protocol).
    LinearProbe(Box<classify::LinearProbeArgs>),
    /// Fine-tune the whole encoder with a classification head (layer-wise lr decay, drop path, label smoothing).
    Finetune(Box<classify::FinetuneArgs>),
    /// What a checkpoint holds: config, training step, parameter count.
    Info(commands::InfoArgs),
    /// Time full training steps (forward, loss, backward, AdamW) of a preset on this machine.
    Bench(bench::BenchArgs),
    /// Write weights for timm, Hugging Face transformers, or as ours (docs/weights.md).
    Export(export::ExportArgs),
    /// Per-channel mean and std of a dataset's pixels, printed as the --mean/--std flags of pretrain.
    Stats(stats::StatsArgs),
}

/// Everything `mae` does after the allocator is chosen: parse the command line, run it, and
/// turn an error into a message and an exit status.
pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`mae info | head`) panics; restore
    // the default: the process ends quietly, as `cat` would.
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    util::init_logging();
    util::default_cpu_threads();
    util::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pretrain(args) => return pretrain_in_world(*args),
        Command::Reconstruct(args) => commands::reconstruct(args),
        Command::Embed(args) => commands::embed(args),
        Command::Knn(args) => commands::knn(args),
        Command::LinearProbe(args) => classify::linear_probe(*args),
        Command::Finetune(args) => classify::finetune(*args),
        Command::Info(args) => commands::info(args),
        Command::Bench(args) => bench::bench(args),
        Command::Export(args) => export::export(args),
        Command::Stats(args) => stats::stats(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mae pretrain` in the world its launcher made: one process, or a rank of `mpirun -np N`. An
/// error (or a panic) on one rank of several stops the whole job with `MPI_Abort`, so that no
/// rank waits forever in a collective for a rank that is gone.
fn pretrain_in_world(args: settings::PretrainArgs) -> ExitCode {
    if let Some(devices) = &args.devices {
        return launch::launch(devices).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        });
    }
    let world = match world_from_env(&args) {
        Ok(world) => world,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| pretrain::run(args, world.clone())))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("a panic (reported above)")));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if world.world_size() > 1 => {
            let (rank, size) = (world.rank(), world.world_size());
            let relaunch = if std::env::var_os("MAE_NCCL_ID").is_some() {
                "`mae pretrain --devices ... --resume RUN_DIR` (the same GPUs)".to_string()
            } else {
                format!("`mpirun -np {size} mae pretrain --resume RUN_DIR`")
            };
            eprintln!("error (rank {rank} of {size}): {e:#}");
            eprintln!(
                "mae: rank {rank} failed: stopping all {size} processes. The newest complete checkpoint \
                 stays valid; continue with {relaunch}"
            );
            world.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The job this process belongs to: a rank started by `--devices` (NCCL, on the GPU its
/// launcher gave it), a rank of `mpirun`, or a process on its own.
fn world_from_env(args: &settings::PretrainArgs) -> anyhow::Result<std::rc::Rc<dyn mae_train::Collective>> {
    #[cfg(feature = "nccl")]
    if let Some(launch) = mae_train::collective::NcclLaunch::from_env()? {
        let device = util::parse_device(args.run.device.as_deref().unwrap_or("cuda"))?;
        return Ok(std::rc::Rc::new(mae_train::collective::NcclCollective::init(&device, &launch)?));
    }
    #[cfg(not(feature = "nccl"))]
    if std::env::var_os("MAE_NCCL_ID").is_some() {
        anyhow::bail!(
            "MAE_NCCL_ID is set (a rank of `mae pretrain --devices`) but this mae was built without NCCL"
        );
    }
    let _ = args;
    Ok(mae_train::collective::from_env()?)
}
