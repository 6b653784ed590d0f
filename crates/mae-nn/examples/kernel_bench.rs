//! Times the CPU kernels of this crate on the shapes of the tiny preset's training step (config
//! A: batch 64, 17 encoder tokens of 192, 65 decoder tokens; MLP 4x), one kernel at a time:
//! `cargo run --release -p mae-nn --example kernel_bench [-- --reps N]` (`KERNEL=gelu` runs the
//! ones whose name has that in it, e.g. under `perf stat`). A tool to see what a
//! kernel change buys before timing whole steps with `mae bench`.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};

fn time(name: &str, reps: usize, elems: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<()> {
    let only = std::env::var("KERNEL").unwrap_or_default();
    if !name.contains(only.as_str()) {
        return Ok(());
    }
    f()?; // warm-up: page faults and thread start-up out of the timing
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f()?);
    }
    let per = start.elapsed().as_secs_f64() / reps as f64;
    println!("{name:<34} {:>9.3} ms  {:>7.2} ns/elem", per * 1e3, per * 1e9 / elems as f64);
    Ok(())
}

fn main() -> Result<()> {
    let reps =
        std::env::args().skip_while(|a| a != "--reps").nth(1).and_then(|v| v.parse().ok()).unwrap_or(50);
    let dev = Device::Cpu;
    // Encoder MLP hidden activations of config A: 64 x 17 rows of 768.
    let hidden = Tensor::randn(0f32, 1.0, (64 * 17, 768), &dev)?;
    let n = hidden.elem_count();
    time("gelu_erf forward [1088, 768]", reps, n, || mae_nn::fused::gelu_erf(&hidden))?;
    let hv = candle_core::Var::from_tensor(&hidden)?;
    time("gelu_erf forward+backward", reps, n, || {
        let y = mae_nn::fused::gelu_erf(hv.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        Ok(grads.get(hv.as_tensor()).cloned().unwrap_or(y))
    })?;
    let rows = Tensor::randn(0f32, 1.0, (64 * 65, 128), &dev)?;
    let (w, b) = (
        Tensor::ones(128, candle_core::DType::F32, &dev)?,
        Tensor::zeros(128, candle_core::DType::F32, &dev)?,
    );
    time("layer_norm [4160, 128]", reps, rows.elem_count(), || {
        mae_nn::fused::layer_norm(&rows, &w, &b, 1e-6)
    })?;
    let enc = Tensor::randn(0f32, 1.0, (64 * 17, 192), &dev)?;
    let (w, b) = (
        Tensor::ones(192, candle_core::DType::F32, &dev)?,
        Tensor::zeros(192, candle_core::DType::F32, &dev)?,
    );
    time("layer_norm [1088, 192]", reps, enc.elem_count(), || mae_nn::fused::layer_norm(&enc, &w, &b, 1e-6))?;
    let scores = Tensor::randn(0f32, 1.0, (64 * 4 * 65, 65), &dev)?;
    time("softmax [16640, 65]", reps, scores.elem_count(), || mae_nn::fused::softmax_last_dim(&scores))?;
    // The products of config A's linear layers (forward, and the two of the backward), in
    // GFLOP/s: what the gemm crate reaches at these small shapes.
    for (rows, inp, out) in [
        (1088, 192, 576),
        (1088, 192, 768),
        (1088, 768, 192),
        (4160, 128, 384),
        (4160, 128, 512),
        (4160, 512, 128),
        (2048, 2048, 2048),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (rows, out), &dev)?;
        let flops = 2.0 * (rows * inp * out) as f64;
        gflops(&format!("x W^T [{rows}x{inp}] -> {out}"), reps, flops, || {
            mae_nn::linear::linear(&x, &w, None)
        })?;
        gflops(&format!("g W   [{rows}x{out}] -> {inp}"), reps, flops, || g.matmul(&w))?;
        gflops(&format!("g^T x [{out}x{rows}] x [{rows}x{inp}]"), reps, flops, || g.t()?.matmul(&x))?;
    }
    Ok(())
}

fn gflops(name: &str, reps: usize, flops: f64, mut f: impl FnMut() -> Result<Tensor>) -> Result<()> {
    let only = std::env::var("KERNEL").unwrap_or_default();
    if !name.contains(only.as_str()) {
        return Ok(());
    }
    f()?;
    let reps = (reps as f64 * 2e8 / flops).clamp(3.0, 1000.0) as usize;
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f()?);
    }
    let per = start.elapsed().as_secs_f64() / reps as f64;
    println!("{name:<34} {:>9.3} ms  {:>7.1} GFLOP/s", per * 1e3, flops / per / 1e9);
    Ok(())
}
