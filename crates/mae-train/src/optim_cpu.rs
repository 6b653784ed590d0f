//! AdamW's per-tensor update on the CPU in one parallel in-place pass instead of a dozen candle
//! ops.
//!
//! Composed of candle ops, one update is about ten element-wise ops per parameter, each on one
//! thread and each allocating its result (docs/benchmarks.md has the times). Here one pass on
//! rayon's pool updates the two moments and the weights together, in place: no allocation, so
//! no fresh pages for the kernel to zero every step, and each element of the gradient, moments
//! and weights is read once (AdamW is memory-bound: three passes read them 2.3 times as much).
//! Every
//! element goes through the same f32 operations in the same order as the composed update in
//! `optim.rs` (candle's `tensor * f64` is `x * (f64 as f32) + 0`, `tensor / f64` a multiplication
//! by the reciprocal), so the two give bit-identical weights (tested there).

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::error::Result;

/// Elements per task.
const CHUNK: usize = 1 << 15;

/// The update's constants, as candle's affine ops turn them into f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Bias corrections `1 - beta^t`.
    pub bias_correction1: f64,
    pub bias_correction2: f64,
    pub lr: f64,
    /// `1 - lr * weight_decay` where the parameter is decayed.
    pub decay_factor: Option<f64>,
}

/// Whether the kernels apply: f32 on the CPU, every tensor contiguous.
pub(crate) fn applies(var: &Var, m: &Tensor, v: &Tensor, grad: &Tensor) -> bool {
    [var.as_tensor(), m, v, grad]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// One update of `var` and of its moments `m`, `v`, all in place. The optimizer owns `m` and `v`
/// alone (it hands out and takes in copies), so no one else sees them change.
pub(crate) fn step(var: &Var, m: &Tensor, v: &Tensor, grad: &Tensor, u: Update) -> Result<()> {
    let (grad_storage, grad_layout) = grad.storage_and_layout();
    let Storage::Cpu(grad_storage) = &*grad_storage else {
        return Err(candle_core::Error::Msg("adamw: expected a CPU gradient".into()).into());
    };
    let g = slice(grad_storage, grad_layout)?;
    // The write locks of three distinct tensors, taken one inside the other (m, v, then the
    // weights), give the one pass mutable access to all three.
    with_elements_mut(m, |m| {
        with_elements_mut(v, |v| with_elements_mut(var.as_tensor(), |p| update(p, m, v, g, u)))
    })?;
    Ok(())
}

/// Runs `f` on the f32 elements of the contiguous `t`, in place, under `t`'s write lock.
fn with_elements_mut(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<()> + Send,
) -> candle_core::Result<()> {
    struct Op<F>(Mutex<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> candle_core::Result<()> + Send> InplaceOp1 for Op<F> {
        fn name(&self) -> &'static str {
            "mae-adamw"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let f = self.0.lock().ok().and_then(|mut f| f.take());
            match f {
                Some(f) => f(slice_mut(storage, layout)?),
                None => candle_core::bail!("adamw: an in-place update ran twice"),
            }
        }
    }
    t.inplace_op1(&Op(Mutex::new(Some(f))))
}

/// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, then
/// `p = decay(p) - lr * (m / bc1) / (sqrt(v / bc2) + eps)`, element by element.
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], u: Update) -> candle_core::Result<()> {
    if [m.len(), v.len(), g.len()].iter().any(|&n| n != p.len()) {
        candle_core::bail!(
            "adamw: a parameter of {} for moments of {} / {} and a gradient of {}",
            p.len(),
            m.len(),
            v.len(),
            g.len()
        )
    }
    let k = Coefficients {
        b1: u.beta1 as f32,
        c1: (1.0 - u.beta1) as f32,
        b2: u.beta2 as f32,
        c2: (1.0 - u.beta2) as f32,
        inv_bc1: (1.0 / u.bias_correction1) as f32,
        inv_bc2: (1.0 / u.bias_correction2) as f32,
        eps: u.eps as f32,
        lr: u.lr as f32,
    };
    let decay = u.decay_factor.map(|d| d as f32);
    let chunks = p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK));
    chunks.zip(g.par_chunks(CHUNK)).for_each(|(((p, m), v), g)| match decay {
        Some(d) => update_chunk(p, m, v, g, k, |p| p * d + 0.0),
        None => update_chunk(p, m, v, g, k, |p| p),
    });
    Ok(())
}

/// The update's constants in f32, as candle's affine ops turn them.
#[derive(Clone, Copy)]
struct Coefficients {
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
}

/// One chunk of [`update`], in the composed update's operations and order (see the module
/// comment). Equal lengths up front, so the loop has no bounds checks and vectorizes.
#[inline(always)]
fn update_chunk(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: Coefficients,
    decayed: impl Fn(f32) -> f32,
) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        m[i] = (m[i] * k.b1 + 0.0) + (g[i] * k.c1 + 0.0);
        v[i] = (v[i] * k.b2 + 0.0) + ((g[i] * g[i]) * k.c2 + 0.0);
        let update = (m[i] * k.inv_bc1 + 0.0) / ((v[i] * k.inv_bc2 + 0.0).sqrt() * 1.0 + k.eps);
        p[i] = decayed(p[i]) - (update * k.lr + 0.0);
    }
}

/// `sum(t^2)` of a contiguous f32 CPU tensor, in f64, without the squared copy candle's
/// `sqr().sum_all()` allocates (a gradient-sized write per tensor, every step). Fixed chunks,
/// each summed in eight fixed lanes (so it vectorizes) and added in order: the same bits on any
/// number of threads. `None` where the kernel does not apply.
pub(crate) fn sum_of_squares(t: &Tensor) -> Result<Option<f64>> {
    if !(t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()) {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else { return Ok(None) };
    let x = slice(storage, layout)?;
    let partial: Vec<f64> = x.par_chunks(CHUNK).map(chunk_sum_of_squares).collect();
    Ok(Some(partial.iter().sum()))
}

fn chunk_sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut blocks = x.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += f64::from(v) * f64::from(v);
        }
    }
    let tail: f64 = blocks.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    lanes.iter().sum::<f64>() + tail
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("adamw: expected a contiguous tensor"),
    }
}

/// The f32 elements of a contiguous tensor, to update in place.
fn slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("adamw: expected a contiguous tensor")
    };
    let CpuStorage::F32(values) = storage else { candle_core::bail!("adamw: expected an f32 tensor") };
    Ok(&mut values[start..end])
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    #[test]
    fn sum_of_squares_is_exact_to_f64_rounding_and_the_same_on_one_and_two_threads() {
        // Three chunks and a tail that is not a multiple of the eight lanes.
        let n = 2 * CHUNK + 1003;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let t = Tensor::from_vec(values.clone(), n, &Device::Cpu).unwrap();
        let exact: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let one = on_threads(1, || sum_of_squares(&t).unwrap().unwrap());
        let two = on_threads(2, || sum_of_squares(&t).unwrap().unwrap());
        assert_eq!(one.to_bits(), two.to_bits());
        assert!((one - exact).abs() <= 1e-12 * exact, "{one} vs {exact}");
        // candle's composed path agrees to f32 rounding.
        let composed = t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((one - composed).abs() <= 1e-5 * exact, "{one} vs {composed}");
        // A strided view is left to candle.
        let m = t.narrow(0, 0, 1000).unwrap().reshape((10, 100)).unwrap().t().unwrap();
        assert_eq!(sum_of_squares(&m).unwrap(), None);
    }
}
