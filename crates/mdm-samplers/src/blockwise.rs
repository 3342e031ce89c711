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
//!
//! Beyond the reference (which decodes one prompt length per batch, greedy unless asked):
//! [`decode_blocks_batch`] decodes rows of different prompt lengths together with either cache
//! (right-padded, the padding hidden from every query, each row's block at its own positions:
//! every row gets the tokens it gets alone), with unsupervised classifier-free guidance (the
//! prompt-masked rows in the same batch and cache, `u + (w + 1)(c - u)` as LLaDA), with
//! temperature (row `r` draws from the seed `seed + r`), and with an early stop at EOS (a row whose
//! finished blocks hold EOS is complete: its remaining positions are EOS, as LLaDA pads answers,
//! and it leaves the batch at the next block).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_core::cfg::cfg_combine_host;
use mdm_core::gumbel::check_temperature;
use mdm_core::{rng_from_seed, MdmRng};
use mdm_kernels::Kernels;
use mdm_models::{BlockCache, MaskPredictor};

use crate::draw::draw_proposals;
use crate::generate::{StepControl, StepCost, StepEvent};
use crate::host::read_back;
use crate::proposal::{Confidence, Proposal, Slot};
use crate::step::{check_prompts, masked_rows, padding_mask};
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

/// Settings of [`decode_blocks`] and [`decode_blocks_batch`]; `Default` is Fast-dLLM's greedy
/// decoding of 128 tokens in blocks of 32, 128 steps, no cache.
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
    /// Temperature of the draws: 0 takes the greedy token (the reference's default); above 0 a
    /// token is drawn from `softmax(logits / T)`, its confidence still the softmax probability (as
    /// the reference's `get_transfer_index`).
    pub temperature: f64,
    /// Unsupervised classifier-free guidance `w` (`None`: off).
    pub cfg_scale: Option<f64>,
    /// End-of-sequence id: a row whose decoded blocks hold it is complete (see the module docs).
    pub eos_id: Option<usize>,
    /// Seed of the draws at temperature above 0 (row `r` of a batch uses `seed + r`).
    pub seed: u64,
}

impl Default for BlockDecoding {
    fn default() -> Self {
        Self {
            gen_length: 128,
            block_length: 32,
            steps: 128,
            parallel: Parallel::Scheduled,
            cache: CacheMode::None,
            temperature: 0.0,
            cfg_scale: None,
            eos_id: None,
            seed: 0,
        }
    }
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

/// What [`decode_blocks_batch`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksDecoded {
    /// Each row: its prompt followed by its generated tokens (masks left where a stopped run did
    /// not get to).
    pub rows: Vec<Vec<usize>>,
    /// Forward passes run over the batch.
    pub forward_passes: usize,
    /// Token positions those passes computed, over every row of the batch (padding and CFG's
    /// unconditional rows included).
    pub positions: usize,
    /// The step callback ended the run early.
    pub stopped: bool,
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

/// One forward pass of a block step: which positions it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Every position, no cache kept.
    Full,
    /// Every position, keys/values kept (the first pass of a block with a cache).
    Caching,
    /// The block and what follows, against the cached prefix.
    AfterPrefix,
    /// The block alone, against the cached rest.
    Window,
}

/// The rows of one block: the active rows (and with CFG their prompt-masked twins after them),
/// right-padded to the longest.
struct BlockBatch {
    /// Rows of `x` in the batch (the conditional half).
    rows: Vec<usize>,
    /// Each batch row's block start (the twins repeat the first half's).
    starts: Vec<usize>,
    /// Each batch row's length.
    lengths: Vec<usize>,
    /// The longest length.
    width: usize,
}

struct Decoder<'a, B: Backend, M: MaskPredictor<B>> {
    model: &'a M,
    config: BlockDecoding,
    x: Vec<Vec<usize>>,
    mask_id: usize,
    vocab: usize,
    rngs: Vec<MdmRng>,
    passes: usize,
    positions: usize,
    device: B::Device,
}

