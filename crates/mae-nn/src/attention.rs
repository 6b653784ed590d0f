//! Multi-head self-attention as one op with its own CPU forward and backward kernel.
//!
//! Composed of candle ops, attention is about ten ops (reshape, permute and contiguous copies of
//! q, k and v, the scale, `q k^T`, softmax, `@ v`, the transpose back), each with a backward that
//! allocates and zero-fills its gradient. Here it is one op, the design of PyTorch's CPU
//! `scaled_dot_product_attention`: one rayon task per (sample, head) reads its q, k and v straight
//! out of the qkv projection's output through strided gemm views (no copies) and writes its part
//! of the output in the layout the `proj` layer takes. The backward recomputes the attention
//! probabilities from qkv (one more `q k^T` per head, as FlashAttention does) instead of keeping
//! `B * H * N * N` of them alive between the passes.
//!
//! It applies to f32 tensors on the CPU without a compute dtype, unless `MAE_FUSED_CPU=0` (all
//! the kernels) or `MAE_FUSED_ATTN=0` (this one) asks for the composed ops ([`composed`]), which
//! also run everywhere else (CUDA, Metal, bf16) and are the reference of the tests. Every output
//! value is computed by one task, in an order that does not depend on the thread count, so the
//! results are deterministic.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fused;
use crate::vmath::exp_nonpositive;

/// Self-attention of the qkv projection's output `[B, N, 3 * H * Dh]` (per token the q heads,
/// then the k heads, then the v heads) with `num_heads` heads: `softmax(scale * q k^T) v`, as
/// `[B, N, H * Dh]` with the heads side by side. `compute` is the matmul dtype of the composed
/// path ([`crate::layers::cast_for_compute`]).
pub fn attention(qkv: &Tensor, num_heads: usize, scale: f64, compute: Option<DType>) -> Result<Tensor> {
    let fused = enabled() && fused::on_cpu_f32(&[qkv]) && compute.is_none_or(|d| d == qkv.dtype());
    attention_with(qkv, num_heads, scale, compute, fused)
}

/// [`attention`] with the choice of path made by the caller (the tests take both).
fn attention_with(
    qkv: &Tensor,
    num_heads: usize,
    scale: f64,
    compute: Option<DType>,
    fused: bool,
) -> Result<Tensor> {
    if !fused {
        return composed::attention(qkv, num_heads, scale, compute);
    }
    qkv.contiguous()?.apply_op1(Attention { heads: num_heads, scale: scale as f32 })
}

/// `MAE_FUSED_ATTN=0` (read once) turns this kernel off alone, to measure it against the
/// composed ops with the other kernels on.
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MAE_FUSED_ATTN").map_or(true, |v| v.trim() != "0"))
}

/// The head size of a qkv row of `width` values and `heads` heads.
fn head_dim(width: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(3 * heads) {
        candle_core::bail!("attention: qkv rows of {width} do not split into q, k, v of {heads} heads")
    }
    Ok(width / (3 * heads))
}

/// The same attention composed of candle ops with candle's backward: the fallback, and the
/// reference the kernel is tested against.
pub mod composed {
    use candle_core::{DType, Result, Tensor};

    use crate::layers::{cast_for_compute, softmax_last_dim};

