//! bf16 products with f32 accumulation on AVX512-BF16: `vdpbf16ps` adds, per f32 lane, the
//! products of one pair of bf16 values from each operand, so each instruction does 32
//! multiply-adds where an f32 FMA does 16.
//!
//! The layout follows from the instruction: both operands are packed as *pairs* of bf16 along
//! the inner dimension `k` in one u32 (the even `k` in the low half). The kernel broadcasts one
//! pair of A (row `i`) to all lanes and multiplies it with 32 columns of B (two vectors of 16
//! pairs), into a 12 x 32 tile of f32 accumulators (24 of the 32 vector registers).
//!
//! - **Packing converts.** The f32 operands become bf16 (round to nearest even) while they are
//!   packed: A as tiles of 12 rows (`[tile][pair][12]`, so the kernel's 12 broadcasts are
//!   constant offsets from one pointer), B as strips of 32 columns (`[strip][pair][32]`). An
//!   operand whose lines run along `k` (row-major A, the forward's `W^T`) converts a line at a
//!   time and is transposed into place through a buffer in L1 and a gather; one whose lines run
//!   across `k` (the weight gradient's `g^T`, the backward's `W` and `x`) converts two lines at a
//!   time, interleaved into pairs by a permute.
//! - **Blocking.** 128 pairs (256 of `k`) of a B strip are 16 KiB and stay in L1 while the
//!   kernel sweeps up to 8 row tiles of A; each task owns a block of 96 rows x 128 columns of
//!   the output, so every output value is summed by one task in one order: the same bits on any
//!   number of threads.
//! - **Edges.** Rows past `m` are zero pairs in the packed A and are not stored; columns past
//!   `n` are zero pairs in the packed B and are masked off the loads and stores of C; an odd `k`
//!   ends with a pair whose second value is zero.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::MatRef;

/// Rows of the output tile of the kernel.
const MR: usize = 12;
/// Columns of the output tile (two vectors of 16 f32).
const NR: usize = 32;
/// Pairs of `k` per block (the B strip in L1).
const KC_PAIRS: usize = 128;
/// Row tiles and column strips of one task.
const MC_TILES: usize = 8;
const NC_STRIPS: usize = 4;

/// Whether this CPU has what the kernel uses (AVX-512 F and BW, and BF16).
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// A pointer that may cross into rayon's tasks: each task writes its own tiles of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint tiles of the output (see `matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output at `offset` (a method, so that closures capture the Send wrapper, not the
    /// raw pointer inside it).
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `c = a b` (`c += a b` with `accumulate`), `a` `m x k`, `b` `k x n`, `c` rows `ldc` apart;
/// `m`, `n` and `k` are not zero (`product::matmul_into` answers those).
///
/// # Safety
/// The CPU must have the features of [`supported`], and the views and `c` must lie within their
/// buffers (checked by `product::matmul_into`).
pub unsafe fn matmul(c: &mut [f32], ldc: usize, a: MatRef, b: MatRef, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let pairs = k.div_ceil(2);
    let m_tiles = m.div_ceil(MR);
    let n_strips = n.div_ceil(NR);
    let pa = pack_a(a, m_tiles, pairs);
    let pb = pack_b(b, n_strips, pairs);
    let (m_blocks, n_blocks) = (m_tiles.div_ceil(MC_TILES), n_strips.div_ceil(NC_STRIPS));
    let out = OutPtr(c.as_mut_ptr());
    (0..m_blocks * n_blocks).into_par_iter().for_each(|task| {
        let (mb, nb) = (task / n_blocks, task % n_blocks);
        for kb in (0..pairs).step_by(KC_PAIRS) {
            let kp = KC_PAIRS.min(pairs - kb);
            for s in nb * NC_STRIPS..((nb + 1) * NC_STRIPS).min(n_strips) {
                let cols = NR.min(n - s * NR);
                let masks = (lane_mask(cols), lane_mask(cols.saturating_sub(16)));
                let bp = pb.as_ptr().add(s * pairs * NR + kb * NR);
                for t in mb * MC_TILES..((mb + 1) * MC_TILES).min(m_tiles) {
                    let rows = MR.min(m - t * MR);
                    let ap = pa.as_ptr().add(t * pairs * MR + kb * MR);
                    // SAFETY: tile (t, s) belongs to this task alone; the packed operands hold
                    // full tiles (zero padded) and the masks keep C's accesses inside it.
                    tile(ap, bp, kp, out.at(t * MR * ldc + s * NR), ldc, rows, masks, accumulate || kb > 0);
                }
            }
        }
    });
}

