//! One denoising step over a batch.

use mdm_core::{CoreError, MdmRng};
use thiserror::Error;

use crate::proposal::{propose_with, Confidence, Proposal, Slot};
use crate::remasking::{Order, Remasking, StepInfo};
use crate::schedule::transfer_count;

/// Errors of the sampler.
#[derive(Debug, Error)]
pub enum SamplerError {
    /// Bad input to the diffusion core (shapes, temperature).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Times that do not satisfy `0 < s < t <= 1`.
    #[error("step times must satisfy 0 < s < t <= 1, got t = {t}, s = {s}")]
    Times {
        /// Current time.
        t: f32,
        /// Next time.
        s: f32,
    },
    /// A decoding option out of range or in a combination that does not work (names the field).
    #[error("invalid decoding option {0}")]
    Option(#[from] crate::options::OptionError),
    /// A prompt that does not fit the model, or a run that cannot go on.
    #[error("invalid generation request: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The model failed (sequence too long, device read-back).
    #[error(transparent)]
    Model(#[from] mdm_models::ModelError),
    /// The model's logits at a slot hold NaN or infinity, or are `-inf` everywhere.
    #[error("the logits at slot (row {row}, position {pos}) are not finite: the model diverged")]
    NonFiniteLogits {
        /// Row.
        row: usize,
        /// Position.
        pos: usize,
    },
    /// A slot outside the batch.
    #[error("slot (row {row}, position {pos}) is outside the batch")]
    Slot {
        /// Row.
        row: usize,
        /// Position.
        pos: usize,
    },
}

/// Checks every prompt: ids inside `0..vocab`, and `prompt + new_tokens` within `max_len` positions.
/// Each prompt followed by `new_tokens` mask ids (the canvas a generation starts from).
pub(crate) fn masked_rows(
    prompts: &[Vec<usize>],
    new_tokens: usize,
    mask_id: usize,
) -> Vec<Vec<usize>> {
    prompts
        .iter()
        .map(|p| {
            let mut row = p.clone();
            row.resize(p.len() + new_tokens, mask_id);
            row
        })
        .collect()
}

/// A row's generated tokens after its prompt of `prompt_len`, cut at the first EOS and, after a
/// stopped run, at the first position still masked (the text that is final).
pub(crate) fn generated_part(
    row: &[usize],
    prompt_len: usize,
    mask_id: usize,
    eos_id: Option<usize>,
    stopped: bool,
) -> Vec<usize> {
    let gen = &row[prompt_len..];
    let end = gen
        .iter()
        .position(|&t| (stopped && t == mask_id) || Some(t) == eos_id)
        .unwrap_or(gen.len());
    gen[..end].to_vec()
}

/// `[rows, width]`: true past each row's length (the padding of right-padded ragged rows).
pub(crate) fn padding_mask<B: burn::tensor::backend::Backend>(
    lengths: &[usize],
    width: usize,
    device: &B::Device,
) -> burn::tensor::Tensor<B, 2, burn::tensor::Bool> {
    let mask: Vec<bool> = lengths
        .iter()
        .flat_map(|&l| (0..width).map(move |c| c >= l))
        .collect();
    burn::tensor::Tensor::from_bool(
        burn::tensor::TensorData::new(mask, [lengths.len(), width]),
        device,
    )
}

pub(crate) fn check_prompts(
    prompts: &[Vec<usize>],
    vocab: usize,
    new_tokens: usize,
    max_len: usize,
) -> Result<(), SamplerError> {
    for (row, p) in prompts.iter().enumerate() {
        if let Some(&bad) = p.iter().find(|&&t| t >= vocab) {
            return Err(SamplerError::Config {
                reason: format!("prompt {row} holds id {bad}, outside the vocabulary 0..{vocab}"),
            });
        }
        if p.len() + new_tokens > max_len {
            return Err(SamplerError::Config {
                reason: format!(
                    "prompt {row}: {} + {new_tokens} tokens exceed the {max_len} positions the model allows",
                    p.len()
                ),
            });
        }
    }
    Ok(())
}

/// How masked slots are counted when a step decides how many to reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// Each row reveals `floor(n_row * (1 - s/t))` of its own `n_row` masked slots, chosen among
    /// them: what batched generation needs (a row's output does not depend on the other rows).
    #[default]
    PerRow,
    /// SMDM's reference: `k = floor(n * (1 - s/t))` over all `n` masked slots of the batch, chosen
    /// jointly across rows. Only for reproducing the reference bit for bit (equal at batch 1).
    JointBatch,
}

/// The random streams of a run: one per row (row `r` seeded `seed + r`, so a row draws the same
/// whether it runs alone or in a batch), or one for the whole batch (SMDM's joint counting).
pub enum Streams<'a> {
    /// One stream for every row.
    Joint(&'a mut MdmRng),
    /// Row `r` draws from `rows[r]`.
    PerRow(&'a mut [MdmRng]),
}

impl Streams<'_> {
    /// The stream row `row` draws from.
    pub fn row(&mut self, row: usize) -> &mut MdmRng {
        match self {
            Self::Joint(rng) => rng,
            Self::PerRow(rows) => &mut rows[row],
        }
    }
}

/// One reverse step from time `t` to `s` on the host token rows `x`.
///
/// `slots` are the masked slots (row-major, as [`masked_slots`](crate::proposal::masked_slots)
/// returns them) and `logits` their logits, `[slots.len(), vocab]`. Each slot gets a proposal
/// (temperature draw, confidence measure, by the f64 reference [`propose_with`]); `rule` picks
/// which are revealed, per row or jointly (`counting`); the chosen tokens are written into `x`.
/// Returns the revealed proposals.
#[allow(clippy::too_many_arguments)]
pub fn denoise_step(
    x: &mut [Vec<usize>],
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
    (t, s): (f32, f32),
    last_step: bool,
    (temperature, confidence): (f64, Confidence),
    rule: &dyn Remasking,
    counting: Counting,
    rng: &mut MdmRng,
) -> Result<Vec<Proposal>, SamplerError> {
    let proposals = propose_with(slots, logits, vocab, temperature, confidence, rng)?;
    reveal(x, proposals, (t, s), last_step, rule, counting, rng)
}

/// The second half of [`denoise_step`]: given the proposals of the masked slots, lets `rule` pick
/// which are revealed (per row or jointly, `floor(n (1 - s/t))` of each group's `n`) and writes
/// their tokens into `x`. Returns the revealed proposals.
pub fn reveal(
    x: &mut [Vec<usize>],
    proposals: Vec<Proposal>,
    times: (f32, f32),
    last_step: bool,
    rule: &dyn Remasking,
    counting: Counting,
    rng: &mut MdmRng,
) -> Result<Vec<Proposal>, SamplerError> {
    let step = StepTimes { times, last_step };
    reveal_groups(
        x,
        &proposals,
        step,
        counting,
        |_, n| {
            (
                transfer_count(n, times.0, times.1, last_step),
                Order::FirstSlot,
            )
        },
        rule,
        &mut Streams::Joint(rng),
    )
}

/// Where a step stands on the time grid: `(t, s)` and whether it is the last step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    /// `(t, s)`, `0 <= s < t <= 1`.
    pub times: (f32, f32),
    /// Whether everything must be revealed.
    pub last_step: bool,
}

