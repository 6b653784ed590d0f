//! Elementwise math written as plain, branch-free arithmetic, so that the compiler vectorizes the
//! loops that call it (`f32::exp` and libm's `erff` are a function call per value: the scalar
//! `erff` alone was 7-9% of a CPU training step of the tiny preset on an AMD EPYC).

use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E};

/// Runs `f` with the loops inside it compiled for the widest vectors the CPU has: AVX-512 (16 f32
/// lanes), AVX2 (8), or as built (SSE2's 4: the x86-64 baseline this crate is compiled for).
/// Plain arithmetic is never contracted into fused multiply-adds and float sums are never
/// reordered, so every path gives bit-identical results; only the vector width differs.
/// `MAE_SIMD=avx2` or `MAE_SIMD=baseline` (read once) caps the width, to compare.
///
/// Only code inlined into `f` gets the wider vectors: a closure or function that stays a call
/// is compiled for the baseline. So the closures given to `wide` and the kernels they call are
/// `#[inline(always)]` (without it the GELU loops ran on SSE's 4 lanes).
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    at_width(simd_width(), f)
}

/// Runs `f` compiled for `width` if the CPU has it, else as built.
#[inline(always)]
pub fn at_width<R>(width: Width, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if width == Width::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(f) };
        }
        if width != Width::Baseline && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(f) };
        }
    }
    let _ = width;
    f()
}

/// The vector width [`wide`] compiles its loops for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Avx512,
    Avx2,
    Baseline,
}

/// The widest vectors this CPU has, capped by `MAE_SIMD` (`avx2`, `baseline`); decided once.
pub fn simd_width() -> Width {
    static WIDTH: std::sync::OnceLock<Width> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| {
        let cap = std::env::var("MAE_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if cap != "avx2" && cap != "baseline" && std::arch::is_x86_feature_detected!("avx512f") {
                return Width::Avx512;
            }
            if cap != "baseline" && std::arch::is_x86_feature_detected!("avx2") {
                return Width::Avx2;
            }
        }
        let _ = cap;
        Width::Baseline
    })
}

/// `e^x` for `x <= 0` (Cephes' `expf`: `2^n * e^r` with `|r| <= ln2 / 2` and a degree-6
/// polynomial, within 2 ulp of `f32::exp`). Below -87 the result would leave the normal floats
/// and is flushed to `e^-87` (1.6e-38); NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    // n = round(x / ln 2) by the 1.5 * 2^23 trick (float addition rounds to an integer).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4; // x - n ln2, ln2 in two parts
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    // 2^n from its exponent bits; n is in [-126, 0], a normal float. `shifted` lies in
    // [2^23, 2^24), where one unit of the last place is 1, so its bits are ROUND's plus n: the
    // integer n without a float-to-int conversion (`n as i32` saturates, which LLVM cannot
    // vectorize: it went lane by lane through scalar registers, most of the GELU's time).
    // A NaN x gives NaN through `e_r` whatever these bits are.
    const ROUND_BITS_MINUS_BIAS: u32 = 0x4B40_0000 - 127;
    e_r * f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS_MINUS_BIAS) << 23)
}

/// `erfc(z) / 2` for `z >= 0`: the Chebyshev fit of Numerical Recipes (`erfcc`), relative error
/// below 1.2e-7 everywhere, so the small tail values keep their precision too.
#[inline(always)]
fn half_erfc_nonnegative(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    0.5 * t * exp_nonpositive(-z * z + poly)
}

/// The standard normal CDF `Phi(x) = (1 + erf(x / sqrt 2)) / 2`: relative error below 3e-6
/// down to x = -5 (about 1e-7 near 0, growing as x^2 ulp through the rounding of x^2), and
/// absolute error below 1e-12 in the far tail, as the exact GELU needs it.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let tail = half_erfc_nonnegative(x.abs() * FRAC_1_SQRT_2);
    if x >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The standard normal density `phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`.
#[inline(always)]
pub fn normal_pdf(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    INV_SQRT_2PI * exp_nonpositive(-0.5 * x * x)
}

/// Eight partial sums, lane `k` taking the values at `k, k + 8, k + 16, ...`, added in one fixed
/// order at the end. One f64 accumulator is a chain of dependent adds (one per 4 cycles, the
/// LayerNorm statistics' whole cost on a 192-wide row); eight independent ones vectorize. The
/// order is written out, so every vector width gives the same bits.
const LANES: usize = 8;

#[inline(always)]
fn finish(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `sum f(a[i])` in f64, in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn lane_sum(a: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += f(c[k]);
        }
    }
    for (k, &v) in rest.iter().enumerate() {
        acc[k] += f(v);
    }
    finish(acc)
}

