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
use std::rc::Rc;
use std::time::Instant;

use candle_core::{Tensor, Var};

use crate::checkpoint::{self, Checkpoints, TrainState, STATE_VERSION};
use crate::collective::{Collective, SingleProcess, DEFAULT_BUCKET_BYTES};
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, StepRecord};
use crate::optim::{AdamW, AdamWConfig, ParamOptions};
use crate::progress::{Progress, ProgressMode};
use crate::schedule::LrSchedule;

mod ranks;

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
    /// Pictures (PNG files) made since the last call, with a name: logged to TensorBoard at the
    /// current step after `on_epoch_end`.
    fn take_images(&mut self) -> Vec<(String, PathBuf)> {
        Vec::new()
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
    /// Write checkpoints (every `checkpoint_every` steps and at the end). Off for benchmarks and
    /// throwaway runs, which then cannot be resumed.
    pub save_checkpoints: bool,
    /// Wait for the device after each phase of a step and record the phases' seconds in
    /// [`TrainSummary::phases`] (`mae bench`); the waits cost a little on a GPU.
    pub time_phases: bool,
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
            save_checkpoints: true,
            time_phases: false,
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
    /// Seconds of each step's phases, with [`TrainerConfig::time_phases`] (else empty).
    pub phases: Vec<PhaseTimes>,
}

/// Where one optimizer step's time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    /// Forward passes and losses of the step's micro-batches.
    pub forward_s: f64,
    /// Backward passes and the gradients' accumulation.
    pub backward_s: f64,
    /// All-reduce, norm, non-finite guard, clipping and the AdamW update.
    pub update_s: f64,
}

impl PhaseTimes {
    pub fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.update_s
    }
}

