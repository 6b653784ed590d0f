//! The trainer on a toy model (linear regression with deterministic batches): exact resume,
//! the non-finite guard, accumulation, crash safety of checkpoints.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use mae_train::*;

/// `y = x . w + b`, MSE. Batches are a pure function of (epoch, index).
struct Toy {
    w: Var,
    b: Var,
    /// Steps whose loss is replaced by NaN (to test the guard).
    poison: Vec<usize>,
}

struct ToyBatch {
    x: Tensor,
    y: Tensor,
    id: usize,
}

impl Toy {
    fn new() -> Self {
        let w =
            Var::from_tensor(&Tensor::new(&[[0.5f32, -0.3], [0.1, 0.2], [0.0, 0.7]], &Device::Cpu).unwrap())
                .unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.05f32, -0.05], &Device::Cpu).unwrap()).unwrap();
        Self { w, b, poison: Vec::new() }
    }
}

impl Trainable for Toy {
    type Batch = ToyBatch;
    fn loss(&self, batch: &ToyBatch) -> Result<Tensor> {
        let pred = batch.x.matmul(self.w.as_tensor())?.broadcast_add(self.b.as_tensor())?;
        let loss = (pred - &batch.y)?.sqr()?.mean_all()?;
        if self.poison.contains(&batch.id) {
            return Ok((loss * f64::NAN)?);
        }
        Ok(loss)
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        vec![("lin.bias".into(), self.b.clone()), ("lin.weight".into(), self.w.clone())]
    }
    fn batch_len(batch: &ToyBatch) -> usize {
        batch.x.dim(0).unwrap()
    }
    fn save_weights(&self, path: &Path) -> Result<()> {
        let tensors = self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        write_tensors(path, &tensors)
    }
}

struct ToyData {
    batches: usize,
}

impl BatchSource for ToyData {
    type Batch = ToyBatch;
    fn batches_per_epoch(&self) -> usize {
        self.batches
    }
    fn epoch(&self, epoch: usize, start: usize) -> Result<Box<dyn Iterator<Item = Result<ToyBatch>> + '_>> {
        Ok(Box::new((start..self.batches).map(move |i| {
            let id = epoch * self.batches + i;
            let xs: Vec<f32> = (0..12).map(|k| (((id * 31 + k * 7) % 17) as f32 - 8.0) / 4.0).collect();
            let x = Tensor::from_vec(xs, (4, 3), &Device::Cpu)?;
            let target = Tensor::new(&[[1.0f32, 2.0], [-1.0, 0.5], [0.3, -0.2]], &Device::Cpu)?;
            let y = (x.matmul(&target)? + 0.1)?;
            Ok(ToyBatch { x, y, id })
        })))
    }
}

fn config(dir: &Path, total_steps: usize) -> TrainerConfig {
    TrainerConfig {
        accum: 2,
        clip_grad_norm: Some(5.0),
        max_nonfinite_in_a_row: 3,
        checkpoint_every: 4,
        keep_last: 2,
        log_every: 1,
        progress: ProgressMode::Silent,
        run_config: serde_json::json!({"toy": true}),
        ..TrainerConfig::new(dir, LrSchedule { peak_lr: 0.05, min_lr: 0.001, warmup_steps: 3.0, total_steps })
    }
}

fn weights(t: &Toy) -> Vec<Vec<f32>> {
    vec![t.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap(), t.b.as_tensor().to_vec1().unwrap()]
}

