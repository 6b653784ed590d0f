//! NCCL collective (cargo feature `nccl`): one process per GPU, gradients reduced in device
//! memory over NVLink / PCIe / InfiniBand by NVIDIA's library (through cudarc, as candle's own
//! multi-process example does). No host copies of tensors.
//!
//! The processes of a job find each other through an NCCL unique id that one of them makes and
//! all receive. `mae pretrain --devices 0,1,...` makes it in the launching process and hands it
//! to the processes it starts in the environment ([`NcclLaunch`]); see docs/distributed.md.
//!
//! Every operation is queued on the CUDA stream of the candle device the tensors live on, so it
//! is ordered with the kernels that produced its input and those that consume its output, with
//! no extra synchronisation.

use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::Collective;
use crate::error::{Result, TrainError};

/// Environment variables through which a launcher tells one process its place in an NCCL job.
pub const ENV_ID: &str = "MAE_NCCL_ID";
pub const ENV_RANK: &str = "MAE_NCCL_RANK";
pub const ENV_WORLD_SIZE: &str = "MAE_NCCL_WORLD_SIZE";

/// This process's place in an NCCL job, as its launcher set it in the environment.
#[derive(Debug, Clone)]
pub struct NcclLaunch {
    pub rank: usize,
    pub world_size: usize,
    pub id: Id,
}

impl NcclLaunch {
    /// A fresh job: the unique id every rank must be given (made by one process, the launcher).
    pub fn new_id() -> Result<Id> {
        Id::new().map_err(|e| TrainError::Model(format!("NCCL: cannot create a unique id: {e:?}")))
    }

    /// The environment of rank `rank` of a job with id `id` (for `std::process::Command::envs`).
    pub fn env_for(id: &Id, rank: usize, world_size: usize) -> Vec<(&'static str, String)> {
        vec![(ENV_ID, encode_id(id)), (ENV_RANK, rank.to_string()), (ENV_WORLD_SIZE, world_size.to_string())]
    }

    /// `Some` when a launcher set [`ENV_ID`]; an error when its variables are malformed.
    pub fn from_env() -> Result<Option<Self>> {
        let Ok(hex) = std::env::var(ENV_ID) else { return Ok(None) };
        let number = |k: &str| -> Result<usize> {
            let v =
                std::env::var(k).map_err(|_| TrainError::Model(format!("{ENV_ID} is set but {k} is not")))?;
            v.trim().parse().map_err(|_| TrainError::Model(format!("{k}={v}: not a number")))
        };
        let (rank, world_size) = (number(ENV_RANK)?, number(ENV_WORLD_SIZE)?);
        if rank >= world_size {
            return Err(TrainError::Model(format!(
                "{ENV_RANK}={rank} is not below {ENV_WORLD_SIZE}={world_size}"
            )));
        }
        Ok(Some(Self { rank, world_size, id: decode_id(&hex)? }))
    }
}

fn encode_id(id: &Id) -> String {
    id.internal().iter().map(|&c| format!("{:02x}", c as u8)).collect()
}

fn decode_id(hex: &str) -> Result<Id> {
    let bad =
        || TrainError::Model(format!("{ENV_ID}: expected 256 hex digits, got {} characters", hex.len()));
    if hex.len() != 256 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, slot) in internal.iter_mut().enumerate() {
        let byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        *slot = byte as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

/// NCCL over the CUDA device of this process.
pub struct NcclCollective {
    comm: Rc<Comm>,
    /// The CUDA device of this rank (its stream is the communicator's).
    device: Device,
    rank: usize,
    world_size: usize,
}

impl NcclCollective {
    /// Joins the job `launch` describes on `device` (which must be a CUDA device); blocks until
    /// every rank has joined.
    pub fn init(device: &Device, launch: &NcclLaunch) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(TrainError::Model(format!(
                "NCCL needs a CUDA device, this rank runs on {device:?} (pass --device cuda:N)"
            )));
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), launch.rank, launch.world_size, launch.id)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(Self {
            comm: Rc::new(comm),
            device: device.clone(),
            rank: launch.rank,
            world_size: launch.world_size,
        })
    }

    fn run(&self, tensor: &Tensor, op: NcclOp) -> Result<Tensor> {
        let tensor = tensor.to_device(&self.device)?.contiguous()?;
        Ok(tensor.apply_op1_no_bwd(&NcclTensorOp { comm: self.comm.clone(), op })?)
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Model(format!("NCCL {what} failed: {e:?} (set NCCL_DEBUG=INFO for NCCL's own account)"))
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn describe(&self) -> String {
        format!("NCCL, {} processes", self.world_size)
    }
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        self.run(tensor, NcclOp::AllReduceSum)
    }
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()> {
        let summed =
            self.run(&Tensor::from_slice(values, values.len(), &self.device)?, NcclOp::AllReduceSum)?;
        values.copy_from_slice(&summed.to_vec1::<f64>()?);
        Ok(())
    }
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        self.run(tensor, NcclOp::Broadcast { root })
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let device = &self.device;
        let len = Tensor::new(&[bytes.len() as i64], device)?;
        let len = self.run(&len, NcclOp::Broadcast { root })?.to_vec1::<i64>()?[0] as usize;
        bytes.resize(len, 0);
        if len > 0 {
            let data = Tensor::from_slice(bytes.as_slice(), len, device)?;
            *bytes = self.run(&data, NcclOp::Broadcast { root })?.to_vec1::<u8>()?;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.run(&Tensor::zeros(1, DType::F32, &self.device)?, NcclOp::AllReduceSum)?.to_vec1::<f32>()?;
        Ok(())
    }
    /// Exits: NCCL has no job-wide abort, so the launcher (`mae pretrain --devices`, `mpirun`)
    /// that sees a rank exit non-zero ends the others.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[derive(Debug, Clone, Copy)]
enum NcclOp {
    AllReduceSum,
    Broadcast { root: usize },
}

/// The NCCL call as a candle op on a contiguous CUDA tensor: output in a new buffer of the same
/// shape and dtype, queued on the device's stream.
struct NcclTensorOp {
    comm: Rc<Comm>,
    op: NcclOp,
}

impl CustomOp1 for NcclTensorOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL operations need CUDA tensors")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = layout.shape().elem_count();
        let device = storage.device().clone();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL operations need contiguous tensors")
        };
        macro_rules! run_as {
            ($t:ty) => {{
                let src = storage.as_cuda_slice::<$t>()?.slice(start..end);
                // SAFETY: NCCL writes all n elements before anything reads them (same stream).
                let mut dst = unsafe { device.alloc::<$t>(n)? };
                let status = match self.op {
                    NcclOp::AllReduceSum => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
                    NcclOp::Broadcast { root } => self.comm.broadcast(Some(&src), &mut dst, root as i32),
                };
                status.map_err(|e| candle_core::Error::Msg(format!("NCCL {:?} failed: {e:?}", self.op)))?;
                CudaStorage::wrap_cuda_slice(dst, device.clone())
            }};
        }
        let out = match storage.dtype() {
            DType::F32 => run_as!(f32),
            DType::F64 => run_as!(f64),
            DType::BF16 => run_as!(half::bf16),
            DType::U8 => run_as!(u8),
            DType::U32 => run_as!(u32),
            DType::I64 => run_as!(i64),
            other => candle_core::bail!("NCCL: {other:?} tensors are not supported"),
        };
        Ok((out, layout.shape().clone()))
    }
}
