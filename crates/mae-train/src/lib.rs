//! A small, generic trainer: it trains anything that implements [`Trainable`] (the loss of a
//! batch and its named variables) on anything that implements [`BatchSource`].
//!
//! - [`AdamW`] with parameter groups (no weight decay on 1-D parameters and biases) and savable
//!   state; [`LrSchedule`]: `base_lr * batch / 256`, linear warm-up, half-cycle cosine;
//! - gradient accumulation, optional clipping, a guard against non-finite steps;
//! - atomic checkpoints with an exact resume ([`Checkpoints`]); `metrics.jsonl`, a loss plot,
//!   a progress bar or log lines;
//! - data-parallel training over a [`Collective`] (MPI between processes with the `mpi`
//!   feature, NCCL between GPUs with `nccl`): bucketed gradient all-reduce, parameters broadcast
//!   from rank 0, rank 0 writes everything.

mod checkpoint;
pub mod collective;
mod error;
mod fault;
mod metrics;
mod optim;
mod optim_cpu;
mod plot;
mod progress;
mod schedule;
pub mod tensorboard;
mod trainer;

pub use checkpoint::{load_vars, read_state, read_tensors, write_tensors, Checkpoints, TrainState};
pub use collective::{Collective, SingleProcess};
pub use error::{Result, TrainError};
pub use fault::FAULT_ENV;
pub use metrics::{read_steps, resident_mb, MetricsLog, StepRecord};
pub use optim::{decays, AdamW, AdamWConfig, ParamOptions};
pub use plot::{plot_loss, plot_memory};
pub use progress::{Progress, ProgressMode};
pub use schedule::LrSchedule;
pub use trainer::{
    global_norm, BatchSource, Hooks, NoHooks, PhaseTimes, TrainSummary, Trainable, Trainer, TrainerConfig,
};
