//! The collective helpers and the trainer's data-parallel path, with ranks played by threads of
//! one process (an in-memory [`Collective`]), so they run without MPI.

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::{
    write_tensors, BatchSource, LrSchedule, NoHooks, ProgressMode, Trainable, Trainer, TrainerConfig,
};

#[derive(Clone)]
enum Payload {
    Tensor(Tensor),
    Host(Vec<f64>),
    Bytes(Vec<u8>),
}

struct Shared {
    slots: Mutex<Vec<Option<Payload>>>,
    barrier: Barrier,
}

/// Rank `rank` of a world of threads.
struct ThreadRank {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

fn thread_world(size: usize) -> Vec<ThreadRank> {
    let shared = Arc::new(Shared { slots: Mutex::new(vec![None; size]), barrier: Barrier::new(size) });
    (0..size).map(|rank| ThreadRank { rank, size, shared: shared.clone() }).collect()
}

impl ThreadRank {
    /// Every rank's payload, in rank order.
    fn exchange(&self, mine: Payload) -> Vec<Payload> {
        self.shared.slots.lock().unwrap()[self.rank] = Some(mine);
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap().iter().map(|p| p.clone().unwrap()).collect();
        self.shared.barrier.wait();
        all
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn describe(&self) -> String {
        format!("{} threads", self.size)
    }
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let all = self.exchange(Payload::Tensor(tensor.clone()));
        let mut sum: Option<Tensor> = None;
        for p in all {
            let Payload::Tensor(t) = p else { unreachable!() };
            sum = Some(match sum {
                None => t,
                Some(s) => (s + t)?,
            });
        }
        Ok(sum.unwrap())
    }
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()> {
        let all = self.exchange(Payload::Host(values.to_vec()));
        values.iter_mut().for_each(|v| *v = 0.0);
        for p in all {
            let Payload::Host(h) = p else { unreachable!() };
            values.iter_mut().zip(h).for_each(|(v, x)| *v += x);
        }
        Ok(())
    }
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        let Payload::Tensor(t) = self.exchange(Payload::Tensor(tensor.clone())).swap_remove(root) else {
            unreachable!()
        };
        Ok(t)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let Payload::Bytes(b) = self.exchange(Payload::Bytes(bytes.clone())).swap_remove(root) else {
            unreachable!()
        };
        *bytes = b;
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

#[test]
fn buckets_are_consecutive_capped_and_never_mix_dtypes() {
    let f32s = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    let tensors =
        vec![f32s(10), f32s(10), f32s(30), f32s(5), Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap()];
    // 80 bytes a bucket: 40 + 40 | 120 (alone, too large) | 20 | the f64 one.
    assert_eq!(buckets(&tensors, 80), vec![0..2, 2..3, 3..4, 4..5]);
    assert_eq!(buckets(&tensors, 1 << 20), vec![0..4, 4..5]);
    assert!(buckets(&[], 80).is_empty());
}

#[test]
fn bucketed_all_reduce_and_broadcast_keep_shapes_and_order() {
    let handles: Vec<_> = thread_world(3)
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                let r = rank.rank as f32;
                let tensors =
                    vec![t(&[r, 1.0, 2.0, 3.0], &[2, 2]), t(&[10.0 * r], &[1]), t(&[r; 6], &[1, 2, 3])];
                let mean = all_reduce_mean(&rank, &tensors, 1.0 / 3.0, 12).unwrap();
                let root = broadcast_tensors(&rank, &tensors, 2, 12).unwrap();
                let text = broadcast_string(&rank, &format!("rank {}", rank.rank), 1).unwrap();
                (mean, root, text)
            })
        })
        .collect();
    for h in handles {
        let (mean, root, text) = h.join().unwrap();
        assert_eq!(mean[0].dims(), &[2, 2]);
        assert_eq!(mean[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.0, 2.0, 3.0]);
        assert_eq!(mean[1].to_vec1::<f32>().unwrap(), vec![10.0]);
        assert_eq!(mean[2].dims(), &[1, 2, 3]);
        assert_eq!(mean[2].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 6]);
        assert_eq!(root[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 1.0, 2.0, 3.0]);
        assert_eq!(root[2].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.0; 6]);
        assert_eq!(text, "rank 1");
    }
}

#[test]
fn launchers_are_recognised_from_their_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        LaunchEnv::from_lookup(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    };
    assert_eq!(env(&[]), None);
    let ompi = env(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "3")]).unwrap();
    assert_eq!((ompi.rank, ompi.world_size, ompi.is_multi_process()), (Some(3), Some(4), true));
    let single = env(&[("PMI_SIZE", "1"), ("PMI_RANK", "0")]).unwrap();
    assert!(!single.is_multi_process());
    let pmix = env(&[("PMIX_RANK", "1")]).unwrap();
    assert_eq!((pmix.world_size, pmix.is_multi_process()), (None, true));
    assert_eq!(env(&[("OMPI_COMM_WORLD_SIZE", "lots")]).unwrap().world_size, None);
}

