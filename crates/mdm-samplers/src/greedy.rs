//! Temperature-0 proposals: for every masked slot the argmax of its logits and that token's softmax
//! probability `p = exp(max - logsumexp) = 1 / sum_j exp(l_j - max)`, the confidence that
//! low-confidence remasking ranks by.
//!
//! This is the sampler's own work in a greedy step: one pass over `slots x V` logits (V = 32,000
//! for the Llama-2 vocabulary). Where the logits live in host memory (burn-flex) they are read in
//! place by a vectorised, threaded kernel ([`greedy_proposals_host`]); on other backends the
//! reduction runs on the device ([`greedy_proposals_device`]) and only three numbers per slot
//! come back. [`proposals`](crate::draw::proposals) picks between them.
//!
//! Accuracy: the exponentials are evaluated in f32 (relative error below 1e-7 for the terms near
//! the maximum, which dominate the sum) and summed in f32 over blocks of 1,024 logits, the blocks in
//! f64: the confidence is within 1e-6 relative of SMDM's float64 softmax (tested), and the argmax is
//! exact (the first index on ties, as `torch.argmax`).

use burn::tensor::Tensor;
use mdm_kernels::Kernels;

use crate::host::read_back;
use crate::kernel;
use crate::proposal::{Proposal, Slot};
use crate::step::SamplerError;

/// Temperature-0 proposals for `slots` from their logits `[slots, V]` reduced on the device
/// (argmax and log-sum-exp there, `3 x slots` numbers read back, the final exponential in f64):
/// what [`proposals`](crate::draw::proposals) runs on backends whose tensors are not in host memory.
pub fn greedy_proposals_device<B: Kernels>(
    slots: &[Slot],
    logits: Tensor<B, 2>,
) -> Result<Vec<Proposal>, SamplerError> {
    let [n, vocab] = logits.dims();
    if n != slots.len() {
        return Err(shape_error(slots.len(), vocab, n * vocab));
    }
    let (max, index) = logits.clone().max_dim_with_indices(1);
    let log_sum_exp = (logits - max.clone()).exp().sum_dim(1).log() + max.clone();
    let tokens: Vec<i64> = read_back(index.into_data(), "argmax")?;
    let max: Vec<f32> = read_back(max.into_data(), "max logit")?;
    let lse: Vec<f32> = read_back(log_sum_exp.into_data(), "logsumexp")?;
    finish(
        slots,
        (0..slots.len()).map(|i| {
            let p = (max[i] as f64 - lse[i] as f64).exp();
            (tokens[i] as usize, p, None)
        }),
    )
}

/// Temperature-0 proposals from host logits (`slots.len() x vocab`, row-major) by the vectorised
/// [`kernel::greedy_row`] (one pass per row), the rows split across rayon's threads when there are
/// more than a million logits.
pub fn greedy_proposals_host(
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
) -> Result<Vec<Proposal>, SamplerError> {
    if vocab == 0 || logits.len() != slots.len() * vocab {
        return Err(shape_error(slots.len(), vocab, logits.len()));
    }
    let out = kernel::map_rows(logits, vocab, |_, row| kernel::greedy_row(row));
    finish(slots, out.into_iter().map(|(t, p)| (t, p, None)))
}

/// Proposals from `(token, confidence, entropy)` per slot; a non-finite confidence (NaN or
/// infinite logits from the model) is an error naming the slot.
pub(crate) fn finish(
    slots: &[Slot],
    results: impl Iterator<Item = (usize, f64, Option<f64>)>,
) -> Result<Vec<Proposal>, SamplerError> {
    slots
        .iter()
        .zip(results)
        .map(|(&slot, (token, confidence, entropy))| {
            if confidence.is_finite() {
                Ok(Proposal {
                    slot,
                    token,
                    confidence,
                    entropy,
                })
            } else {
                Err(SamplerError::NonFiniteLogits {
                    row: slot.row,
                    pos: slot.pos,
                })
            }
        })
        .collect()
}

