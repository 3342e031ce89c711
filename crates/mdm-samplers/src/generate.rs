//! The generation loop of a masked diffusion model: prompts in, continuations out.

use mdm_kernels::Kernels;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_core::cfg::{cfg_combine, cfg_combine_host};
use mdm_core::rng_from_seed;
use mdm_models::{MaskPredictor, MaskedTransformer};

use crate::blockwise::{decode_blocks_batch, BlockDecoding, CacheMode, Parallel};
use crate::draw::draw_proposals;
use crate::greedy::{greedy_proposals, greedy_proposals_host};
use crate::host::{device_error, host_f32, with_host_f32};
use crate::proposal::{Confidence, Proposal, Slot};
use crate::remasking::{LowConfidence, NamedRule, Remasking};
use crate::schedule::{timesteps, DEFAULT_EPS};
use crate::step::{
    check_prompts, generated_part, masked_rows, padding_mask, reveal, Counting, SamplerError,
};

/// Options of a generation (builder methods below; `Default` is greedy low-confidence decoding of
/// 64 tokens in 64 steps, one block, no guidance).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens generated after each prompt (`L_gen`).
    pub gen_length: usize,
    /// Denoising steps in all (`S`), split evenly across blocks.
    pub steps: usize,
    /// Semi-autoregressive block length (LLaDA): `None` = one block of `gen_length`.
    pub block_length: Option<usize>,
    /// Temperature `T`: tokens drawn from `softmax(logits / T)`, the distribution of SMDM's
    /// Gumbel-max draw ([`draw`](crate::draw)); 0 = argmax.
    pub temperature: f64,
    /// Unsupervised classifier-free guidance `w` (`None` = off; `Some(w)` runs the conditional and
    /// the prompt-masked pass in one batch and combines `u + (w + 1)(c - u)`).
    pub cfg_scale: Option<f64>,
    /// What low-confidence remasking ranks by (softmax probability by default; margin, entropy).
    pub confidence: Confidence,
    /// Per-row counting (default) or SMDM's joint counting over the batch.
    pub counting: Counting,
    /// End-of-sequence id: a row stops once everything up to its first EOS is revealed, and its
    /// output is cut there. `None`: no early stop, no trimming.
    pub eos_id: Option<usize>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Time every step ([`StepEvent::timing`]): the device is synchronised after each forward pass
    /// so that asynchronous backends are timed correctly.
    pub profile: bool,
    /// MDLM's exact shortcut: after a step that revealed nothing, the next step sees the same
    /// sequence, and (the models having no time input) the same logits, so its forward pass is
    /// skipped and the previous logits are used again (on by default; the tokens are the same
    /// either way, see [`StepCost::reused`]).
    pub reuse_unchanged: bool,
    /// Fast-dLLM's block key/value cache between the steps of a block: an **approximation**
    /// (cached keys/values are those of an earlier step's tokens); `CacheMode::None`, exact, by
    /// default. A cache or a parallel rule runs Fast-dLLM's block decoder
    /// ([`decode_blocks_batch`](crate::blockwise::decode_blocks_batch)) in place of this loop: its
    /// transfer schedule (`steps / blocks` per block), tokens ranked by their softmax probability
    /// (the low-confidence rule), per-row counting; temperature, CFG and EOS apply as here.
    pub cache: CacheMode,
    /// How many slots a step of the block decoder reveals: its schedule (the default), or
    /// Fast-dLLM's confidence threshold or factor rule (parallel decoding; see `cache`).
    pub parallel: Parallel,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            gen_length: 64,
            steps: 64,
            block_length: None,
            temperature: 0.0,
            cfg_scale: None,
            confidence: Confidence::Probability,
            counting: Counting::PerRow,
            eos_id: None,
            seed: 0,
            profile: false,
            reuse_unchanged: true,
            cache: CacheMode::None,
            parallel: Parallel::Scheduled,
        }
    }
}

