//! LLaDA's semi-autoregressive block decoding with Fast-dLLM's accelerations, exact to the
//! reference code (NVlabs/Fast-dLLM `llada/generate.py`: `generate`, `generate_with_prefix_cache`,
//! `generate_with_dual_cache`, `get_transfer_index`, `get_num_transfer_tokens`).
//!
//! The answer is cut into blocks of `block_length` decoded left to right. Within a block each step
//! runs the model, takes the greedy token at every masked slot of the block with its softmax
//! probability (f64) as confidence, and reveals either a scheduled number of the most confident
//! slots (`steps / blocks` steps per block, the block's masks spread evenly over them, earlier
//! steps taking the remainder) or, with a confidence threshold `tau`, every slot whose confidence
//! is at least `tau` and always the most confident one; a block ends when it has no mask left.
//!
//! Caches ([`BlockCache`]) are approximations, off by default:
//! - [`CacheMode::Prefix`]: each block starts with a full pass; its keys/values before the block are
//!   kept and every further step runs the block and everything after it against them.
//! - [`CacheMode::Dual`]: the full pass's keys/values of every position are kept; every further
//!   step runs the block alone, reading the cached prefix and suffix and replacing the block's own.
//!
//! The reference's loops run their body before testing for a finished block, so a block completed
//! by its first pass still costs one more pass with a cache; [`BlockDecoded::forward_passes`]
//! counts as the reference's `nfe` does.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_models::{BlockCache, MaskPredictor};

use crate::host::read_back;
use crate::SamplerError;

/// Which key/value cache the block decoder keeps between the steps of a block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// None: every step is a full pass (exact).
    #[default]
    None,
    /// Fast-dLLM's prefix cache (approximate).
    Prefix,
    /// Fast-dLLM's dual cache (approximate).
    Dual,
}

/// How many masked slots of the block a step reveals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Parallel {
    /// The schedule: `steps / blocks` steps per block, the block's masks spread evenly.
    #[default]
    Scheduled,
    /// Every slot at least `tau` confident, and always the most confident one
    /// (Fast-dLLM's `threshold`).
    Threshold(f64),
    /// Fast-dLLM's factor rule (`get_transfer_index_dynamic`): with the confidences sorted,
    /// `c_1 >= c_2 >= ...`, rank `n` passes when `c_n >= 1 - factor / (n + 1)` (rank 1 always); the
    /// ranks before the first failure are revealed.
    Factor {
        /// The factor `f`.
        factor: f64,
        /// Fast-dLLM's code also reveals the last rank when it is the first to fail; `true`
        /// reproduces that, `false` applies the rule as stated.
        reveal_failing_last_rank: bool,
    },
}

/// Settings of [`decode_blocks`] (temperature 0, low-confidence remasking).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockDecoding {
    /// Tokens to generate (a multiple of `block_length`).
    pub gen_length: usize,
    /// Tokens per block.
    pub block_length: usize,
    /// Steps in all (a multiple of the number of blocks); unused by the parallel rules.
    pub steps: usize,
    /// How many slots a step reveals.
    pub parallel: Parallel,
    /// The cache between steps.
    pub cache: CacheMode,
}

/// What [`decode_blocks`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDecoded {
    /// The prompt followed by the generated tokens.
    pub tokens: Vec<usize>,
    /// Forward passes run (the reference's `nfe`).
    pub forward_passes: usize,
    /// Token positions those passes computed: the whole sequence for a full pass, the block and
    /// what follows for a prefix-cache pass, the block alone for a dual-cache pass.
    pub positions: usize,
}

/// `get_num_transfer_tokens`: `masks` spread over `steps`, the first `masks % steps` steps one more.
pub fn transfer_schedule(masks: usize, steps: usize) -> Vec<usize> {
    let (base, extra) = (masks / steps, masks % steps);
    (0..steps).map(|i| base + usize::from(i < extra)).collect()
}

/// The slots to reveal among `confidence` (one per masked slot, in position order), in
/// confidence order: the `count` most confident ([`Parallel::Scheduled`]), or as the parallel rule
/// says.
pub fn select_slots(confidence: &[f64], count: usize, rule: Parallel) -> Vec<usize> {
    let mut order: Vec<usize> = (0..confidence.len()).collect();
    // descending; ties keep position order
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    let take = match rule {
        Parallel::Scheduled => count,
        Parallel::Threshold(tau) => {
            return order
                .iter()
                .enumerate()
                .filter(|&(rank, &i)| rank == 0 || confidence[i] >= tau)
                .map(|(_, &i)| i)
                .collect()
        }
        Parallel::Factor {
            factor,
            reveal_failing_last_rank,
        } => {
            // rank n (1-based) passes when c_n >= 1 - factor / (n + 1); rank 1 always
            let passing = order
                .iter()
                .enumerate()
                .take_while(|&(r, &i)| r == 0 || confidence[i] >= 1.0 - factor / (r as f64 + 2.0))
                .count();
            if reveal_failing_last_rank && passing + 1 == order.len() {
                order.len()
            } else {
                passing
            }
        }
    };
    order.into_iter().take(take).collect()
}

