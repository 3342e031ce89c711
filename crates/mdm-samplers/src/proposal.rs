//! Proposals: a token and a confidence for every masked slot.

use mdm_core::gumbel::gumbel_argmax;
use mdm_core::probs::{softmax, softmax_prob};
use mdm_core::{CoreError, MdmRng};

/// A masked position of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Row of the batch.
    pub row: usize,
    /// Position in the row.
    pub pos: usize,
}

/// What the model proposes for one masked slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    /// Where.
    pub slot: Slot,
    /// The drawn token (argmax at temperature 0).
    pub token: usize,
    /// Confidence of the proposal, in f64: by default the softmax probability of `token` (SMDM's);
    /// see [`Confidence`].
    pub confidence: f64,
    /// The entropy of the slot's distribution, measured beside the probability for the rules
    /// that need both ([`Confidence::ProbabilityAndEntropy`]); `None` otherwise.
    pub entropy: Option<f64>,
}

/// How a proposal's confidence is measured (what low-confidence remasking ranks by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Confidence {
    /// Softmax probability of the drawn token (SMDM, LLaDA).
    #[default]
    Probability,
    /// Probability margin between the two most likely tokens (Dream's `margin`).
    Margin,
    /// Negative entropy of the distribution (Dream's `entropy`): peaked distributions first.
    NegEntropy,
    /// The probability, with the distribution's entropy in [`Proposal::entropy`] (the
    /// entropy-bounded rule).
    ProbabilityAndEntropy,
}

impl Confidence {
    /// The confidence of `token` under the logits `row`, in f64.
    pub fn measure(self, row: &[f32], token: usize) -> f64 {
        match self {
            Confidence::Probability | Confidence::ProbabilityAndEntropy => softmax_prob(row, token),
            Confidence::Margin => {
                let probs = softmax(row);
                let (mut first, mut second) = (0.0f64, 0.0f64);
                for p in probs {
                    if p > first {
                        second = first;
                        first = p;
                    } else if p > second {
                        second = p;
                    }
                }
                first - second
            }
            Confidence::NegEntropy => softmax(row)
                .into_iter()
                .filter(|&p| p > 0.0)
                .map(|p| p * p.ln())
                .sum(),
        }
    }
}

/// The masked slots of `x` (rows of token ids), row-major.
pub fn masked_slots(x: &[Vec<usize>], mask_id: usize) -> Vec<Slot> {
    x.iter()
        .enumerate()
        .flat_map(|(row, ids)| {
            ids.iter()
                .enumerate()
                .filter(move |(_, &id)| id == mask_id)
                .map(move |(pos, _)| Slot { row, pos })
        })
        .collect()
}

/// Draws a token for each slot from its logits (`logits`: `[slots.len(), vocab]` row-major, f32)
/// with `temperature`, and computes its softmax probability in f64.
pub fn propose(
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
    temperature: f64,
    rng: &mut MdmRng,
) -> Result<Vec<Proposal>, CoreError> {
    propose_with(
        slots,
        logits,
        vocab,
        temperature,
        Confidence::Probability,
        rng,
    )
}

/// As [`propose`], with another confidence measure.
pub fn propose_with(
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
    temperature: f64,
    confidence: Confidence,
    rng: &mut MdmRng,
) -> Result<Vec<Proposal>, CoreError> {
    if logits.len() != slots.len() * vocab {
        return Err(CoreError::Shape {
            what: "slot logits",
            expected: vec![slots.len(), vocab],
            found: vec![logits.len()],
        });
    }
    let tokens = gumbel_argmax(logits, vocab, temperature, rng)?;
    Ok(slots
        .iter()
        .zip(logits.chunks_exact(vocab.max(1)))
        .zip(tokens)
        .map(|((&slot, row), token)| Proposal {
            slot,
            token,
            confidence: confidence.measure(row, token),
            entropy: (confidence == Confidence::ProbabilityAndEntropy)
                .then(|| -Confidence::NegEntropy.measure(row, token)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_measures() {
        // p = [0.1, 0.2, 0.7]
        let row: Vec<f32> = [1f32, 2.0, 7.0].iter().map(|x| x.ln()).collect();
        assert!((Confidence::Probability.measure(&row, 2) - 0.7).abs() < 1e-6);
        assert!((Confidence::Margin.measure(&row, 2) - 0.5).abs() < 1e-6);
        let h: f64 = [0.1f64, 0.2, 0.7].iter().map(|p| p * p.ln()).sum();
        assert!((Confidence::NegEntropy.measure(&row, 0) - h).abs() < 1e-6);
        // a peaked distribution is more confident than a flat one under every measure
        let flat = [0.0f32; 3];
        let peaked = [0.0f32, 0.0, 5.0];
        for m in [
            Confidence::Probability,
            Confidence::Margin,
            Confidence::NegEntropy,
        ] {
            assert!(m.measure(&peaked, 2) > m.measure(&flat, 2), "{m:?}");
        }
    }
}