/// `y = x . w`, MSE over the batch; a batch is rows of a fixed, deterministic table.
struct Lin {
    w: Var,
}

struct Rows {
    x: Tensor,
    y: Tensor,
}

impl Trainable for Lin {
    type Batch = Rows;
    fn loss(&self, b: &Rows) -> Result<Tensor> {
        Ok((b.x.matmul(self.w.as_tensor())? - &b.y)?.sqr()?.mean_all()?)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("w".into(), self.w.clone())]
    }
    fn batch_len(b: &Rows) -> usize {
        b.x.dim(0).unwrap()
    }
    fn save_weights(&self, path: &Path) -> Result<()> {
        write_tensors(path, &[("w".to_string(), self.w.as_tensor().clone())].into_iter().collect())
    }
}

/// Global batches of `world * batch` rows; this rank's slice of each.
struct Shard {
    batch: usize,
    rank: usize,
    world: usize,
}

impl BatchSource for Shard {
    type Batch = Rows;
    fn batches_per_epoch(&self) -> usize {
        4
    }
    fn epoch(&self, epoch: usize, start: usize) -> Result<Box<dyn Iterator<Item = Result<Rows>> + '_>> {
        Ok(Box::new((start..4).map(move |k| {
            let first = (epoch * 4 + k) * self.batch * self.world + self.rank * self.batch;
            let xs: Vec<f32> =
                (first * 3..(first + self.batch) * 3).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let x = Tensor::from_vec(xs, (self.batch, 3), &Device::Cpu)?;
            let y = x.matmul(&t(&[1.0, -2.0, 0.5, 0.3, 2.0, -1.0], &[3, 2]))?;
            Ok(Rows { x, y })
        })))
    }
}

fn lin_config(dir: &Path, world_size: usize) -> TrainerConfig {
    TrainerConfig {
        accum: 2,
        max_nonfinite_in_a_row: 3,
        checkpoint_every: 2,
        keep_last: 2,
        log_every: 1,
        world_size,
        progress: ProgressMode::Silent,
        run_config: serde_json::json!({}),
        ..TrainerConfig::new(
            dir,
            LrSchedule { peak_lr: 0.05, min_lr: 0.0, warmup_steps: 1.0, total_steps: 6 },
        )
    }
}

fn lin(init: f32) -> Lin {
    Lin { w: Var::from_tensor(&t(&[init, 0.1, -0.2, 0.3, 0.0, 0.2], &[3, 2])).unwrap() }
}

fn values(m: &Lin) -> Vec<f32> {
    m.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn two_ranks_with_batch_b_step_like_one_process_with_batch_2b_and_only_rank_0_writes() {
    let single_dir = tempfile::tempdir().unwrap();
    let mut single = Trainer::new(lin(0.4), lin_config(single_dir.path(), 1)).unwrap();
    single.fit(&Shard { batch: 8, rank: 0, world: 1 }, &mut NoHooks).unwrap();
    let expected = values(single.model());

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let handles: Vec<_> = thread_world(2)
        .into_iter()
        .zip(&dirs)
        .map(|(rank, dir)| {
            let dir = dir.path().join("run");
            std::thread::spawn(move || {
                let r = rank.rank;
                // Rank 1 starts from other weights: the broadcast at the start aligns them.
                let model = lin(if r == 0 { 0.4 } else { -3.0 });
                let mut trainer = Trainer::new(model, lin_config(&dir, 2))
                    .unwrap()
                    .with_collective(std::rc::Rc::new(rank))
                    .unwrap()
                    .with_bucket_bytes(8); // several buckets even for this tiny model
                let summary = trainer.fit(&Shard { batch: 4, rank: r, world: 2 }, &mut NoHooks).unwrap();
                (values(trainer.model()), summary, dir)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results[0].0, results[1].0, "both ranks hold the same weights");
    assert_ne!(results[0].0, values(&lin(0.4)), "the weights moved");
    for (a, b) in results[0].0.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "data parallel {:?} vs one process {expected:?}", results[0].0);
    }
    assert!(results[0].1.last_checkpoint.is_some() && results[0].2.join("metrics.jsonl").is_file());
    assert_eq!(results[1].1.last_checkpoint, None);
    assert!(!results[1].2.exists(), "rank 1 wrote nothing");
    assert_eq!(results[0].1.last_loss, results[1].1.last_loss, "the loss is averaged over the ranks");
}

#[test]
fn a_collective_of_another_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new(lin(0.0), lin_config(dir.path(), 2))
        .unwrap()
        .with_collective(std::rc::Rc::new(SingleProcess))
        .err()
        .unwrap();
    assert!(err.to_string().contains("configured for 2"), "{err}");
}