/// The lanes of a 16-lane vector that hold the first `count` values.
fn lane_mask(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as __mmask16
    }
}

/// The kernel: a 12 x 32 tile of C from `pairs` pairs of an A tile (pair `p` of row `r` at
/// `a[p * 12 + r]`: constant offsets from one pointer) and of a B strip (`b[p * 32 + j]`);
/// starts from C when `load`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: *const u32,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    (m0, m1): (__mmask16, __mmask16),
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if load {
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            row[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
            row[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
        }
    }
    let (mut a, mut b) = (a, b);
    for _ in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const _));
        for (r, row) in acc.iter_mut().enumerate() {
            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], pair, b0);
            row[1] = _mm512_dpbf16_ps(row[1], pair, b1);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        _mm512_mask_storeu_ps(c.add(r * ldc), m0, row[0]);
        _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, row[1]);
    }
}

/// Packs A as tiles of 12 rows, pair `p` of row `r` of tile `t` at `[(t * pairs + p) * 12 + r]`
/// (rows past `m` zero): the kernel reads a tile front to back.
unsafe fn pack_a(a: MatRef, tiles: usize, pairs: usize) -> Vec<u32> {
    let (m, k) = (a.rows, a.cols);
    let mut data = vec![0u32; tiles * pairs * MR];
    data.par_chunks_mut(pairs * MR).enumerate().for_each(|(t, dst)| {
        let rows = MR.min(m - t * MR);
        if a.cs == 1 {
            // Row-major: the tile's rows convert in memory order, then transpose into place.
            pairs_transposed(a.data.as_ptr().add(t * MR * a.rs), a.rs, rows, k, dst.as_mut_ptr(), MR);
        } else if a.rs == 1 {
            // Transposed (the weight gradient's g^T): lines 2p and 2p+1 of k hold the tile's
            // rows side by side, and interleave straight into pair p.
            for p in 0..pairs {
                let r0 = a.data.as_ptr().add(2 * p * a.cs + t * MR);
                let r1 = (2 * p + 1 < k).then(|| a.data.as_ptr().add((2 * p + 1) * a.cs + t * MR));
                interleave_pairs(r0, r1, rows, dst.as_mut_ptr().add(p * MR));
            }
        } else {
            for r in 0..rows {
                for p in 0..pairs {
                    let i = t * MR + r;
                    dst[p * MR + r] = scalar_pair(|kk| a.data[i * a.rs + kk * a.cs], 2 * p, k);
                }
            }
        }
    });
    data
}

/// Converts `lines` (at most 16) lines of `k` contiguous f32, line `l` at `src + l * stride`,
/// into pairs, and writes pair `p` of line `l` to `dst[p * dst_ps + l]`: a transpose, done a
/// block of 64 pairs at a time through a buffer in L1 and a gather per pair.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_transposed(
    src: *const f32,
    stride: usize,
    lines: usize,
    k: usize,
    dst: *mut u32,
    dst_ps: usize,
) {
    const BLOCK: usize = 64;
    let mut buf = [0u32; 16 * BLOCK];
    let index = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(BLOCK as i32),
    );
    let mask = lane_mask(lines);
    let pairs = k.div_ceil(2);
    for p0 in (0..pairs).step_by(BLOCK) {
        let count = BLOCK.min(pairs - p0);
        for l in 0..lines {
            convert_pairs(
                src.add(l * stride + 2 * p0),
                (2 * count).min(k - 2 * p0),
                buf.as_mut_ptr().add(l * BLOCK),
            );
        }
        for p in 0..count {
            let v = _mm512_mask_i32gather_epi32::<4>(
                _mm512_setzero_si512(),
                mask,
                index,
                buf.as_ptr().add(p) as *const i32,
            );
            _mm512_mask_storeu_epi32(dst.add((p0 + p) * dst_ps) as *mut i32, mask, v);
        }
    }
}