#[test]
fn stopping_and_resuming_is_bit_identical_to_an_uninterrupted_run() {
    let data = ToyData { batches: 5 }; // 2 steps per epoch (accum 2), one batch dropped per epoch
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(Toy::new(), config(straight_dir.path(), 16)).unwrap();
    straight.fit(&data, &mut NoHooks).unwrap();

    // The same run in two halves: stop at step 8 (mid-schedule), resume in a new trainer.
    let split_dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(Toy::new(), config(split_dir.path(), 16)).unwrap();
    let mut halted = config(split_dir.path(), 16);
    halted.total_steps = 8;
    first = Trainer::new(first.into_model(), halted).unwrap();
    first.fit(&data, &mut NoHooks).unwrap();
    let latest = Checkpoints::new(split_dir.path().join("checkpoints")).latest().unwrap().unwrap();
    assert!(latest.ends_with("step-00000008"), "{latest:?}");

    let mut resumed = Trainer::new(Toy::new(), config(split_dir.path(), 16)).unwrap();
    resumed.resume_from(&latest).unwrap();
    assert_eq!(resumed.state().epoch, 4);
    let summary = resumed.fit(&data, &mut NoHooks).unwrap();
    assert_eq!(summary.steps, 16);
    assert_eq!(weights(resumed.model()), weights(straight.model()), "bit-identical weights");
    assert_ne!(weights(resumed.model()), weights(&Toy::new()), "training moved the weights");
    assert_eq!(resumed.optimizer().step_count(), 16);

    // keep_last = 2, plus best/; metrics were written.
    let ckpts = Checkpoints::new(straight_dir.path().join("checkpoints")).list().unwrap();
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    assert!(straight_dir.path().join("checkpoints/best/model.safetensors").is_file());
    let steps = read_steps(&straight_dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(steps.len(), 16);
    assert!(steps[15].loss < steps[0].loss, "the toy learns: {} -> {}", steps[0].loss, steps[15].loss);
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let data = ToyData { batches: 4 };
    let dir = tempfile::tempdir().unwrap();
    // One poisoned micro-batch: that step is skipped, training goes on.
    let mut toy = Toy::new();
    toy.poison = vec![2];
    let mut trainer = Trainer::new(toy, config(dir.path(), 6)).unwrap();
    let summary = trainer.fit(&data, &mut NoHooks).unwrap();
    assert_eq!((summary.steps, summary.skipped_steps), (6, 1));
    assert_eq!(trainer.optimizer().step_count(), 5, "the poisoned step did not update");

    // Three in a row: a clear error naming the count.
    let dir = tempfile::tempdir().unwrap();
    let mut toy = Toy::new();
    toy.poison = (0..100).collect();
    let err = Trainer::new(toy, config(dir.path(), 6)).unwrap().fit(&data, &mut NoHooks).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { count: 3, .. }), "{err}");
}

#[test]
fn too_few_batches_for_one_step_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        Trainer::new(Toy::new(), config(dir.path(), 4)).unwrap().fit(&ToyData { batches: 1 }, &mut NoHooks);
    assert!(err.unwrap_err().to_string().contains("fewer than the 2 micro-batches"));
}

#[test]
fn resume_checks_shapes_and_world_size() {
    let data = ToyData { batches: 4 };
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(Toy::new(), config(dir.path(), 4)).unwrap().fit(&data, &mut NoHooks).unwrap();
    let latest = Checkpoints::new(dir.path().join("checkpoints")).latest().unwrap().unwrap();
    let mut other = config(dir.path(), 4);
    other.world_size = 2;
    let err = Trainer::new(Toy::new(), other).unwrap().resume_from(&latest).unwrap_err().to_string();
    assert!(err.contains("same number"), "{err}");

    // A model of another shape: the error names the tensor and the file.
    let mut wrong = Toy::new();
    wrong.w =
        Var::from_tensor(&Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    let err =
        Trainer::new(wrong, config(dir.path(), 4)).unwrap().resume_from(&latest).unwrap_err().to_string();
    assert!(err.contains("lin.weight") && err.contains("model.safetensors"), "{err}");
}

/// Run in a child process by `a_run_killed_mid_checkpoint_keeps_the_previous_one` (ignored on
/// its own: alone it would test nothing, and a pass would say otherwise).
#[test]
#[ignore = "a helper: run in a child process by a_run_killed_mid_checkpoint_keeps_the_previous_one"]
fn child_training_that_aborts_in_its_second_checkpoint() {
    let dir = std::env::var("MAE_TOY_RUN_DIR").expect("MAE_TOY_RUN_DIR: the folder the parent test gives");
    let data = ToyData { batches: 4 };
    let mut cfg = config(Path::new(&dir), 12);
    cfg.checkpoint_every = 4;
    let mut trainer = Trainer::new(Toy::new(), cfg).unwrap();
    // The first checkpoint (step 4) is written normally; the fault is armed for the next one.
    let mut first = config(Path::new(&dir), 4);
    first.checkpoint_every = 0;
    trainer = Trainer::new(trainer.into_model(), first).unwrap();
    trainer.fit(&data, &mut NoHooks).unwrap();
    std::env::set_var(FAULT_ENV, "abort-in-checkpoint");
    let mut rest = Trainer::new(Toy::new(), config(Path::new(&dir), 12)).unwrap();
    let latest = Checkpoints::new(Path::new(&dir).join("checkpoints")).latest().unwrap().unwrap();
    rest.resume_from(&latest).unwrap();
    rest.fit(&data, &mut NoHooks).unwrap();
    unreachable!("the fault aborts the process");
}

#[test]
fn a_run_killed_mid_checkpoint_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_training_that_aborts_in_its_second_checkpoint",
            "--include-ignored",
            "--nocapture",
        ])
        .env("MAE_TOY_RUN_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was aborted");
    let ckpts = Checkpoints::new(dir.path().join("checkpoints"));
    assert!(dir.path().join("checkpoints/.tmp-step-00000008/model.safetensors").is_file(), "died mid-save");
    let latest = ckpts.latest().unwrap().unwrap();
    assert!(latest.ends_with("step-00000004"), "{latest:?}");
    // The surviving checkpoint loads and training continues from it.
    let mut trainer = Trainer::new(Toy::new(), config(dir.path(), 8)).unwrap();
    trainer.resume_from(&latest).unwrap();
    assert_eq!(trainer.state().step, 4);
    trainer.fit(&ToyData { batches: 4 }, &mut NoHooks).unwrap();
    assert!(!dir.path().join("checkpoints/.tmp-step-00000008").exists(), "leftovers are cleaned");
}