impl GenerationConfig {
    /// Builder: tokens to generate.
    pub fn with_gen_length(mut self, n: usize) -> Self {
        self.gen_length = n;
        self
    }
    /// Builder: denoising steps.
    pub fn with_steps(mut self, n: usize) -> Self {
        self.steps = n;
        self
    }
    /// Builder: semi-autoregressive blocks of `n` tokens.
    pub fn with_block_length(mut self, n: usize) -> Self {
        self.block_length = Some(n);
        self
    }
    /// Builder: temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }
    /// Builder: classifier-free guidance scale.
    pub fn with_cfg_scale(mut self, w: f64) -> Self {
        self.cfg_scale = Some(w);
        self
    }
    /// Builder: confidence measure.
    pub fn with_confidence(mut self, c: Confidence) -> Self {
        self.confidence = c;
        self
    }
    /// Builder: counting of masked slots.
    pub fn with_counting(mut self, c: Counting) -> Self {
        self.counting = c;
        self
    }
    /// Builder: early stop and trimming at `eos_id`.
    pub fn with_eos(mut self, eos_id: usize) -> Self {
        self.eos_id = Some(eos_id);
        self
    }
    /// Builder: seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Builder: time every step (see [`StepTiming`]).
    pub fn with_profiling(mut self) -> Self {
        self.profile = true;
        self
    }
    /// Builder: run every step's forward pass, even after a step that revealed nothing.
    pub fn without_reuse(mut self) -> Self {
        self.reuse_unchanged = false;
        self
    }

    /// Builder: Fast-dLLM's prefix or dual cache (an approximation, see [`Self::cache`]).
    pub fn with_cache(mut self, cache: CacheMode) -> Self {
        self.cache = cache;
        self
    }
    /// Builder: a parallel decoding rule (threshold or factor, see [`Self::parallel`]).
    pub fn with_parallel(mut self, parallel: Parallel) -> Self {
        self.parallel = parallel;
        self
    }

    /// The block decoder's settings when a cache or a parallel rule is asked for.
    pub fn block_decoding(&self) -> Option<BlockDecoding> {
        (self.cache != CacheMode::None || self.parallel != Parallel::Scheduled).then(|| {
            BlockDecoding {
                gen_length: self.gen_length,
                block_length: self.block_length.unwrap_or(self.gen_length),
                steps: self.steps,
                parallel: self.parallel,
                cache: self.cache,
                temperature: self.temperature,
                cfg_scale: self.cfg_scale,
                eos_id: self.eos_id,
                seed: self.seed,
            }
        })
    }

    /// `(blocks, block length, steps per block)`, checked.
    fn blocks(&self) -> Result<(usize, usize, usize), SamplerError> {
        let bad = |reason: String| Err(SamplerError::Config { reason });
        if self.gen_length == 0 || self.steps == 0 {
            return bad("gen_length and steps must be positive".into());
        }
        let block = self.block_length.unwrap_or(self.gen_length);
        if block == 0 || !self.gen_length.is_multiple_of(block) {
            return bad(format!(
                "block_length {block} must divide gen_length {}",
                self.gen_length
            ));
        }
        let blocks = self.gen_length / block;
        if !self.steps.is_multiple_of(blocks) {
            return bad(format!(
                "steps {} must be a multiple of the number of blocks {blocks}",
                self.steps
            ));
        }
        Ok((blocks, block, self.steps / blocks))
    }
}

/// What the step callback tells the sampler: go on, or stop the run here (a client that went away,
/// a stop string already produced). A callback that returns nothing continues (`()` converts to
/// [`StepControl::Continue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepControl {
    /// Run the next step.
    #[default]
    Continue,
    /// End the run after this step: [`MaskedDiffusionSampler::generate`] returns each row's
    /// generation up to its first still-masked position (the text that is final).
    Stop,
}

impl From<()> for StepControl {
    fn from((): ()) -> Self {
        Self::Continue
    }
}

