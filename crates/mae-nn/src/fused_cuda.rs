//! The CUDA side of [`crate::fused`]: launches of the kernels in src/fused.cu (PTX built by
//! build.rs), one function per op, called from the ops' `cuda_fwd`.
//!
//! Inputs are contiguous f32 (the public functions make them so); outputs are new buffers on the
//! input's device and stream. Launch shapes: row ops one warp per row, 8 rows a block;
//! element-wise ops a grid-stride loop; column sums 32 columns x 8 rows a block over fixed
//! chunks of [`COLUMN_CHUNK`] rows, then an in-order sum of the chunks (deterministic).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "mae_nn_fused";

/// Rows a block of the row kernels takes (its warps: 256 threads), as `ROWS_PER_BLOCK` in
/// fused.cu.
const ROWS_PER_BLOCK: usize = 8;
/// Rows per partial sum of the column reductions (a constant: sums do not depend on the GPU).
const COLUMN_CHUNK: usize = 256;
/// `COL_TILE` and `COL_ROWS` of fused.cu.
const COL_TILE: u32 = 32;
const COL_ROWS: u32 = 8;

/// The contiguous f32 data of `storage` under `layout`.
fn view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<f32>()?.slice(start..end)),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{what}: {n} is past the kernels' u32 range")))
}

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK).max(1) as u32, 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elements_config(n: usize) -> LaunchConfig {
    // A grid-stride loop: enough blocks to fill the GPU, no more than the elements need.
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn alloc(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every element is written by the kernel that receives the buffer.
    unsafe { dev.alloc::<f32>(n) }
}

fn wrap(out: CudaSlice<f32>, dev: &CudaDevice, shape: Shape) -> (CudaStorage, Shape) {
    (CudaStorage::wrap_cuda_slice(out, dev.clone()), shape)
}

/// LayerNorm forward over rows of `d`.
pub(crate) fn layer_norm(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    d: usize,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let (x, w, b) = (view(xs, xl, "layer_norm")?, view(ws, wl, "weight")?, view(bs, bl, "bias")?);
    let dev = &xs.device;
    let n = xl.shape().elem_count();
    let (rows, d32) = (u32_of(n / d, "rows")?, u32_of(d, "row length")?);
    let y = alloc(dev, n)?;
    let func = dev.get_or_load_custom_func("mae_layer_norm_fwd", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&w).arg(&b).arg(&y).arg(&rows).arg(&d32).arg(&eps);
    // SAFETY: the arguments match the kernel's signature; every buffer holds rows * d values.
    unsafe { launch.launch(rows_config(n / d)) }.w()?;
    Ok(wrap(y, dev, xl.shape().clone()))
}

/// LayerNorm's input gradient.
pub(crate) fn layer_norm_grad_input(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    d: usize,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let (x, w, g) = (view(xs, xl, "x")?, view(ws, wl, "weight")?, view(gs, gl, "grad")?);
    let dev = &xs.device;
    let n = xl.shape().elem_count();
    let (rows, d32) = (u32_of(n / d, "rows")?, u32_of(d, "row length")?);
    let dx = alloc(dev, n)?;
    let func = dev.get_or_load_custom_func("mae_layer_norm_bwd_input", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&w).arg(&g).arg(&dx).arg(&rows).arg(&d32).arg(&eps);
    // SAFETY: as in `layer_norm`.
    unsafe { launch.launch(rows_config(n / d)) }.w()?;
    Ok(wrap(dx, dev, xl.shape().clone()))
}

/// `[2, d]`: LayerNorm's weight and bias gradients (column sums of `g * xhat` and `g`).
pub(crate) fn layer_norm_grad_params(
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    d: usize,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let (x, g) = (view(xs, xl, "x")?, view(gs, gl, "grad")?);
    let dev = &xs.device;
    let rows = xl.shape().elem_count() / d;
    let (rows32, d32, chunk32) = (u32_of(rows, "rows")?, u32_of(d, "row length")?, COLUMN_CHUNK as u32);
    let stats = alloc(dev, 2 * rows)?;
    let func = dev.get_or_load_custom_func("mae_row_stats", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&stats).arg(&rows32).arg(&d32).arg(&eps);
    // SAFETY: stats holds 2 values per row.
    unsafe { launch.launch(rows_config(rows)) }.w()?;
    let chunks = rows.div_ceil(COLUMN_CHUNK).max(1);
    let partial = alloc(dev, chunks * 2 * d)?;
    let func = dev.get_or_load_custom_func("mae_layer_norm_param_partials", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&g).arg(&stats).arg(&partial).arg(&rows32).arg(&d32).arg(&chunk32);
    // SAFETY: partial holds 2d values per chunk; the grid covers every (column, chunk).
    unsafe { launch.launch(columns_config(d, chunks)) }.w()?;
    let sums = sum_partials(dev, &partial, chunks, 2 * d)?;
    Ok(wrap(sums, dev, Shape::from((2, d))))
}

fn columns_config(d: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.div_ceil(COL_TILE as usize) as u32, chunks as u32, 1),
        block_dim: (COL_TILE, COL_ROWS, 1),
        shared_mem_bytes: 0,
    }
}