#[test]
fn the_loss_plot_is_a_png_for_short_and_long_ranges() {
    let dir = tempfile::tempdir().unwrap();
    for (name, scale) in [("flat", 1.5f64), ("decades", 1000.0)] {
        let records: Vec<StepRecord> = (1..=50)
            .map(|s| StepRecord {
                step: s,
                epoch: 0,
                loss: 1.0 + scale / s as f64,
                lr: 1e-3,
                grad_norm: 1.0,
                images_per_s: 10.0,
                elapsed_s: s as f64,
                rss_mb: Some(100.0 + s as f64),
            })
            .collect();
        let path = dir.path().join(format!("{name}.png"));
        plot_loss(&records, name, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{name}");
        let memory = dir.path().join(format!("{name}-memory.png"));
        plot_memory(&records, name, &memory).unwrap();
        assert_eq!(&std::fs::read(&memory).unwrap()[1..4], b"PNG", "{name}");
    }
}

#[test]
#[cfg(target_os = "linux")]
fn every_logged_step_records_the_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(Toy::new(), config(dir.path(), 4))
        .unwrap()
        .fit(&ToyData { batches: 4 }, &mut NoHooks)
        .unwrap();
    let steps = read_steps(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(steps.len(), 4);
    // A test process holds at least a few MB (its code alone), and not absurdly many.
    assert!(steps.iter().all(|r| r.rss_mb.is_some_and(|m| m > 1.0 && m < 1e6)), "{steps:?}");
}

#[test]
fn phases_are_timed_on_request_and_checkpoints_can_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainerConfig { save_checkpoints: false, time_phases: true, ..config(dir.path(), 4) };
    let summary = Trainer::new(Toy::new(), cfg).unwrap().fit(&ToyData { batches: 4 }, &mut NoHooks).unwrap();
    assert_eq!(summary.phases.len(), 4, "one entry per step");
    assert!(summary.phases.iter().all(|p| p.forward_s > 0.0 && p.backward_s > 0.0 && p.update_s > 0.0));
    assert_eq!(summary.last_checkpoint, None);
    assert!(!dir.path().join("checkpoints").exists(), "no checkpoint written");
    // Off by default: no timings.
    let other = tempfile::tempdir().unwrap();
    let summary = Trainer::new(Toy::new(), config(other.path(), 2))
        .unwrap()
        .fit(&ToyData { batches: 4 }, &mut NoHooks)
        .unwrap();
    assert!(summary.phases.is_empty() && summary.last_checkpoint.is_some());
}
