//! The matrix products of the layers, behind one interface: `C (+)= A B` on f32 buffers with
//! any strides, in a [`Precision`] the caller asks for and by a [`Kernel`] this crate picks.
//!
//! - [`Precision::F32`]: the gemm crate in f32, what every product was before mixed precision.
//! - [`Precision::Bf16`]: mixed precision as GPU autocast does it, the operands rounded to bf16
//!   (round to nearest even) and the products accumulated in f32. The operands arrive in f32
//!   and are converted while they are packed for the kernel (the packing is there anyway), so
//!   no bf16 copy of an activation is ever kept. On a CPU with AVX512-BF16 the kernel is ours
//!   ([`avx512_bf16`], `vdpbf16ps`: two products a lane per instruction, twice the f32 FMA
//!   rate); elsewhere the product falls back to f32 (more precise, not faster).
//!
//! Which kernel runs is visible ([`bf16_kernel`], [`dispatch_counts`]) and forcible:
//! `MAE_PRODUCT=f32` makes bf16 products run the f32 kernel, `MAE_PRODUCT=avx512bf16` insists on
//! ours (a CPU without it gets a warning and f32), unset or `auto` takes the best the CPU has.
//! Every output value is summed by one task in a fixed order, so the results are the same bits
//! whatever the number of threads.

#[cfg(target_arch = "x86_64")]
pub mod avx512_bf16;
mod op;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

pub use op::matmul;

/// The arithmetic a product is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    /// bf16 operands, f32 accumulation and output.
    Bf16,
}

/// The code that computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The gemm crate in f32.
    F32,
    /// Ours, `vdpbf16ps` on AVX-512 (x86-64 CPUs with the `avx512_bf16` flag).
    Avx512Bf16,
}

impl Kernel {
    /// The name used in logs, `mae info`, `mae bench --json` and `MAE_PRODUCT`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::F32 => "f32",
            Kernel::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::F32 => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => avx512_bf16::supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 => false,
        }
    }
}

/// A read-only matrix view: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, as a view of the same values.
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Whether every element the view names lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// The kernel bf16 products take on this machine: `MAE_PRODUCT` (read once), else the best the
/// CPU has.
pub fn bf16_kernel() -> Kernel {
    static CHOSEN: OnceLock<Kernel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = if Kernel::Avx512Bf16.available() { Kernel::Avx512Bf16 } else { Kernel::F32 };
        match std::env::var("MAE_PRODUCT").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Ok("f32") => Kernel::F32,
            Ok("avx512bf16") if !Kernel::Avx512Bf16.available() => {
                eprintln!(
                    "warning: MAE_PRODUCT=avx512bf16, but this CPU has no AVX512-BF16: bf16 \
                     products run in f32"
                );
                Kernel::F32
            }
            Ok("avx512bf16") | Ok("auto") | Ok("") | Err(_) => best,
            Ok(other) => {
                eprintln!("warning: MAE_PRODUCT={other} is not one of f32, avx512bf16, auto: using auto");
                best
            }
        }
    })
}

/// The kernel a product of `precision` runs.
pub fn kernel_for(precision: Precision) -> Kernel {
    match precision {
        Precision::F32 => Kernel::F32,
        Precision::Bf16 => bf16_kernel(),
    }
}

static F32_CALLS: AtomicU64 = AtomicU64::new(0);
static AVX512_BF16_CALLS: AtomicU64 = AtomicU64::new(0);

/// Products run so far by each kernel in this process: the tests read it to know which kernel
/// really ran (a fallback must not pass for the fast path).
pub fn dispatch_counts() -> Vec<(Kernel, u64)> {
    vec![(Kernel::F32, F32_CALLS.load(Relaxed)), (Kernel::Avx512Bf16, AVX512_BF16_CALLS.load(Relaxed))]
}

/// `c = a b` (or `c += a b` with `accumulate`) for `a` `m x k`, `b` `k x n` and `c` `m x n`
/// with rows `ldc` apart, in `precision`; returns the kernel that ran.
pub fn matmul_into(
    c: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    precision: Precision,
) -> candle_core::Result<Kernel> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        candle_core::bail!("product: [{m}x{k}] times [{}x{n}]", b.rows)
    }
    if !a.in_bounds() || !b.in_bounds() || (m > 0 && n > 0 && (ldc < n || (m - 1) * ldc + n > c.len())) {
        candle_core::bail!("product: a view outside its buffer ([{m}x{k}] x [{k}x{n}], ldc {ldc})")
    }
    let kernel = kernel_for(precision);
    if m == 0 || n == 0 {
        return Ok(kernel);
    }
    if k == 0 {
        // An empty sum: zeros, or C as it is.
        if !accumulate {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
        }
        return Ok(kernel);
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => {
            AVX512_BF16_CALLS.fetch_add(1, Relaxed);
            // SAFETY: the CPU has the features (kernel_for only picks an available kernel) and
            // the views were checked against their buffers above.
            unsafe { avx512_bf16::matmul(c, ldc, a, b, accumulate) }
        }
        _ => {
            F32_CALLS.fetch_add(1, Relaxed);
            gemm_f32(c, ldc, a, b, accumulate);
        }
    }
    Ok(kernel)
}

/// The f32 product on the gemm crate, on rayon's pool (`m`, `n` and `k` not zero).
fn gemm_f32(c: &mut [f32], ldc: usize, a: MatRef, b: MatRef, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the views and c were checked against their buffers by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32: what the bf16 kernels multiply. NaN
/// stays NaN. The vector conversion of AVX512-BF16 (`vcvtne2ps2bf16`) gives the same values for
/// every normal and zero input (it flushes subnormal inputs to zero).
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The bits of `x` rounded to the nearest bf16 (ties to even).
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16; // quiet NaN, sign kept
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}