/// What the step callback sees after every denoising step.
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
    /// Where the step's time went, when [`GenerationConfig::profile`] is on.
    pub timing: Option<StepTiming>,
    /// What the step's forward pass computed.
    pub cost: StepCost,
}

/// The model work of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCost {
    /// Rows that went through the model (twice the active rows with CFG; 0 when reused).
    pub forward_rows: usize,
    /// Token positions computed: rows x padded length (0 when reused).
    pub positions: usize,
    /// The previous step's logits were used again (it revealed nothing, so nothing changed).
    pub reused: bool,
}

/// The logits of the last step, kept while it revealed nothing.
struct Reusable<B: Backend> {
    slots: Vec<Slot>,
    logits: Tensor<B, 2>,
}

/// Wall-clock time of one denoising step: the model's forward pass (synchronised with the device)
/// and the sampler's own work, which is everything else in the step: the slot list, the input
/// tensors, CFG's combination, the proposals (argmax and confidence over the vocabulary), the
/// remasking rule and the bookkeeping. The step callback is not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// The forward pass (`MaskedTransformer::forward_at_padded`) and the device synchronisation.
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

/// Generates continuations from a masked model ([`MaskPredictor`]: a [`MaskedTransformer`] of
/// SMDM or LLaDA) with a remasking rule.
///
/// ```
/// use burn::backend::Flex;
/// use mdm_models::ModelConfig;
/// use mdm_samplers::generate::{GenerationConfig, MaskedDiffusionSampler};
///
/// let model = ModelConfig::custom(100, 2, 4, 64, 128, 64).init_masked::<Flex>(0, &Default::default()).unwrap();
/// let sampler = MaskedDiffusionSampler::new(&model,
///     GenerationConfig::default().with_gen_length(8).with_steps(4));
/// let out = sampler.generate(&[vec![1, 5, 7], vec![2]], |_| {}).unwrap();
/// assert_eq!(out.len(), 2);
/// assert!(out.iter().all(|row| row.len() == 8 && row.iter().all(|&t| t < 128)));
/// ```
pub struct MaskedDiffusionSampler<'a, B: Backend, M: MaskPredictor<B> = MaskedTransformer<B>> {
    model: &'a M,
    _backend: std::marker::PhantomData<B>,
    rule: Box<dyn Remasking>,
    /// The rule's name when it is one of ours (a caller's own rule has none).
    named: Option<NamedRule>,
    config: GenerationConfig,
}

impl<'a, B: Kernels, M: MaskPredictor<B>> MaskedDiffusionSampler<'a, B, M> {
    /// A sampler with low-confidence remasking, over any model of the seam ([`MaskPredictor`]:
    /// SMDM, LLaDA).
    pub fn new(model: &'a M, config: GenerationConfig) -> Self {
        Self {
            model,
            _backend: std::marker::PhantomData,
            rule: Box::new(LowConfidence),
            named: Some(NamedRule::LowConfidence),
            config,
        }
    }

    /// Builder: another remasking rule.
    pub fn with_rule(mut self, rule: impl Remasking + 'static) -> Self {
        self.rule = Box::new(rule);
        self.named = None;
        self
    }

    /// Builder: a rule by name, with the confidence measure it ranks by.
    pub fn with_named_rule(mut self, rule: NamedRule) -> Self {
        self.rule = rule.rule();
        self.named = Some(rule);
        self.config.confidence = rule.confidence();
        self
    }

