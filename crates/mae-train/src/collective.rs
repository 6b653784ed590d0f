//! Collective communication between the processes of a data-parallel job: rank, world size,
//! broadcast, all-reduce, barrier and abort, behind one small trait ([`Collective`]).
//!
//! - [`SingleProcess`]: a world of one (always available; every operation is the identity).
//! - `MpiCollective` (cargo feature `mpi`): MPI over `MPI_COMM_WORLD` via rsmpi, for jobs
//!   launched with `mpirun -np N ...` (Open MPI, MPICH, Intel MPI, Slurm's PMI).
//!
//! - `NcclCollective` (cargo feature `nccl`): NCCL between processes of one GPU each, on the
//!   GPUs' own memory, for jobs started by `mae pretrain --devices 0,1,...` (see
//!   docs/distributed.md).
//!
//! The tensor operations take and return [`Tensor`]s on any device: MPI copies through host
//! memory, NCCL reduces device memory in place.
//!
//! [`from_env`] picks the implementation from the launcher's environment, and
//! [`all_reduce_mean`] / [`broadcast_tensors`] move many tensors in a few large flat buckets.

use std::ops::Range;
use std::rc::Rc;

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::MpiCollective;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "nccl")]
pub use self::nccl::{NcclCollective, NcclLaunch};

/// Size of the flat buckets that gradients are all-reduced in (PyTorch DDP's default, 25 MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// What the processes of one job do together. Every rank must call the same operations, in the
/// same order, with tensors of the same shapes and dtypes (as with MPI itself).
///
/// A communicator belongs to the thread that made it (MPI is initialised "funneled", an NCCL
/// communicator must not be called concurrently), so implementations need not be `Send` or
/// `Sync`: a trainer shares its collective through an `Rc` and stays on that thread.
pub trait Collective {
    /// This process's index, `0..world_size()`; rank 0 writes the logs and checkpoints.
    fn rank(&self) -> usize;
    /// Number of processes in the job.
    fn world_size(&self) -> usize;
    /// Rank 0.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
    /// Human-readable description, e.g. `MPI (Open MPI v4.1.4), 2 processes`.
    fn describe(&self) -> String;
    /// Element-wise sum of `tensor` over all ranks; every rank gets the sum (same shape, dtype
    /// and device as its input).
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor>;
    /// Element-wise sum of host values over all ranks, in place (losses, counts).
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()>;
    /// Rank `root`'s `tensor` on every rank (every rank passes a tensor of the same shape).
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor>;
    /// Rank `root`'s bytes on every rank, whatever their length elsewhere.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every process of the job now with exit status `code` (`MPI_Abort`): the way out of
    /// an error on one rank while the others wait in a collective.
    fn abort(&self, code: i32) -> !;
}

/// A world of one process: broadcasts and reductions return their input.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn describe(&self) -> String {
        "single process".into()
    }
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }
    fn all_reduce_sum_host(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, tensor: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(tensor.clone())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// How the process was launched, from the environment variables launchers set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// The variable that told (e.g. `OMPI_COMM_WORLD_SIZE`).
    pub variable: &'static str,
    pub rank: Option<usize>,
    /// `None` when the launcher does not say (PMIx alone).
    pub world_size: Option<usize>,
}

impl LaunchEnv {
    /// `Some` when an MPI launcher started this process: Open MPI's `mpirun`
    /// (`OMPI_COMM_WORLD_SIZE`), MPICH / Intel MPI / Slurm PMI-2 (`PMI_SIZE`), PMIx (`PMIX_RANK`).
    pub fn detect() -> Option<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
        let candidates: [(&'static str, &str, Option<&str>); 3] = [
            ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", Some("OMPI_COMM_WORLD_SIZE")),
            ("PMI_SIZE", "PMI_RANK", Some("PMI_SIZE")),
            ("PMIX_RANK", "PMIX_RANK", None),
        ];
        candidates.into_iter().find(|(var, ..)| get(var).is_some()).map(|(variable, rank, size)| LaunchEnv {
            variable,
            rank: num(rank),
            world_size: size.and_then(num),
        })
    }