    pub fn attention(qkv: &Tensor, num_heads: usize, scale: f64, compute: Option<DType>) -> Result<Tensor> {
        let (b, n, width) = qkv.dims3()?;
        let (h, dh) = (num_heads, super::head_dim(width, num_heads)?);
        // qkv: [B, N, 3D] -> [3, B, H, N, D/H]
        let qkv = qkv.reshape((b, n, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
        let low = |t: Tensor| cast_for_compute(&t.contiguous()?, compute);
        let q = low((qkv.get(0)? * scale)?)?;
        let k = low(qkv.get(1)?)?;
        let v = low(qkv.get(2)?)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(qkv.dtype())?; // [B, H, N, N]
        let attn = low(softmax_last_dim(&scores)?)?;
        let out = attn.matmul(&v)?.to_dtype(qkv.dtype())?; // [B, H, N, D/H]
        out.transpose(1, 2)?.reshape((b, n, h * dh))
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry and plumbing

/// Sizes of one call: `b` samples of `n` tokens, `h` heads of `dh` values.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    n: usize,
    h: usize,
    dh: usize,
}

impl Geometry {
    fn of(qkv: &Layout, heads: usize) -> Result<Self> {
        let (b, n, width) = qkv.shape().dims3()?;
        Ok(Self { b, n, h: heads, dh: head_dim(width, heads)? })
    }

    /// Values per token of qkv (`3 * H * Dh`) and of the output (`H * Dh`).
    fn qkv_row(&self) -> usize {
        3 * self.h * self.dh
    }

    fn out_row(&self) -> usize {
        self.h * self.dh
    }

    /// Offset of the first value of q (`s = 0`), k (1) or v (2) of head `h` of sample `b` in a
    /// qkv buffer; the token `i` of that matrix is `qkv_row() * i` further.
    fn qkv_at(&self, b: usize, s: usize, h: usize) -> usize {
        b * self.n * self.qkv_row() + (s * self.h + h) * self.dh
    }

    /// Offset of head `h` of sample `b` in an output buffer.
    fn out_at(&self, b: usize, h: usize) -> usize {
        b * self.n * self.out_row() + h * self.dh
    }
}

/// A strided view of an f32 matrix, as gemm takes it.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl View {
    /// Rows `rs` apart, each contiguous.
    fn rows(ptr: *const f32, rs: usize) -> Self {
        Self { ptr, rs, cs: 1 }
    }

    fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// A buffer the tasks write to through raw pointers, each its own (disjoint) elements: a head's
/// columns of the output are not a contiguous chunk that `par_chunks_mut` could hand out.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the tasks write disjoint elements (one head of one sample each) and nothing reads the
// buffer until the parallel loop has ended.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// A method, so that closures capture the `Shared` (Sync), not its raw pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = alpha * lhs @ rhs` for `lhs` `m x k`, `rhs` `k x n` and `dst` rows `dst_rs` apart, on
/// this thread: rayon already runs one task per head.
///
/// # Safety
/// The views and `dst` must address `m x k`, `k x n` and `m x n` valid f32 values, and no other
/// thread may touch `dst`'s values meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: View,
    rhs: View,
    alpha: f32,
) {
    // gemm computes `dst = a * dst + b * lhs @ rhs`; with read_dst false, dst is only written.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        0.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Runs `f` on a scratch buffer of `len` values (contents unspecified) kept per thread, so that
/// the `N x N` matrices of every head and step reuse one allocation.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local!(static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) });
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Only if `f` ever re-entered (it does not): a fresh buffer rather than a panic.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The attention probabilities `P = softmax(scale * q k^T)` of one head into `p` (`n x n`).
///
/// # Safety
/// `q` and `k` must address `n x dh` valid values.
#[inline(always)] // into the caller's vector width (vmath::wide)
unsafe fn probabilities(n: usize, dh: usize, q: View, k: View, scale: f32, p: &mut [f32]) {
    matmul(n, n, dh, p.as_mut_ptr(), n, q, k.t(), scale);
    for row in p.chunks_exact_mut(n) {
        let max = lanes(row, f32::NEG_INFINITY, |m, v| if v > m { v } else { m }, f32::max);
        row.iter_mut().for_each(|v| *v = exp_nonpositive(*v - max));
        let inv = 1.0 / lanes(row, 0.0, |s, v| s + v, |a, b| a + b);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// A reduction of `xs` in 8 interleaved lanes, combined in a fixed order: the compiler turns
/// the lanes into SIMD registers (one running value would be a serial chain), and the result
/// does not depend on anything but `xs`.
#[inline(always)]
fn lanes(xs: &[f32], init: f32, step: impl Fn(f32, f32) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = step(acc[i], c[i]);
        }
    }
    let lanes = acc.into_iter().reduce(&combine).unwrap_or(init);
    tail.iter().fold(lanes, |a, &v| step(a, v))
}

/// `sum(a * b)` in the 8 lanes of [`lanes`].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `per_head(b, h)` for every head of every sample, in parallel.
fn for_each_head(g: Geometry, per_head: impl Fn(usize, usize) + Sync) {
    (0..g.b * g.h).into_par_iter().for_each(|t| {
        crate::vmath::wide(
            #[inline(always)]
            || per_head(t / g.h, t % g.h),
        )
    });
}

// ---------------------------------------------------------------------------------------------
// The op: qkv `[B, N, 3 * H * Dh]` -> `[B, N, H * Dh]`

struct Attention {
    heads: usize,
    scale: f32,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "mae-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::of(l, self.heads)?;
        let qkv = fused::slice(s, l, "attention")?;
        let mut out = vec![0f32; g.b * g.n * g.out_row()];
        let dst = Shared(out.as_mut_ptr());
        let (n, dh, row) = (g.n, g.dh, g.qkv_row());
        for_each_head(g, |b, h| {
            let view = |s| View::rows(qkv[g.qkv_at(b, s, h)..].as_ptr(), row);
            with_scratch(n * n, |p| {
                // SAFETY: q, k and v of this head are n rows of dh values `row` apart inside qkv
                // (Geometry::of checked its shape), the output head n rows of dh `out_row` apart
                // inside `out`, written by this task only.
                unsafe {
                    probabilities(n, dh, view(0), view(1), self.scale, p);
                    matmul(
                        n,
                        dh,
                        n,
                        dst.at(g.out_at(b, h)),
                        g.out_row(),
                        View::rows(p.as_ptr(), n),
                        view(2),
                        1.0,
                    );
                }
            })
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.n, g.out_row()))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = AttentionGrad { heads: self.heads, scale: self.scale };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// The gradient of qkv from qkv and the output's gradient `dO`, per head, with `P` recomputed:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = scale * P * (dP - rowsum(dP * P))` (softmax's backward),
/// `dQ = dS K`, `dK = dS^T Q`, each written into its place in a `[B, N, 3 * H * Dh]` buffer.
struct AttentionGrad {
    heads: usize,
    scale: f32,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "mae-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::of(l, self.heads)?;
        if gl.dims() != [g.b, g.n, g.out_row()] {
            candle_core::bail!("attention backward: a gradient of {:?} for qkv of {:?}", gl.dims(), l.dims())
        }
        let (qkv, d_out) = (fused::slice(s, l, "attention")?, fused::slice(gs, gl, "attention grad")?);
        let mut d_qkv = vec![0f32; qkv.len()];
        let dst = Shared(d_qkv.as_mut_ptr());
        let (n, dh, row) = (g.n, g.dh, g.qkv_row());
        for_each_head(g, |b, h| {
            let view = |s| View::rows(qkv[g.qkv_at(b, s, h)..].as_ptr(), row);
            let (q, k, v) = (view(0), view(1), view(2));
            let d_o = View::rows(d_out[g.out_at(b, h)..].as_ptr(), g.out_row());
            with_scratch(2 * n * n, |scratch| {
                let (p, dp) = scratch.split_at_mut(n * n);
                // SAFETY: as in the forward; the gradient's q, k and v of this head are n rows of
                // dh values `row` apart inside `d_qkv`, written by this task only.
                unsafe {
                    probabilities(n, dh, q, k, self.scale, p);
                    let p_view = View::rows(p.as_ptr(), n);
                    matmul(n, dh, n, dst.at(g.qkv_at(b, 2, h)), row, p_view.t(), d_o, 1.0);
                    matmul(n, n, dh, dp.as_mut_ptr(), n, d_o, v.t(), 1.0);
                    for (dp_row, p_row) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                        let dot = dot(dp_row, p_row);
                        for (d, &pv) in dp_row.iter_mut().zip(p_row) {
                            *d = self.scale * pv * (*d - dot);
                        }
                    }
                    let ds = View::rows(dp.as_ptr(), n);
                    matmul(n, dh, n, dst.at(g.qkv_at(b, 0, h)), row, ds, k, 1.0);
                    matmul(n, dh, n, dst.at(g.qkv_at(b, 1, h)), row, ds.t(), q, 1.0);
                }
            })
        });
        Ok((CpuStorage::F32(d_qkv), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::values;
    use candle_core::Var;

    /// The output and the gradient of qkv under a fixed random weighting of the output, through
    /// the kernel (`Some(true)`), the composed ops (`Some(false)`) or as [`attention`] chooses.
    fn run(qkv: &Tensor, heads: usize, fused: Option<bool>) -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(qkv)?;
        let scale = 1.0 / ((qkv.dim(2)? / (3 * heads)) as f64).sqrt();
        let out = match fused {
            Some(fused) => attention_with(var.as_tensor(), heads, scale, None, fused)?,
            None => attention(var.as_tensor(), heads, scale, None)?,
        };
        let weighting = values(out.dims(), 99, 1.0)?.to_dtype(out.dtype())?;
        let grads = (&out * weighting)?.sum_all()?.backward()?;
        let grad = grads.get(&var).expect("qkv gets a gradient").clone();
        Ok((out, grad))
    }

    /// `max |a - b| <= tol * max |b|`.
    fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) -> Result<()> {
        assert_eq!(a.dims(), b.dims(), "{what}");
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff <= tol * scale, "{what}: differs by {diff} (largest value {scale})");
        Ok(())
    }

    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
    }

    #[test]
    fn matches_the_composed_ops_forward_and_backward() -> Result<()> {
        // (samples, tokens, heads, head size): one head, one token, head sizes that are not a
        // multiple of gemm's register blocks, the sizes of the presets' encoders and decoders.
        let cases = [
            (1, 1, 1, 3),
            (2, 1, 3, 5),
            (1, 7, 1, 5),
            (3, 5, 2, 3),
            (2, 13, 4, 24),
            (2, 17, 3, 64),
            (3, 50, 2, 32),
        ];
        for (seed, &(b, n, h, dh)) in cases.iter().enumerate() {
            // Values up to 3: logits up to ~9 * sqrt(dh), so some rows of P are peaked.
            let qkv = values(&[b, n, 3 * h * dh], seed as u64, 3.0)?;
            let (out, grad) = run(&qkv, h, Some(true))?;
            let (want_out, want_grad) = run(&qkv, h, Some(false))?;
            let what = format!("B={b} N={n} H={h} Dh={dh}");
            assert_close(&out, &want_out, 1e-5, &format!("{what}: output"))?;
            assert_close(&grad, &want_grad, 1e-5, &format!("{what}: qkv gradient"))?;
        }
        Ok(())
    }

    #[test]
    fn the_gradient_reaches_q_k_and_v() -> Result<()> {
        // A zero gradient of q, k or v would match a composed path that is wrong the same way.
        let (h, dh) = (2, 8);
        let (_, grad) = run(&values(&[2, 6, 3 * h * dh], 20, 1.0)?, h, Some(true))?;
        for s in 0..3 {
            let part = grad.narrow(2, s * h * dh, h * dh)?.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(part > 0.0, "part {s} of qkv has no gradient");
        }
        Ok(())
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() -> std::result::Result<(), Box<dyn std::error::Error>> {
        // Heads big enough (~0.1 ms each) that the second thread steals some of the 24 tasks.
        let (b, n, h, dh) = (4, 128, 6, 24);
        assert!(b * h > 2, "several tasks per thread of the bigger pool");
        let qkv = values(&[b, n, 3 * h * dh], 30, 2.0)?;
        let mut results = Vec::new();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
            let (out, grad) = pool.install(|| run(&qkv, h, Some(true)))?;
            results.push((bits(&out)?, bits(&grad)?));
        }
        assert!(results[0].0 == results[1].0, "the output depends on the thread count");
        assert!(results[0].1 == results[1].1, "the gradient depends on the thread count");
        Ok(())
    }

    #[test]
    fn the_fallback_matches_and_other_dtypes_take_it() -> Result<()> {
        let (h, dh) = (3, 5);
        let qkv = values(&[2, 9, 3 * h * dh], 40, 2.0)?;
        let scale = 1.0 / (dh as f64).sqrt();
        // The public entry point (the switches are on in tests) against the fallback path.
        let fused = attention(&qkv, h, scale, None)?;
        let fallback = attention_with(&qkv, h, scale, None, false)?;
        assert_close(&fused, &fallback, 1e-5, "fused against the fallback")?;
        // f64 (and any compute dtype) takes the composed ops: the kernel is f32 only.
        let out64 = attention(&qkv.to_dtype(DType::F64)?, h, scale, None)?;
        assert_eq!(out64.dtype(), DType::F64);
        assert_close(&out64.to_dtype(DType::F32)?, &fallback, 1e-5, "f64 fallback")?;
        let f64_grad = run(&qkv.to_dtype(DType::F64)?, h, None)?.1.to_dtype(DType::F32)?;
        assert_close(&f64_grad, &run(&qkv, h, Some(false))?.1, 1e-5, "f64 fallback gradient")
    }

    #[test]
    fn qkv_that_does_not_split_into_heads_is_an_error() -> Result<()> {
        for fused in [true, false] {
            let err = attention_with(&values(&[1, 4, 20], 50, 1.0)?, 3, 0.5, None, fused).unwrap_err();
            assert!(err.to_string().contains("3 heads"), "{err}");
            let err = attention_with(&values(&[1, 4, 18], 51, 1.0)?, 0, 0.5, None, fused).unwrap_err();
            assert!(err.to_string().contains("0 heads"), "{err}");
        }
        Ok(())
    }
}
