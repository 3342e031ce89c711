//! RoPE on the fused q/k/v projection output, in one pass: `y = x cos + x[perm] sin` per row of
//! features (the layout of `mdm-models`' `rope`: `perm` pairs the rotated halves of every query and
//! key head, `sin` carries rotate-half's sign, values pass with `cos = 1`, `sin = 0`), and its
//! backward `dx[j] = dy[j] cos[j] + dy[i] sin[i]` for `i = perm^-1(j)`.
//!
//! Why our own: the composition is a `select` (a gather, off burn-flex's SIMD path) and three
//! element-wise ops per layer, each a pass over memory and an allocation, twice as many backward.
//! The arithmetic is the composition's, rounding for rounding (`x cos` and `x[perm] sin` rounded,
//! then added): the result is the same to the bit.

use rayon::prelude::*;

/// Rows handled by one rayon task.
const ROWS_PER_TASK: usize = 32;

/// `y` for `x`, `cos`, `sin` (each `rows x features`, row-major) and `perm` (a permutation of the
/// features).
pub fn forward(x: &[f32], cos: &[f32], sin: &[f32], perm: &[usize]) -> Vec<f32> {
    let features = perm.len();
    let mut y = vec![0.0f32; x.len()];
    if features == 0 {
        return y;
    }
    y.par_chunks_exact_mut(features)
        .zip(x.par_chunks_exact(features))
        .zip(
            cos.par_chunks_exact(features)
                .zip(sin.par_chunks_exact(features)),
        )
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((y, x), (cos, sin))| {
            for (f, y) in y.iter_mut().enumerate() {
                *y = x[f] * cos[f] + x[perm[f]] * sin[f];
            }
        });
    y
}

/// `dx` for the output gradient `dy`; `inverse` is `perm`'s inverse.
pub fn backward(dy: &[f32], cos: &[f32], sin: &[f32], inverse: &[usize]) -> Vec<f32> {
    let features = inverse.len();
    let mut dx = vec![0.0f32; dy.len()];
    if features == 0 {
        return dx;
    }
    dx.par_chunks_exact_mut(features)
        .zip(dy.par_chunks_exact(features))
        .zip(
            cos.par_chunks_exact(features)
                .zip(sin.par_chunks_exact(features)),
        )
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((dx, dy), (cos, sin))| {
            for (j, dx) in dx.iter_mut().enumerate() {
                let i = inverse[j];
                *dx = dy[j] * cos[j] + dy[i] * sin[i];
            }
        });
    dx
}

/// The inverse of `perm`, or `None` when it is not a permutation of `0..perm.len()`.
pub fn inverse(perm: &[usize]) -> Option<Vec<usize>> {
    let mut inverse = vec![usize::MAX; perm.len()];
    for (f, &p) in perm.iter().enumerate() {
        let slot = inverse.get_mut(p)?;
        if *slot != usize::MAX {
            return None;
        }
        *slot = f;
    }
    Some(inverse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backward_is_the_transpose_of_the_forward() {
        // <dy, J x> = <J^T dy, x> for the linear map x -> y
        let perm = [2usize, 3, 0, 1, 4];
        let inv = inverse(&perm).unwrap();
        let rows = 3;
        let n = rows * perm.len();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos()).collect();
        let cos: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).cos()).collect();
        let sin: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).sin()).collect();
        let y = forward(&x, &cos, &sin, &perm);
        let dx = backward(&dy, &cos, &sin, &inv);
        let lhs: f64 = dy.iter().zip(&y).map(|(&a, &b)| f64::from(a * b)).sum();
        let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| f64::from(a * b)).sum();
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
        assert_eq!(inverse(&[0, 0]), None);
        assert_eq!(inverse(&[1, 2]), None);
    }
}
