//! Vectorised reductions over one row of logits, the inner loops of the proposals: the maximum,
//! sums of exponentials, the greedy `(argmax, probability)`.
//!
//! Each function checks at run time for AVX2 + FMA (x86_64) and otherwise runs portable code
//! written in 8 independent lanes, which the compiler vectorises on any target. Exponentials are
//! evaluated in f32 by [`exp_nonpositive`] (relative error below 2e-7, tested) and summed in f32
//! lanes over at most [`BLOCK`] logits, the blocks in f64.

/// Logits per block: 4 KB, which stays in the L1 cache between a block's maximum and its sum.
pub const BLOCK: usize = 1024;

/// `exp(x)` for `x <= 0` in f32: mdm-kernels' vectorisable exponential (`2^n e^g`, degree-7
/// Taylor polynomial, relative error below 3e-7); inputs below -87 give the smallest normal number
/// (about 1e-38) instead of 0; NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    mdm_kernels::cpu::vector::exp(x)
}

use mdm_kernels::cpu::vector::{LN2_HI, LN2_LO};

/// The maximum of `block` (`-inf` when empty), or NaN when it holds a NaN.
pub fn max(block: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::max(block) };
    }
    portable::max(block)
}

/// `sum exp((x - reference) * scale)` over `block`, for `reference >= max(block)` and `scale > 0`
/// (every exponent <= 0); NaN when the block holds a NaN.
pub fn exp_sum(block: &[f32], reference: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::exp_sum(block, reference, scale) };
    }
    portable::exp_sum(block, reference, scale)
}

/// `(sum e, sum e d)` over `block` with `d = x - reference` clamped below at -87 (so `-inf` entries
/// add nothing) and `e = exp(d)`, for `reference >= max(block)`; NaN when the block holds a NaN.
/// Over a row, with `S = sum e`: the entropy term `sum p ln p = (sum e d) / S - ln S`.
pub fn entropy_sums(block: &[f32], reference: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::entropy_sums(block, reference) };
    }
    portable::entropy_sums(block, reference)
}

/// `(first index of the maximum, its softmax probability 1 / sum exp(x - max))` of one row, in one
/// pass over blocks (a block's maximum, then its exponentials while it is in the L1 cache, the
/// running sum rescaled when the maximum grows). Blocks of `-inf` only contribute nothing; a NaN
/// anywhere gives a NaN probability, as a row of `-inf` only or with `+inf` does.
pub fn greedy_row(row: &[f32]) -> (usize, f64) {
    let (mut best, mut best_block, mut total) = (f32::NEG_INFINITY, 0, 0.0f64);
    for (b, block) in row.chunks(BLOCK).enumerate() {
        let m = max(block);
        if m.is_nan() {
            return (b * BLOCK, f64::NAN);
        }
        if m > best {
            // rescale what was summed against the old maximum (exp(-inf) = 0 at first)
            total = total * f64::from(best - m).exp() + exp_sum(block, m, 1.0);
            (best, best_block) = (m, b * BLOCK);
        } else if m > f32::NEG_INFINITY {
            total += exp_sum(block, best, 1.0);
        }
    }
    (first_index(row, best_block, best), 1.0 / total)
}

/// The first index at or after `from` that holds `value` (`from` when there is none).
pub fn first_index(row: &[f32], from: usize, value: f32) -> usize {
    from + row[from..].iter().position(|&x| x == value).unwrap_or(0)
}