/// Reveals among `proposals` (row-major) group by group (a row, or the whole batch under joint
/// counting): `plan(first row of the group, proposals in the group)` gives the scheduled number
/// and how the row's equal confidences rank (under joint counting the batch's: the earlier slot
/// first), `rule` picks which, drawing from the group's stream; their tokens are written into `x`.
/// Returns the revealed proposals, in the order the rule picked them.
pub fn reveal_groups(
    x: &mut [Vec<usize>],
    proposals: &[Proposal],
    step: StepTimes,
    counting: Counting,
    plan: impl Fn(usize, usize) -> (usize, Order),
    rule: &dyn Remasking,
    streams: &mut Streams<'_>,
) -> Result<Vec<Proposal>, SamplerError> {
    let (t, s) = step.times;
    if !(s >= 0.0 && s < t && t <= 1.0) {
        return Err(SamplerError::Times { t, s });
    }
    if let Some(bad) = proposals
        .iter()
        .map(|p| p.slot)
        .find(|sl| x.get(sl.row).is_none_or(|r| sl.pos >= r.len()))
    {
        return Err(SamplerError::Slot {
            row: bad.row,
            pos: bad.pos,
        });
    }
    let groups: Vec<&[Proposal]> = match counting {
        Counting::JointBatch => vec![proposals],
        Counting::PerRow => proposals
            .chunk_by(|a, b| a.slot.row == b.slot.row)
            .collect(),
    };
    let mut revealed = Vec::new();
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let row = group[0].slot.row;
        let (k, order) = plan(row, group.len());
        let info = StepInfo {
            t,
            s,
            k,
            last_step: step.last_step,
            order: match counting {
                Counting::PerRow => order,
                Counting::JointBatch => Order::FirstSlot,
            },
        };
        for i in rule.select(group, &info, streams.row(row)) {
            let p = group[i];
            x[p.slot.row][p.slot.pos] = p.token;
            revealed.push(p);
        }
    }
    Ok(revealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::masked_slots;
    use crate::remasking::{Ancestral, LowConfidence, RandomRemasking};
    use crate::schedule::{timesteps, DEFAULT_EPS};
    use mdm_core::rng_from_seed;
    use proptest::prelude::*;

    const MASK: usize = 50;
    const V: usize = 7;

    fn fake_logits(slots: &[Slot], seed: u64) -> Vec<f32> {
        slots
            .iter()
            .flat_map(|s| {
                (0..V).map(move |v| {
                    (((s.row * 31 + s.pos * 17 + v * 7) as u64 ^ seed) % 97) as f32 / 9.0
                })
            })
            .collect()
    }

    /// Runs `steps` steps on rows of `prompt_lens` prompt tokens followed by `gen` masks, checking
    /// at every step that prompt and revealed tokens never change and (when `exact_counts`) that
    /// each row reveals exactly its scheduled count.
    #[allow(clippy::too_many_arguments)]
    fn run(
        prompt_lens: &[usize],
        gen: usize,
        steps: usize,
        rule: &dyn Remasking,
        exact_counts: bool,
        counting: Counting,
        temperature: f64,
        seed: u64,
    ) -> Vec<Vec<usize>> {
        let mut x: Vec<Vec<usize>> = prompt_lens
            .iter()
            .map(|&p| {
                (0..p)
                    .map(|i| i % V)
                    .chain(std::iter::repeat_n(MASK, gen))
                    .collect()
            })
            .collect();
        let t = timesteps(steps, DEFAULT_EPS);
        let mut rng = rng_from_seed(seed);
        for i in 0..steps {
            let before = x.clone();
            let slots = masked_slots(&x, MASK);
            let logits = fake_logits(&slots, seed.wrapping_add(i as u64));
            let last = i + 1 == steps;
            let revealed = denoise_step(
                &mut x,
                &slots,
                &logits,
                V,
                (t[i], t[i + 1]),
                last,
                (temperature, Confidence::Probability),
                rule,
                counting,
                &mut rng,
            )
            .unwrap();
            for (old_row, new_row) in before.iter().zip(&x) {
                for (old, new) in old_row.iter().zip(new_row) {
                    if *old != MASK {
                        assert_eq!(old, new, "a revealed or prompt token changed");
                    }
                }
            }
            if exact_counts {
                for (r, row) in before.iter().enumerate() {
                    let n = row.iter().filter(|&&v| v == MASK).count();
                    let got = revealed.iter().filter(|p| p.slot.row == r).count();
                    assert_eq!(
                        got,
                        transfer_count(n, t[i], t[i + 1], last),
                        "row {r} step {i}"
                    );
                }
            }
        }
        x
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn no_mask_after_last_step_and_counts_hold(
            prompts in proptest::collection::vec(0usize..6, 1..4),
            gen in 1usize..20, steps in 1usize..12, seed in any::<u64>(), rule_id in 0usize..3,
        ) {
            let rules: [(&dyn Remasking, bool); 3] =
                [(&LowConfidence, true), (&RandomRemasking, true), (&Ancestral, false)];
            let (rule, exact) = rules[rule_id];
            let x = run(&prompts, gen, steps, rule, exact, Counting::PerRow, 0.7, seed);
            prop_assert!(x.iter().flatten().all(|&v| v != MASK));
        }

        #[test]
        fn same_seed_same_output(gen in 1usize..16, steps in 1usize..8, seed in any::<u64>()) {
            let a = run(&[3, 1], gen, steps, &RandomRemasking, true, Counting::PerRow, 0.9, seed);
            let b = run(&[3, 1], gen, steps, &RandomRemasking, true, Counting::PerRow, 0.9, seed);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn temperature_zero_ignores_the_rng() {
        // same logits, different rng streams: low-confidence at temperature 0 draws no noise
        let mut x1 = vec![vec![1, MASK, MASK, MASK, 2]];
        let mut x2 = x1.clone();
        let slots = masked_slots(&x1, MASK);
        let logits = fake_logits(&slots, 5);
        for (x, seed) in [(&mut x1, 1), (&mut x2, 2)] {
            denoise_step(
                x,
                &slots,
                &logits,
                V,
                (1.0, 0.5),
                false,
                (0.0, Confidence::Probability),
                &LowConfidence,
                Counting::PerRow,
                &mut rng_from_seed(seed),
            )
            .unwrap();
        }
        assert_eq!(x1, x2);
    }

    #[test]
    fn joint_equals_per_row_at_batch_one() {
        for seed in 0..20 {
            let a = run(
                &[2],
                12,
                5,
                &LowConfidence,
                true,
                Counting::PerRow,
                0.0,
                seed,
            );
            let b = run(
                &[2],
                12,
                5,
                &LowConfidence,
                true,
                Counting::JointBatch,
                0.0,
                seed,
            );
            assert_eq!(a, b);
        }
    }

    #[test]
    fn bad_times_and_slots_are_errors() {
        let mut x = vec![vec![MASK; 3]];
        let slots = masked_slots(&x, MASK);
        let logits = fake_logits(&slots, 0);
        let mut rng = rng_from_seed(0);
        let r = denoise_step(
            &mut x,
            &slots,
            &logits,
            V,
            (0.5, 0.6),
            false,
            (0.0, Confidence::Probability),
            &LowConfidence,
            Counting::PerRow,
            &mut rng,
        );
        assert!(matches!(r, Err(SamplerError::Times { .. })));
        let bad = [Slot { row: 3, pos: 0 }];
        let r = denoise_step(
            &mut x,
            &bad,
            &logits[..V],
            V,
            (1.0, 0.5),
            false,
            (0.0, Confidence::Probability),
            &LowConfidence,
            Counting::PerRow,
            &mut rng,
        );
        assert!(matches!(r, Err(SamplerError::Slot { row: 3, .. })));
    }
}