/// The in-order sum over `chunks` of `[chunks, width]` partial sums.
fn sum_partials(
    dev: &CudaDevice,
    partial: &CudaSlice<f32>,
    chunks: usize,
    width: usize,
) -> Result<CudaSlice<f32>> {
    let out = alloc(dev, width)?;
    let (chunks32, width32) = (u32_of(chunks, "chunks")?, u32_of(width, "width")?);
    let func = dev.get_or_load_custom_func("mae_sum_partials", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(partial).arg(&out).arg(&chunks32).arg(&width32);
    let config = LaunchConfig {
        grid_dim: (width.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: partial holds chunks * width values, out width.
    unsafe { launch.launch(config) }.w()?;
    Ok(out)
}

/// Column sums of `[rows, d]`: `[d]` (a bias gradient).
pub(crate) fn column_sums((gs, gl): (&CudaStorage, &Layout), d: usize) -> Result<(CudaStorage, Shape)> {
    let g = view(gs, gl, "grad")?;
    let dev = &gs.device;
    let rows = gl.shape().elem_count() / d;
    let (rows32, d32, chunk32) = (u32_of(rows, "rows")?, u32_of(d, "row length")?, COLUMN_CHUNK as u32);
    let chunks = rows.div_ceil(COLUMN_CHUNK).max(1);
    let partial = alloc(dev, chunks * d)?;
    let func = dev.get_or_load_custom_func("mae_column_partials", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&g).arg(&partial).arg(&rows32).arg(&d32).arg(&chunk32);
    // SAFETY: partial holds d values per chunk; the grid covers every (column, chunk).
    unsafe { launch.launch(columns_config(d, chunks)) }.w()?;
    let sums = sum_partials(dev, &partial, chunks, d)?;
    Ok(wrap(sums, dev, Shape::from(d)))
}

/// Softmax over rows of `d`.
pub(crate) fn softmax((xs, xl): (&CudaStorage, &Layout), d: usize) -> Result<(CudaStorage, Shape)> {
    let x = view(xs, xl, "softmax")?;
    let dev = &xs.device;
    let n = xl.shape().elem_count();
    let (rows, d32) = (u32_of(n / d, "rows")?, u32_of(d, "row length")?);
    let y = alloc(dev, n)?;
    let func = dev.get_or_load_custom_func("mae_softmax_fwd", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&y).arg(&rows).arg(&d32);
    // SAFETY: as in `layer_norm`.
    unsafe { launch.launch(rows_config(n / d)) }.w()?;
    Ok(wrap(y, dev, xl.shape().clone()))
}

/// Softmax's input gradient from its output `y` and the output gradient.
pub(crate) fn softmax_grad(
    (ys, yl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    d: usize,
) -> Result<(CudaStorage, Shape)> {
    let (y, g) = (view(ys, yl, "y")?, view(gs, gl, "grad")?);
    let dev = &ys.device;
    let n = yl.shape().elem_count();
    let (rows, d32) = (u32_of(n / d, "rows")?, u32_of(d, "row length")?);
    let dx = alloc(dev, n)?;
    let func = dev.get_or_load_custom_func("mae_softmax_bwd", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&y).arg(&g).arg(&dx).arg(&rows).arg(&d32);
    // SAFETY: as in `layer_norm`.
    unsafe { launch.launch(rows_config(n / d)) }.w()?;
    Ok(wrap(dx, dev, yl.shape().clone()))
}

/// The exact GELU.
pub(crate) fn gelu((xs, xl): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let x = view(xs, xl, "gelu")?;
    let dev = &xs.device;
    let n = xl.shape().elem_count();
    let y = alloc(dev, n)?;
    let n64 = n as u64;
    let func = dev.get_or_load_custom_func("mae_gelu_fwd", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&y).arg(&n64);
    // SAFETY: both buffers hold n values.
    unsafe { launch.launch(elements_config(n)) }.w()?;
    Ok(wrap(y, dev, xl.shape().clone()))
}

/// The exact GELU's input gradient.
pub(crate) fn gelu_grad(
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (x, g) = (view(xs, xl, "x")?, view(gs, gl, "grad")?);
    let dev = &xs.device;
    let n = xl.shape().elem_count();
    let dx = alloc(dev, n)?;
    let n64 = n as u64;
    let func = dev.get_or_load_custom_func("mae_gelu_bwd", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&x).arg(&g).arg(&dx).arg(&n64);
    // SAFETY: all three buffers hold n values.
    unsafe { launch.launch(elements_config(n)) }.w()?;
    Ok(wrap(dx, dev, xl.shape().clone()))
}

/// `y + bias` with the bias over the last dimension `d`.
pub(crate) fn add_bias(
    (ys, yl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    d: usize,
) -> Result<(CudaStorage, Shape)> {
    let (y, b) = (view(ys, yl, "y")?, view(bs, bl, "bias")?);
    let dev = &ys.device;
    let n = yl.shape().elem_count();
    let out = alloc(dev, n)?;
    let (n64, d32) = (n as u64, u32_of(d, "row length")?);
    let func = dev.get_or_load_custom_func("mae_add_bias", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&y).arg(&b).arg(&out).arg(&n64).arg(&d32);
    // SAFETY: y and out hold n values, b holds d.
    unsafe { launch.launch(elements_config(n)) }.w()?;
    Ok(wrap(out, dev, yl.shape().clone()))
}
