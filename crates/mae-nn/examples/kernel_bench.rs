//! Times the CPU kernels of this crate on the shapes of the tiny preset's training step (config
//! A: batch 64, 17 encoder tokens of 192, 65 decoder tokens; MLP 4x), and the matrix products of
//! configs A, B and C in f32 and bf16, one kernel at a time:
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
    // The products of the presets' linear layers (forward, and the two of the backward), in
    // GFLOP/s, in f32 (the gemm crate, as the f32 step runs them) and in bf16 with f32
    // accumulation (`mae_nn::product`, as `--dtype bf16` runs them on the CPU).
    println!("bf16 products: {} kernel", mae_nn::product::bf16_kernel().name());
    let bf16 = mae_nn::product::Precision::Bf16;
    for (config, rows, inp, out) in PRODUCT_SHAPES {
        let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (rows, out), &dev)?;
        let flops = 2.0 * (rows * inp * out) as f64;
        let shape = format!("[{rows}x{inp}] -> {out}");
        gflops(&format!("{config} f32  x W^T {shape}"), reps, flops, || {
            mae_nn::linear::linear(&x, &w, None)
        })?;
        gflops(&format!("{config} f32  g W   {shape}"), reps, flops, || g.matmul(&w))?;
        gflops(&format!("{config} f32  g^T x {shape}"), reps, flops, || g.t()?.matmul(&x))?;
        gflops(&format!("{config} bf16 x W^T {shape}"), reps, flops, || {
            mae_nn::linear::linear_in(&x, &w, None, bf16)
        })?;
        gflops(&format!("{config} bf16 g W   {shape}"), reps, flops, || {
            mae_nn::product::matmul(&g, &w, bf16)
        })?;
        gflops(&format!("{config} bf16 g^T x {shape}"), reps, flops, || {
            mae_nn::product::matmul(&g.t()?, &x, bf16)
        })?;
    }
    Ok(())
}

/// `(config, rows, in, out)` of the linear layers of the benchmark configs (xtask bench): A the
/// tiny preset at batch 64 (encoder 64 x 17 rows, decoder 64 x 65), B lightly's ViT-B/32 at 16
/// (patch embedding of all 784 patches, encoder 16 x 13 rows, decoder 16 x 50), C ViT-B/16 at 8
/// (1568 patches, encoder 8 x 50, decoder 8 x 197); and 2048 cubed, the peak.
const PRODUCT_SHAPES: [(&str, usize, usize, usize); 24] = [
    ("A", 1088, 192, 576),
    ("A", 1088, 192, 768),
    ("A", 1088, 768, 192),
    ("A", 4160, 128, 384),
    ("A", 4160, 128, 512),
    ("A", 4160, 512, 128),
    ("B", 784, 3072, 768),
    ("B", 208, 768, 2304),
    ("B", 208, 768, 768),
    ("B", 208, 768, 3072),
    ("B", 208, 3072, 768),
    ("B", 800, 512, 1536),
    ("B", 800, 512, 2048),
    ("B", 800, 2048, 512),
    ("B", 800, 512, 3072),
    ("C", 1568, 768, 768),
    ("C", 400, 768, 2304),
    ("C", 400, 768, 3072),
    ("C", 400, 3072, 768),
    ("C", 1576, 512, 1536),
    ("C", 1576, 512, 2048),
    ("C", 1576, 2048, 512),
    ("C", 1576, 512, 768),
    ("-", 2048, 2048, 2048),
];

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
    println!("{name:<40} {:>9.3} ms  {:>7.1} GFLOP/s", per * 1e3, flops / per / 1e9);
    Ok(())
}
