//! Token draws with temperature by the Gumbel-max trick, in float64.
//!
//! SMDM draws `argmax(exp(logits) / (-log U)^T)` with `U ~ U[0,1)` in float64. We compute the same
//! argmax in log space, `argmax(logits - T * log(-log U))` (the same ordering, without overflow of
//! `exp`), in `f64` **on the host**: logits are read back from the device and the uniform draws come
//! from the caller's seeded [`MdmRng`]. This works on backends without `f64` (wgpu, most GPUs in
//! practice) and gives the same tokens on every backend for the same logits and seed.
//! Temperature 0 is plain argmax (no noise drawn, first index on ties).

use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;

use crate::{CoreError, MdmRng};

/// A temperature must be finite and `>= 0` (0 = argmax).
pub fn check_temperature(temperature: f64) -> Result<(), CoreError> {
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(CoreError::Value {
            what: "temperature",
            value: temperature,
            reason: "must be finite and >= 0",
        });
    }
    Ok(())
}

/// One token per row of `logits` (`[rows, vocab]`, row-major on the host).
pub fn gumbel_argmax(
    logits: &[f32],
    vocab: usize,
    temperature: f64,
    rng: &mut MdmRng,
) -> Result<Vec<usize>, CoreError> {
    check_temperature(temperature)?;
    if vocab == 0 || !logits.len().is_multiple_of(vocab) {
        return Err(CoreError::Shape {
            what: "logits",
            expected: vec![logits.len() / vocab.max(1), vocab],
            found: vec![logits.len()],
        });
    }
    Ok(logits
        .chunks_exact(vocab)
        .map(|row| {
            let mut best = 0;
            let mut best_score = f64::NEG_INFINITY;
            for (i, &l) in row.iter().enumerate() {
                let score = if temperature == 0.0 {
                    l as f64
                } else {
                    let u: f64 = rng.random();
                    l as f64 - temperature * (-u.ln()).ln()
                };
                if score > best_score {
                    best_score = score;
                    best = i;
                }
            }
            best
        })
        .collect())
}

/// Draws one token per row of `logits` (`[rows, vocab]`) with `temperature`; see the module docs.
/// At temperature 0 only the argmax indices are read back from the device.
pub fn sample_tokens<B: Backend>(
    logits: Tensor<B, 2>,
    temperature: f64,
    rng: &mut MdmRng,
) -> Result<Vec<usize>, CoreError> {
    let [_, vocab] = logits.dims();
    if temperature == 0.0 {
        let idx = logits.argmax(1).into_data().convert::<i64>();
        return Ok(idx
            .to_vec::<i64>()
            .map_err(|e| CoreError::ReadBack(format!("argmax: {e:?}")))?
            .into_iter()
            .map(|i| i as usize)
            .collect());
    }
    let host = logits.into_data().convert::<f32>();
    let host = host
        .as_slice::<f32>()
        .map_err(|e| CoreError::ReadBack(format!("logits: {e:?}")))?;
    gumbel_argmax(host, vocab, temperature, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_from_seed;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn temperature_zero_is_argmax() {
        let logits = vec![0.1, 2.0, -1.0, 0.5, /* row 2 */ 3.0, 1.0, 2.9, 3.0];
        let mut rng = rng_from_seed(0);
        assert_eq!(
            gumbel_argmax(&logits, 4, 0.0, &mut rng).unwrap(),
            vec![1, 0]
        );
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(logits, [2, 4]), &Default::default());
        assert_eq!(sample_tokens(t, 0.0, &mut rng).unwrap(), vec![1, 0]);
    }

    #[test]
    fn temperature_one_samples_the_softmax() {
        // p = softmax(ln [1, 2, 7]) = [0.1, 0.2, 0.7]
        let logits: Vec<f32> = [1f32, 2.0, 7.0].iter().map(|x| x.ln()).collect();
        let mut rng = rng_from_seed(11);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[gumbel_argmax(&logits, 3, 1.0, &mut rng).unwrap()[0]] += 1;
        }
        for (c, p) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn same_seed_same_tokens_and_bad_input() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = gumbel_argmax(&logits, 10, 0.8, &mut rng_from_seed(4)).unwrap();
        let b = gumbel_argmax(&logits, 10, 0.8, &mut rng_from_seed(4)).unwrap();
        assert_eq!(a, b);
        assert!(gumbel_argmax(&logits, 10, -1.0, &mut rng_from_seed(4)).is_err());
        assert!(gumbel_argmax(&logits, 7, 1.0, &mut rng_from_seed(4)).is_err());
    }
}