    /// Generates `gen_length` tokens after each prompt (rows may have different prompt lengths).
    /// `on_step` is called after every step; it may return [`StepControl::Stop`] to end the run
    /// early. Returns each row's generated tokens, cut at the first EOS when `eos_id` is set (and,
    /// after a stop, at the first position still masked).
    pub fn generate<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        mut on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        let cfg = &self.config;
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        if let Some(blocks) = cfg.block_decoding() {
            return self.generate_blocks(prompts, blocks, on_step);
        }
        let (blocks, block_len, steps_per_block) = cfg.blocks()?;
        let (mask_id, vocab) = (self.model.mask_id(), self.model.vocab_size());
        check_prompts(prompts, vocab, cfg.gen_length, self.model.max_positions())?;
        let batch = prompts.len();
        let mut x = masked_rows(prompts, cfg.gen_length, mask_id);
        let max_len = x.iter().map(Vec::len).max().unwrap_or(0);
        let grid = timesteps(steps_per_block, DEFAULT_EPS);
        let mut rng = rng_from_seed(cfg.seed);
        let mut done = vec![false; batch];
        let mut stopped = false;
        let mut reusable = None;
        'blocks: for block in 0..blocks {
            for step in 0..steps_per_block {
                let started = Instant::now();
                let slots: Vec<Slot> = (0..batch)
                    .filter(|&row| !done[row])
                    .flat_map(|row| {
                        let start = prompts[row].len() + block * block_len;
                        (start..start + block_len)
                            .filter(|&pos| x[row][pos] == mask_id)
                            .map(move |pos| Slot { row, pos })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if slots.is_empty() {
                    break;
                }
                let times = (grid[step], grid[step + 1]);
                let last = step + 1 == steps_per_block;
                let pass = Pass {
                    prompts,
                    slots: &slots,
                    max_len,
                    mask_id,
                    vocab,
                };
                let (revealed, timing, cost) =
                    self.denoise(&mut x, &pass, times, last, started, &mut rng, &mut reusable)?;
                let control = on_step(&StepEvent {
                    block,
                    step,
                    tokens: &x,
                    revealed: &revealed,
                    timing,
                    cost,
                })
                .into();
                if control == StepControl::Stop {
                    stopped = true;
                    break 'blocks;
                }
                if let Some(eos) = cfg.eos_id {
                    for row in 0..batch {
                        let gen = &x[row][prompts[row].len()..];
                        if let Some(e) = gen.iter().position(|&t| t == eos) {
                            done[row] |= gen[..e].iter().all(|&t| t != mask_id);
                        }
                    }
                }
            }
        }
        Ok(x.iter()
            .zip(prompts)
            .map(|(row, p)| generated_part(row, p.len(), mask_id, cfg.eos_id, stopped))
            .collect())
    }