impl<B: Kernels, M: MaskPredictor<B>> Decoder<'_, B, M> {
    /// Batch rows per row of `x`: 2 with CFG (the prompt-masked twin), 1 otherwise.
    fn halves(&self) -> usize {
        if self.config.cfg_scale.is_some() {
            2
        } else {
            1
        }
    }

    /// `[batch.rows (x2 with CFG), n]` ids of columns `from(row)..from(row) + n` of each row
    /// (padding with the mask id); CFG's twins have their prompt masked.
    fn ids(
        &self,
        batch: &BlockBatch,
        from: impl Fn(usize) -> usize,
        n: usize,
    ) -> Tensor<B, 2, Int> {
        let halves = self.halves();
        let mut ids = Vec::with_capacity(batch.rows.len() * halves * n);
        for half in 0..halves {
            for (i, &r) in batch.rows.iter().enumerate() {
                let prompt_len = self.x[r].len() - self.config.gen_length;
                let first = from(i);
                for col in first..first + n {
                    let t = match self.x[r].get(col) {
                        Some(_) if half == 1 && col < prompt_len => self.mask_id,
                        Some(&t) => t,
                        None => self.mask_id,
                    };
                    ids.push(t as i64);
                }
            }
        }
        let rows = batch.rows.len() * halves;
        Tensor::from_data(TensorData::new(ids, [rows, n]), &self.device)
    }

    /// Flat row indices of the slots (`(batch row, column)`) into pass logits of `rows` rows per
    /// half whose batch row `i` covers `per_row` columns from `offset[i]`: the conditional half,
    /// then with CFG the twins'.
    fn slot_index(
        &self,
        slots: &[(usize, usize)],
        per_row: usize,
        offset: &[usize],
    ) -> Tensor<B, 1, Int> {
        let rows = offset.len();
        let index: Vec<i64> = (0..self.halves())
            .flat_map(|half| {
                slots
                    .iter()
                    .map(move |&(i, col)| ((half * rows + i) * per_row + col - offset[i]) as i64)
            })
            .collect();
        let n = index.len();
        Tensor::from_data(TensorData::new(index, [n]), &self.device)
    }

    /// Host logits `[slots, V]` from the slots' rows (`[slots (x2 with CFG), V]`), CFG applied.
    fn guided(&self, picked: Tensor<B, 2>, slots: usize) -> Result<Vec<f32>, SamplerError> {
        let host: Vec<f32> = read_back(picked.into_data(), "block logits")?;
        match self.config.cfg_scale {
            Some(w) => {
                let (cond, uncond) = host.split_at(slots * self.vocab);
                Ok(cfg_combine_host(cond, uncond, w)?)
            }
            None => Ok(host),
        }
    }

    /// Runs one pass over `batch` and returns the host logits of the candidate slots: the masked
    /// columns of each row before its block's end (full passes, as the reference's `mask_index`) or
    /// inside its block (cached passes).
    fn pass(
        &mut self,
        pass: Pass,
        batch: &BlockBatch,
        cache: &mut Option<BlockCache<B>>,
        slots: &[(usize, usize)],
    ) -> Result<(Vec<f32>, StepCost), SamplerError> {
        let b = self.config.block_length;
        let halves = self.halves();
        let rows = batch.rows.len();
        let lengths: Vec<usize> = (0..halves).flat_map(|_| batch.lengths.clone()).collect();
        let starts: Vec<usize> = (0..halves).flat_map(|_| batch.starts.clone()).collect();
        // the columns each row's ids cover, and where they start in the row
        let (per_row, offset) = match pass {
            Pass::Full | Pass::Caching => (batch.width, vec![0; rows]),
            Pass::AfterPrefix => (batch.lengths[0] - batch.starts[0], batch.starts.clone()),
            Pass::Window => (b, batch.starts.clone()),
        };
        let index = self.slot_index(slots, per_row, &offset);
        let cost = self.count_cost(rows * halves, per_row);
        let picked = match pass {
            Pass::Full => {
                let ids = self.ids(batch, |_| 0, batch.width);
                let ragged = batch.lengths.iter().any(|&l| l != batch.width);
                let padding =
                    ragged.then(|| padding_mask::<B>(&lengths, batch.width, &self.device));
                self.model.logits_at(ids, padding, index)?
            }
            Pass::Caching => {
                let ids = self.ids(batch, |_| 0, batch.width);
                let (picked, full) = self.model.logits_caching(ids, Some(&lengths), index)?;
                *cache = Some(match self.config.cache {
                    CacheMode::Prefix => full.prefix_rows(&starts)?,
                    _ => full,
                });
                picked
            }
            Pass::AfterPrefix => {
                let ids = self.ids(batch, |i| batch.starts[i], per_row);
                let prefix = cache.as_ref().ok_or_else(missing_cache)?;
                self.model.logits_after_prefix(ids, prefix, index)?
            }
            Pass::Window => {
                let ids = self.ids(batch, |i| batch.starts[i], per_row);
                let dual = cache.as_mut().ok_or_else(missing_cache)?;
                self.model.logits_in_window(ids, &starts, dual, index)?
            }
        };
        Ok((self.guided(picked, slots.len())?, cost))
    }

    fn count_cost(&mut self, rows: usize, width: usize) -> StepCost {
        self.passes += 1;
        self.positions += rows * width;
        StepCost {
            forward_rows: rows,
            positions: rows * width,
            reused: false,
        }
    }

    /// Token and confidence of each slot from its host logits row: the greedy token with its f64
    /// softmax probability (the reference's arithmetic) at temperature 0, a draw otherwise.
    fn propose(
        &mut self,
        batch: &BlockBatch,
        slots: &[(usize, usize)],
        logits: &[f32],
    ) -> Result<Vec<Proposal>, SamplerError> {
        let slot = |&(i, col): &(usize, usize)| Slot {
            row: batch.rows[i],
            pos: col,
        };
        let mut out = Vec::with_capacity(slots.len());
        if self.config.temperature == 0.0 {
            for (k, (token, confidence)) in greedy_with_confidence(logits, self.vocab)
                .into_iter()
                .enumerate()
            {
                out.push(Proposal {
                    slot: slot(&slots[k]),
                    token,
                    confidence,
                });
            }
        } else {
            // each row draws from its own stream, so a row's tokens do not depend on the batch
            let mut k = 0;
            while k < slots.len() {
                let i = slots[k].0;
                let end = k + slots[k..].iter().take_while(|s| s.0 == i).count();
                let row_slots: Vec<Slot> = slots[k..end].iter().map(slot).collect();
                out.extend(draw_proposals(
                    &row_slots,
                    &logits[k * self.vocab..end * self.vocab],
                    self.vocab,
                    self.config.temperature,
                    Confidence::Probability,
                    &mut self.rngs[batch.rows[i]],
                )?);
                k = end;
            }
        }
        if let Some(p) = out.iter().find(|p| !p.confidence.is_finite()) {
            return Err(SamplerError::NonFiniteLogits {
                row: p.slot.row,
                pos: p.slot.pos,
            });
        }
        Ok(out)
    }

    fn block_has_mask(&self, row: usize, start: usize) -> bool {
        self.x[row][start..start + self.config.block_length].contains(&self.mask_id)
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

    /// Decodes block `block` of every row of `batch`; returns false when the callback stopped.
    fn block<C: Into<StepControl>>(
        &mut self,
        block: usize,
        batch: &BlockBatch,
        steps: usize,
        on_step: &mut impl FnMut(&StepEvent) -> C,
    ) -> Result<bool, SamplerError> {
        let b = self.config.block_length;
        let schedules: Vec<Vec<usize>> = batch
            .rows
            .iter()
            .zip(&batch.starts)
            .map(|(&r, &s)| {
                let masks = self.x[r][s..s + b]
                    .iter()
                    .filter(|&&t| t == self.mask_id)
                    .count();
                transfer_schedule(masks, steps)
            })
            .collect();
        let mut cache = None;
        for step in 0.. {
            let pass = match (self.config.cache, step) {
                (CacheMode::None, _) => Pass::Full,
                (_, 0) => Pass::Caching,
                (CacheMode::Prefix, _) => Pass::AfterPrefix,
                (CacheMode::Dual, _) => Pass::Window,
            };
            // the candidates: full passes see every masked column before the block's end (the
            // reference's mask_index), cached passes the block's
            let mut slots = Vec::new();
            let mut counts = Vec::with_capacity(batch.rows.len());
            for (i, (&r, &start)) in batch.rows.iter().zip(&batch.starts).enumerate() {
                let has_mask = self.block_has_mask(r, start);
                counts.push(if has_mask {
                    self.count(&schedules[i], step)?
                } else {
                    0
                });
                let from = if matches!(pass, Pass::Full | Pass::Caching) {
                    0
                } else {
                    start
                };
                slots.extend(
                    (from..start + b)
                        .filter(|&col| self.x[r][col] == self.mask_id)
                        .map(|col| (i, col)),
                );
            }
            let (logits, cost) = self.pass(pass, batch, &mut cache, &slots)?;
            let proposals = self.propose(batch, &slots, &logits)?;
            let mut revealed = Vec::new();
            let mut k = 0;
            for (i, &count) in counts.iter().enumerate() {
                let end = k + slots[k..].iter().take_while(|s| s.0 == i).count();
                let row = &proposals[k..end];
                let confidence: Vec<f64> = row.iter().map(|p| p.confidence).collect();
                if !row.is_empty() {
                    for j in select_slots(&confidence, count, self.config.parallel) {
                        self.x[row[j].slot.row][row[j].slot.pos] = row[j].token;
                        revealed.push(row[j]);
                    }
                }
                k = end;
            }
            let control = on_step(&StepEvent {
                block,
                step,
                tokens: &self.x,
                revealed: &revealed,
                timing: None,
                cost,
            })
            .into();
            if control == StepControl::Stop {
                return Ok(false);
            }
            let open = batch
                .rows
                .iter()
                .zip(&batch.starts)
                .any(|(&r, &s)| self.block_has_mask(r, s));
            // with a cache, a block finished by its full pass still runs one cached pass (as
            // the reference)
            if !open && pass != Pass::Caching {
                break;
            }
        }
        Ok(true)
    }
}

