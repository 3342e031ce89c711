//! Softmax quantities of one row of logits on the host, in `f64` (as SMDM computes confidences).

/// `log(sum(exp(row)))`, shifted by the maximum for stability.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// `softmax(row)[token]`.
pub fn softmax_prob(row: &[f32], token: usize) -> f64 {
    (row[token] as f64 - log_sum_exp(row)).exp()
}

/// The whole distribution `softmax(row)`.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&x| (x as f64 - lse).exp()).collect()
}

/// The `k` most probable tokens, most probable first (the earlier id on ties):
/// `(token, probability)`.
pub fn softmax_top_k(row: &[f32], k: usize) -> Vec<(usize, f64)> {
    let lse = log_sum_exp(row);
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| (i, (row[i] as f64 - lse).exp()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// p = softmax(ln [1, 2, 7]) = [0.1, 0.2, 0.7]
    fn row() -> Vec<f32> {
        [1f32, 2.0, 7.0].iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn probabilities() {
        let p = softmax(&row());
        for (got, want) in p.iter().zip([0.1, 0.2, 0.7]) {
            assert!((got - want).abs() < 1e-6);
        }
        assert!((softmax_prob(&row(), 1) - 0.2).abs() < 1e-6);
        assert!((log_sum_exp(&row()) - 10f64.ln()).abs() < 1e-6);
        // large logits do not overflow
        assert!((softmax_prob(&[1000.0, 1000.0], 0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn top_k_probabilities() {
        let top = softmax_top_k(&row(), 2);
        assert_eq!(top[0].0, 2);
        assert!((top[0].1 - 0.7).abs() < 1e-6);
        assert_eq!(top[1].0, 1);
        assert!((top[1].1 - 0.2).abs() < 1e-6);
    }
}