    /// [`Self::generate`] through Fast-dLLM's block decoder (a cache or a parallel rule).
    fn generate_blocks<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        blocks: BlockDecoding,
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        let cfg = &self.config;
        if self.named != Some(NamedRule::LowConfidence)
            || cfg.confidence != Confidence::Probability
            || cfg.counting != Counting::PerRow
        {
            return Err(SamplerError::Config {
                reason: "a cache or a parallel rule decodes with Fast-dLLM's block decoder, which \
                         ranks by the softmax probability (low_confidence) and counts per row"
                    .into(),
            });
        }
        let out = decode_blocks_batch(self.model, prompts, blocks, on_step)?;
        let mask_id = self.model.mask_id();
        Ok(out
            .rows
            .iter()
            .zip(prompts)
            .map(|(row, p)| generated_part(row, p.len(), mask_id, cfg.eos_id, out.stopped))
            .collect())
    }

    /// Infilling: fills every `mask_id` of each row, wherever it stands, in `steps` steps with the
    /// sampler's rule, temperature and counting; the known tokens on both sides condition the fill
    /// and never change, and rows keep their length. Blocks, CFG and EOS handling do not apply (a
    /// config that sets `block_length` or `cfg_scale` is an error). With the masks at the end of the
    /// rows this is [`generate`](Self::generate) without EOS.
    pub fn infill<C: Into<StepControl>>(
        &self,
        rows: &[Vec<usize>],
        mut on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        let cfg = &self.config;
        if cfg.cfg_scale.is_some()
            || cfg.block_length.is_some()
            || cfg.block_decoding().is_some()
            || cfg.steps == 0
        {
            return Err(SamplerError::Config {
                reason: "infill needs steps > 0 and takes neither CFG, blocks, caches nor \
                         parallel rules"
                    .into(),
            });
        }
        let (mask_id, vocab) = (self.model.mask_id(), self.model.vocab_size());
        // mask ids are what is filled; everything else must be a token of the vocabulary
        let known: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&t| if t == mask_id { 0 } else { t })
                    .collect()
            })
            .collect();
        check_prompts(&known, vocab, 0, self.model.max_positions())?;
        let mut x = rows.to_vec();
        let max_len = x.iter().map(Vec::len).max().unwrap_or(0);
        let no_prompts = vec![Vec::new(); rows.len()];
        let grid = timesteps(cfg.steps, DEFAULT_EPS);
        let mut rng = rng_from_seed(cfg.seed);
        let mut reusable = None;
        for step in 0..cfg.steps {
            let started = Instant::now();
            let slots: Vec<Slot> = x
                .iter()
                .enumerate()
                .flat_map(|(row, r)| {
                    r.iter()
                        .enumerate()
                        .filter(|&(_, &t)| t == mask_id)
                        .map(move |(pos, _)| Slot { row, pos })
                })
                .collect();
            if slots.is_empty() {
                break;
            }
            let times = (grid[step], grid[step + 1]);
            let last = step + 1 == cfg.steps;
            let pass = Pass {
                prompts: &no_prompts,
                slots: &slots,
                max_len,
                mask_id,
                vocab,
            };
            let (revealed, timing, cost) =
                self.denoise(&mut x, &pass, times, last, started, &mut rng, &mut reusable)?;
            let control = on_step(&StepEvent {
                block: 0,
                step,
                tokens: &x,
                revealed: &revealed,
                timing,
                cost,
            })
            .into();
            if control == StepControl::Stop {
                break;
            }
        }
        Ok(x)
    }

    /// One denoising step of `x` over `pass.slots`: logits (those of the last step again when it
    /// revealed nothing over the same slots), proposals, then the rule reveals the scheduled count.
    /// Returns the revealed proposals, when profiling the step's timing counted from `started`,
    /// and what the model computed.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        x: &mut [Vec<usize>],
        pass: &Pass<'_>,
        times: (f32, f32),
        last: bool,
        started: Instant,
        rng: &mut mdm_core::MdmRng,
        reusable: &mut Option<Reusable<B>>,
    ) -> Result<(Vec<Proposal>, Option<StepTiming>, StepCost), SamplerError> {
        let reuse = reusable
            .take()
            .filter(|r| self.config.reuse_unchanged && r.slots == pass.slots);
        let (logits, forward, cost) = match reuse {
            Some(r) => (
                r.logits,
                self.config.profile.then_some(Duration::ZERO),
                StepCost {
                    reused: true,
                    ..StepCost::default()
                },
            ),
            None => self.slot_logits(x, pass.prompts, pass.slots, pass.max_len, pass.mask_id)?,
        };
        let kept = self.config.reuse_unchanged.then(|| logits.clone());
        let proposals = self.proposals(pass.slots, logits, pass.vocab, rng)?;
        let revealed = reveal(
            x,
            proposals,
            times,
            last,
            self.rule.as_ref(),
            self.config.counting,
            rng,
        )?;
        if revealed.is_empty() {
            *reusable = kept.map(|logits| Reusable {
                slots: pass.slots.to_vec(),
                logits,
            });
        }
        let timing = forward.map(|forward| StepTiming {
            forward,
            sampler: started.elapsed().saturating_sub(forward),
        });
        Ok((revealed, timing, cost))
    }

    /// Proposals for `slots` from their logits (guided first when CFG is on): where the backend keeps
    /// the logits in host memory (flex) they are read in place ([`greedy_proposals_host`] at
    /// temperature 0 with probability confidence, [`draw_proposals`] otherwise); elsewhere the
    /// guidance and the greedy reduction run on the device.
    fn proposals(
        &self,
        slots: &[Slot],
        logits: Tensor<B, 2>,
        vocab: usize,
        rng: &mut mdm_core::MdmRng,
    ) -> Result<Vec<Proposal>, SamplerError> {
        let cfg = &self.config;
        let greedy = cfg.temperature == 0.0 && cfg.confidence == Confidence::Probability;
        let primitive = logits.into_primitive();
        if let Some(values) = host_f32::<B>(&primitive) {
            // in place on the host, guided here in one pass when CFG is on
            let guided;
            let values = match cfg.cfg_scale {
                Some(w) => {
                    let (cond, uncond) = values.split_at(values.len() / 2);
                    guided = cfg_combine_host(cond, uncond, w)?;
                    &guided[..]
                }
                None => values,
            };
            return if greedy {
                greedy_proposals_host(slots, values, vocab)
            } else {
                draw_proposals(slots, values, vocab, cfg.temperature, cfg.confidence, rng)
            };
        }
        let mut logits = Tensor::<B, 2>::from_primitive(primitive);
        if let Some(w) = cfg.cfg_scale {
            let half = logits.dims()[0] / 2;
            let cond = logits.clone().narrow(0, 0, half);
            let uncond = logits.narrow(0, half, half);
            logits = cfg_combine(cond, uncond, w)?;
        }
        if greedy {
            return greedy_proposals(slots, logits);
        }
        with_host_f32(logits, "slot logits", |host| {
            draw_proposals(slots, host, vocab, cfg.temperature, cfg.confidence, rng)
        })?
    }

    /// Logits at `slots` (on the device): `[slots, V]`, or with CFG `[2 slots, V]` (conditional rows
    /// first, combined by [`Self::proposals`]), the forward pass's time when profiling, and its
    /// cost. Only the
    /// rows that own a slot go through the model, so rows stopped at EOS (or without masks in the
    /// current block) cost nothing.
    fn slot_logits(
        &self,
        x: &[Vec<usize>],
        prompts: &[Vec<usize>],
        slots: &[Slot],
        max_len: usize,
        mask_id: usize,
    ) -> Result<(Tensor<B, 2>, Option<Duration>, StepCost), SamplerError> {
        let device = self.model.device();
        // rows of the pass: those with slots (slots are row-major), and their position in the pass
        let mut active: Vec<usize> = slots.iter().map(|s| s.row).collect();
        active.dedup();
        let mut pass_row = vec![0; x.len()];
        for (i, &row) in active.iter().enumerate() {
            pass_row[row] = i;
        }
        let batch = active.len();
        let mut ids: Vec<i64> = Vec::with_capacity(2 * batch * max_len);
        // one row of the pass: `row` with its first `hide_prompt` ids masked, padded with mask_id
        let push_row = |ids: &mut Vec<i64>, row: &[usize], hide_prompt: usize| {
            ids.extend((0..max_len).map(|l| match row.get(l) {
                Some(&t) if l >= hide_prompt => t as i64,
                _ => mask_id as i64,
            }));
        };
        for &row in &active {
            push_row(&mut ids, &x[row], 0);
        }
        let mut index: Vec<i64> = slots
            .iter()
            .map(|s| (pass_row[s.row] * max_len + s.pos) as i64)
            .collect();
        let mut rows = active.clone();
        if self.config.cfg_scale.is_some() {
            for &row in &active {
                push_row(&mut ids, &x[row], prompts[row].len());
            }
            index.extend(
                slots
                    .iter()
                    .map(|s| ((batch + pass_row[s.row]) * max_len + s.pos) as i64),
            );
            rows.extend(&active);
        }
        // padding: positions past each row's own length are hidden from attention
        let lengths: Vec<usize> = rows.iter().map(|&r| x[r].len()).collect();
        let padding = padding_mask::<B>(&lengths, max_len, &device);
        let n = index.len();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), max_len]), &device);
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device);
        let started = Instant::now();
        let logits = self.model.logits_at(ids, Some(padding), index)?;
        let forward = if self.config.profile {
            B::sync(&device).map_err(|e| device_error("forward pass", e))?;
            Some(started.elapsed())
        } else {
            None
        };
        let cost = StepCost {
            forward_rows: rows.len(),
            positions: rows.len() * max_len,
            reused: false,
        };
        Ok((logits, forward, cost))
    }
}

