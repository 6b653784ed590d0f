//! What the ranks of a data-parallel run agree on, and the checkpoints they meet at: the start
//! position and parameters, a drift check, the gradient reduction, and rank 0's checkpoint.

use std::path::PathBuf;

use candle_core::Tensor;

use super::{Hooks, StepInput, Trainable, Trainer};
use crate::collective;
use crate::error::{Result, TrainError};

impl<M: Trainable> Trainer<M> {
    /// Start of a data-parallel `fit`: every rank must stand at rank 0's position (same
    /// checkpoint), then takes rank 0's parameters.
    pub(super) fn sync_start(&mut self) -> Result<()> {
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
    pub(super) fn checkpoint(
        &mut self,
        recent_loss: Option<f64>,
        hooks: &mut dyn Hooks<M>,
    ) -> Result<Option<PathBuf>> {
        if !self.config.save_checkpoints {
            return Ok(None);
        }
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

    /// Data parallel: sums `[loss, ranks that loaded something, images]` over the ranks, then
    /// averages the gradients over the ranks that contributed.
    pub(super) fn reduce(&self, mut input: StepInput) -> Result<StepInput> {
        let world = self.world.as_ref();
        let loaded = input.grads.is_some();
        let mut sums =
            [if loaded { input.loss } else { 0.0 }, f64::from(u8::from(loaded)), input.images as f64];
        world.all_reduce_sum_host(&mut sums)?;
        input.images = sums[2] as usize;
        if sums[1] == 0.0 {
            return Ok(StepInput { grads: None, loss: 0.0, ..input });
        }
        input.loss = sums[0] / sums[1];
        let local = match input.grads {
            Some(g) => g,
            None => self.vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<_>>()?,
        };
        input.grads = Some(collective::all_reduce_mean(world, &local, 1.0 / sums[1], self.bucket_bytes)?);
        Ok(input)
    }
}
