//! The training loop, generic over what is trained ([`Trainable`]) and where batches come from
//! ([`BatchSource`]). One optimizer step = `accum` micro-batches; gradients are averaged over them
//! (and, with a collective, over processes), checked for non-finite values, optionally clipped,
//! then AdamW steps with the scheduled learning rate.
//!
//! Data parallel ([`Trainer::with_collective`]): every rank computes the gradients of its own
//! shard of each global batch; the gradients are summed over the ranks in a few flat buckets (in
//! the fixed order of `named_vars`) and divided by the number of ranks, the loss is averaged the
//! same way, so every rank takes the same step. The parameters are broadcast from rank 0 when
//! `fit` starts (also after a resume). Rank 0 alone writes metrics, checkpoints and calls the
//! hooks; the ranks meet at a barrier before and after each checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Tensor, Var};

use crate::checkpoint::{self, Checkpoints, TrainState, FAULT_ENV, STATE_VERSION};
use crate::collective::{self, Collective, SingleProcess, DEFAULT_BUCKET_BYTES};
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, StepRecord};
use crate::optim::{AdamW, AdamWConfig, ParamOptions};
use crate::progress::{Progress, ProgressMode};
use crate::schedule::LrSchedule;

/// Something that can be trained: the loss of a batch and its named variables.
pub trait Trainable {
    type Batch;
    /// Scalar loss of one micro-batch.
    fn loss(&self, batch: &Self::Batch) -> Result<Tensor>;
    /// Trainable variables in a stable order (e.g. sorted by name).
    fn named_vars(&self) -> Vec<(String, Var)>;
    /// Number of samples in a batch (for images/s).
    fn batch_len(batch: &Self::Batch) -> usize;
    /// Writes the model's weights to `path` in the model's own format.
    fn save_weights(&self, path: &Path) -> Result<()>;
    /// How the optimizer treats variable `name`: by default weight decay on weights only
    /// ([`crate::decays`]) and the scheduled learning rate unscaled.
    fn param_options(&self, name: &str, var: &Var) -> ParamOptions {
        ParamOptions::default_for(name, var)
    }
}

/// A deterministic, resumable stream of batches: epoch `e` from batch `k` on is always the same.
pub trait BatchSource {
    type Batch;
    fn batches_per_epoch(&self) -> usize;
    fn epoch(
        &self,
        epoch: usize,
        start_batch: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Self::Batch>> + '_>>;
}

/// Called by the trainer at the end of each epoch (pictures, evaluations); returns extra metrics.
pub trait Hooks<M> {
    fn on_epoch_end(&mut self, _model: &M, _epoch: usize, _step: usize) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
    /// Called after each checkpoint and at the end with the metrics so far.
    fn on_checkpoint(&mut self, _run_dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// No hooks.
pub struct NoHooks;
impl<M> Hooks<M> for NoHooks {}

#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// Run folder: `metrics.jsonl`, `checkpoints/`.
    pub run_dir: PathBuf,
    pub total_steps: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub clip_grad_norm: Option<f64>,
    /// Stop with an error after this many non-finite steps in a row.
    pub max_nonfinite_in_a_row: usize,
    /// Save every this many steps (0: only at epoch ends and the end).
    pub checkpoint_every: usize,
    pub keep_last: usize,
    /// Print a progress line (without a terminal) and restart the images/s window every this
    /// many steps; `metrics.jsonl` gets every step.
    pub log_every: usize,
    pub seed: u64,
    pub world_size: usize,
    pub progress: ProgressMode,
    /// The run's resolved configuration, stored in every checkpoint.
    pub run_config: serde_json::Value,
}

impl TrainerConfig {
    /// A run into `run_dir` following `schedule` (its `total_steps` are the run's), with the
    /// defaults of `mae pretrain` for everything else: no accumulation, AdamW's defaults, no
    /// clipping, stop after 5 non-finite steps in a row, a checkpoint every 200 steps (and at
    /// epoch ends), the last 3 kept, a log line every 10 steps, seed 0, one process, progress
    /// by terminal. Call sites name only what differs: `TrainerConfig { accum: 4, ..new(..) }`.
    pub fn new(run_dir: impl Into<PathBuf>, schedule: LrSchedule) -> Self {
        Self {
            run_dir: run_dir.into(),
            total_steps: schedule.total_steps,
            accum: 1,
            schedule,
            adamw: AdamWConfig::default(),
            clip_grad_norm: None,
            max_nonfinite_in_a_row: 5,
            checkpoint_every: 200,
            keep_last: 3,
            log_every: 10,
            seed: 0,
            world_size: 1,
            progress: ProgressMode::Auto,
            run_config: serde_json::Value::Null,
        }
    }
}

/// How a `fit` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_completed: usize,
    pub last_loss: Option<f64>,
    pub skipped_steps: usize,
    pub last_checkpoint: Option<PathBuf>,
}

pub struct Trainer<M: Trainable> {
    model: M,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    config: TrainerConfig,
    state: TrainState,
    checkpoints: Checkpoints,
    best_loss: f64,
    world: Arc<dyn Collective>,
    bucket_bytes: usize,
}

/// `fail-rank:R:step:S` in [`FAULT_ENV`]: rank R returns an error in step S (1-based, as logged),
/// after its backward pass and before the gradients are reduced, i.e. while the other ranks wait
/// for it in the all-reduce.
fn injected_failure(rank: usize, step: usize) -> Option<String> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let rest = spec.strip_prefix("fail-rank:")?;
    let (r, s) = rest.split_once(":step:")?;
    let (r, s) = (r.parse::<usize>().ok()?, s.parse::<usize>().ok()?);
    (r == rank && s == step).then(|| format!("rank {rank} fails in step {step} ({FAULT_ENV}={spec})"))
}

