//! Inputs and comparisons shared by the kernels' tests.

use candle_core::{Device, Result, Tensor, Var};

/// Deterministic values in [-scale, scale) (a fixed LCG; no RNG crate needed).
pub(crate) fn values(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Forward values and the gradients of every input of `f` (fused) and `g` (composed) under
/// the same random weighting of the output agree within `tol`.
pub(crate) fn check(
    inputs: &[Tensor],
    tol: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    g: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, yg) = (f(&ts)?, g(&ts)?);
    assert!(max_abs_diff(&yf, &yg)? < tol, "forward differs by {}", max_abs_diff(&yf, &yg)?);
    let weighting = values(yf.dims(), 99, 1.0)?.to_device(yf.device())?;
    let gf = (&yf * &weighting)?.sum_all()?.backward()?;
    let gg = (&yg * &weighting)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (gf.get(v).expect("fused gradient"), gg.get(v).expect("composed gradient"));
        assert_eq!(a.dims(), b.dims());
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
        let diff = max_abs_diff(a, b)?;
        assert!(diff < tol * scale, "input {i}: gradient differs by {diff} (scale {scale})");
    }
    Ok(())
}

/// Runs `f` on a rayon pool of exactly `threads` threads (the kernels' and gemm's pool), so that
/// a test can compare results across thread counts.
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    pool.install(|| {
        assert_eq!(rayon::current_num_threads(), threads);
        f()
    })
}