/// `sum f(a[i], b[i])` in f64 over the shorter length, in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += f(x[k], y[k]);
        }
    }
    for (k, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[k] += f(x, y);
    }
    finish(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Phi` in f64 through erfc (1 + erf would cancel to 0 in the far negative tail).
    fn cdf_f64(x: f64) -> f64 {
        0.5 * candle_core::cpu::erf::erfc_f64(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn normal_cdf_and_pdf_are_accurate_in_both_tails() {
        let (mut worst_cdf, mut worst_pdf) = (0f64, 0f64);
        for i in -12_000..=12_000 {
            let x = i as f32 * 1e-3;
            let want = cdf_f64(x as f64);
            let got = normal_cdf(x) as f64;
            // Relative down to x = -5 (Phi = 2.9e-7; the error grows as x^2 ulp through the
            // rounding of z^2), absolute beyond, where x * Phi(x) is below 1e-5 and f32's own
            // 1 + erf has long cancelled to 0.
            let err = (got - want).abs();
            worst_cdf = worst_cdf.max(if x >= -5.0 { err / want.min(1.0) } else { err * 1e6 });
            let pdf = (-(x as f64).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            if x.abs() <= 5.0 {
                worst_pdf = worst_pdf.max((normal_pdf(x) as f64 - pdf).abs() / pdf);
            }
        }
        // (f32's own `0.5 * (1 + erff(x / sqrt 2))`, what PyTorch computes, is off by 20% at x = -5.)
        assert!(worst_cdf < 3e-6, "normal_cdf relative error {worst_cdf:e}");
        assert!(worst_pdf < 3e-6, "normal_pdf relative error {worst_pdf:e}");
        // A sign flip or a swapped tail is far outside that.
        assert!((normal_cdf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
        assert!(normal_cdf(-40.0) >= 0.0 && normal_cdf(40.0) == 1.0);
        assert!(normal_cdf(f32::NAN).is_nan());
    }

    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 3e-4).collect();
        let run = |width| {
            at_width(width, || {
                let mut out = vec![0f32; xs.len() * 2];
                for (o, &x) in out.chunks_mut(2).zip(&xs) {
                    o[0] = x * normal_cdf(x);
                    o[1] = normal_cdf(x) + x * normal_pdf(x);
                }
                out.into_iter().map(f32::to_bits).collect::<Vec<_>>()
            })
        };
        let baseline = run(Width::Baseline);
        assert_eq!(run(Width::Avx2), baseline);
        assert_eq!(run(Width::Avx512), baseline);
    }

    #[test]
    fn lane_sums_are_sums_and_the_same_bits_at_every_width() {
        for n in [0, 1, 7, 8, 9, 191, 192, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let b: Vec<f32> = (0..n + 3).map(|i| (i % 13) as f32 * 0.7 - 2.0).collect();
            let plain: f64 = a.iter().map(|&v| v as f64 * v as f64).sum();
            let plain2: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let run = |width| {
                at_width(width, || {
                    let s = lane_sum(&a, |v| v as f64 * v as f64);
                    // b is longer: the shorter length counts.
                    let s2 = lane_sum2(&a, &b, |x, y| x as f64 * y as f64);
                    (s.to_bits(), s2.to_bits())
                })
            };
            let (s, s2) = run(Width::Baseline);
            assert!((f64::from_bits(s) - plain).abs() <= 1e-12 * plain.abs().max(1.0), "n = {n}");
            assert!((f64::from_bits(s2) - plain2).abs() <= 1e-12 * plain2.abs().max(1.0), "n = {n}");
            assert_eq!(run(Width::Avx2), (s, s2), "n = {n}");
            assert_eq!(run(Width::Avx512), (s, s2), "n = {n}");
        }
    }

    #[test]
    fn the_exp_is_within_two_ulp() {
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 2.5e-7, "e^{x}: {got} against {want}");
        }
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), exp_nonpositive(-87.0));
    }

    /// The exponent bits taken from the rounding constant give the same 2^n as converting n
    /// to an integer (the plain form, which does not vectorize), on every f32 in [-88, 0].
    #[test]
    fn two_to_the_n_from_bits_matches_the_integer_conversion() {
        let plain = |x: f32| {
            let x = if x < -87.0 { -87.0 } else { x };
            const ROUND: f32 = 12_582_912.0;
            let n = (x * LOG2_E + ROUND) - ROUND;
            f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let from_bits = |x: f32| {
            let x = if x < -87.0 { -87.0 } else { x };
            let shifted = x * LOG2_E + 12_582_912.0;
            f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
        };
        // Every float from -0.0 down to -88.0: walk the bit patterns.
        let (mut bits, last) = ((-0.0f32).to_bits(), (-88.0f32).to_bits());
        let mut checked = 0u64;
        while bits <= last {
            let x = f32::from_bits(bits);
            assert_eq!(from_bits(x).to_bits(), plain(x).to_bits(), "2^n at x = {x:e}");
            bits += 1;
            checked += 1;
        }
        assert!(checked > 1_000_000_000);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }
}