fn missing_cache() -> SamplerError {
    SamplerError::Config {
        reason: "a cached pass ran before its block's full pass".into(),
    }
}

/// The checks of a configuration against a model.
fn check_config(config: &BlockDecoding, vocab: usize) -> Result<usize, SamplerError> {
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
    check_temperature(config.temperature)?;
    if let Some(w) = config.cfg_scale.filter(|w| !w.is_finite()) {
        return bad(format!("cfg_scale {w} must be finite"));
    }
    if let Some(eos) = config.eos_id.filter(|&e| e >= vocab) {
        return bad(format!("eos_id {eos} is outside the vocabulary of {vocab}"));
    }
    Ok(blocks)
}

/// Decodes `gen_length` tokens after `prompt` block by block (see the module docs).
pub fn decode_blocks<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prompt: &[usize],
    config: BlockDecoding,
) -> Result<BlockDecoded, SamplerError> {
    let out = decode_blocks_batch(model, &[prompt.to_vec()], config, |_| {})?;
    Ok(BlockDecoded {
        tokens: out.rows.into_iter().next().unwrap_or_default(),
        forward_passes: out.forward_passes,
        positions: out.positions,
    })
}

/// Decodes `gen_length` tokens after each prompt block by block, the rows together (prompts may
/// differ in length; each row gets the tokens it gets alone, see the module docs). `on_step` sees
/// every pass ([`StepEvent::cost`] says what it computed) and may stop the run.
///
/// ```
/// use burn::backend::Flex;
/// use mdm_models::ModelConfig;
/// use mdm_samplers::blockwise::{decode_blocks_batch, BlockDecoding, CacheMode, Parallel};
///
/// let model = ModelConfig::custom(100, 2, 4, 64, 128, 64).init_masked::<Flex>(0, &Default::default()).unwrap();
/// let config = BlockDecoding { gen_length: 16, block_length: 8, steps: 8,
///     cache: CacheMode::Dual, parallel: Parallel::Threshold(0.9), ..BlockDecoding::default() };
/// let out = decode_blocks_batch(&model, &[vec![1, 5, 7], vec![2]], config, |_| {}).unwrap();
/// assert_eq!(out.rows[0].len(), 3 + 16);
/// assert_eq!(out.rows[1].len(), 1 + 16);
/// ```
pub fn decode_blocks_batch<B: Kernels, M: MaskPredictor<B>, C: Into<StepControl>>(
    model: &M,
    prompts: &[Vec<usize>],
    config: BlockDecoding,
    mut on_step: impl FnMut(&StepEvent) -> C,
) -> Result<BlocksDecoded, SamplerError> {
    let (mask_id, vocab) = (model.mask_id(), model.vocab_size());
    let blocks = check_config(&config, vocab)?;
    check_prompts(prompts, vocab, config.gen_length, model.max_positions())?;
    let x = masked_rows(prompts, config.gen_length, mask_id);
    let mut decoder = Decoder {
        model,
        config,
        x,
        mask_id,
        vocab,
        rngs: (0..prompts.len())
            .map(|r| rng_from_seed(config.seed.wrapping_add(r as u64)))
            .collect(),
        passes: 0,
        positions: 0,
        device: model.device(),
    };
    let steps_per_block = (config.steps / blocks).max(1);
    let mut done = vec![false; prompts.len()];
    let mut stopped = false;
    for block in 0..blocks {
        let rows: Vec<usize> = (0..prompts.len()).filter(|&r| !done[r]).collect();
        if rows.is_empty() {
            break;
        }
        let lengths: Vec<usize> = rows.iter().map(|&r| decoder.x[r].len()).collect();
        let batch = BlockBatch {
            starts: rows
                .iter()
                .map(|&r| prompts[r].len() + block * config.block_length)
                .collect(),
            width: lengths.iter().copied().max().unwrap_or(0),
            lengths,
            rows,
        };
        if !decoder.block(block, &batch, steps_per_block, &mut on_step)? {
            stopped = true;
            break;
        }
        if let Some(eos) = config.eos_id {
            let end = (block + 1) * config.block_length;
            for &r in &batch.rows {
                let gen = &mut decoder.x[r][prompts[r].len()..];
                if gen[..end].contains(&eos) {
                    gen[end..].fill(eos);
                    done[r] = true;
                }
            }
        }
    }
    Ok(BlocksDecoded {
        rows: decoder.x,
        forward_passes: decoder.passes,
        positions: decoder.positions,
        stopped,
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

    use burn::backend::Flex;
    use mdm_models::{MaskedTransformer, ModelConfig};

    fn tiny() -> MaskedTransformer<Flex> {
        ModelConfig::custom(40, 2, 4, 32, 64, 48)
            .with_query_groups(2)
            .init_masked::<Flex>(11, &Default::default())
            .unwrap()
    }

    fn prompts() -> Vec<Vec<usize>> {
        vec![
            vec![3, 4, 5],
            vec![7, 1, 2, 9, 9, 8, 6],
            vec![12],
            vec![5, 5, 20, 31, 2],
        ]
    }

    fn alone(model: &MaskedTransformer<Flex>, p: &[usize], config: BlockDecoding) -> Vec<usize> {
        decode_blocks_batch(model, &[p.to_vec()], config, |_| {})
            .unwrap()
            .rows
            .remove(0)
    }

    #[test]
    fn ragged_batches_give_each_row_its_tokens_alone() {
        let model = tiny();
        let prompts = prompts();
        let base = BlockDecoding {
            gen_length: 16,
            block_length: 8,
            steps: 8,
            ..BlockDecoding::default()
        };
        let rules = [
            Parallel::Scheduled,
            Parallel::Threshold(0.04),
            Parallel::Factor {
                factor: 2.0,
                reveal_failing_last_rank: true,
            },
        ];
        for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
            for parallel in rules {
                for cfg_scale in [None, Some(1.5)] {
                    let config = BlockDecoding {
                        cache,
                        parallel,
                        cfg_scale,
                        ..base
                    };
                    let batch = decode_blocks_batch(&model, &prompts, config, |_| {}).unwrap();
                    for (r, p) in prompts.iter().enumerate() {
                        assert_eq!(
                            batch.rows[r],
                            alone(&model, p, config),
                            "row {r}, {cache:?}, {parallel:?}, cfg {cfg_scale:?}"
                        );
                        assert!(!batch.rows[r].contains(&model.mask_id()));
                    }
                }
            }
        }
    }

    #[test]
    fn rows_stop_at_their_own_eos_and_draws_follow_the_row_seed() {
        let model = tiny();
        let prompts = prompts();
        let base = BlockDecoding {
            gen_length: 24,
            block_length: 8,
            steps: 12,
            cache: CacheMode::Dual,
            ..BlockDecoding::default()
        };
        // an EOS that row 0 produces in its first block
        let free = alone(&model, &prompts[0], base);
        let eos = free[prompts[0].len()];
        let config = BlockDecoding {
            eos_id: Some(eos),
            ..base
        };
        let batch = decode_blocks_batch(&model, &prompts, config, |_| {}).unwrap();
        let gen0 = &batch.rows[0][prompts[0].len()..];
        assert!(gen0[8..].iter().all(|&t| t == eos), "row 0 padded with EOS");
        for (r, p) in prompts.iter().enumerate() {
            assert_eq!(batch.rows[r], alone(&model, p, config), "row {r}");
        }
        let unstopped = decode_blocks_batch(&model, &prompts, base, |_| {}).unwrap();
        assert!(
            batch.positions < unstopped.positions,
            "finished rows leave the batch"
        );

        // temperature: row r of a batch draws as the row alone with seed + r
        let hot = BlockDecoding {
            temperature: 1.0,
            seed: 40,
            ..base
        };
        let batch = decode_blocks_batch(&model, &prompts, hot, |_| {}).unwrap();
        for (r, p) in prompts.iter().enumerate() {
            let seeded = BlockDecoding {
                seed: 40 + r as u64,
                ..hot
            };
            assert_eq!(batch.rows[r], alone(&model, p, seeded), "row {r}");
        }
        assert_ne!(
            batch.rows[0],
            alone(&model, &prompts[0], base),
            "drawn, not greedy"
        );
    }

    #[test]
    fn the_sampler_runs_the_block_decoder_for_caches_and_stops_on_request() {
        use crate::generate::{GenerationConfig, MaskedDiffusionSampler, StepControl};
        let model = tiny();
        let prompts = prompts();
        let config = GenerationConfig::default()
            .with_gen_length(16)
            .with_block_length(8)
            .with_steps(8)
            .with_cache(CacheMode::Prefix)
            .with_parallel(Parallel::Threshold(0.04));
        let blocks = config.block_decoding().unwrap();
        let want = decode_blocks_batch(&model, &prompts, blocks, |_| {}).unwrap();
        let mut passes = 0;
        let got = MaskedDiffusionSampler::new(&model, config.clone())
            .generate(&prompts, |e| passes += usize::from(e.cost.forward_rows > 0))
            .unwrap();
        assert_eq!(passes, want.forward_passes);
        for (r, p) in prompts.iter().enumerate() {
            assert_eq!(got[r], want.rows[r][p.len()..]);
        }
        // stopped after the first pass: only what is final (up to the first mask) comes back
        let stopped = MaskedDiffusionSampler::new(&model, config.clone())
            .generate(&prompts, |_| StepControl::Stop)
            .unwrap();
        assert!(stopped.iter().all(|row| row.len() < 16));
        // another rule with a cache is refused, as is infilling with one
        let margin = MaskedDiffusionSampler::new(&model, config.clone())
            .with_named_rule(crate::remasking::NamedRule::Margin);
        assert!(margin.generate(&prompts, |_| {}).is_err());
        let fill = MaskedDiffusionSampler::new(&model, config.with_steps(4));
        assert!(fill.infill(&prompts, |_| {}).is_err());
    }
}
