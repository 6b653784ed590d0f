//! CPU kernels, with their own backward, for the ops that candle composes slowly: LayerNorm,
//! softmax, exact GELU and the bias add of a linear layer.
//!
//! Composed of candle ops, each of these is a chain of element-wise ops on one thread, and its
//! backward sums gradients over broadcast dimensions with candle's strided `sum_keepdim` (a
//! division and a modulo per element): together about a third of a CPU training step. Here
//! each is one pass over rows on rayon's pool (the one gemm uses), forward and backward.
//!
//! Every function falls back to the composed ops ([`composed`]) where a kernel does not apply:
//! other devices (Metal runs the composed ops), other dtypes. Results agree with the composed
//! ops within f32 rounding (the tests beside each op), and are deterministic: the sums over rows
//! run in fixed chunks, added in order, whatever the number of threads.
//!
//! With the `cuda` feature each op also has a CUDA kernel (src/fused.cu, launched by
//! `fused_cuda`), used for f32 tensors on a CUDA device once switched on: `MAE_FUSED_CUDA=1`
//! or [`set_cuda_kernels`]. They are off by default until they have passed their tests on a GPU
//! (`cuda_tests` below, through `xtask/gpu/run-bundle.sh`); candle's composed ops run there
//! until then.
//!
//! One file per op, with its entry function, its forward and backward ops and their tests:
//! `layer_norm.rs`, `softmax.rs`, `gelu.rs` and `bias.rs` (the bias add, and the column sums of
//! a bias gradient). Here: the switches, the composed ops, and the plumbing the kernels share.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

mod bias;
mod gelu;
mod layer_norm;
mod softmax;

pub use bias::add_bias;
pub(crate) use bias::column_sums_of;
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use softmax::softmax_last_dim;

/// Rows per task of the row-parallel loops, and per partial sum of the column reductions
/// (a constant, so that the sums do not depend on the thread count).
pub(crate) const ROWS_PER_CHUNK: usize = 32;

/// Elements per task of the element-wise loops.
const ELEMS_PER_CHUNK: usize = 1 << 14;

/// True where the CPU kernels here apply: f32 tensors on the CPU, unless `MAE_FUSED_CPU=0` (read
/// once) asks for candle's composed ops, to compare speed or to rule the kernels out of a bug.
pub(crate) fn on_cpu_f32(tensors: &[&Tensor]) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MAE_FUSED_CPU").map_or(true, |v| v.trim() != "0"))
        && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether the CUDA kernels run (see the module docs): `MAE_FUSED_CUDA=1` at start, or
/// [`set_cuda_kernels`]. 0 unset, 1 off, 2 on.
static CUDA_KERNELS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches the CUDA kernels of these ops on or off (a build without the `cuda` feature has
/// none, and ignores this).
pub fn set_cuda_kernels(enabled: bool) {
    CUDA_KERNELS.store(if enabled { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
}

fn cuda_kernels_on() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match CUDA_KERNELS.load(Relaxed) {
        0 => {
            let on = std::env::var("MAE_FUSED_CUDA").is_ok_and(|v| v.trim() == "1");
            CUDA_KERNELS.store(if on { 2 } else { 1 }, Relaxed);
            on
        }
        v => v == 2,
    }
}

/// True where an op of this module runs its own kernel: the CPU kernels ([`on_cpu_f32`]), or
/// the CUDA ones for f32 tensors on a CUDA device when switched on.
fn use_kernels(tensors: &[&Tensor]) -> bool {
    on_cpu_f32(tensors)
        || (cfg!(feature = "cuda")
            && cuda_kernels_on()
            && tensors.iter().all(|t| t.device().is_cuda() && t.dtype() == DType::F32))
}

/// The same functions composed of candle ops with candle's backward: the fallback, and the
/// reference the kernels are tested against.
pub mod composed {
    use candle_core::{Result, Tensor, D};

    pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
    }

    /// The max is a constant shift (softmax is invariant to it), so it is detached: same value,
    /// same gradient, less graph.
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let exp = x.broadcast_sub(&max)?.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Plumbing: contiguous f32 slices in, a new f32 tensor out.

pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// The size of the last dimension (the rows' length), checked against a per-column vector.
fn row_len(layout: &Layout, column_vector: Option<&Layout>, what: &str) -> Result<usize> {
    let d = layout.dims().last().copied().unwrap_or(1).max(1);
    if let Some(v) = column_vector {
        if v.shape().elem_count() != d {
            candle_core::bail!("{what}: a vector of {} for rows of {d}", v.shape().elem_count())
        }
    }
    Ok(d)
}

fn output(values: Vec<f32>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(values), shape.clone()))
}

