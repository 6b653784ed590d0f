//! `mae`: pre-train, inspect and use Masked Autoencoders from the command line.

mod commands;
mod pretrain;
mod settings;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Training allocates and frees many large tensors; glibc's malloc returns them to the OS and
/// page-faults them back in every step (a third of a CPU step, measured). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  mae pretrain                                   # quick start: built-in synthetic shapes, a few CPU minutes
  mae pretrain --data mnist:../shared/data/mnist --preset mae-vit-tiny-patch4-32 --epochs 20
  mae pretrain --resume runs/20261128-181500     # continue a run exactly where it stopped
  mae reconstruct --weights runs/20261128-181500 --image photo.png --out rec.png
  mae knn --weights runs/20261128-181500 --train mnist:data@train --test mnist:data@test
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
    /// What a checkpoint holds: config, training step, parameter count.
    Info(commands::InfoArgs),
    /// Time full training steps (forward, loss, backward, AdamW) of a preset on this machine.
    Bench(commands::BenchArgs),
}

fn main() -> ExitCode {
    util::init_logging();
    util::default_cpu_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pretrain(args) => pretrain::run(*args),
        Command::Reconstruct(args) => commands::reconstruct(args),
        Command::Embed(args) => commands::embed(args),
        Command::Knn(args) => commands::knn(args),
        Command::Info(args) => commands::info(args),
        Command::Bench(args) => commands::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