    /// More than one process for sure.
    pub fn is_multi_process(&self) -> bool {
        self.world_size.is_some_and(|n| n > 1) || self.rank.is_some_and(|r| r > 0)
    }
}

/// The collective of this process: MPI when an MPI launcher started it (and the `mpi` feature
/// is built in), a [`SingleProcess`] otherwise. Without the feature, a process that a launcher
/// started as one of several is an error rather than N independent copies of the same run.
pub fn from_env() -> Result<Rc<dyn Collective>> {
    let launch = LaunchEnv::detect();
    #[cfg(feature = "mpi")]
    if launch.is_some() {
        return Ok(Rc::new(MpiCollective::init()?));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(env) = launch.filter(LaunchEnv::is_multi_process) {
        return Err(TrainError::Model(format!(
            "this process was started by an MPI launcher as one of {} ({}), but it was built without \
             MPI support: rebuild with the cargo feature `mpi` (for the mae binary: \
             `cargo build --release -p mae-cli --features mpi`, which needs an MPI library such as \
             libopenmpi-dev, and libclang)",
            env.world_size.map_or("several processes".to_string(), |n| format!("{n} processes")),
            env.variable
        )));
    }
    Ok(Rc::new(SingleProcess))
}

/// Consecutive ranges of `tensors` holding at most `bucket_bytes` each (a larger tensor is a
/// bucket of its own), never mixing dtypes: the flat buffers of one collective call each.
pub fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        let size = t.elem_count() * t.dtype().size_in_bytes();
        let dtype_change = i > start && tensors[start].dtype() != t.dtype();
        if i > start && (bytes + size > bucket_bytes || dtype_change) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// Applies `op` to the flat concatenation of each bucket of `tensors` and cuts the result back
/// into tensors of the original shapes, in order.
fn bucketed(
    tensors: &[Tensor],
    bucket_bytes: usize,
    mut op: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(tensors.len());
    for range in buckets(tensors, bucket_bytes) {
        let part = &tensors[range];
        let flat = if let [only] = part {
            only.flatten_all()?
        } else {
            let pieces = part.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&pieces, 0)?
        };
        let done = op(&flat)?;
        let mut offset = 0;
        for t in part {
            let n = t.elem_count();
            out.push(done.narrow(0, offset, n)?.reshape(t.shape())?);
            offset += n;
        }
    }
    Ok(out)
}

/// Sums `tensors` over all ranks in flat buckets of about `bucket_bytes`, in the given order, and
/// multiplies by `scale` (`1 / world_size` for a mean).
pub fn all_reduce_mean(
    world: &dyn Collective,
    tensors: &[Tensor],
    scale: f64,
    bucket_bytes: usize,
) -> Result<Vec<Tensor>> {
    bucketed(tensors, bucket_bytes, |flat| Ok(world.all_reduce_sum(flat)?.affine(scale, 0.0)?))
}

/// Rank `root`'s values of `tensors` on every rank, in flat buckets of about `bucket_bytes`.
pub fn broadcast_tensors(
    world: &dyn Collective,
    tensors: &[Tensor],
    root: usize,
    bucket_bytes: usize,
) -> Result<Vec<Tensor>> {
    bucketed(tensors, bucket_bytes, |flat| world.broadcast(flat, root))
}

/// Rank `root`'s string on every rank.
pub fn broadcast_string(world: &dyn Collective, text: &str, root: usize) -> Result<String> {
    let mut bytes = text.as_bytes().to_vec();
    world.broadcast_bytes(&mut bytes, root)?;
    String::from_utf8(bytes).map_err(|e| TrainError::Model(format!("broadcast: not UTF-8 text: {e}")))
}

/// FNV-1a over the raw bytes of `tensors` (as f32): equal on two ranks iff their values are
/// bit-identical (up to hash collisions).
pub fn fingerprint(tensors: &[Tensor]) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tensors {
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for v in values {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests;