/// Greedy token and its softmax probability (f64) for each row of `logits` (`[n, V]`, host).
fn greedy_with_confidence(logits: &[f32], vocab: usize) -> Vec<(usize, f64)> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            let (best, max) =
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (i, &x)| {
                            if x > acc.1 {
                                (i, x)
                            } else {
                                acc
                            }
                        },
                    );
            let max = max as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            (best, 1.0 / sum)
        })
        .collect()
}

struct Decoder<'a, B: Backend, M: MaskPredictor<B>> {
    model: &'a M,
    config: BlockDecoding,
    x: Vec<usize>,
    mask_id: usize,
    vocab: usize,
    passes: usize,
    positions: usize,
    device: B::Device,
}

impl<B: Backend, M: MaskPredictor<B>> Decoder<'_, B, M> {
    fn ids(&self, range: std::ops::Range<usize>) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = self.x[range].iter().map(|&t| t as i64).collect();
        let n = ids.len();
        Tensor::from_data(TensorData::new(ids, [1, n]), &self.device)
    }

    /// One step's reveal: `logits` `[1, n, V]` cover positions `offset..offset + n`; the masked
    /// slots in `candidates` get their greedy tokens where selected. (A full pass considers every
    /// masked slot before the block's end, as the reference's `mask_index`; a cached pass the
    /// block's.)
    fn reveal(
        &mut self,
        logits: Tensor<B, 3>,
        offset: usize,
        candidates: std::ops::Range<usize>,
        count: usize,
    ) -> Result<(), SamplerError> {
        let slots: Vec<usize> = candidates.filter(|&p| self.x[p] == self.mask_id).collect();
        if slots.is_empty() {
            return Ok(());
        }
        let [_, n, v] = logits.dims();
        let rows: Vec<i64> = slots.iter().map(|&p| (p - offset) as i64).collect();
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [slots.len()]), &self.device);
        let picked = logits.reshape([n, v]).select(0, index);
        let host: Vec<f32> = read_back(picked.into_data(), "block logits")?;
        let proposals = greedy_with_confidence(&host, self.vocab);
        for (i, &(_, conf)) in proposals.iter().enumerate() {
            if !conf.is_finite() {
                return Err(SamplerError::NonFiniteLogits {
                    row: 0,
                    pos: slots[i],
                });
            }
        }
        let confidence: Vec<f64> = proposals.iter().map(|&(_, c)| c).collect();
        for i in select_slots(&confidence, count, self.config.parallel) {
            self.x[slots[i]] = proposals[i].0;
        }
        Ok(())
    }

    fn block_has_mask(&self, block: &std::ops::Range<usize>) -> bool {
        self.x[block.clone()].contains(&self.mask_id)
    }

    fn count(&self, schedule: &[usize], step: usize) -> Result<usize, SamplerError> {
        match self.config.parallel {
            Parallel::Threshold(_) | Parallel::Factor { .. } => Ok(0),
            Parallel::Scheduled => {
                schedule
                    .get(step)
                    .copied()
                    .ok_or_else(|| SamplerError::Config {
                        reason: format!(
                            "the block still holds masks after its {} scheduled steps (the model \
                     predicted the mask token)",
                            schedule.len()
                        ),
                    })
            }
        }
    }

    fn block(&mut self, block: std::ops::Range<usize>, steps: usize) -> Result<(), SamplerError> {
        let masks = self.x[block.clone()]
            .iter()
            .filter(|&&t| t == self.mask_id)
            .count();
        let schedule = transfer_schedule(masks, steps);
        let len = self.x.len();
        match self.config.cache {
            CacheMode::None => {
                let mut step = 0;
                loop {
                    self.passes += 1;
                    self.positions += len;
                    let logits = self.model.logits(self.ids(0..len))?;
                    let count = self.count(&schedule, step)?;
                    self.reveal(logits, 0, 0..block.end, count)?;
                    step += 1;
                    if !self.block_has_mask(&block) {
                        return Ok(());
                    }
                }
            }
            CacheMode::Prefix | CacheMode::Dual => {
                self.passes += 1;
                self.positions += len;
                let (logits, cache) = self.model.logits_caching(self.ids(0..len))?;
                let count = self.count(&schedule, 0)?;
                self.reveal(logits, 0, 0..block.end, count)?;
                let mut cache: BlockCache<B> = match self.config.cache {
                    CacheMode::Prefix => cache.prefix(block.start)?,
                    _ => cache,
                };
                let mut step = 1;
                loop {
                    self.passes += 1;
                    self.positions += match self.config.cache {
                        CacheMode::Prefix => len - block.start,
                        _ => block.len(),
                    };
                    let logits = match self.config.cache {
                        CacheMode::Prefix => self
                            .model
                            .logits_after_prefix(self.ids(block.start..len), &cache)?,
                        _ => self.model.logits_in_window(
                            self.ids(block.clone()),
                            block.start,
                            &mut cache,
                        )?,
                    };
                    // a block finished by the full pass still runs this one (as the reference)
                    let count = if self.block_has_mask(&block) {
                        self.count(&schedule, step)?
                    } else {
                        0
                    };
                    self.reveal(logits, block.start, block.clone(), count)?;
                    if !self.block_has_mask(&block) {
                        return Ok(());
                    }
                    step += 1;
                }
            }
        }
    }
}

