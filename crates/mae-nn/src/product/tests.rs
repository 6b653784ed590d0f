//! The bf16 kernel against an f32 reference computed from the same bf16-rounded operands (so the
//! only difference is the order of the f32 additions), on odd shapes and every operand layout
//! the layers use, and its bits on one and two threads.
//!
//! These tests need a CPU with AVX512-BF16. Without one they print why and check nothing: that
//! is reported as a skip, not a pass, and `MAE_REQUIRE_BF16=1` (which `cargo xtask ci` sets
//! where /proc/cpuinfo lists `avx512_bf16`) turns it into a failure, so a detection bug cannot
//! hide the kernel.

use super::*;
use crate::test_support::{on_threads, values};

/// Whether the AVX512-BF16 kernel can run here; says why not when it cannot.
fn bf16_kernel_here(test: &str) -> bool {
    if Kernel::Avx512Bf16.available() && bf16_kernel() == Kernel::Avx512Bf16 {
        return true;
    }
    let why = if Kernel::Avx512Bf16.available() {
        "MAE_PRODUCT forces another kernel"
    } else {
        "this CPU has no AVX512-BF16"
    };
    assert!(std::env::var("MAE_REQUIRE_BF16").is_err(), "{test}: MAE_REQUIRE_BF16 is set, but {why}");
    eprintln!("SKIPPED {test}: {why}");
    false
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    values(&[len], seed, 1.0).and_then(|t| t.to_vec1::<f32>()).expect("test values")
}

/// `a b` in f64 from the bf16-rounded operands, rounded to f32 at the end.
fn reference(a: MatRef, b: MatRef, init: Option<&[f32]>, ldc: usize) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut c = vec![0f32; m * ldc];
    for i in 0..m {
        for j in 0..n {
            let mut sum = init.map_or(0.0, |c0| f64::from(c0[i * ldc + j]));
            for kk in 0..k {
                let x = round_to_bf16(a.data[i * a.rs + kk * a.cs]);
                let y = round_to_bf16(b.data[kk * b.rs + j * b.cs]);
                sum += f64::from(x) * f64::from(y);
            }
            c[i * ldc + j] = sum as f32;
        }
    }
    c
}

