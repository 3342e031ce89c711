//! The decoding loop: the one loop every way of decoding runs through.
//!
//! A run decodes a canvas (rows of ids, `mask_id` where a token is to be decoded) block by block;
//! each block is a region of every row (the whole generation in one block, semi-autoregressive
//! blocks of `block_length` left to right, or for infilling the whole row). A step of a block:
//! 1. the candidates: the masked positions of each active row's region;
//! 2. one forward pass ([`Pass`]): the whole rows (exact), or with a cache (Fast-dLLM, approximate)
//!    a caching full pass at the block's first step and then the block and what follows it
//!    (prefix cache) or the block alone (dual cache); with classifier-free guidance each row's
//!    prompt-masked twin in the same pass; MDLM's shortcut reuses the last logits after a step
//!    that revealed nothing;
//! 3. the proposals ([`proposals`]: token and confidence for every candidate);
//! 4. the reveal: per row (or jointly), the rule ([`Remasking`]) picks among the proposals, given
//!    the schedule's count ([`Schedule`]: SMDM's time grid or LLaDA's even split) or by its own
//!    test (the parallel rules, which run a block until it is full);
//! 5. EOS: a row whose first EOS has nothing masked before it is complete, its remaining masks
//!    become EOS and it leaves the batch (at the next step, or with a cache at the next block);
//! 6. the step callback sees the canvas, what was revealed and what the pass cost; it may stop.
//!
//! Everything that differs between the decoding methods is data (options, the canvas's regions)
//! or the rule; there is no second loop.
//!
//! Exact to the references (parity tests): SMDM's sampler step by step, LLaDA's `generate` and
//! Fast-dLLM's `generate_with_prefix_cache` / `generate_with_dual_cache` token for token with
//! their forward-pass counts (their loops run the body before testing for a finished block, so a
//! block completed by its caching pass still costs one cached pass, as counted here).

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use mdm_core::{rng_from_seed, MdmRng};
use mdm_kernels::Kernels;
use mdm_models::attention::AttentionMask;
use mdm_models::{DecodingCache, MaskPredictor};

use crate::draw::proposals;
use crate::host::device_error;
use crate::options::{Blocks, CacheMode, DecodingOptions, Schedule};
use crate::proposal::{Proposal, Slot};
use crate::remasking::{Order, Remasking};
use crate::schedule::{fraction_kept, mean_count, timesteps, transfer_count, transfer_schedule};
use crate::step::{
    masked_rows, padding_mask, reveal_groups, Counting, SamplerError, StepTimes, Streams,
};
use crate::ties::Ties;

/// What the step callback tells the loop: go on, or stop the run here (a client that went away,
/// a stop string already produced). A callback that returns nothing continues (`()` converts to
/// [`StepControl::Continue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepControl {
    /// Run the next step.
    #[default]
    Continue,
    /// End the run after this step: generation returns each row's tokens up to its first
    /// still-masked position (the text that is final).
    Stop,
}

impl From<()> for StepControl {
    fn from((): ()) -> Self {
        Self::Continue
    }
}

/// What the step callback sees after every step.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Block index (0 without semi-autoregressive decoding).
    pub block: usize,
    /// Step index within the block.
    pub step: usize,
    /// Every row, prompt then generation region (`mask_id` where still masked).
    pub tokens: &'a [Vec<usize>],
    /// Slots revealed by this step, with their tokens and confidences.
    pub revealed: &'a [Proposal],
    /// Decoded tokens this step replaced (token editing), with their new tokens and
    /// probabilities.
    pub edited: &'a [Proposal],
    /// Where the step's time went, when [`DecodingOptions::profile`] is on.
    pub timing: Option<StepTiming>,
    /// What the step's forward pass computed.
    pub cost: StepCost,
}

/// The model work of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCost {
    /// Rows that went through the model (twice the active rows with CFG; 0 when reused).
    pub forward_rows: usize,
    /// Token positions computed: rows x the columns the pass ran (0 when reused).
    pub positions: usize,
    /// The previous step's logits were used again (it revealed nothing, so nothing changed).
    pub reused: bool,
}

/// Wall-clock time of one step: the model's forward pass (synchronised with the device) and the
/// sampler's own work, which is everything else in the step: the slot list, the input tensors,
/// CFG's combination, the proposals, the remasking rule and the bookkeeping. The step callback is
/// not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// The forward pass and the device synchronisation.
    pub forward: Duration,
    /// Everything else in the step.
    pub sampler: Duration,
}

impl StepTiming {
    /// The sampler's share of the step, `sampler / (forward + sampler)`.
    pub fn sampler_share(&self) -> f64 {
        let total = (self.forward + self.sampler).as_secs_f64();
        if total > 0.0 {
            self.sampler.as_secs_f64() / total
        } else {
            0.0
        }
    }
}

impl std::ops::AddAssign for StepTiming {
    fn add_assign(&mut self, other: Self) {
        self.forward += other.forward;
        self.sampler += other.sampler;
    }
}

/// What a run returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Each row as decoded: its prompt followed by its generated tokens (masks left where a
    /// stopped run did not get to; EOS after the first EOS of a completed row).
    pub rows: Vec<Vec<usize>>,
    /// Forward passes run (the references' `nfe`).
    pub forward_passes: usize,
    /// Token positions those passes computed, over every row of each pass (padding and CFG's
    /// twins included).
    pub positions: usize,
    /// The step callback ended the run early.
    pub stopped: bool,
}