impl<M: Trainable> Trainer<M> {
    pub fn new(model: M, config: TrainerConfig) -> Result<Self> {
        if config.accum == 0 || config.total_steps == 0 {
            return Err(TrainError::Config("steps and accumulation must be at least 1".into()));
        }
        let vars = model.named_vars();
        let optimizer = AdamW::with_options(vars.clone(), config.adamw, |n, v| model.param_options(n, v))?;
        let state = TrainState {
            version: STATE_VERSION,
            written_by: format!("mae-train {}", env!("CARGO_PKG_VERSION")),
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: config.seed,
            world_size: config.world_size,
            recent_loss: None,
            run_config: config.run_config.clone(),
        };
        let checkpoints = Checkpoints::new(config.run_dir.join("checkpoints"));
        Ok(Self {
            model,
            vars,
            optimizer,
            config,
            state,
            checkpoints,
            best_loss: f64::INFINITY,
            world: Arc::new(SingleProcess),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// Trains data-parallel with `world`: its world size must be the configuration's
    /// `world_size`, and every rank must build the same model and call the same methods.
    pub fn with_collective(mut self, world: Arc<dyn Collective>) -> Result<Self> {
        if world.world_size() != self.config.world_size {
            return Err(TrainError::Config(format!(
                "the trainer is configured for {} process(es), the collective has {}",
                self.config.world_size,
                world.world_size()
            )));
        }
        self.world = world;
        Ok(self)
    }

    /// Size of the flat buffers gradients are all-reduced in (default 25 MiB).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    pub fn collective(&self) -> &dyn Collective {
        self.world.as_ref()
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn into_model(self) -> M {
        self.model
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Continues from a checkpoint folder: weights, optimizer moments, step and loader position.
    pub fn resume_from(&mut self, checkpoint_dir: &Path) -> Result<()> {
        let state = checkpoint::read_state(checkpoint_dir)?;
        if state.world_size != self.config.world_size {
            return Err(TrainError::checkpoint(
                checkpoint_dir,
                format!(
                    "was written by a run of {} processes; resume it with the same number (this run has {})",
                    state.world_size, self.config.world_size
                ),
            ));
        }
        checkpoint::load_vars(&checkpoint_dir.join("model.safetensors"), &self.vars)?;
        let device = self.vars.first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let opt_path = checkpoint_dir.join("optimizer.safetensors");
        let tensors = checkpoint::read_tensors(&opt_path, &device)?;
        self.optimizer.load_state(&tensors, state.step as u64, &opt_path.display().to_string())?;
        self.state = TrainState { run_config: self.config.run_config.clone(), ..state };
        Ok(())
    }

    /// Start of a data-parallel `fit`: every rank must stand at rank 0's position (same
    /// checkpoint), then takes rank 0's parameters.
    fn sync_start(&mut self) -> Result<()> {
        let world = self.world.clone();
        let here = format!("{}:{}:{}", self.state.step, self.state.epoch, self.state.batch_in_epoch);
        let main = collective::broadcast_string(world.as_ref(), &here, 0)?;
        if main != here {
            return Err(TrainError::Config(format!(
                "rank {} starts at step:epoch:batch {here}, rank 0 at {main}: every rank must resume from \
                 the same checkpoint (put the run folder on a file system all nodes share)",
                world.rank()
            )));
        }
        self.broadcast_parameters()
    }

    fn broadcast_parameters(&mut self) -> Result<()> {
        let tensors: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let synced = collective::broadcast_tensors(self.world.as_ref(), &tensors, 0, self.bucket_bytes)?;
        for ((_, var), value) in self.vars.iter().zip(synced) {
            // A copy: on rank 0 the broadcast may hand back a view of the variable itself.
            var.set(&value.copy()?)?;
        }
        Ok(())
    }

    /// Compares a fingerprint of every rank's parameters with rank 0's. They cannot differ if
    /// the all-reduce gives every rank the same sums (as MPI implementations do); if they ever
    /// do, the drift is reported and repaired from rank 0.
    fn check_in_sync(&mut self) -> Result<()> {
        let tensors: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let mine = collective::fingerprint(&tensors)?.to_string();
        let main = collective::broadcast_string(self.world.as_ref(), &mine, 0)?;
        let mut drifted = [f64::from(u8::from(main != mine))];
        self.world.all_reduce_sum_host(&mut drifted)?;
        if drifted[0] > 0.0 {
            if self.world.is_main() {
                tracing::warn!(
                    step = self.state.step,
                    "the parameters of {} rank(s) drifted from rank 0's; re-synchronised from rank 0",
                    drifted[0]
                );
                eprintln!(
                    "warning: step {}: the parameters of {} rank(s) drifted from rank 0's; re-synchronised from rank 0",
                    self.state.step, drifted[0]
                );
            }
            self.broadcast_parameters()?;
        }
        Ok(())
    }

    /// A checkpoint of a (possibly data-parallel) run: rank 0 saves; the ranks check they agree
    /// and meet before and after, so no rank runs ahead while it is written.
    fn checkpoint(&mut self, recent_loss: Option<f64>, hooks: &mut dyn Hooks<M>) -> Result<Option<PathBuf>> {
        let distributed = self.world.world_size() > 1;
        if distributed {
            self.check_in_sync()?;
            self.world.barrier()?;
        }
        let dir = if self.world.is_main() {
            let dir = self.save_checkpoint(recent_loss)?;
            hooks.on_checkpoint(&self.config.run_dir)?;
            Some(dir)
        } else {
            None
        };
        if distributed {
            self.world.barrier()?;
        }
        Ok(dir)
    }

    fn save_checkpoint(&mut self, recent_loss: Option<f64>) -> Result<PathBuf> {
        self.state.recent_loss = recent_loss;
        let model = &self.model;
        let dir = self.checkpoints.save(
            &self.state,
            |p| model.save_weights(p),
            &self.optimizer.state_tensors()?,
        )?;
        if let Some(loss) = recent_loss.filter(|l| *l < self.best_loss) {
            self.best_loss = loss;
            self.checkpoints.mark_best(&dir)?;
        }
        self.checkpoints.prune(self.config.keep_last)?;
        Ok(dir)
    }

    /// Trains until `total_steps`, from wherever the trainer stands (0 or a resumed checkpoint).
    pub fn fit<S: BatchSource<Batch = M::Batch>>(
        &mut self,
        source: &S,
        hooks: &mut dyn Hooks<M>,
    ) -> Result<TrainSummary> {
        let cfg = self.config.clone();
        let world = self.world.clone();
        let (is_main, distributed) = (world.is_main(), world.world_size() > 1);
        let mut metrics = if is_main {
            std::fs::create_dir_all(&cfg.run_dir).map_err(|e| TrainError::io(&cfg.run_dir, e))?;
            Some(MetricsLog::open(cfg.run_dir.join("metrics.jsonl"))?)
        } else {
            None
        };
        let steps_per_epoch = source.batches_per_epoch() / cfg.accum;
        if steps_per_epoch == 0 {
            return Err(TrainError::Config(format!(
                "an epoch has {} batches, fewer than the {} micro-batches of one step: use a smaller batch size or accumulation",
                source.batches_per_epoch(),
                cfg.accum
            )));
        }
        let batches_used = steps_per_epoch * cfg.accum;
        if distributed {
            self.sync_start()?;
        }
        let mode = if is_main { cfg.progress } else { ProgressMode::Silent };
        let progress = Progress::new(mode, cfg.total_steps, self.state.step);
        let start = Instant::now();
        let start_step = self.state.step;
        let mut window = (Instant::now(), 0usize); // images since the last log line
        let mut loss_sum = (0.0, 0usize); // since the last checkpoint
        let (mut nonfinite, mut skipped, mut last_loss) = (0usize, 0usize, None);
        let mut epochs_completed = 0;

        while self.state.step < cfg.total_steps {
            let epoch = self.state.epoch;
            let first = self.state.batch_in_epoch;
            let mut batches = source.epoch(epoch, first)?.take(batches_used.saturating_sub(first));
            'steps: while self.state.step < cfg.total_steps {
                // One optimizer step: accumulate `accum` micro-batches.
                let mut grads: Option<Vec<Tensor>> = None;
                let (mut step_loss, mut images) = (0.0f64, 0usize);
                for _ in 0..cfg.accum {
                    let Some(batch) = batches.next() else { break 'steps };
                    let batch = batch?;
                    self.state.batch_in_epoch += 1;
                    if M::batch_len(&batch) == 0 {
                        continue; // every sample of it was skipped by the loader
                    }
                    images += M::batch_len(&batch);
                    let loss = self.model.loss(&batch)?;
                    step_loss +=
                        loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64 / cfg.accum as f64;
                    let store = (loss / cfg.accum as f64)?.backward()?;
                    let micro: Vec<Tensor> = self
                        .vars
                        .iter()
                        .map(|(_, v)| match store.get(v) {
                            Some(g) => Ok(g.clone()),
                            None => v.zeros_like(),
                        })
                        .collect::<candle_core::Result<_>>()?;
                    grads = Some(match grads {
                        None => micro,
                        Some(acc) => {
                            acc.iter().zip(&micro).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?
                        }
                    });
                }
                if let Some(message) = injected_failure(world.rank(), self.state.step + 1) {
                    return Err(TrainError::Model(message));
                }
                if distributed {
                    // Sum over ranks: [loss, ranks that loaded something, images]; then the
                    // gradients, averaged over the ranks that contributed.
                    let loaded = grads.is_some();
                    let mut sums =
                        [if loaded { step_loss } else { 0.0 }, f64::from(u8::from(loaded)), images as f64];
                    world.all_reduce_sum_host(&mut sums)?;
                    images = sums[2] as usize;
                    if sums[1] > 0.0 {
                        step_loss = sums[0] / sums[1];
                        let local = match grads {
                            Some(g) => g,
                            None => self
                                .vars
                                .iter()
                                .map(|(_, v)| v.zeros_like())
                                .collect::<candle_core::Result<_>>()?,
                        };
                        grads = Some(collective::all_reduce_mean(
                            world.as_ref(),
                            &local,
                            1.0 / sums[1],
                            self.bucket_bytes,
                        )?);
                    } else {
                        (step_loss, grads) = (0.0, None);
                    }
                }
                let (grad_norm, mut grads) = match grads {
                    Some(g) => (global_norm(&g)?, g),
                    None => (f64::NAN, Vec::new()), // nothing loaded: a non-finite step
                };
                let step = self.state.step;
                let lr = cfg.schedule.lr(step);
                if !step_loss.is_finite() || !grad_norm.is_finite() {
                    nonfinite += 1;
                    skipped += 1;
                    progress.println(&format!(
                        "warning: step {step}: non-finite loss ({step_loss}) or gradient norm ({grad_norm}); update skipped"
                    ));
                    if is_main {
                        tracing::warn!(step, step_loss, grad_norm, "non-finite step skipped");
                    }
                    if nonfinite >= cfg.max_nonfinite_in_a_row {
                        return Err(TrainError::NonFinite { count: nonfinite, step });
                    }
                } else {
                    nonfinite = 0;
                    if let Some(max) = cfg.clip_grad_norm.filter(|&m| grad_norm > m) {
                        let scale = max / (grad_norm + 1e-6);
                        grads = grads.iter().map(|g| g * scale).collect::<candle_core::Result<_>>()?;
                    }
                    self.optimizer.step(&grads, lr)?;
                    loss_sum = (loss_sum.0 + step_loss, loss_sum.1 + 1);
                    last_loss = Some(step_loss);
                }
                self.state.step += 1;
                window.1 += images;

                let done = self.state.step;
                let log = done.is_multiple_of(cfg.log_every.max(1)) || done == cfg.total_steps;
                let elapsed = start.elapsed().as_secs_f64();
                let rate = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                let eta = elapsed / (done - start_step) as f64 * (cfg.total_steps - done) as f64;
                let record = StepRecord {
                    step: done,
                    epoch,
                    loss: step_loss,
                    lr,
                    grad_norm,
                    images_per_s: rate,
                    elapsed_s: elapsed,
                };
                progress.step(&record, eta, log);
                if let Some(metrics) = metrics.as_mut() {
                    metrics.write(&record)?;
                }
                if log {
                    window = (Instant::now(), 0);
                }
                if cfg.checkpoint_every > 0
                    && done.is_multiple_of(cfg.checkpoint_every)
                    && done < cfg.total_steps
                {
                    self.checkpoint(mean(loss_sum), hooks)?;
                    loss_sum = (0.0, 0);
                }
            }
            drop(batches);
            if self.state.batch_in_epoch >= batches_used {
                // The epoch is complete: move the loader position, run the epoch hooks.
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                epochs_completed += 1;
                // Hooks (pictures, evaluations) and metrics: rank 0 only.
                if let Some(metrics) = metrics.as_mut().filter(|_| is_main) {
                    for (name, value) in hooks.on_epoch_end(&self.model, epoch, self.state.step)? {
                        progress.println(&format!("epoch {epoch}: {name} = {value:.4}"));
                        metrics.write(
                            &serde_json::json!({ "step": self.state.step, "epoch": epoch, name: value }),
                        )?;
                    }
                }
            } else if self.state.step < cfg.total_steps {
                return Err(TrainError::Model(format!(
                    "the data source ended epoch {epoch} after {} of {batches_used} batches",
                    self.state.batch_in_epoch
                )));
            }
        }
        let last_checkpoint = self.checkpoint(mean(loss_sum), hooks)?;
        progress.finish();
        Ok(TrainSummary {
            steps: self.state.step,
            epochs_completed,
            last_loss,
            skipped_steps: skipped,
            last_checkpoint,
        })
    }
}

fn mean((sum, n): (f64, usize)) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// `sqrt(sum of squares)` over all gradients, on the host.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(total.sqrt())
}