/// Runs one product of the given layouts (`a_t`/`b_t`: the operand is a transposed view) and
/// checks it against the reference; returns the output's bits.
fn run(m: usize, k: usize, n: usize, a_t: bool, b_t: bool, accumulate: bool) -> Vec<u32> {
    let (ad, bd) = (data(m * k, (m * 31 + k) as u64), data(k * n, (k * 17 + n) as u64));
    let a = if a_t { MatRef::row_major(&ad, k, m).t() } else { MatRef::row_major(&ad, m, k) };
    let b = if b_t { MatRef::row_major(&bd, n, k).t() } else { MatRef::row_major(&bd, k, n) };
    let ldc = n + 3; // rows of C apart by more than n: the stores must stay in their row
    let init = data(m * ldc, 7);
    let mut c = if accumulate { init.clone() } else { vec![f32::NAN; m * ldc] };
    let before = dispatch_counts();
    let ran = matmul_into(&mut c, ldc, a, b, accumulate, Precision::Bf16).expect("product");
    assert_eq!(ran, Kernel::Avx512Bf16);
    let after = dispatch_counts();
    assert!(after[1].1 > before[1].1, "the AVX512-BF16 dispatch counter did not move");
    let want = reference(a, b, accumulate.then_some(&init[..]), ldc);
    for i in 0..m {
        for j in 0..ldc {
            let (got, want) = (c[i * ldc + j], want[i * ldc + j]);
            if j >= n {
                // Past the row's n values: untouched.
                let untouched = if accumulate { init[i * ldc + j] } else { f32::NAN };
                assert!(got.to_bits() == untouched.to_bits(), "[{m}x{k}x{n}] wrote past column {n}");
                continue;
            }
            // f32 sums of k products of bf16 values in another order than f64's: within a few
            // ulps of the sum of magnitudes.
            let tol = 4.0 * f32::EPSILON * (k as f32 + 2.0) * 2.0;
            assert!(
                (got - want).abs() <= tol,
                "[{m}x{k}x{n}] a_t {a_t} b_t {b_t} acc {accumulate}: ({i}, {j}) {got} vs {want}"
            );
        }
    }
    c.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn bf16_products_match_the_rounded_reference_on_odd_shapes() {
    if !bf16_kernel_here("bf16_products_match_the_rounded_reference_on_odd_shapes") {
        return;
    }
    // One row, k odd and not a multiple of 32, n not a multiple of 16, several tiles and blocks
    // (k past one 256-wide block, m past one 96-row block, n past one 128-column block).
    let shapes =
        [(1, 1, 1), (1, 7, 5), (3, 33, 17), (13, 64, 31), (25, 300, 40), (100, 19, 130), (97, 513, 33)];
    for (m, k, n) in shapes {
        for (a_t, b_t) in [(false, true), (false, false), (true, false), (true, true)] {
            for accumulate in [false, true] {
                run(m, k, n, a_t, b_t, accumulate);
            }
        }
    }
}

#[test]
fn bf16_products_are_the_same_bits_on_one_and_two_threads() {
    if !bf16_kernel_here("bf16_products_are_the_same_bits_on_one_and_two_threads") {
        return;
    }
    for (a_t, b_t) in [(false, true), (false, false), (true, false)] {
        let one = on_threads(1, || run(200, 300, 260, a_t, b_t, true));
        let two = on_threads(2, || run(200, 300, 260, a_t, b_t, true));
        let again = on_threads(2, || run(200, 300, 260, a_t, b_t, true));
        assert_eq!(one, two);
        assert_eq!(two, again);
    }
}

#[test]
fn the_vector_conversion_rounds_as_the_scalar_one() {
    if !bf16_kernel_here("the_vector_conversion_rounds_as_the_scalar_one") {
        return;
    }
    // Ties (both ways), values just off them, large and negative ones, zeros: a [1 x k] x [k x 1]
    // product with a one in the second operand picks out each value of the first, rounded.
    let specials = [
        1.0f32,
        f32::from_bits(0x3f80_8000), // a tie: rounds down to even
        f32::from_bits(0x3f81_8000), // a tie: rounds up to even
        f32::from_bits(0x3f80_8001),
        -f32::from_bits(0x3f81_7fff),
        3.0e38,
        -0.0,
        0.0,
    ];
    for (idx, &x) in specials.iter().enumerate() {
        let mut b = vec![0f32; specials.len()];
        b[idx] = 1.0;
        let mut c = [0f32];
        let a = MatRef::row_major(&specials, 1, specials.len());
        matmul_into(&mut c, 1, a, MatRef::row_major(&b, specials.len(), 1), false, Precision::Bf16)
            .expect("product");
        assert_eq!(c[0].to_bits() & 0x7fff_ffff, round_to_bf16(x).to_bits() & 0x7fff_ffff, "{x:e}");
    }
}

#[test]
fn f32_products_run_the_f32_kernel() {
    let (a, b) = (data(6 * 5, 1), data(5 * 4, 2));
    let mut c = vec![0f32; 24];
    let before = dispatch_counts()[0].1;
    let ran = matmul_into(
        &mut c,
        4,
        MatRef::row_major(&a, 6, 5),
        MatRef::row_major(&b, 5, 4),
        false,
        Precision::F32,
    )
    .expect("product");
    assert_eq!(ran, Kernel::F32);
    assert!(dispatch_counts()[0].1 > before);
    let want = (0..5).map(|kk| a[kk] * b[kk * 4]).sum::<f32>();
    assert!((c[0] - want).abs() < 1e-5);
}

#[test]
fn views_outside_their_buffers_are_errors() {
    let (a, b) = (vec![0f32; 10], vec![0f32; 12]);
    let mut c = vec![0f32; 8];
    let bad = MatRef { data: &a, rows: 4, cols: 3, rs: 3, cs: 1 };
    let err = matmul_into(&mut c, 2, bad, MatRef::row_major(&b, 3, 2), false, Precision::Bf16);
    assert!(err.is_err(), "a 4x3 view of 10 values");
    let err = matmul_into(
        &mut c,
        2,
        MatRef::row_major(&a, 2, 5),
        MatRef::row_major(&b, 3, 4),
        false,
        Precision::F32,
    );
    assert!(err.unwrap_err().to_string().contains("product"));
}

#[test]
fn round_to_bf16_rounds_ties_to_even_and_keeps_nan() {
    assert_eq!(round_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80_0000);
    assert_eq!(round_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82_0000);
    assert_eq!(round_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81_0000);
    assert!(round_to_bf16(f32::NAN).is_nan());
    assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY, "past bf16's largest finite value");
}

#[test]
fn empty_products_are_zeros_or_leave_c_as_it_is() {
    for precision in [Precision::F32, Precision::Bf16] {
        let (a, b) = (vec![0f32; 0], vec![0f32; 0]);
        let mut c = vec![5f32; 6];
        let (a0, b0) = (MatRef::row_major(&a, 2, 0), MatRef::row_major(&b, 0, 3));
        matmul_into(&mut c, 3, a0, b0, true, precision).expect("product");
        assert_eq!(c, vec![5.0; 6], "k = 0, accumulate: C unchanged");
        matmul_into(&mut c, 3, a0, b0, false, precision).expect("product");
        assert_eq!(c, vec![0.0; 6], "k = 0: zeros");
        let mut none: Vec<f32> = Vec::new();
        let (a1, b1) = (MatRef::row_major(&a, 0, 4), MatRef::row_major(&[1f32; 8], 4, 2));
        matmul_into(&mut none, 2, a1, b1, false, precision).expect("m = 0: nothing to do");
    }
}