/// What is decoded: the rows, and where each row's blocks lie.
pub(crate) struct Canvas {
    /// The rows, `mask_id` where a token is to be decoded.
    pub rows: Vec<Vec<usize>>,
    /// Each row's prompt length (hidden in CFG's twin; EOS is looked for after it).
    pub prompt_lens: Vec<usize>,
    /// Where each row's first block starts.
    pub starts: Vec<usize>,
    /// Each row's block length (block `b` of row `r`: `starts[r] + b * lengths[r]`, `lengths[r]`
    /// long).
    pub lengths: Vec<usize>,
    /// Blocks and steps per block.
    pub blocks: Blocks,
    /// Each row's seed (row `r`'s stream; `None`: the options' `seed + r`).
    pub seeds: Option<Vec<u64>>,
}

/// One forward pass of a step: which positions it computes.
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

#[derive(Clone)]
/// The rows of one pass (and with CFG their prompt-masked twins after them), right-padded to the
/// longest.
struct Batch {
    /// Rows of the canvas in the pass (the conditional half).
    rows: Vec<usize>,
    /// Each row's block start.
    starts: Vec<usize>,
    /// Each row's length.
    lengths: Vec<usize>,
    /// The longest length.
    width: usize,
}

/// The logits of the last full pass, kept while its step revealed nothing.
struct Reusable<B: burn::tensor::backend::Backend> {
    slots: Vec<Slot>,
    logits: Tensor<B, 2>,
}

/// LLaDA2.1's token editing in the block being decoded: per canvas row, the passes run on its
/// full block, and whether its block has ended.
struct Editing {
    threshold: f64,
    max_post: usize,
    post: Vec<usize>,
    ended: Vec<bool>,
}

impl Editing {
    fn new(threshold: f64, max_post: usize, rows: usize) -> Self {
        Self {
            threshold,
            max_post,
            post: vec![0; rows],
            ended: vec![false; rows],
        }
    }

    /// Whether `row`, with `masked` masks in its block, takes another pass: while it has masks,
    /// then while its passes edited and it has not had `max_post` passes on a full block.
    fn wants(&self, row: usize, masked: usize) -> bool {
        !self.ended[row] && (masked > 0 || self.post[row] < self.max_post)
    }
}

/// The random streams a run owns (see [`Streams`]): one per row, or under joint counting one.
struct Rngs {
    joint: bool,
    streams: Vec<MdmRng>,
}

impl Rngs {
    fn streams(&mut self) -> Streams<'_> {
        if self.joint && !self.streams.is_empty() {
            Streams::Joint(&mut self.streams[0])
        } else {
            Streams::PerRow(&mut self.streams)
        }
    }
}

struct Decoder<'a, B: Kernels, M: MaskPredictor<B>> {
    model: &'a M,
    options: &'a DecodingOptions,
    rule: &'a dyn Remasking,
    x: Vec<Vec<usize>>,
    prompt_lens: Vec<usize>,
    mask_id: usize,
    rngs: Rngs,
    passes: usize,
    positions: usize,
    device: B::Device,
    reusable: Option<Reusable<B>>,
    editing: Option<Editing>,
}

/// Rows that join a running batch at a block boundary: called with the index of the block about
/// to start, it returns each joining row's prompt and seed (continuous batching).
pub type Join<'a> = &'a mut dyn FnMut(usize) -> Vec<(Vec<usize>, u64)>;

/// Decodes `canvas` with `options` (validated by the caller) and `rule`; `on_step` sees every
/// step and may stop the run.
pub(crate) fn decode<B: Kernels, M: MaskPredictor<B>, C: Into<StepControl>>(
    model: &M,
    canvas: Canvas,
    options: &DecodingOptions,
    rule: &dyn Remasking,
    mut on_step: impl FnMut(&StepEvent) -> C,
    mut join: Option<Join<'_>>,
) -> Result<Decoded, SamplerError> {
    let batch = canvas.rows.len();
    let rngs = Rngs {
        joint: options.joint_counting,
        streams: match &canvas.seeds {
            _ if options.joint_counting => vec![rng_from_seed(options.seed)],
            Some(seeds) => seeds.iter().map(|&s| rng_from_seed(s)).collect(),
            None => (0..batch)
                .map(|r| rng_from_seed(options.seed.wrapping_add(r as u64)))
                .collect(),
        },
    };
    let mut decoder = Decoder {
        model,
        options,
        rule,
        x: canvas.rows,
        prompt_lens: canvas.prompt_lens,
        mask_id: model.mask_id(),
        rngs,
        passes: 0,
        positions: 0,
        device: model.device(),
        reusable: None,
        editing: None,
    };
    let (mut starts, mut lengths) = (canvas.starts, canvas.lengths);
    // the run's block at which each row's first block is decoded (0 but for joined rows)
    let mut first_block = vec![0usize; batch];
    let count = canvas.blocks.count;
    let mut done = vec![false; batch];
    let mut stopped = false;
    let mut block = 0;
    loop {
        let rows: Vec<usize> = (0..decoder.x.len())
            .filter(|&r| !done[r] && block - first_block[r] < count)
            .collect();
        if rows.is_empty() {
            break;
        }
        // a row with fewer blocks than the run (block diffusion's rows end where their own
        // generation does; a row that has decoded all its blocks) has an empty region past its end
        let x_lens: Vec<usize> = decoder.x.iter().map(Vec::len).collect();
        let region = |r: usize| {
            let own = block - first_block[r];
            let start = (starts[r] + own * lengths[r]).min(x_lens[r]);
            start..(start + lengths[r]).min(x_lens[r])
        };
        let regions: Vec<_> = (0..decoder.x.len()).map(region).collect();
        if !decoder.block(
            block,
            &rows,
            &regions,
            canvas.blocks.steps,
            &mut done,
            &mut on_step,
        )? {
            stopped = true;
            break;
        }
        if options.block_causal && (options.edit_threshold.is_none() || options.eos_early_stop) {
            decoder.finish_blocks(&rows, &regions, &mut done);
        }
        block += 1;
        if let Some(join) = join.as_mut() {
            for (prompt, seed) in join(block) {
                let gen = count * canvas.blocks.length;
                decoder.x.extend(masked_rows(
                    std::slice::from_ref(&prompt),
                    gen,
                    decoder.mask_id,
                ));
                decoder.prompt_lens.push(prompt.len());
                starts.push(prompt.len());
                lengths.push(canvas.blocks.length);
                first_block.push(block);
                done.push(false);
                decoder.rngs.streams.push(rng_from_seed(seed));
            }
        }
    }
    Ok(Decoded {
        rows: decoder.x,
        forward_passes: decoder.passes,
        positions: decoder.positions,
        stopped,
    })
}

