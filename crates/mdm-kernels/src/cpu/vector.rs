//! Vectorised element-wise loops over `f32` slices: the exponential, softmax rows, the sigmoid.
//!
//! burn-flex 0.21 evaluates `exp` one element at a time on one thread (7 ns per element here, where
//! a contiguous multiply costs 0.3 ns: docs/benchmarks.md), and softmax, SiLU and the
//! cross-entropy's log-sum-exp all pay it forward and backward. Each loop here is written once, in
//! 8 independent lanes, and compiled twice: for AVX2 + FMA (chosen at run time on x86_64) and for
//! the baseline target; the compiler vectorises the lanes in both.

/// `exp(x)` in f32 for any `x`: `2^n e^g` with `n = round(x log2 e)`, `|g| <= ln 2 / 2`, `e^g` by its
/// degree-7 Taylor polynomial (relative error below 3e-7, tested). Inputs are clamped to
/// `[-87, 88]`: below, the smallest normal number (about 1e-38) instead of 0; above, about 1.6e38
/// instead of infinity. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
                                     // `max`/`min` written as comparisons keep NaN (it fails both) and vectorise to blends
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let g = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + g * (1.0
            + g * (0.5
                + g * (1.0 / 6.0
                    + g * (1.0 / 24.0
                        + g * (1.0 / 120.0 + g * (1.0 / 720.0 + g * (1.0 / 5040.0)))))));
    // NaN converts to 0 in `as`, and `p` is NaN already
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `ln 2` in two parts (Cody and Waite): `n * LN2_HI` is exact for the `n` that occur.
pub const LN2_HI: f32 = 0.693_145_75;
/// See [`LN2_HI`].
pub const LN2_LO: f32 = 1.428_606_8e-6;

/// Lanes of every loop: one AVX2 register of f32.
const LANES: usize = 8;

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them, for the baseline target otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Whether the CPU has AVX2 and FMA (the loops' fast build).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// The maximum of 8-lane chunks and a remainder; NaN is not propagated (the sum after it is).
#[inline(always)]
fn max_lanes(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let m = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    chunks
        .remainder()
        .iter()
        .fold(m, |a, &b| if b > a { b } else { a })
}

dispatch! {
    /// The maximum of `row` (`-inf` when empty; NaN entries are skipped here and show up in the
    /// sums that follow).
    pub fn max(row: &[f32]) -> f32 {
        max_lanes(row)
    }
}

dispatch! {
    /// `row[i] = exp(row[i] - shift)` in place; returns the sum of the new values (in f64 over
    /// f32 lanes). With `shift = max(row)` this is a softmax numerator.
    pub fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f64 {
        let mut sums = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp(*x - shift);
                *s += *x;
            }
        }
        let mut total = 0.0f64;
        for x in chunks.into_remainder() {
            *x = exp(*x - shift);
            total += f64::from(*x);
        }
        total + sums.iter().map(|&s| f64::from(s)).sum::<f64>()
    }
}

dispatch! {
    /// `sum exp(row[i] - shift)` (in f64 over f32 lanes), `row` unchanged.
    pub fn exp_shifted_sum(row: &[f32], shift: f32) -> f64 {
        let mut sums = [0.0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &x) in sums.iter_mut().zip(c) {
                *s += exp(x - shift);
            }
        }
        let rest: f64 = chunks.remainder().iter().map(|&x| f64::from(exp(x - shift))).sum();
        rest + sums.iter().map(|&s| f64::from(s)).sum::<f64>()
    }
}

dispatch! {
    /// `out[i] = scale * exp(row[i] - shift)`.
    pub fn exp_shifted_scaled(row: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> () {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = scale * exp(x - shift);
        }
    }
}

dispatch! {
    /// `row[i] *= factor`.
    pub fn scale_in_place(row: &mut [f32], factor: f32) -> () {
        for x in row.iter_mut() {
            *x *= factor;
        }
    }
}

dispatch! {
    /// `row[i] = row[i] * scale + bias[i]` (`bias` as long as `row`).
    pub fn scale_add(row: &mut [f32], scale: f32, bias: &[f32]) -> () {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x = *x * scale + b;
        }
    }
}