/// A packed B: strips of 32 columns, pair `p` of column `j` at
/// `[(j / 32) * pairs * 32 + p * 32 + j % 32]`, columns padded to whole strips.
unsafe fn pack_b(b: MatRef, strips: usize, pairs: usize) -> Vec<u32> {
    let (k, n) = (b.rows, b.cols);
    let mut data = vec![0u32; strips * pairs * NR];
    let strip_len = pairs * NR;
    if b.cs == 1 {
        // Rows of k contiguous (the backward's W and x): rows 2p and 2p+1 interleave.
        data.par_chunks_mut(strip_len).enumerate().for_each(|(s, dst)| {
            let cols = NR.min(n - s * NR);
            for p in 0..pairs {
                let r0 = b.data.as_ptr().add(2 * p * b.rs + s * NR);
                let r1 = (2 * p + 1 < k).then(|| b.data.as_ptr().add((2 * p + 1) * b.rs + s * NR));
                interleave_pairs(r0, r1, cols, dst.as_mut_ptr().add(p * NR));
            }
        });
    } else if b.rs == 1 {
        // Columns contiguous (the forward's W^T: a row of W per column): 16 columns at a
        // time convert and transpose into the strip.
        data.par_chunks_mut(strip_len).enumerate().for_each(|(s, dst)| {
            let cols = NR.min(n - s * NR);
            for half in 0..cols.div_ceil(16) {
                let lines = 16.min(cols - half * 16);
                let src = b.data.as_ptr().add((s * NR + half * 16) * b.cs);
                pairs_transposed(src, b.cs, lines, k, dst.as_mut_ptr().add(half * 16), NR);
            }
        });
    } else {
        for j in 0..n {
            for p in 0..pairs {
                data[(j / NR) * strip_len + p * NR + j % NR] =
                    scalar_pair(|kk| b.data[kk * b.rs + j * b.cs], 2 * p, k);
            }
        }
    }
    data
}

/// The pair of values `k0` and `k0 + 1` (zero past `k`) of a line read through `at`.
fn scalar_pair(at: impl Fn(usize) -> f32, k0: usize, k: usize) -> u32 {
    let lo = super::bf16_bits(at(k0));
    let hi = if k0 + 1 < k { super::bf16_bits(at(k0 + 1)) } else { 0 };
    u32::from(lo) | (u32::from(hi) << 16)
}

/// `len` contiguous f32 into `len.div_ceil(2)` pairs of bf16 (the last one zero padded).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert_pairs(src: *const f32, len: usize, dst: *mut u32) {
    let mut i = 0;
    while i < len {
        let left = len - i;
        let (m0, m1) = (lane_mask(left), lane_mask(left.saturating_sub(16)));
        let lo = _mm512_maskz_loadu_ps(m0, src.add(i));
        let hi = _mm512_maskz_loadu_ps(m1, src.add(i + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(dst.add(i / 2) as *mut i32, lane_mask(left.div_ceil(2)), v);
        i += 32;
    }
}

/// Pair `(r0[j], r1[j])` of bf16 for each of `len` columns (`r1` absent: zeros).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_pairs(r0: *const f32, r1: Option<*const f32>, len: usize, dst: *mut u32) {
    // Lanes 0-15 of the conversion hold r0's values, 16-31 r1's: take them alternately.
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    let mut j = 0;
    while j < len {
        let mask = lane_mask(len - j);
        let lo = _mm512_maskz_loadu_ps(mask, r0.add(j));
        let hi = match r1 {
            Some(r1) => _mm512_maskz_loadu_ps(mask, r1.add(j)),
            None => _mm512_setzero_ps(),
        };
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(dst.add(j) as *mut i32, mask, _mm512_permutexvar_epi16(order, v));
        j += 16;
    }
}
