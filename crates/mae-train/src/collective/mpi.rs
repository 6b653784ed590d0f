//! [`Collective`] over MPI's `MPI_COMM_WORLD` (rsmpi). Tensors travel through host memory:
//! copied out, reduced or broadcast by MPI, and copied back to their device.

use ::mpi::collective::SystemOperation;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator, CommunicatorCollectives, Root};
use ::mpi::Threading;
use candle_core::{DType, Tensor};

use super::Collective;
use crate::error::{Result, TrainError};

/// MPI counts are C ints: larger buffers go in chunks of this many elements.
const MAX_COUNT: usize = 1 << 28;

/// The MPI world of this job. Creating it initialises MPI (`MPI_Init_thread`, funneled: only
/// the thread that created it communicates); dropping it finalises MPI.
pub struct MpiCollective {
    // Dropping the universe calls MPI_Finalize.
    _universe: ::mpi::environment::Universe,
    rank: usize,
    size: usize,
    library: String,
}

impl MpiCollective {
    /// Initialises MPI. Fails if MPI was already initialised in this process.
    pub fn init() -> Result<Self> {
        let (universe, threading) =
            ::mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                TrainError::Config(
                    "MPI is already initialised in this process: create one MpiCollective".into(),
                )
            })?;
        if threading < Threading::Funneled {
            tracing::warn!(
                ?threading,
                "the MPI library does not support calls from a multi-threaded process (MPI_THREAD_FUNNELED)"
            );
        }
        let world = universe.world();
        let library = ::mpi::environment::library_version()
            .ok()
            .and_then(|v| v.lines().next().map(|l| l.split(',').next().unwrap_or(l).trim().to_string()))
            .unwrap_or_else(|| "MPI".into());
        Ok(Self { rank: world.rank() as usize, size: world.size() as usize, _universe: universe, library })
    }

    fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    fn root(&self, root: usize) -> Result<i32> {
        if root >= self.size {
            return Err(TrainError::Config(format!(
                "broadcast from rank {root} in a world of {}",
                self.size
            )));
        }
        Ok(root as i32)
    }
}

/// The host dtype a tensor travels as.
fn wire_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn all_reduce_vec<T>(world: &SimpleCommunicator, send: &[T]) -> Vec<T>
where
    T: ::mpi::datatype::Equivalence + Copy + Default,
{
    let mut recv = vec![T::default(); send.len()];
    for (s, r) in send.chunks(MAX_COUNT).zip(recv.chunks_mut(MAX_COUNT)) {
        world.all_reduce_into(s, r, SystemOperation::sum());
    }
    recv
}

fn broadcast_vec<T>(world: &SimpleCommunicator, root: i32, buf: &mut [T])
where
    T: ::mpi::datatype::Equivalence,
{
    let process = world.process_at_rank(root);
    for chunk in buf.chunks_mut(MAX_COUNT) {
        process.broadcast_into(chunk);
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn describe(&self) -> String {
        format!("MPI ({}), {} processes", self.library, self.size)
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let wire = wire_dtype(tensor.dtype());
        let flat = tensor.flatten_all()?.to_dtype(wire)?;
        let out = match wire {
            DType::F64 => {
                let sum = all_reduce_vec(&self.world(), &flat.to_vec1::<f64>()?);
                Tensor::from_vec(sum, tensor.shape(), tensor.device())?
            }
            _ => {
                let sum = all_reduce_vec(&self.world(), &flat.to_vec1::<f32>()?);
                Tensor::from_vec(sum, tensor.shape(), tensor.device())?
            }
        };
        Ok(out.to_dtype(tensor.dtype())?)
    }

    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()> {
        let sum = all_reduce_vec(&self.world(), values);
        values.copy_from_slice(&sum);
        Ok(())
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        let root = self.root(root)?;
        let wire = wire_dtype(tensor.dtype());
        let flat = tensor.flatten_all()?.to_dtype(wire)?;
        let out = match wire {
            DType::F64 => {
                let mut buf = flat.to_vec1::<f64>()?;
                broadcast_vec(&self.world(), root, &mut buf);
                Tensor::from_vec(buf, tensor.shape(), tensor.device())?
            }
            _ => {
                let mut buf = flat.to_vec1::<f32>()?;
                broadcast_vec(&self.world(), root, &mut buf);
                Tensor::from_vec(buf, tensor.shape(), tensor.device())?
            }
        };
        Ok(out.to_dtype(tensor.dtype())?)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let root = self.root(root)?;
        let world = self.world();
        let mut len = bytes.len() as u64;
        world.process_at_rank(root).broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        broadcast_vec(&world, root, bytes);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world().barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world().abort(code)
    }
}