/// Decodes `gen_length` tokens after `prompt` block by block (see the module docs); temperature 0,
/// low-confidence remasking.
pub fn decode_blocks<B: Backend, M: MaskPredictor<B>>(
    model: &M,
    prompt: &[usize],
    config: BlockDecoding,
) -> Result<BlockDecoded, SamplerError> {
    let bad = |reason: String| Err(SamplerError::Config { reason });
    if config.block_length == 0 || !config.gen_length.is_multiple_of(config.block_length) {
        return bad(format!(
            "gen_length {} is not a positive multiple of block_length {}",
            config.gen_length, config.block_length
        ));
    }
    let blocks = config.gen_length / config.block_length;
    let scheduled = config.parallel == Parallel::Scheduled;
    if scheduled && (config.steps == 0 || !config.steps.is_multiple_of(blocks)) {
        return bad(format!(
            "steps {} is not a positive multiple of the {blocks} blocks",
            config.steps
        ));
    }
    match config.parallel {
        Parallel::Threshold(tau) if !(0.0..=1.0).contains(&tau) => {
            return bad(format!("threshold {tau} must lie in [0, 1]"));
        }
        Parallel::Factor { factor, .. } if !(factor > 0.0 && factor.is_finite()) => {
            return bad(format!("factor {factor} must be positive"));
        }
        _ => {}
    }
    let (mask_id, vocab) = (model.mask_id(), model.vocab_size());
    if let Some(&t) = prompt.iter().find(|&&t| t >= vocab) {
        return bad(format!(
            "prompt token {t} is outside the vocabulary of {vocab}"
        ));
    }
    let len = prompt.len() + config.gen_length;
    if len > model.max_positions() {
        return bad(format!(
            "prompt and answer ({len} tokens) exceed the model's {} positions",
            model.max_positions()
        ));
    }
    let mut x = prompt.to_vec();
    x.resize(len, mask_id);
    let mut decoder = Decoder {
        model,
        config,
        x,
        mask_id,
        vocab,
        passes: 0,
        positions: 0,
        device: model.device(),
    };
    let steps_per_block = (config.steps / blocks).max(1);
    for b in 0..blocks {
        let start = prompt.len() + b * config.block_length;
        decoder.block(start..start + config.block_length, steps_per_block)?;
    }
    Ok(BlockDecoded {
        tokens: decoder.x,
        forward_passes: decoder.passes,
        positions: decoder.positions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_the_remainder_first() {
        assert_eq!(transfer_schedule(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(transfer_schedule(7, 3), vec![3, 2, 2]);
        assert_eq!(transfer_schedule(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn selection_by_count_and_by_threshold() {
        let c = [0.3, 0.9, 0.1, 0.5];
        let t = Parallel::Threshold;
        assert_eq!(select_slots(&c, 2, Parallel::Scheduled), vec![1, 3]);
        assert_eq!(
            select_slots(&c, 0, Parallel::Scheduled),
            Vec::<usize>::new()
        );
        assert_eq!(select_slots(&c, 0, t(0.4)), vec![1, 3]);
        // the top slot always, even below the threshold
        assert_eq!(select_slots(&c, 0, t(0.95)), vec![1]);
        assert_eq!(select_slots(&c, 0, t(0.3)), vec![1, 3, 0]);
    }

    #[test]
    fn the_factor_rule_and_its_reference_quirk() {
        let f = |factor, quirk| Parallel::Factor {
            factor,
            reveal_failing_last_rank: quirk,
        };
        // f = 1: rank 2 needs 1 - 1/3 = 0.667, rank 3 needs 0.75, rank 4 needs 0.8
        let c = [0.76, 0.99, 0.1, 0.8];
        assert_eq!(select_slots(&c, 0, f(1.0, false)), vec![1, 3, 0]);
        // only the last rank fails: the reference reveals it anyway
        assert_eq!(select_slots(&c, 0, f(1.0, true)), vec![1, 3, 0, 2]);
        // an earlier failure stops there either way
        let c = [0.5, 0.99, 0.1, 0.2];
        assert_eq!(select_slots(&c, 0, f(1.0, true)), vec![1]);
        // a larger factor lowers every rank's bar
        assert_eq!(select_slots(&c, 0, f(2.0, false)), vec![1, 0]);
        assert_eq!(select_slots(&[0.6, 0.5], 0, f(1.5, false)), vec![0, 1]);
    }
}