pub struct Trainer<M: Trainable> {
    model: M,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    config: TrainerConfig,
    state: TrainState,
    checkpoints: Checkpoints,
    best_loss: f64,
    world: Rc<dyn Collective>,
    bucket_bytes: usize,
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
            world: Rc::new(SingleProcess),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// Trains data-parallel with `world`: its world size must be the configuration's
    /// `world_size`, and every rank must build the same model and call the same methods.
    pub fn with_collective(mut self, world: Rc<dyn Collective>) -> Result<Self> {
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

    /// Trains until `total_steps`, from wherever the trainer stands (0 or a resumed checkpoint).
    pub fn fit<S: BatchSource<Batch = M::Batch>>(
        &mut self,
        source: &S,
        hooks: &mut dyn Hooks<M>,
    ) -> Result<TrainSummary> {
        let mut run = self.begin_fit(source)?;
        let total = self.config.total_steps;
        while self.state.step < total {
            let (epoch, first) = (self.state.epoch, self.state.batch_in_epoch);
            let mut batches = source.epoch(epoch, first)?.take(run.batches_used.saturating_sub(first));
            while self.state.step < total {
                let Some(step) = self.accumulate(&mut batches)? else { break };
                self.take_step(step, epoch, &mut run, hooks)?;
            }
            drop(batches);
            self.end_epoch(epoch, &mut run, hooks)?;
        }
        let last_checkpoint = self.checkpoint(mean(run.loss_sum), hooks)?;
        run.progress.finish();
        Ok(TrainSummary {
            steps: self.state.step,
            epochs_completed: run.epochs_completed,
            last_loss: run.last_loss,
            skipped_steps: run.skipped,
            last_checkpoint,
            phases: run.phases,
        })
    }

    /// Checks the source against the configuration, opens the metrics (rank 0), meets the
    /// other ranks at the start.
    fn begin_fit<S: BatchSource<Batch = M::Batch>>(&mut self, source: &S) -> Result<FitRun> {
        let cfg = &self.config;
        let is_main = self.world.is_main();
        let metrics = if is_main {
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
        if self.world.world_size() > 1 {
            self.sync_start()?;
        }
        let cfg = &self.config;
        let mode = if is_main { cfg.progress } else { ProgressMode::Silent };
        Ok(FitRun {
            batches_used,
            metrics,
            progress: Progress::new(mode, cfg.total_steps, self.state.step),
            start: (Instant::now(), self.state.step),
            window: (Instant::now(), 0),
            loss_sum: (0.0, 0),
            nonfinite_in_a_row: 0,
            skipped: 0,
            last_loss: None,
            epochs_completed: 0,
            phases: Vec::new(),
        })
    }

    /// Runs forward and backward on the next `accum` micro-batches and sums their gradients.
    /// `None` when the epoch's batches run out first.
    fn accumulate<I: Iterator<Item = Result<M::Batch>>>(
        &mut self,
        batches: &mut I,
    ) -> Result<Option<StepInput>> {
        let accum = self.config.accum;
        let mut step = StepInput { grads: None, loss: 0.0, images: 0, forward_s: 0.0, backward_s: 0.0 };
        for _ in 0..accum {
            let Some(batch) = batches.next() else { return Ok(None) };
            let batch = batch?;
            self.state.batch_in_epoch += 1;
            if M::batch_len(&batch) == 0 {
                continue; // every sample of it was skipped by the loader
            }
            step.images += M::batch_len(&batch);
            let started = Instant::now();
            let loss = self.model.loss(&batch)?;
            // Reading the loss waits for the forward pass.
            step.loss += loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64 / accum as f64;
            let forward_done = Instant::now();
            step.forward_s += (forward_done - started).as_secs_f64();
            let store = (loss / accum as f64)?.backward()?;
            let micro: Vec<Tensor> = self
                .vars
                .iter()
                .map(|(_, v)| match store.get(v) {
                    Some(g) => Ok(g.clone()),
                    None => v.zeros_like(),
                })
                .collect::<candle_core::Result<_>>()?;
            step.grads = Some(match step.grads {
                None => micro,
                Some(acc) => {
                    acc.iter().zip(&micro).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?
                }
            });
            self.wait_for_device()?;
            step.backward_s += forward_done.elapsed().as_secs_f64();
        }
        Ok(Some(step))
    }

    /// With `time_phases`, waits until the device has run everything queued (a GPU runs
    /// asynchronously; the CPU is always done).
    fn wait_for_device(&self) -> Result<()> {
        if self.config.time_phases {
            if let Some((_, var)) = self.vars.first() {
                var.device().synchronize()?;
            }
        }
        Ok(())
    }

    /// One optimizer step from accumulated gradients: reduce over the ranks, guard against
    /// non-finite values, clip, update, record, checkpoint when due.
    fn take_step(
        &mut self,
        input: StepInput,
        epoch: usize,
        run: &mut FitRun,
        hooks: &mut dyn Hooks<M>,
    ) -> Result<()> {
        if let Some(message) = crate::fault::failure_in_step(self.world.rank(), self.state.step + 1) {
            return Err(TrainError::Model(message));
        }
        let started = Instant::now();
        let (forward_s, backward_s) = (input.forward_s, input.backward_s);
        let input = if self.world.world_size() > 1 { self.reduce(input)? } else { input };
        let (grad_norm, grads) = match input.grads {
            Some(g) => (global_norm(&g)?, g),
            None => (f64::NAN, Vec::new()), // nothing loaded: a non-finite step
        };
        let step = self.state.step;
        let lr = self.config.schedule.lr(step);
        self.guarded_update(grads, input.loss, grad_norm, lr, run)?;
        if self.config.time_phases {
            self.wait_for_device()?;
            run.phases.push(PhaseTimes { forward_s, backward_s, update_s: started.elapsed().as_secs_f64() });
        }
        self.state.step += 1;
        let record = StepRecord {
            step: self.state.step,
            epoch,
            loss: input.loss,
            lr,
            grad_norm,
            images_per_s: 0.0,
            elapsed_s: 0.0,
            rss_mb: None,
        };
        self.record(record, input.images, run)?;
        let (done, every) = (self.state.step, self.config.checkpoint_every);
        if every > 0 && done.is_multiple_of(every) && done < self.config.total_steps {
            self.checkpoint(mean(run.loss_sum), hooks)?;
            run.loss_sum = (0.0, 0);
        }
        Ok(())
    }

    /// Skips the update when the loss or the gradient norm is not finite (an error after
    /// `max_nonfinite_in_a_row` such steps); otherwise clips and steps AdamW.
    fn guarded_update(
        &mut self,
        grads: Vec<Tensor>,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        run: &mut FitRun,
    ) -> Result<()> {
        // 1-based, as the progress lines and metrics.jsonl number steps.
        let step = self.state.step + 1;
        if !loss.is_finite() || !grad_norm.is_finite() {
            run.nonfinite_in_a_row += 1;
            run.skipped += 1;
            run.progress.println(&format!(
                "warning: step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); update skipped"
            ));
            if self.world.is_main() {
                tracing::warn!(step, loss, grad_norm, "non-finite step skipped");
            }
            if run.nonfinite_in_a_row >= self.config.max_nonfinite_in_a_row {
                return Err(TrainError::NonFinite { count: run.nonfinite_in_a_row, step });
            }
            return Ok(());
        }
        run.nonfinite_in_a_row = 0;
        let grads = match self.config.clip_grad_norm.filter(|&m| grad_norm > m) {
            Some(max) => {
                let scale = max / (grad_norm + 1e-6);
                grads.iter().map(|g| g * scale).collect::<candle_core::Result<_>>()?
            }
            None => grads,
        };
        self.optimizer.step(&grads, lr)?;
        run.loss_sum = (run.loss_sum.0 + loss, run.loss_sum.1 + 1);
        run.last_loss = Some(loss);
        Ok(())
    }

    /// Progress line or bar, and the step's line in `metrics.jsonl` (rank 0). `record` comes
    /// without its timing fields, which are filled in here.
    fn record(&mut self, mut record: StepRecord, images: usize, run: &mut FitRun) -> Result<()> {
        let (done, total) = (self.state.step, self.config.total_steps);
        run.window.1 += images;
        let log = done.is_multiple_of(self.config.log_every.max(1)) || done == total;
        record.elapsed_s = run.start.0.elapsed().as_secs_f64();
        record.images_per_s = run.window.1 as f64 / run.window.0.elapsed().as_secs_f64().max(1e-9);
        // Read only where it is written: `/proc` on every step of every rank would be waste.
        record.rss_mb = run.metrics.as_ref().and_then(|_| crate::metrics::resident_mb());
        let eta = record.elapsed_s / (done - run.start.1) as f64 * (total - done) as f64;
        run.progress.step(&record, eta, log);
        if let Some(metrics) = run.metrics.as_mut() {
            metrics.log_step(&record)?;
        }
        if log {
            run.window = (Instant::now(), 0);
        }
        Ok(())
    }

    /// After the batches of `epoch` ran out: a complete epoch moves the loader position and runs
    /// the epoch hooks (rank 0); an epoch cut short before the last step is an error.
    fn end_epoch(&mut self, epoch: usize, run: &mut FitRun, hooks: &mut dyn Hooks<M>) -> Result<()> {
        if self.state.batch_in_epoch < run.batches_used {
            if self.state.step < self.config.total_steps {
                return Err(TrainError::Model(format!(
                    "the data source ended epoch {epoch} after {} of {} batches",
                    self.state.batch_in_epoch, run.batches_used
                )));
            }
            return Ok(());
        }
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        run.epochs_completed += 1;
        if let Some(metrics) = run.metrics.as_mut() {
            for (name, value) in hooks.on_epoch_end(&self.model, epoch, self.state.step)? {
                run.progress.println(&format!("epoch {epoch}: {name} = {value:.4}"));
                metrics.log_value(self.state.step, epoch, &name, value)?;
            }
            for (tag, png) in hooks.take_images() {
                metrics.log_png(&tag, self.state.step, &png)?;
            }
        }
        Ok(())
    }
}

/// What one `fit` carries from step to step.
struct FitRun {
    /// Micro-batches of an epoch that make whole steps (the rest of the epoch is dropped).
    batches_used: usize,
    /// `metrics.jsonl` (rank 0 only).
    metrics: Option<MetricsLog>,
    progress: Progress,
    /// When and at which step this `fit` started (for the ETA).
    start: (Instant, usize),
    /// Images since the last log line, and when that window started.
    window: (Instant, usize),
    /// Loss sum and count since the last checkpoint.
    loss_sum: (f64, usize),
    nonfinite_in_a_row: usize,
    skipped: usize,
    last_loss: Option<f64>,
    epochs_completed: usize,
    /// Per step, with `time_phases`.
    phases: Vec<PhaseTimes>,
}

/// One step's micro-batches, accumulated: gradients (`None` when nothing loaded), the mean loss
/// over the micro-batches, the number of images.
pub(crate) struct StepInput {
    pub(crate) grads: Option<Vec<Tensor>>,
    pub(crate) loss: f64,
    pub(crate) images: usize,
    pub(crate) forward_s: f64,
    pub(crate) backward_s: f64,
}

fn mean((sum, n): (f64, usize)) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// `sqrt(sum of squares)` over all gradients, on the host (f32 CPU tensors in one parallel
/// pass each, summed in f64; others through candle).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += match crate::optim_cpu::sum_of_squares(g)? {
            Some(sum) => sum,
            None => g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
        };
    }
    Ok(total.sqrt())
}