/// `f(i, row_i)` for every row of `logits` (`rows x vocab`, row-major), the rows split over
/// rayon's threads (the pool burn-flex's kernels use) once there are a million logits or more.
pub fn map_rows<T: Send>(
    logits: &[f32],
    vocab: usize,
    f: impl Fn(usize, &[f32]) -> T + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    if logits.len() >= 1 << 20 {
        logits
            .par_chunks_exact(vocab)
            .enumerate()
            .with_min_len(8)
            .map(|(i, row)| f(i, row))
            .collect()
    } else {
        logits
            .chunks_exact(vocab)
            .enumerate()
            .map(|(i, row)| f(i, row))
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
use mdm_kernels::cpu::vector::has_avx2_fma;

/// Portable code in 8 independent lanes.
pub mod portable {
    use super::exp_nonpositive;

    /// See [`super::max`].
    pub fn max(block: &[f32]) -> f32 {
        let (mut lanes, mut nan) = ([f32::NEG_INFINITY; 8], [false; 8]);
        let mut eights = block.chunks_exact(8);
        for c in &mut eights {
            for ((lane, nan), &x) in lanes.iter_mut().zip(&mut nan).zip(c) {
                *lane = if x > *lane { x } else { *lane };
                *nan |= x.is_nan();
            }
        }
        let rest = eights.remainder();
        if nan.iter().any(|&n| n) || rest.iter().any(|x| x.is_nan()) {
            return f32::NAN;
        }
        let m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        rest.iter().fold(m, |a, &b| a.max(b))
    }

    /// See [`super::exp_sum`].
    pub fn exp_sum(block: &[f32], reference: f32, scale: f32) -> f64 {
        let mut lanes = [0.0f32; 8];
        let mut eights = block.chunks_exact(8);
        for c in &mut eights {
            for (lane, &x) in lanes.iter_mut().zip(c) {
                *lane += exp_nonpositive((x - reference) * scale);
            }
        }
        let rest: f64 = eights
            .remainder()
            .iter()
            .map(|&x| f64::from(exp_nonpositive((x - reference) * scale)))
            .sum();
        lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + rest
    }

    /// `x - reference` clamped below at -87 (NaN stays NaN).
    #[inline(always)]
    fn exponent(x: f32, reference: f32) -> f32 {
        let d = x - reference;
        if d < -87.0 {
            -87.0
        } else {
            d
        }
    }

    /// See [`super::entropy_sums`].
    pub fn entropy_sums(block: &[f32], reference: f32) -> (f64, f64) {
        let (mut sums, mut weighted) = ([0.0f32; 8], [0.0f32; 8]);
        let mut eights = block.chunks_exact(8);
        for c in &mut eights {
            for ((s, w), &x) in sums.iter_mut().zip(&mut weighted).zip(c) {
                let d = exponent(x, reference);
                let e = exp_nonpositive(d);
                *s += e;
                *w += e * d;
            }
        }
        let (mut total, mut total_weighted) = (0.0f64, 0.0f64);
        for &x in eights.remainder() {
            let d = exponent(x, reference);
            let e = exp_nonpositive(d);
            total += f64::from(e);
            total_weighted += f64::from(e * d);
        }
        let sum = |lanes: [f32; 8]| lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
        (total + sum(sums), total_weighted + sum(weighted))
    }
}

/// AVX2 + FMA: 16 logits per iteration in two accumulators.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(block: &[f32]) -> f32 {
        let (ptr, len) = (block.as_ptr(), block.len());
        let mut m0 = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut m1 = m0;
        let mut nan = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 <= len, so both 8-lane loads are inside the block
            let (a, b) = unsafe { (_mm256_loadu_ps(ptr.add(i)), _mm256_loadu_ps(ptr.add(i + 8))) };
            m0 = _mm256_max_ps(m0, a);
            m1 = _mm256_max_ps(m1, b);
            // unordered comparison: all ones in a lane where a or b is NaN
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b));
            i += 16;
        }
        if _mm256_movemask_ps(nan) != 0 {
            return f32::NAN;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m0, m1)) };
        let m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let rest = &block[i..];
        if rest.iter().any(|x| x.is_nan()) {
            return f32::NAN;
        }
        rest.iter().fold(m, |a, &b| a.max(b))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(block: &[f32], reference: f32, scale: f32) -> f64 {
        let (ptr, len) = (block.as_ptr(), block.len());
        let (r, k) = (_mm256_set1_ps(reference), _mm256_set1_ps(scale));
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 <= len, so both 8-lane loads are inside the block
            let (a, b) = unsafe { (_mm256_loadu_ps(ptr.add(i)), _mm256_loadu_ps(ptr.add(i + 8))) };
            s0 = _mm256_add_ps(s0, exp8(_mm256_mul_ps(_mm256_sub_ps(a, r), k)));
            s1 = _mm256_add_ps(s1, exp8(_mm256_mul_ps(_mm256_sub_ps(b, r), k)));
            i += 16;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(s0, s1)) };
        let total: f64 = lanes.iter().map(|&x| f64::from(x)).sum();
        total + super::portable::exp_sum(&block[i..], reference, scale)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn entropy_sums(block: &[f32], reference: f32) -> (f64, f64) {
        let (ptr, len) = (block.as_ptr(), block.len());
        let (r, floor) = (_mm256_set1_ps(reference), _mm256_set1_ps(-87.0));
        let (mut s, mut w) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 8 <= len {
            // SAFETY: i + 8 <= len, so the 8-lane load is inside the block
            let a = unsafe { _mm256_loadu_ps(ptr.add(i)) };
            // max(floor, d) returns d when d is NaN
            let d = _mm256_max_ps(floor, _mm256_sub_ps(a, r));
            let e = exp8(d);
            s = _mm256_add_ps(s, e);
            w = _mm256_fmadd_ps(e, d, w);
            i += 8;
        }
        let (mut sums, mut weighted) = ([0f32; 8], [0f32; 8]);
        // SAFETY: both arrays hold 8 floats
        unsafe {
            _mm256_storeu_ps(sums.as_mut_ptr(), s);
            _mm256_storeu_ps(weighted.as_mut_ptr(), w);
        }
        let (rest, rest_weighted) = super::portable::entropy_sums(&block[i..], reference);
        let sum = |lanes: [f32; 8]| lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
        (sum(sums) + rest, sum(weighted) + rest_weighted)
    }

    /// [`exp_nonpositive`](super::exp_nonpositive) on 8 lanes: the same reduction and polynomial,
    /// with fused multiply-adds.
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        // max(c, x) returns x when x is NaN, so NaN propagates
        let x = _mm256_max_ps(_mm256_set1_ps(-87.0), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let g = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let g = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), g);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(c));
        }
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((((i + seed) * 7919) % 10_007) as f32 / 531.0).sin() * 9.0)
            .collect()
    }

    #[test]
    fn exponential_is_accurate_over_its_range() {
        for i in 0..=100_000 {
            let x = -(i as f32) * 0.00087;
            let exact = f64::from(x).exp();
            let approx = f64::from(exp_nonpositive(x));
            assert!(
                (approx - exact).abs() <= 2e-7 * exact,
                "{x}: {approx} vs {exact}"
            );
        }
        assert!(exp_nonpositive(-1000.0) < 1e-37);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn dispatched_and_portable_reductions_agree_with_f64() {
        // lengths around the 16-lane loop and the block size, and NaN in either part
        for len in [1, 7, 15, 16, 17, 100, 1023, 1024, 1025, 3001] {
            let x = row(len, len);
            let exact_max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(max(&x), exact_max);
            assert_eq!(portable::max(&x), exact_max);
            for scale in [1.0f32, 1.0 / 0.7] {
                let exact: f64 = x
                    .iter()
                    .map(|&v| (f64::from(v - exact_max) * f64::from(scale)).exp())
                    .sum();
                for got in [
                    exp_sum(&x, exact_max, scale),
                    portable::exp_sum(&x, exact_max, scale),
                ] {
                    assert!(
                        (got - exact).abs() <= 1e-6 * exact,
                        "{len} {scale}: {got} {exact}"
                    );
                }
            }
            let exact_sum: f64 = x.iter().map(|&v| f64::from(v - exact_max).exp()).sum();
            let exact: f64 = x
                .iter()
                .map(|&v| f64::from(v - exact_max))
                .map(|d| d.exp() * d)
                .sum();
            for (sum, weighted) in [
                entropy_sums(&x, exact_max),
                portable::entropy_sums(&x, exact_max),
            ] {
                assert!((sum - exact_sum).abs() <= 1e-6 * exact_sum, "{len}: {sum}");
                let tolerance = 1e-6 * exact.abs().max(1e-3);
                assert!(
                    (weighted - exact).abs() <= tolerance,
                    "{len}: {weighted} {exact}"
                );
            }
            for at in [0, len / 2, len - 1] {
                let mut y = x.clone();
                y[at] = f32::NAN;
                assert!(max(&y).is_nan() && portable::max(&y).is_nan(), "{len} {at}");
                assert!(exp_sum(&y, exact_max, 1.0).is_nan());
                let (sum, weighted) = entropy_sums(&y, exact_max);
                assert!(sum.is_nan() && weighted.is_nan());
                y[at] = f32::NEG_INFINITY;
                let (sum, weighted) = entropy_sums(&y, exact_max);
                assert!(sum.is_finite() && weighted.is_finite() && weighted <= 0.0);
            }
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
