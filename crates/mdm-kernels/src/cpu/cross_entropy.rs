//! Cross-entropy over the vocabulary, fused: one pass over each row of logits for the forward
//! (maximum, then the sum of exponentials, vectorised), one for the backward (softmax minus the
//! one-hot target, written straight into the gradient), rows spread over rayon's threads.
//!
//! Why our own: the composed `logsumexp - logit[target]` evaluates burn-flex's scalar `exp` over
//! the whole `[rows, vocab]` block in the forward and again in the backward, and materialises the
//! shifted logits and their exponentials as tensors (docs/benchmarks.md).

use rayon::prelude::*;

use super::vector;

/// Rows handled by one rayon task (at a 32,000-id vocabulary, about 1 MB of logits).
const ROWS_PER_TASK: usize = 8;

/// Per-row `(loss, log-sum-exp)` of `logits` (`rows x vocab`, row-major) for `targets`:
/// `loss = lse - logits[target]`. A target outside the vocabulary (`None`) gives a NaN loss.
pub fn forward(logits: &[f32], vocab: usize, targets: &[Option<usize>]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(logits.len(), targets.len() * vocab, "logits size");
    if vocab == 0 {
        return (vec![f32::NAN; targets.len()], vec![f32::NAN; targets.len()]);
    }
    let pairs: Vec<(f32, f32)> = logits
        .par_chunks_exact(vocab)
        .zip(targets.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .map(|(row, target)| {
            let m = vector::max(row);
            let lse = if m.is_infinite() {
                // the composition's (x - max) is NaN here too
                f32::NAN
            } else {
                m + vector::exp_shifted_sum(row, m).ln() as f32
            };
            let loss = match target.and_then(|t| row.get(t)) {
                Some(&x) => lse - x,
                None => f32::NAN,
            };
            (loss, lse)
        })
        .collect();
    pairs.into_iter().unzip()
}

/// The gradient of the per-row losses for their gradient `grad` (one value per row):
/// `d_logits[r] = grad[r] (softmax(logits[r]) - onehot(target[r]))`, from the forward's `lse`.
pub fn backward(
    logits: &[f32],
    vocab: usize,
    targets: &[Option<usize>],
    lse: &[f32],
    grad: &[f32],
) -> Vec<f32> {
    let mut d_logits = vec![0.0f32; logits.len()];
    if vocab == 0 {
        return d_logits;
    }
    d_logits
        .par_chunks_exact_mut(vocab)
        .zip(logits.par_chunks_exact(vocab))
        .zip(targets.par_iter().zip(lse).zip(grad))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((out, row), ((target, &lse), &g))| {
            vector::exp_shifted_scaled(row, lse, g, out);
            match target {
                Some(t) if *t < vocab => out[*t] -= g,
                _ => out.fill(f32::NAN),
            }
        });
    d_logits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_gradient_match_f64_arithmetic() {
        let (rows, vocab) = (5, 37);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 13.0)
            .collect();
        let targets: Vec<Option<usize>> = (0..rows).map(|r| Some(r * 7 % vocab)).collect();
        let (loss, lse) = forward(&logits, vocab, &targets);
        let grad: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32).collect();
        let d = backward(&logits, vocab, &targets, &lse, &grad);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let m = row
                .iter()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
            let s: f64 = row.iter().map(|&x| (f64::from(x) - m).exp()).sum();
            let want_lse = m + s.ln();
            let t = targets[r].unwrap();
            assert!((f64::from(loss[r]) - (want_lse - f64::from(row[t]))).abs() < 1e-5);
            for (j, &x) in row.iter().enumerate() {
                let p = (f64::from(x) - want_lse).exp();
                let want = f64::from(grad[r]) * (p - if j == t { 1.0 } else { 0.0 });
                assert!((f64::from(d[r * vocab + j]) - want).abs() < 1e-6, "{r} {j}");
            }
        }
        let (bad, _) = forward(&logits[..vocab], vocab, &[None]);
        assert!(bad[0].is_nan());
    }
}