/// Logits that are not `slots x vocab`.
pub(crate) fn shape_error(slots: usize, vocab: usize, found: usize) -> SamplerError {
    SamplerError::Core(mdm_core::CoreError::Shape {
        what: "slot logits",
        expected: vec![slots, vocab],
        found: vec![found],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::propose;
    use burn::backend::Flex;
    use burn::tensor::TensorData;
    use mdm_core::rng_from_seed;

    /// Rows of smooth random-looking logits over a 32,000-way vocabulary, one with a huge gap, one
    /// with a tie at the top, one whose maximum sits in the last (partial) block.
    fn test_logits(n: usize, vocab: usize) -> Vec<f32> {
        let mut logits: Vec<f32> = (0..n * vocab)
            .map(|i| (((i * 7919) % 10_007) as f32 / 531.0).sin() * 9.0)
            .collect();
        logits[vocab * 3 + 17] = 1e4;
        logits[vocab * 5 + 3] = 50.0;
        logits[vocab * 5 + 2000] = 50.0;
        logits[vocab * 6 + vocab - 2] = 30.0;
        logits
    }

    #[test]
    fn host_kernel_matches_the_f64_softmax() {
        let (n, vocab) = (12, 32_000);
        let logits = test_logits(n, vocab);
        let slots: Vec<Slot> = (0..n).map(|pos| Slot { row: 0, pos }).collect();
        let exact = propose(&slots, &logits, vocab, 0.0, &mut rng_from_seed(0)).unwrap();
        let fast = greedy_proposals_host(&slots, &logits, vocab).unwrap();
        for (f, e) in fast.iter().zip(&exact) {
            assert_eq!((f.slot, f.token), (e.slot, e.token));
            assert!(
                (f.confidence - e.confidence).abs() <= 1e-6 * e.confidence,
                "{f:?} {e:?}"
            );
        }
        assert_eq!(fast[5].token, 3);
        assert_eq!(fast[6].token, vocab - 2);
        assert!((fast[3].confidence - 1.0).abs() < 1e-12);
    }

    #[test]
    fn host_and_device_paths_agree_and_nan_is_an_error() {
        let (n, vocab) = (40, 300);
        let host: Vec<f32> = (0..n * vocab)
            .map(|i| (((i * 7919) % 1013) as f32 / 97.0).sin() * 6.0)
            .collect();
        let slots: Vec<Slot> = (0..n).map(|pos| Slot { row: pos % 3, pos }).collect();
        let exact = propose(&slots, &host, vocab, 0.0, &mut rng_from_seed(0)).unwrap();
        let device = Default::default();
        let tensor =
            Tensor::<Flex, 2>::from_data(TensorData::new(host.clone(), [n, vocab]), &device);
        // on the host, and through the device reduction
        let in_place = greedy_proposals_host(&slots, &host, vocab).unwrap();
        let via_device = greedy_proposals_device(&slots, tensor.clone()).unwrap();
        for got in [&in_place, &via_device] {
            for (d, e) in got.iter().zip(&exact) {
                assert_eq!((d.slot, d.token), (e.slot, e.token));
                assert!(
                    (d.confidence - e.confidence).abs() <= 1e-6 * e.confidence,
                    "{d:?} {e:?}"
                );
            }
        }
        let mut bad = host.clone();
        bad[7 * vocab + 11] = f32::NAN;
        let err = greedy_proposals_host(&slots, &bad, vocab).unwrap_err();
        assert!(
            matches!(err, SamplerError::NonFiniteLogits { row: 1, pos: 7 }),
            "{err}"
        );
        // a row of -inf but one entry is certain; a row of -inf only is an error
        let mut certain = vec![f32::NEG_INFINITY; 3000];
        certain[2500] = 1.0;
        let one = [Slot { row: 0, pos: 0 }];
        let p = greedy_proposals_host(&one, &certain, 3000).unwrap();
        assert_eq!((p[0].token, p[0].confidence), (2500, 1.0));
        certain[2500] = f32::NEG_INFINITY;
        assert!(greedy_proposals_host(&one, &certain, 3000).is_err());
        assert!(greedy_proposals_host(&slots, &host[1..], vocab).is_err());
        assert!(greedy_proposals_device(&slots[1..], tensor).is_err());
    }
}