/// A new buffer of `len` values cut into pieces of `width` (rows, or runs of elements), written in
/// parallel, `per_task` pieces to a task: `fill(i, out)` writes the i-th piece (the last may be
/// shorter).
pub(crate) fn fill_pieces(
    len: usize,
    width: usize,
    per_task: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; len];
    out.par_chunks_mut(width * per_task).enumerate().for_each(|(task, chunk)| {
        crate::vmath::wide(
            #[inline(always)]
            || {
                for (j, piece) in chunk.chunks_mut(width).enumerate() {
                    fill(task * per_task + j, piece);
                }
            },
        )
    });
    out
}

/// The i-th piece of `width` of `values`, `len` long.
#[inline(always)]
fn piece(values: &[f32], i: usize, width: usize, len: usize) -> &[f32] {
    &values[i * width..i * width + len]
}

/// Column sums of a `[rows, d]` matrix given as row chunks: partial sums per fixed chunk in
/// parallel, added in order (deterministic). `per_row` adds one row's contribution.
fn column_sums(rows: usize, width: usize, per_row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; width];
            crate::vmath::wide(
                #[inline(always)]
                || {
                    for r in c * ROWS_PER_CHUNK..((c + 1) * ROWS_PER_CHUNK).min(rows) {
                        per_row(r, &mut acc);
                    }
                },
            );
            acc
        })
        .collect();
    let mut total = vec![0f32; width];
    for p in partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{on_threads, values};
    use candle_core::{Device, Var};

    #[test]
    fn reductions_give_the_same_bits_on_one_and_two_threads() -> Result<()> {
        // 300 rows: ten chunks of ROWS_PER_CHUNK, the last one partial, shared by two threads.
        const { assert!(300 > 2 * ROWS_PER_CHUNK) };
        let (x, w, b) = (values(&[300, 64], 8, 2.0)?, values(&[64], 9, 1.0)?, values(&[64], 10, 1.0)?);
        let grads = || -> Result<Vec<Vec<f32>>> {
            let vars = [Var::from_tensor(&x)?, Var::from_tensor(&w)?, Var::from_tensor(&b)?];
            let y = layer_norm(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 1e-6)?;
            let g = (y * values(&[300, 64], 11, 1.0)?)?.sum_all()?.backward()?;
            vars.iter().map(|v| g.get(v).expect("gradient").flatten_all()?.to_vec1()).collect()
        };
        assert_eq!(on_threads(1, grads)?, on_threads(2, grads)?);
        Ok(())
    }

    #[test]
    fn other_dtypes_fall_back_to_the_composed_ops() -> Result<()> {
        let x = values(&[4, 8], 12, 2.0)?.to_dtype(DType::F64)?;
        let w = Tensor::ones(8, DType::F64, &Device::Cpu)?;
        let b = Tensor::zeros(8, DType::F64, &Device::Cpu)?;
        let y = layer_norm(&x, &w, &b, 1e-6)?;
        assert_eq!(y.dtype(), DType::F64);
        let s = softmax_last_dim(&x)?.sum(1)?.to_vec1::<f64>()?;
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12));
        Ok(())
    }

    /// The CUDA kernels against candle's composed ops on the same GPU, values and gradients, at
    /// shapes with partial warps, blocks and column chunks. `#[ignore]`d (reported as ignored,
    /// never as passed, where there is no GPU): `xtask/gpu/run-bundle.sh` runs them on one with
    /// `--include-ignored`, where a missing device fails them.
    #[cfg(feature = "cuda")]
    mod cuda_tests {
        use super::*;
        use crate::test_support::check;

        /// The GPU: these tests are `#[ignore]`d, so they run only when asked for
        /// (`--include-ignored`, as run-bundle.sh does), and then a missing device is a failure,
        /// never a pass.
        fn gpu() -> Device {
            set_cuda_kernels(true);
            match Device::new_cuda(0) {
                Ok(device) => device,
                Err(e) => panic!("the CUDA kernel tests were asked for, but there is no CUDA device: {e}"),
            }
        }

        fn on(device: &Device, shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
            values(shape, seed, scale)?.to_device(device)
        }

        #[test]
        #[ignore = "needs a CUDA device: run with --include-ignored on a GPU (xtask/gpu/run-bundle.sh)"]
        fn cuda_kernels_match_the_composed_ops_forward_and_backward() -> Result<()> {
            let gpu = gpu();
            // 600 rows: three column chunks of 256, the last partial; widths off the warp size.
            for d in [48, 100, 768] {
                let x = (on(&gpu, &[600, d], 1, 3.0)? + 2.0)?;
                let (w, b) = (on(&gpu, &[d], 2, 1.5)?, on(&gpu, &[d], 3, 0.5)?);
                check(
                    &[x, w, b],
                    1e-4,
                    |t| layer_norm(&t[0], &t[1], &t[2], 1e-6),
                    |t| composed::layer_norm(&t[0], &t[1], &t[2], 1e-6),
                )?;
                let (y, bias) = (on(&gpu, &[600, d], 6, 2.0)?, on(&gpu, &[d], 7, 1.0)?);
                check(&[y, bias], 1e-5, |t| add_bias(&t[0], &t[1]), |t| t[0].broadcast_add(&t[1]))?;
            }
            for tokens in [17, 50, 197] {
                let x = on(&gpu, &[3, 4, tokens, tokens], 4, 6.0)?;
                check(&[x], 1e-5, |t| softmax_last_dim(&t[0]), |t| composed::softmax_last_dim(&t[0]))?;
            }
            check(&[on(&gpu, &[5, 33, 40], 5, 5.0)?], 1e-5, |t| gelu_erf(&t[0]), |t| t[0].gelu_erf())
        }

        #[test]
        #[ignore = "needs a CUDA device: run with --include-ignored on a GPU (xtask/gpu/run-bundle.sh)"]
        fn cuda_kernels_agree_with_the_cpu_kernels_and_repeat_bit_for_bit() -> Result<()> {
            let gpu = gpu();
            let (x, w, b) = (values(&[300, 64], 8, 2.0)?, values(&[64], 9, 1.0)?, values(&[64], 10, 1.0)?);
            let weighting = values(&[300, 64], 11, 1.0)?;
            let grads = |device: &Device| -> Result<Vec<Vec<f32>>> {
                let vars = [
                    Var::from_tensor(&x.to_device(device)?)?,
                    Var::from_tensor(&w.to_device(device)?)?,
                    Var::from_tensor(&b.to_device(device)?)?,
                ];
                let y = layer_norm(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 1e-6)?;
                let g = (gelu_erf(&y)? * weighting.to_device(device)?)?.sum_all()?.backward()?;
                vars.iter().map(|v| g.get(v).expect("gradient").flatten_all()?.to_vec1()).collect()
            };
            let (cpu, cuda, again) = (grads(&Device::Cpu)?, grads(&gpu)?, grads(&gpu)?);
            assert_eq!(cuda, again, "the CUDA kernels are deterministic");
            for (a, b) in cpu.iter().flatten().zip(cuda.iter().flatten()) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} (CPU) vs {b} (CUDA)");
            }
            Ok(())
        }
    }
}