dispatch! {
    /// `p[i] = p[i] * (dp[i] - delta) * scale`: the softmax backward of one row of attention
    /// probabilities `p` (in place) from the gradient `dp` of those probabilities.
    pub fn softmax_backward_in_place(p: &mut [f32], dp: &[f32], delta: f32, scale: f32) -> () {
        for (p, &g) in p.iter_mut().zip(dp) {
            *p = *p * (g - delta) * scale;
        }
    }
}

dispatch! {
    /// `sum a[i] * b[i]` (in f64 over f32 lanes).
    pub fn dot(a: &[f32], b: &[f32]) -> f64 {
        let mut sums = [0.0f32; LANES];
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((s, &x), &y) in sums.iter_mut().zip(x).zip(y) {
                *s += x * y;
            }
        }
        let rest: f64 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&x, &y)| f64::from(x * y))
            .sum();
        rest + sums.iter().map(|&s| f64::from(s)).sum::<f64>()
    }
}

/// `(sigmoid(a), silu(a) = a sigmoid(a))` from `exp(-|a|)`, which never overflows.
#[inline(always)]
fn sigmoid_silu(a: f32) -> (f32, f32) {
    let e = exp(if a > 0.0 { -a } else { a });
    let s = if a >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    (s, a * s)
}

dispatch! {
    /// `out[i] = silu(gate[i]) * up[i]`, SwiGLU's product.
    pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> () {
        for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
            *o = sigmoid_silu(a).1 * b;
        }
    }
}

dispatch! {
    /// The gradients of `silu(gate) * up` for the output gradient `dy`:
    /// `d_gate = dy up s (1 + gate (1 - s))` with `s = sigmoid(gate)`, `d_up = dy silu(gate)`.
    pub fn swiglu_backward(
        gate: &[f32],
        up: &[f32],
        dy: &[f32],
        d_gate: &mut [f32],
        d_up: &mut [f32],
    ) -> () {
        let n = gate.len();
        let (up, dy, d_gate, d_up) = (&up[..n], &dy[..n], &mut d_gate[..n], &mut d_up[..n]);
        for i in 0..n {
            let (a, b, g) = (gate[i], up[i], dy[i]);
            let (s, silu) = sigmoid_silu(a);
            d_gate[i] = g * b * s * (1.0 + a * (1.0 - s));
            d_up[i] = g * silu;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_is_accurate_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) > 0.0 && exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn dispatched_loops_match_scalar_arithmetic() {
        // odd lengths: the remainder paths run too
        for len in [0usize, 1, 7, 8, 9, 31, 1000] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let m = max(&row);
            let want_m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(m, want_m);
            let shift = if len == 0 { 0.0 } else { m };
            let want: f64 = row
                .iter()
                .map(|&x| (f64::from(x) - f64::from(shift)).exp())
                .sum();
            let got = exp_shifted_sum(&row, shift);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "{len}: {got} vs {want}"
            );
            let mut copy = row.clone();
            let total = exp_shifted_in_place(&mut copy, shift);
            assert!((total - want).abs() <= 1e-6 * want.max(1.0));
            for (&c, &x) in copy.iter().zip(&row) {
                let w = (f64::from(x) - f64::from(shift)).exp();
                assert!((f64::from(c) - w).abs() <= 1e-6 * w.max(1e-30));
            }
            let d = dot(&row, &row);
            let want_d: f64 = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            assert!((d - want_d).abs() <= 1e-5 * want_d.max(1.0));
        }
    }

    #[test]
    fn swiglu_and_its_gradient_match_the_formulas() {
        let gate: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
        let up: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let dy: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut out = vec![0.0; 37];
        swiglu(&gate, &up, &mut out);
        let (mut dg, mut du) = (vec![0.0; 37], vec![0.0; 37]);
        swiglu_backward(&gate, &up, &dy, &mut dg, &mut du);
        for i in 0..37 {
            let a = f64::from(gate[i]);
            let s = 1.0 / (1.0 + (-a).exp());
            let (b, g) = (f64::from(up[i]), f64::from(dy[i]));
            assert!((f64::from(out[i]) - a * s * b).abs() < 1e-6);
            // a central difference of the product
            let h = 1e-4;
            let f = |a: f64| a / (1.0 + (-a).exp()) * b;
            let numeric = (f(a + h) - f(a - h)) / (2.0 * h) * g;
            assert!((f64::from(dg[i]) - numeric).abs() < 1e-5, "{i}");
            assert!((f64::from(du[i]) - g * a * s).abs() < 1e-6);
        }
    }
}