/// What one denoising pass looks at: the rows' prompts (hidden in the CFG pass), the masked slots
/// to predict, the padded row length, the mask id and the vocabulary size.
struct Pass<'a> {
    prompts: &'a [Vec<usize>],
    slots: &'a [Slot],
    max_len: usize,
    mask_id: usize,
    vocab: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn infill_at_the_end_is_generation_and_keeps_known_tokens() {
        use mdm_models::ModelConfig;
        let model = ModelConfig::custom(50, 2, 2, 32, 64, 32)
            .init_masked::<Flex>(3, &Default::default())
            .unwrap();
        let m = model.mask_id();
        let config = GenerationConfig::default().with_gen_length(5).with_steps(5);
        let sampler = MaskedDiffusionSampler::new(&model, config.clone());
        let prompts = vec![vec![1, 2, 3], vec![4, 5]];
        let generated = sampler.generate(&prompts, |_| {}).unwrap();
        let rows: Vec<Vec<usize>> = prompts
            .iter()
            .map(|p| p.iter().copied().chain([m; 5]).collect())
            .collect();
        let filled = sampler.infill(&rows, |_| {}).unwrap();
        for ((p, g), f) in prompts.iter().zip(&generated).zip(&filled) {
            assert_eq!(&f[..p.len()], &p[..]);
            assert_eq!(&f[p.len()..], &g[..]);
        }
        // masks in the middle and at the start: known tokens kept, every mask filled
        let rows = vec![vec![m, m, 7, 8, m, 9], vec![10, m, 11]];
        let mut steps = 0;
        let filled = sampler.infill(&rows, |_| steps += 1).unwrap();
        assert!(steps > 0);
        for (r, f) in rows.iter().zip(&filled) {
            assert_eq!(r.len(), f.len());
            for (&a, &b) in r.iter().zip(f) {
                if a != m {
                    assert_eq!(a, b);
                }
            }
            assert!(f.iter().all(|&t| t != m));
        }
        let guided = MaskedDiffusionSampler::new(&model, config.with_cfg_scale(1.0));
        assert!(guided.infill(&rows, |_| {}).is_err());
    }

    #[test]
    fn a_callback_can_stop_the_run_and_gets_the_final_prefix() {
        use mdm_models::ModelConfig;
        let model = ModelConfig::custom(50, 2, 2, 32, 64, 32)
            .init_masked::<Flex>(3, &Default::default())
            .unwrap();
        let m = model.mask_id();
        let config = GenerationConfig::default().with_gen_length(8).with_steps(8);
        let sampler = MaskedDiffusionSampler::new(&model, config);
        let prompts = vec![vec![1, 2, 3], vec![4]];
        let whole = sampler.generate(&prompts, |_| {}).unwrap();
        let (mut steps, mut canvas) = (0, Vec::new());
        let stopped = sampler
            .generate(&prompts, |e| {
                steps += 1;
                canvas = e.tokens.to_vec();
                if steps == 3 {
                    StepControl::Stop
                } else {
                    StepControl::Continue
                }
            })
            .unwrap();
        assert_eq!(steps, 3);
        for ((row, p), (s, w)) in canvas.iter().zip(&prompts).zip(stopped.iter().zip(&whole)) {
            // what the stopped run returns is the revealed prefix of its canvas, and the steps
            // it ran are those of the full run
            let gen = &row[p.len()..];
            let final_len = gen.iter().position(|&t| t == m).unwrap_or(gen.len());
            assert_eq!(&s[..], &gen[..final_len]);
            assert_eq!(&s[..], &w[..s.len()]);
            assert!(s.len() < 8);
        }
    }
}
