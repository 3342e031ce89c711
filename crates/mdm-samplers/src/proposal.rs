//! Proposals: a token and a confidence for every masked slot.

use mdm_core::gumbel::gumbel_argmax;
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
    /// Softmax probability of `token` under the logits, in f64 (SMDM's confidence).
    pub confidence: f64,
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
            confidence: softmax_prob(row, token),
        })
        .collect())
}

/// `softmax(row)[token]` in f64.
pub fn softmax_prob(row: &[f32], token: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    (row[token] as f64 - max).exp() / z
}