impl<B: Kernels, M: MaskPredictor<B>> Decoder<'_, B, M> {
    fn masked_in(&self, row: usize, region: &std::ops::Range<usize>) -> usize {
        self.x[row][region.clone()]
            .iter()
            .filter(|&&t| t == self.mask_id)
            .count()
    }

    /// Whether row `row` takes step `step` of a block of `steps`: while its region holds a mask;
    /// under a carrying rule only within the steps or while it holds back a count (Dream's
    /// `confidence_threshold` runs `steps` steps and adds one whenever its last step held
    /// something back; a position where the model proposed the mask token stays masked, and
    /// its loop ends all the same).
    fn wants(
        &self,
        row: usize,
        region: &std::ops::Range<usize>,
        step: usize,
        steps: usize,
        held: &[usize],
    ) -> bool {
        if let Some(editing) = &self.editing {
            return editing.wants(row, self.masked_in(row, region));
        }
        let holding = if self.options.joint_counting {
            held.iter().any(|&h| h > 0)
        } else {
            held[row] > 0
        };
        self.masked_in(row, region) > 0 && (!self.rule.carries() || step < steps || holding)
    }

    /// Decodes one block of `rows`; returns false when the callback stopped the run.
    fn block<C: Into<StepControl>>(
        &mut self,
        block: usize,
        rows: &[usize],
        regions: &[std::ops::Range<usize>],
        steps: usize,
        done: &mut [bool],
        on_step: &mut impl FnMut(&StepEvent) -> C,
    ) -> Result<bool, SamplerError> {
        // a block at position 0 has no prefix to cache
        let no_prefix = self.options.block_causal && rows.iter().all(|&r| regions[r].start == 0);
        let cached = self.options.cache != CacheMode::None && !no_prefix;
        let scheduled = self.rule.scheduled();
        let grid = timesteps(steps, self.options.eps as f32);
        let joint = self.options.joint_counting;
        // LLaDA's schedule: the block's masks at its start, spread over its steps
        let masks_at_start: Vec<usize> = (0..self.x.len())
            .map(|r| self.masked_in(r, &regions[r]))
            .collect();
        let all_masks: usize = rows.iter().map(|&r| masks_at_start[r]).sum();
        // with a cache the batch is fixed for the block (the cache holds its rows)
        let fixed = cached.then(|| self.batch(rows, regions));
        let mut cache = None;
        // a carrying rule's count held back so far, per row (per batch with joint counting)
        let carries = self.rule.carries();
        let mut held = vec![0usize; self.x.len()];
        // passes in a row that changed no token (every reveal was the mask token itself)
        let mut idle = 0;
        self.editing = self
            .options
            .edit_threshold
            .map(|e| Editing::new(e, self.options.max_post_steps, self.x.len()));
        for step in 0.. {
            let started = Instant::now();
            let pass = match (self.options.cache, step) {
                (CacheMode::None, _) => Pass::Full,
                _ if no_prefix => Pass::Full,
                (_, 0) => Pass::Caching,
                (CacheMode::Prefix, _) => Pass::AfterPrefix,
                (CacheMode::Dual, _) => Pass::Window,
            };
            let batch = match &fixed {
                Some(b) => b.clone(),
                None => {
                    let active: Vec<usize> = rows
                        .iter()
                        .copied()
                        .filter(|&r| !done[r] && self.wants(r, &regions[r], step, steps, &held))
                        .collect();
                    if active.is_empty() {
                        break;
                    }
                    self.batch(&active, regions)
                }
            };
            // the rows this pass decodes (a fixed batch may hold rows whose block has ended) and
            // their masks before it
            let stepping: Vec<bool> = batch
                .rows
                .iter()
                .map(|&r| !done[r] && self.wants(r, &regions[r], step, steps, &held))
                .collect();
            let masks_before: Vec<usize> = batch
                .rows
                .iter()
                .map(|&r| self.masked_in(r, &regions[r]))
                .collect();
            if let Some(editing) = &mut self.editing {
                for (i, &r) in batch.rows.iter().enumerate() {
                    if stepping[i] && masks_before[i] == 0 {
                        editing.post[r] += 1;
                    }
                }
            }
            // a shifted model's cached passes cannot predict a window's first position: the
            // caching pass reveals it, and only it (Fast-dLLM's Dream block decoding)
            let first_only = pass == Pass::Caching && self.model.shifts_logits();
            // the candidates: each row's masked positions in its block, row-major
            let (x, mask_id) = (&self.x, self.mask_id);
            let slots: Vec<(usize, usize)> = batch
                .rows
                .iter()
                .enumerate()
                .flat_map(|(i, &r)| {
                    let region = regions[r].clone();
                    let end = if first_only {
                        region.start + 1
                    } else {
                        region.end
                    };
                    (region.start..end)
                        .filter(move |&c| x[r][c] == mask_id)
                        .map(move |c| (i, c))
                })
                .collect();
            let masked_slots = slots.len();
            let slots = [slots, self.editable(&batch, &stepping, regions)].concat();
            let (logits, cost, forward) = self.forward(pass, &batch, &mut cache, &slots)?;
            let slot_list: Vec<Slot> = slots
                .iter()
                .map(|&(i, pos)| Slot {
                    row: batch.rows[i],
                    pos,
                })
                .collect();
            let kept = (pass == Pass::Full && !self.options.no_reuse && self.editing.is_none())
                .then(|| logits.clone());
            let mut proposed = proposals(
                logits,
                &slot_list,
                self.options.cfg_scale,
                &self.options.sampling(),
                self.options.confidence(),
                &mut self.rngs.streams(),
            )?;
            let replacements = proposed.split_off(masked_slots);
            let within = step < steps;
            let times = if within {
                (grid[step], grid[step + 1])
            } else {
                (grid[steps - 1], grid[steps])
            };
            let last = step + 1 == steps;
            let schedule = self.options.schedule;
            let quota = self.options.step_quota();
            // Dream's batch count: the mean masked count over the block's rows, in f32
            let mean_masks = self.options.mean_counting.then(|| {
                let total: usize = rows.iter().map(|&r| self.masked_in(r, &regions[r])).sum();
                total as f32 / rows.len().max(1) as f32
            });
            // the counts given to a carrying rule, by row (the group's first row when joint)
            let given = std::cell::RefCell::new(vec![None::<usize>; self.x.len()]);
            let count = |row: usize, n: usize| {
                let masks = if joint {
                    all_masks
                } else {
                    masks_at_start[row]
                };
                if carries {
                    // Dream's `confidence_threshold`: this step's share of the even split plus
                    // what earlier steps held back (a position "revealed" as the mask token
                    // counts as revealed and stays masked, as in the reference)
                    let share = transfer_schedule(masks, steps).get(step).copied();
                    let k = share.unwrap_or(0) + held[row];
                    given.borrow_mut()[row] = Some(k);
                    return k;
                }
                if let Some(k) = quota {
                    return k;
                }
                if !within {
                    return 0;
                }
                if let Some(mean) = mean_masks {
                    return mean_count(mean, times, last).min(n);
                }
                match schedule {
                    Schedule::TimeGrid => transfer_count(n, times.0, times.1, last),
                    Schedule::Even => transfer_schedule(masks, steps)[step],
                    Schedule::Quota => transfer_schedule(regions[row].len(), steps)[step],
                    Schedule::Fraction => n.saturating_sub(fraction_kept(masks, step, steps)),
                }
            };
            let counting = if joint {
                Counting::JointBatch
            } else {
                Counting::PerRow
            };
            let revealed = if first_only {
                for p in &proposed {
                    self.x[p.slot.row][p.slot.pos] = p.token;
                }
                proposed
            } else {
                let orders: Vec<Order> = (0..self.x.len())
                    .map(|r| self.order(pass, r, &regions[r]))
                    .collect();
                reveal_groups(
                    &mut self.x,
                    &proposed,
                    StepTimes {
                        times,
                        last_step: last,
                    },
                    counting,
                    |row, n| (count(row, n), orders[row]),
                    self.rule,
                    &mut self.rngs.streams(),
                )?
            };
            for (key, k) in given.into_inner().into_iter().enumerate() {
                if let Some(k) = k {
                    let took = revealed
                        .iter()
                        .filter(|p| joint || p.slot.row == key)
                        .count();
                    held[key] = k.saturating_sub(took);
                }
            }
            self.reusable = match kept {
                Some(logits) if revealed.is_empty() => Some(Reusable {
                    slots: slot_list,
                    logits,
                }),
                _ => None,
            };
            let edited = self.edit(&batch.rows, &masks_before, replacements);
            if self.editing.is_some() {
                // LLaDA2.1 stops at an EOS only after a block
            } else if self.options.block_causal {
                self.stop_early(&batch.rows, &revealed, regions, done);
            } else {
                self.finish_rows(&batch.rows, done);
            }
            let timing = forward.map(|forward| StepTiming {
                forward,
                sampler: started.elapsed().saturating_sub(forward),
            });
            let control = on_step(&StepEvent {
                block,
                step,
                tokens: &self.x,
                revealed: &revealed,
                edited: &edited,
                timing,
                cost,
            })
            .into();
            if control == StepControl::Stop {
                return Ok(false);
            }
            let open = batch
                .rows
                .iter()
                .any(|&r| !done[r] && self.wants(r, &regions[r], step + 1, steps, &held));
            // a block finished by its caching pass still runs one cached pass (as the references)
            // (block diffusion tests its block before every pass, as LLaDA2 does)
            if !open && (pass != Pass::Caching || self.options.block_causal) {
                break;
            }
            // a parallel rule waits for a full block; at temperature 0 a model that proposes its
            // mask token at every remaining slot would make the same pass forever (the
            // references never return): after two cached or full passes that changed nothing,
            // the block ends with those slots masked
            let changed = revealed.iter().any(|p| p.token != self.mask_id) || !edited.is_empty();
            idle = if changed || pass == Pass::Caching {
                0
            } else {
                idle + 1
            };
            if !scheduled && !carries && self.options.temperature == 0.0 && idle >= 2 {
                break;
            }
            // a scheduled rule ends the block after its steps (masks stay only where the model
            // proposed the mask token). A shifted model's caching pass is the block's first step
            // (it reveals the first position); Fast-dLLM's Dream loop then runs the model once
            // more before it tests its step count and discards those logits: that pass is not
            // made here (docs/decoding.md)
            let counts_as_step = pass != Pass::Caching || first_only || self.options.block_causal;
            if scheduled && step + 1 >= steps && counts_as_step {
                break;
            }
        }
        Ok(true)
    }

    /// How row `row`'s equal confidences rank in a step of `pass` over its block `region`: with
    /// [`Ties::Torch`], over the positions the references rank (the whole row; with a prefix cache
    /// the block and what follows; with a dual cache the block).
    fn order(&self, pass: Pass, row: usize, region: &std::ops::Range<usize>) -> Order {
        if self.options.ties != Ties::Torch {
            return Order::FirstSlot;
        }
        let len = self.x[row].len();
        let (start, end) = match pass {
            Pass::Full | Pass::Caching => (0, len),
            Pass::AfterPrefix => (region.start, len),
            Pass::Window => (region.start, region.end),
        };
        Order::Torch { start, end }
    }

    /// Token editing's candidates: the decoded, non-prompt positions of the blocks of the batch
    /// rows that take this pass (none without editing).
    fn editable(
        &self,
        batch: &Batch,
        stepping: &[bool],
        regions: &[std::ops::Range<usize>],
    ) -> Vec<(usize, usize)> {
        if self.editing.is_none() {
            return Vec::new();
        }
        let mut slots = Vec::new();
        for (i, &r) in batch.rows.iter().enumerate() {
            if !stepping[i] {
                continue;
            }
            let region = regions[r].start.max(self.prompt_lens[r])..regions[r].end;
            slots.extend(
                region
                    .filter(|&c| self.x[r][c] != self.mask_id)
                    .map(|c| (i, c)),
            );
        }
        slots
    }

    /// Applies token editing's `replacements` (proposals at the editable positions): a token whose
    /// proposal differs and is more than the edit threshold probable is replaced. A row whose
    /// block was full before this pass and that nothing edited ends its block. Returns the edits.
    fn edit(
        &mut self,
        rows: &[usize],
        masks_before: &[usize],
        replacements: Vec<Proposal>,
    ) -> Vec<Proposal> {
        let Some(editing) = &mut self.editing else {
            return Vec::new();
        };
        let edited: Vec<Proposal> = replacements
            .into_iter()
            .filter(|p| {
                p.confidence > editing.threshold && p.token != self.x[p.slot.row][p.slot.pos]
            })
            .collect();
        for p in &edited {
            self.x[p.slot.row][p.slot.pos] = p.token;
        }
        for (i, &r) in rows.iter().enumerate() {
            if masks_before[i] == 0 && !edited.iter().any(|p| p.slot.row == r) {
                editing.ended[r] = true;
            }
        }
        edited
    }

    /// Marks complete the rows of `rows` whose first generated EOS has nothing masked before it,
    /// and turns their remaining masks into EOS.
    fn finish_rows(&mut self, rows: &[usize], done: &mut [bool]) {
        let Some(eos) = self.options.eos_id else {
            return;
        };
        for &r in rows {
            let gen = &mut self.x[r][self.prompt_lens[r]..];
            if let Some(e) = gen.iter().position(|&t| t == eos) {
                if gen[..e].iter().all(|&t| t != self.mask_id) {
                    done[r] = true;
                    for t in gen[e..].iter_mut().filter(|t| **t == self.mask_id) {
                        *t = eos;
                    }
                }
            }
        }
    }

    /// LLaDA2's `eos_early_stop`, after a step of block diffusion: a row that revealed `eos_id`
    /// and whose first EOS (looked for from position 0, as the reference does) has nothing masked
    /// between its prompt and it, ends now; its masks after that EOS become EOS.
    fn stop_early(
        &mut self,
        rows: &[usize],
        revealed: &[Proposal],
        regions: &[std::ops::Range<usize>],
        done: &mut [bool],
    ) {
        let Some(eos) = self.options.eos_id.filter(|_| self.options.eos_early_stop) else {
            return;
        };
        for &r in rows {
            if !revealed.iter().any(|p| p.slot.row == r && p.token == eos) {
                continue;
            }
            let window = &self.x[r][..regions[r].end];
            let Some(e) = window.iter().position(|&t| t == eos) else {
                continue;
            };
            let p = self.prompt_lens[r].min(e);
            if self.x[r][p..e].iter().all(|&t| t != self.mask_id) {
                self.close_row(r, e, eos, done);
            }
        }
    }

    /// After a block of block diffusion: a row whose generated part so far holds `eos_id` ends.
    fn finish_blocks(
        &mut self,
        rows: &[usize],
        regions: &[std::ops::Range<usize>],
        done: &mut [bool],
    ) {
        let Some(eos) = self.options.eos_id else {
            return;
        };
        for &r in rows {
            if done[r] {
                continue;
            }
            let (p, end) = (self.prompt_lens[r], regions[r].end.max(self.prompt_lens[r]));
            if let Some(e) = self.x[r][p..end].iter().position(|&t| t == eos) {
                self.close_row(r, p + e, eos, done);
            }
        }
    }

    /// Row `r` ends at its EOS at `e`: the masks after it become EOS.
    fn close_row(&mut self, r: usize, e: usize, eos: usize, done: &mut [bool]) {
        done[r] = true;
        let mask_id = self.mask_id;
        for t in self.x[r][e..].iter_mut().filter(|t| **t == mask_id) {
            *t = eos;
        }
    }

    /// The pass's rows with their block starts, lengths and padded width (block diffusion: each
    /// row up to its block's end).
    fn batch(&self, rows: &[usize], regions: &[std::ops::Range<usize>]) -> Batch {
        let lengths: Vec<usize> = rows
            .iter()
            .map(|&r| {
                if self.options.block_causal {
                    regions[r].end
                } else {
                    self.x[r].len()
                }
            })
            .collect();
        Batch {
            starts: rows.iter().map(|&r| regions[r].start).collect(),
            width: lengths.iter().copied().max().unwrap_or(0),
            lengths,
            rows: rows.to_vec(),
        }
    }

    /// Batch rows per canvas row: 2 with CFG (the prompt-masked twin), 1 otherwise.
    fn halves(&self) -> usize {
        if self.options.cfg_scale.is_some() {
            2
        } else {
            1
        }
    }

    /// `[rows (x2 with CFG), n]` ids of columns `from(i)..from(i) + n` of each batch row `i`
    /// (padded with the mask id); CFG's twins have their prompt masked.
    fn ids(&self, batch: &Batch, from: impl Fn(usize) -> usize, n: usize) -> Tensor<B, 2, Int> {
        let halves = self.halves();
        let mut ids = Vec::with_capacity(batch.rows.len() * halves * n);
        for half in 0..halves {
            for (i, &r) in batch.rows.iter().enumerate() {
                let first = from(i);
                for col in first..first + n {
                    let t = match self.x[r].get(col) {
                        Some(_) if half == 1 && col < self.prompt_lens[r] => self.mask_id,
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

    /// Flat row indices of the slots (`(batch row, column)`) into pass logits whose batch row `i`
    /// covers `per_row` columns from `offset[i]`: the conditional half, then with CFG the twins'.
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

    /// The logits of the slots (`[slots (x2 with CFG), V]`) from one pass over `batch`, or those
    /// of the last step again when it revealed nothing over the same slots (full passes only);
    /// what the pass cost, and its time when profiling.
    fn forward(
        &mut self,
        pass: Pass,
        batch: &Batch,
        cache: &mut Option<M::Cache>,
        slots: &[(usize, usize)],
    ) -> Result<(Tensor<B, 2>, StepCost, Option<Duration>), SamplerError> {
        let profile = self.options.profile;
        if pass == Pass::Full {
            if let Some(r) = self.reusable.take() {
                let same = r.slots.len() == slots.len()
                    && r.slots
                        .iter()
                        .zip(slots)
                        .all(|(a, &(i, pos))| a.row == batch.rows[i] && a.pos == pos);
                if same {
                    let cost = StepCost {
                        reused: true,
                        ..StepCost::default()
                    };
                    return Ok((r.logits, cost, profile.then_some(Duration::ZERO)));
                }
            }
        }
        let halves = self.halves();
        let rows = batch.rows.len();
        let lengths: Vec<usize> = (0..halves).flat_map(|_| batch.lengths.clone()).collect();
        let starts: Vec<usize> = (0..halves).flat_map(|_| batch.starts.clone()).collect();
        let block_len = self.options.block_length.unwrap_or(self.options.gen_length);
        // the columns each row's ids cover, and where they start in the row
        let (per_row, offset) = match pass {
            Pass::Full | Pass::Caching => (batch.width, vec![0; rows]),
            // every row's block and what follows (block diffusion: a row past its last block
            // has none, and its columns are padding)
            Pass::AfterPrefix => {
                let after = batch.lengths.iter().zip(&batch.starts).map(|(l, s)| l - s);
                (after.max().unwrap_or(0), batch.starts.clone())
            }
            Pass::Window => (block_len, batch.starts.clone()),
        };
        let index = self.slot_index(slots, per_row, &offset);
        let started = Instant::now();
        let logits = match pass {
            Pass::Full if self.options.block_causal => {
                let ids = self.ids(batch, |_| 0, batch.width);
                let mask = AttentionMask::BlockCausal(block_len);
                self.model
                    .logits_at_under(ids, Some(&lengths), mask, index)?
            }
            Pass::Full => {
                let ids = self.ids(batch, |_| 0, batch.width);
                let ragged = batch.lengths.iter().any(|&l| l != batch.width);
                let padding =
                    ragged.then(|| padding_mask::<B>(&lengths, batch.width, &self.device));
                self.model.logits_at(ids, padding, index)?
            }
            Pass::Caching => {
                let ids = self.ids(batch, |_| 0, batch.width);
                let (picked, full) = if self.options.block_causal {
                    let mask = AttentionMask::BlockCausal(block_len);
                    self.model
                        .logits_caching_under(ids, Some(&lengths), mask, index)?
                } else {
                    self.model.logits_caching(ids, Some(&lengths), index)?
                };
                *cache = Some(match self.options.cache {
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
        let forward = if profile {
            B::sync(&self.device).map_err(|e| device_error("forward pass", e))?;
            Some(started.elapsed())
        } else {
            None
        };
        self.passes += 1;
        self.positions += rows * halves * per_row;
        let cost = StepCost {
            forward_rows: rows * halves,
            positions: rows * halves * per_row,
            reused: false,
        };
        Ok((logits, cost, forward))
    }
}

fn missing_cache() -> SamplerError {
    SamplerError::Config {
        reason: "a cached pass ran before its block's full pass".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaskedDiffusionSampler;
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

    fn run(model: &MaskedTransformer<Flex>, p: &[Vec<usize>], o: &DecodingOptions) -> Decoded {
        MaskedDiffusionSampler::new(model, o.clone())
            .decode(p, |_| {})
            .unwrap()
    }

    fn alone(model: &MaskedTransformer<Flex>, p: &[usize], o: &DecodingOptions) -> Vec<usize> {
        run(model, &[p.to_vec()], o).rows.remove(0)
    }

    #[test]
    fn ragged_batches_give_each_row_its_tokens_alone() {
        let model = tiny();
        let prompts = prompts();
        let base = DecodingOptions::default()
            .with_gen_length(16)
            .with_block_length(8)
            .with_steps(8);
        let rules = [
            base.clone(),
            base.clone().with_schedule(Schedule::Even),
            base.clone().with_threshold(0.04),
            base.clone().with_factor(2.0),
            base.clone().with_top_k(3).with_alg_temp(0.1),
        ];
        for cache in [CacheMode::None, CacheMode::Prefix, CacheMode::Dual] {
            for rule in &rules {
                for cfg in [None, Some(1.5)] {
                    let mut o = rule.clone().with_cache(cache);
                    o.cfg_scale = cfg;
                    let batch = run(&model, &prompts, &o);
                    for (r, p) in prompts.iter().enumerate() {
                        // row r of a batch draws from the stream seed + r
                        let seeded = o.clone().with_seed(r as u64);
                        assert_eq!(batch.rows[r], alone(&model, p, &seeded), "row {r}, {o:?}");
                        assert!(!batch.rows[r].contains(&model.mask_id()));
                    }
                }
            }
        }
    }

    #[test]
    fn rows_stop_at_their_own_eos_and_leave_the_batch() {
        let model = tiny();
        let prompts = prompts();
        for cache in [CacheMode::None, CacheMode::Dual] {
            let base = DecodingOptions::default()
                .with_gen_length(24)
                .with_block_length(8)
                .with_steps(12)
                .with_cache(cache);
            // an EOS that row 0 produces in its first block
            let free = alone(&model, &prompts[0], &base);
            let eos = free[prompts[0].len()];
            let o = base.clone().with_eos(eos);
            let batch = run(&model, &prompts, &o);
            let gen0 = &batch.rows[0][prompts[0].len()..];
            assert!(gen0[8..].iter().all(|&t| t == eos), "row 0 padded with EOS");
            for (r, p) in prompts.iter().enumerate() {
                assert_eq!(batch.rows[r], alone(&model, p, &o), "row {r}");
            }
            let unstopped = run(&model, &prompts, &base);
            assert!(
                batch.positions < unstopped.positions,
                "finished rows leave the batch"
            );
        }
    }

    #[test]
    fn sampled_rows_with_their_own_seeds_draw_as_they_would_alone() {
        let model = tiny();
        let prompts = prompts();
        let base = DecodingOptions::default()
            .with_gen_length(12)
            .with_block_length(4)
            .with_steps(6)
            .with_temperature(0.9);
        let sampled = [
            base.clone(),
            base.clone().with_remasking(crate::NamedRule::Random),
            base.clone().with_remasking(crate::NamedRule::Ancestral),
            base.clone().with_top_p(0.8).with_cache(CacheMode::Dual),
            base.clone()
                .with_threshold(0.04)
                .with_cache(CacheMode::Prefix),
        ];
        let seeds = vec![901, 7, 7, 123_456];
        for o in &sampled {
            let batch = MaskedDiffusionSampler::new(&model, o.clone())
                .with_row_seeds(seeds.clone())
                .decode(&prompts, |_| {})
                .unwrap();
            for (r, p) in prompts.iter().enumerate() {
                let seeded = o.clone().with_seed(seeds[r]);
                assert_eq!(batch.rows[r], alone(&model, p, &seeded), "row {r}, {o:?}");
            }
            // the seeds matter: the same prompts from other seeds draw other tokens
            let other = MaskedDiffusionSampler::new(&model, o.clone())
                .with_row_seeds(vec![1, 2, 3, 4])
                .decode(&prompts, |_| {})
                .unwrap();
            assert_ne!(batch.rows, other.rows, "{o:?}");
        }
        // a seed list of the wrong length is an error, not a guess
        let wrong = MaskedDiffusionSampler::new(&model, base).with_row_seeds(vec![1, 2]);
        assert!(wrong.decode(&prompts, |_| {}).is_err());
    }

    #[test]
    fn rows_that_join_at_a_block_boundary_decode_as_they_would_alone() {
        let model = tiny();
        let prompts = prompts();
        let base = DecodingOptions::default()
            .with_gen_length(12)
            .with_block_length(4)
            .with_steps(6);
        let combos = [
            base.clone(),
            base.clone()
                .with_temperature(0.9)
                .with_cache(CacheMode::Dual),
            base.clone()
                .with_threshold(0.04)
                .with_cache(CacheMode::Dual),
            base.clone()
                .with_temperature(1.0)
                .with_remasking(crate::NamedRule::Random),
            base.clone().with_factor(2.0),
        ];
        let seeds = [5u64, 6, 7, 8];
        for o in &combos {
            let sampler =
                MaskedDiffusionSampler::new(&model, o.clone()).with_row_seeds(seeds[..2].to_vec());
            let mut calls = Vec::new();
            let mut seen_rows = Vec::new();
            let rows = sampler
                .generate_joined(
                    &prompts[..2],
                    |e| seen_rows.push(e.tokens.len()),
                    |block| {
                        calls.push(block);
                        // row 2 joins before the second block, row 3 before the third
                        match block {
                            1 | 2 => vec![(prompts[block + 1].clone(), seeds[block + 1])],
                            _ => vec![],
                        }
                    },
                )
                .unwrap();
            assert_eq!(rows.len(), 4);
            // blocks 1..=4 started: the last joined row's third block is the run's fifth
            assert_eq!(calls, vec![1, 2, 3, 4, 5], "{o:?}");
            assert_eq!(seen_rows.first(), Some(&2));
            assert_eq!(seen_rows.last(), Some(&4));
            for (r, p) in prompts.iter().enumerate() {
                let seeded = o.clone().with_seed(seeds[r]);
                let alone = MaskedDiffusionSampler::new(&model, seeded)
                    .generate(std::slice::from_ref(p), |_| {})
                    .unwrap();
                assert_eq!(rows[r], alone[0], "row {r}, {o:?}");
            }
        }
        // refused where a row depends on the batch, where the prefix cache's pass (from each
        // row's block to its end, one width for the batch) would pad rows at other blocks, and
        // where the canvas counts blocks from 0
        let seeded =
            |o: DecodingOptions| MaskedDiffusionSampler::new(&model, o).with_row_seeds(vec![1]);
        let no_join = |_: usize| Vec::new();
        for o in [
            base.clone().with_joint_counting(),
            base.clone().with_mean_counting(),
            base.clone().with_cache(CacheMode::Prefix),
        ] {
            assert!(seeded(o)
                .generate_joined(&prompts[..1], |_| {}, no_join)
                .is_err());
        }
        let unseeded = MaskedDiffusionSampler::new(&model, base);
        assert!(unseeded
            .generate_joined(&prompts[..1], |_| {}, no_join)
            .is_err());
    }

    #[test]
    fn draws_depend_on_the_seed_and_stops_return_the_final_prefix() {
        let model = tiny();
        let prompts = prompts();
        let o = DecodingOptions::default()
            .with_gen_length(16)
            .with_block_length(8)
            .with_cache(CacheMode::Prefix)
            .with_threshold(0.04);
        let hot = o.clone().with_temperature(1.0).with_seed(40);
        assert_eq!(run(&model, &prompts, &hot), run(&model, &prompts, &hot));
        assert_ne!(
            run(&model, &prompts, &hot).rows,
            run(&model, &prompts, &o).rows
        );
        let sampler = MaskedDiffusionSampler::new(&model, o.clone());
        let whole = sampler.generate(&prompts, |_| {}).unwrap();
        let mut passes = 0;
        let counted = sampler
            .decode(&prompts, |e| passes += usize::from(e.cost.forward_rows > 0))
            .unwrap();
        assert_eq!(passes, counted.forward_passes);
        // stopped after the first pass: only what is final (up to the first mask) comes back
        let stopped = sampler.generate(&prompts, |_| StepControl::Stop).unwrap();
        for (s, w) in stopped.iter().zip(&whole) {
            assert!(s.len() < 16);
            assert_eq!(&s[..], &w[..s.len()]);
        }
        // infilling takes no cache
        assert!(sampler.infill(&prompts, |_| {}).is_err());
    }
}
