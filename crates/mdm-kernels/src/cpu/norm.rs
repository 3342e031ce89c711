//! RMSNorm over the last dimension, fused: `y = x rsqrt(mean(x^2) + eps) gain` in one pass per row,
//! its backward in one more, rows spread over rayon's threads.
//!
//! Why our own: the composition is five tensor ops forward (square, mean, add-sqrt-recip, two
//! broadcast multiplies, each a pass over memory and an allocation, the broadcasts off burn-flex's
//! SIMD path) and twice that backward.

use rayon::prelude::*;

use super::vector;

/// Rows handled by one rayon task.
const ROWS_PER_TASK: usize = 16;

/// `(y, inv_rms)`: the normalised rows of `x` (`rows x width`) times `gain`, and each row's
/// `1 / sqrt(mean(x^2) + eps)`.
pub fn forward(x: &[f32], gain: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let width = gain.len();
    let mut y = vec![0.0f32; x.len()];
    if width == 0 {
        return (y, Vec::new());
    }
    let inv: Vec<f32> = y
        .par_chunks_exact_mut(width)
        .zip(x.par_chunks_exact(width))
        .with_min_len(ROWS_PER_TASK)
        .map(|(out, row)| {
            let mean_square = (vector::dot(row, row) / width as f64) as f32;
            let inv = (mean_square + eps).sqrt().recip();
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(gain) {
                *o = v * inv * g;
            }
            inv
        })
        .collect();
    (y, inv)
}

/// Rows whose gain gradients one task sums before the tasks' partial sums are added up, in
/// task order: a fixed split, so `d_gain` has the same bits whatever the number of threads.
const ROWS_PER_PARTIAL: usize = 64;

/// `(dx, d_gain)` for the output gradient `dy`:
/// `dx = inv (dy gain) - x inv^3 mean(dy gain x)`, `d_gain = sum over rows of dy x inv`.
///
/// `d_gain` is reduced in a fixed order: rows in blocks of [`ROWS_PER_PARTIAL`], each block
/// summed row after row by one task, the blocks' partial sums then added in block order on the
/// calling thread. Work stealing decides only which thread runs a block, never what it adds.
pub fn backward(x: &[f32], gain: &[f32], inv: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let width = gain.len();
    let mut dx = vec![0.0f32; x.len()];
    if width == 0 {
        return (dx, Vec::new());
    }
    let block = ROWS_PER_PARTIAL * width;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block).zip(inv.par_chunks(ROWS_PER_PARTIAL)))
        .map(|((dx, x), (dy, inv))| {
            let mut d_gain = vec![0.0f32; width];
            for (((dx, row), dy), &inv) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(dy.chunks_exact(width))
                .zip(inv)
            {
                row_backward(row, gain, inv, dy, dx, &mut d_gain);
            }
            d_gain
        })
        .collect();
    let mut d_gain = vec![0.0f32; width];
    for partial in partials {
        for (a, b) in d_gain.iter_mut().zip(partial) {
            *a += b;
        }
    }
    (dx, d_gain)
}

/// One row's input gradient into `dx`, its gain gradient added to `d_gain`.
fn row_backward(
    row: &[f32],
    gain: &[f32],
    inv: f32,
    dy: &[f32],
    dx: &mut [f32],
    d_gain: &mut [f32],
) {
    let width = gain.len();
    let mut weighted = 0.0f64;
    for ((&x, &g), &dy) in row.iter().zip(gain).zip(dy) {
        weighted += f64::from(dy * g * x);
    }
    let c = (weighted / width as f64) as f32 * inv * inv * inv;
    for (((dx, &x), &g), (&dy, dg)) in dx.iter_mut().zip(row).zip(gain).zip(dy.iter().zip(d_gain)) {
        *dx = inv * dy * g - x * c;
        *dg += dy * x * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_central_differences() {
        let (rows, width, eps) = (3, 11, 1e-5f32);
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let gain: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / 10.0).collect();
        let dy: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let (_, inv) = forward(&x, &gain, eps);
        let (dx, dg) = backward(&x, &gain, &inv, &dy);
        // the objective sum(dy * y) in f64
        let objective = |x: &[f32], gain: &[f32]| -> f64 {
            let mut total = 0.0;
            for r in 0..rows {
                let row = &x[r * width..(r + 1) * width];
                let ms: f64 = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / width as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                for c in 0..width {
                    total +=
                        f64::from(dy[r * width + c]) * f64::from(row[c]) * inv * f64::from(gain[c]);
                }
            }
            total
        };
        let h = 1e-3f32;
        for i in 0..rows * width {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (objective(&up, &gain) - objective(&down, &gain)) / (2.0 * f64::from(h));
            assert!(
                (f64::from(dx[i]) - numeric).abs() < 2e-3,
                "dx[{i}] {} vs {numeric}",
                dx[i]
            );
        }
        for c in 0..width {
            let (mut up, mut down) = (gain.clone(), gain.clone());
            up[c] += h;
            down[c] -= h;
            let numeric = (objective(&x, &up) - objective(&x, &down)) / (2.0 * f64::from(h));
            assert!((f64::from(dg[c]) - numeric).abs() < 2e-3, "d_gain[{c}]");
        }
    }
}
