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
}

impl Confidence {
    /// The confidence of `token` under the logits `row`, in f64.
    pub fn measure(self, row: &[f32], token: usize) -> f64 {
        match self {
            Confidence::Probability => softmax_prob(row, token),
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
        })
        .collect())
}

/// `exp(x)` for `x <= 0` in f32 arithmetic that the compiler vectorises: `2^n * 2^f` with `n` the
/// nearest integer to `x log2 e` and `2^f = e^g`, `|g| <= ln 2 / 2`, by its degree-7 Taylor
/// polynomial (truncation below 6e-9). The f32 rounding of `x log2 e` dominates the error, about
/// `1e-7 (1 + |x|)` relative: small where it matters, near the row maximum. Below -87 the result is
/// the smallest normal number instead of 0: negligible next to the row's maximum, `exp(0) = 1`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    let n = (t + ROUND) - ROUND;
    let g = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + g * (1.0
            + g * (0.5
                + g * (1.0 / 6.0
                    + g * (1.0 / 24.0
                        + g * (1.0 / 120.0 + g * (1.0 / 720.0 + g * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `(argmax, softmax probability of the argmax)` of one row of logits: one pass for the maximum
/// (first index on ties), one for `sum exp(x - max)` in 8 f32 lanes, blocks of 512 added in f64.
fn greedy_row(row: &[f32]) -> (usize, f64) {
    let (mut arg, mut best) = (0, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > best {
            (arg, best) = (i, x);
        }
    }
    let mut total = 0.0f64;
    for block in row.chunks(512) {
        let mut lanes = [0.0f32; 8];
        let mut eights = block.chunks_exact(8);
        for c in &mut eights {
            for (lane, &x) in lanes.iter_mut().zip(c) {
                *lane += exp_nonpositive(x - best);
            }
        }
        let rest: f32 = eights
            .remainder()
            .iter()
            .map(|&x| exp_nonpositive(x - best))
            .sum();
        total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(rest);
    }
    (arg, 1.0 / total)
}

/// Temperature-0 proposals with probability confidence from host logits (`slots.len() x vocab`,
/// row-major), computed with a vectorised exponential and split over the available cores: the CPU
/// counterpart of the device path. Confidence within about 1e-6 relative of the f64 softmax.
pub fn greedy_proposals_host(
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
) -> Result<Vec<Proposal>, CoreError> {
    if vocab == 0 || logits.len() != slots.len() * vocab {
        return Err(CoreError::Shape {
            what: "slot logits",
            expected: vec![slots.len(), vocab],
            found: vec![logits.len()],
        });
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(slots.len().max(1));
    let per_thread = slots.len().div_ceil(threads).max(1);
    let mut out = vec![(0usize, 0.0f64); slots.len()];
    std::thread::scope(|scope| {
        for (rows, results) in logits
            .chunks(per_thread * vocab)
            .zip(out.chunks_mut(per_thread))
        {
            scope.spawn(move || {
                for (row, r) in rows.chunks(vocab).zip(results) {
                    *r = greedy_row(row);
                }
            });
        }
    });
    Ok(slots
        .iter()
        .zip(out)
        .map(|(&slot, (token, confidence))| Proposal {
            slot,
            token,
            confidence,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_host_greedy_proposals_match_the_f64_softmax() {
        let vocab = 32_000;
        let n = 12;
        // smooth random-looking logits, a row with one huge gap, a row with a tie at the top
        let mut logits: Vec<f32> = (0..n * vocab)
            .map(|i| (((i * 7919) % 10_007) as f32 / 531.0).sin() * 9.0)
            .collect();
        logits[vocab * 3 + 17] = 1e4;
        let tie = vocab * 5;
        logits[tie + 3] = 50.0;
        logits[tie + 9] = 50.0;
        let slots: Vec<Slot> = (0..n).map(|pos| Slot { row: 0, pos }).collect();
        let fast = greedy_proposals_host(&slots, &logits, vocab).unwrap();
        let exact = propose(&slots, &logits, vocab, 0.0, &mut mdm_core::rng_from_seed(0)).unwrap();
        for (f, e) in fast.iter().zip(&exact) {
            assert_eq!((f.slot, f.token), (e.slot, e.token));
            assert!(
                (f.confidence - e.confidence).abs() <= 1e-6 * e.confidence,
                "{f:?} {e:?}"
            );
        }
        assert_eq!(fast[5].token, 3);
        assert!((fast[3].confidence - 1.0).abs() < 1e-12);
        assert!(greedy_proposals_host(&slots, &logits[1..], vocab).is_err());
        // the exponential itself: the f32 rounding of x log2 e makes the relative error grow with
        // |x| (terms far below the maximum barely count in the sum)
        for x in [0.0f32, -1e-3, -0.5, -1.0, -10.0, -50.0, -86.0] {
            let rel =
                (f64::from(exp_nonpositive(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            assert!(rel < 2e-7 * (1.0 + f64::from(x.abs())), "exp({x}): {rel}");
        }
    }

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
