//! The decoding options: one type for every way this crate decodes, read the same way from Rust
//! (builder methods), from a command line (`clap`, with the `clap` feature: `#[command(flatten)]`)
//! and from JSON (`serde`: the server's request fields), and checked in one place,
//! [`DecodingOptions::validate`], whose error names the field.
//!
//! Every option, what it does and its name in each reference: `docs/decoding.md`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::proposal::Confidence;
use crate::remasking::{
    Ancestral, CarriedThreshold, EntropyBound, Factor, LowConfidence, NamedRule, QuotaThreshold,
    RandomRemasking, Remasking, StochasticConfidence, Threshold,
};
use crate::schedule::DEFAULT_EPS;
use crate::ties::Ties;

/// An option that is out of range or does not combine with another: the field (its JSON name;
/// the command line's is the same with `-` for `_`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{field}`: {reason}")]
pub struct OptionError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad<T>(field: &'static str, reason: impl Into<String>) -> Result<T, OptionError> {
    Err(OptionError {
        field,
        reason: reason.into(),
    })
}

/// Which key/value cache is kept between the steps of a block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// None: every step is a full pass (exact).
    #[default]
    None,
    /// Fast-dLLM's prefix cache (approximate): each block starts with a full pass whose keys and
    /// values before the block are kept; further steps run the block and what follows it.
    Prefix,
    /// Fast-dLLM's dual cache (approximate): the full pass's keys and values of every position
    /// are kept; further steps run the block alone.
    Dual,
}

/// How many masked slots a scheduled step reveals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// SMDM's and Dream's: the times `linspace(1, eps, steps + 1)` and `floor(n (1 - s/t))` of the
    /// `n` slots still masked (all at the last step).
    #[default]
    #[serde(alias = "time-grid", alias = "linear")]
    TimeGrid,
    /// LLaDA's and Fast-dLLM's `get_num_transfer_tokens`: a block's masks spread evenly over its
    /// steps, the first `masks % steps` steps one more.
    #[serde(alias = "uniform")]
    Even,
    /// RND1's (`diffusion_sample`): after step `s` of `N`, `trunc(n s' / N)` of the block's `n`
    /// masks at its start stay masked, `s' = N - 1 - s` (the product in f32, as the reference),
    /// all revealed at the last step.
    Fraction,
    /// LLaDA2's per-step quota: a block of `L` positions over its `steps` steps gets `L / steps`
    /// a step, one more for the first `L % steps` (counted on the block's length, prompt
    /// positions included, not on its masks). With `threshold`, a step reveals every slot above
    /// the threshold when there are at least the quota of them, else the quota's most confident
    /// (LLaDA2's `generate`).
    Quota,
}

/// How many slots a step reveals once the proposals are ranked: the schedule, or a parallel rule
/// that decides from the confidences (the block then runs until it is full).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Parallel {
    /// The [`Schedule`]'s count.
    #[default]
    Scheduled,
    /// Every slot at least `tau` confident, and always the most confident one (Fast-dLLM's
    /// `threshold`, Dream's `confidence_threshold`).
    Threshold(f64),
    /// Fast-dLLM's factor rule (`get_transfer_index_dynamic`): with the confidences sorted,
    /// `c_1 >= c_2 >= ...`, rank `n` passes when `c_n >= 1 - factor / (n + 1)` (rank 1 always); the
    /// ranks before the first failure are revealed.
    Factor {
        /// The factor `f`.
        factor: f64,
        /// Fast-dLLM's code also reveals the last rank when it is the only one to fail; `true`
        /// reproduces that (the default), `false` applies the rule as stated.
        reveal_failing_last_rank: bool,
    },
}

/// Options of a decoding run. `Default`: 32 tokens in 32 steps, one block, greedy low-confidence
/// remasking on SMDM's time grid, no cache, no guidance, seed 0.
///
/// ```
/// use mdm_samplers::{DecodingOptions, CacheMode};
/// let options = DecodingOptions::default()
///     .with_gen_length(64)
///     .with_block_length(32)
///     .with_cache(CacheMode::Dual)
///     .with_threshold(0.9);
/// options.validate().unwrap();
/// // the same options as a server request's fields
/// let json: DecodingOptions = serde_json::from_str(
///     r#"{"gen_length": 64, "block_length": 32, "cache": "dual", "threshold": 0.9}"#).unwrap();
/// assert_eq!(json, options);
/// // a field out of range is named
/// let err = options.with_top_p(1.5).validate().unwrap_err();
/// assert_eq!(err.field, "top_p");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct DecodingOptions {
    /// Tokens to generate after each prompt.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 32))]
    pub gen_length: usize,
    /// Denoising steps in all, split evenly across blocks (default: `gen_length`, one token per
    /// step). The parallel rules (`threshold`, `factor`) take as many as they need.
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    /// Semi-autoregressive block length (LLaDA): blocks decoded left to right (default: one
    /// block of `gen_length`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_length: Option<usize>,
    /// Temperature: tokens drawn from `softmax(logits / T)`; 0 takes the most likely token.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.0))]
    pub temperature: f64,
    /// Nucleus filtering: only the most likely tokens whose probabilities (at the temperature)
    /// sum to `top_p` stay candidates (the first always); in (0, 1], 1 = off.
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_p: Option<f64>,
    /// Only the `top_k` most likely tokens stay candidates (ties with the k-th kept); >= 1.
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_k: Option<usize>,
    /// Only tokens at least `min_p` times as likely as the most likely one stay candidates; in
    /// [0, 1].
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_p: Option<f64>,
    /// Which masked slots a step reveals: `low_confidence` (LLaDA; Dream's `maskgit_plus`),
    /// `margin` (Dream's `topk_margin`), `entropy`, `random`, `ancestral` (SMDM's and Dream's
    /// `origin`).
    #[cfg_attr(
        feature = "clap",
        arg(long, alias = "rule", default_value = "low_confidence")
    )]
    #[serde(alias = "rule", alias = "alg")]
    pub remasking: NamedRule,
    /// Dream's `alg_temp`: the positions revealed are drawn (without replacement) from
    /// `softmax(confidence / alg_temp)` instead of taking the most confident (confidence rules
    /// only; 0 or absent = the most confident).
    #[cfg_attr(feature = "clap", arg(long))]
    pub alg_temp: Option<f64>,
    /// How many slots a scheduled step reveals: `time_grid` (SMDM, Dream) or `even` (LLaDA,
    /// Fast-dLLM).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Schedule::TimeGrid))]
    pub schedule: Schedule,
    /// The last time of the time grid `linspace(1, eps, steps + 1)`: SMDM's 1e-5 by default;
    /// Dream's `eps` is 1e-3 (its `generation_config.json`). In (0, 1).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_EPS as f64))]
    pub eps: f64,
    /// Parallel decoding (Fast-dLLM): every slot of the block at least this confident, and
    /// always the most confident one; the block runs until it is full.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "factor"))]
    pub threshold: Option<f64>,
    /// Parallel decoding by Fast-dLLM's factor rule: rank n of the sorted confidences is
    /// revealed while c_n >= 1 - factor / (n + 1).
    #[cfg_attr(feature = "clap", arg(long))]
    pub factor: Option<f64>,
    /// Apply the factor rule as stated, without Fast-dLLM's code's extra reveal of a last rank
    /// that is the only one to fail.
    #[cfg_attr(feature = "clap", arg(long))]
    pub factor_as_stated: bool,
    /// With `threshold`, Dream's `confidence_threshold` (without blocks): each step reveals at
    /// most its share of the even split plus what earlier steps held back, and of those only the
    /// ones at least `threshold` confident (always the most confident); steps are added until
    /// every slot is revealed.
    #[cfg_attr(feature = "clap", arg(long, requires = "threshold"))]
    pub threshold_carry: bool,
    /// Fast-dLLM's key/value cache between the steps of a block: `none` (exact), `prefix` or
    /// `dual` (approximations).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = CacheMode::None))]
    pub cache: CacheMode,
    /// Unsupervised classifier-free guidance `w`: the prompt-masked pass runs beside the
    /// conditional one, combined as `u + (w + 1)(c - u)`.
    #[cfg_attr(feature = "clap", arg(long))]
    pub cfg_scale: Option<f64>,
    /// Measure confidences under the tempered distribution `softmax(logits / T)` of the kept
    /// tokens, as Dream's `sample_tokens` (its probability, margin or entropy at the temperature),
    /// instead of at temperature 1 (SMDM, LLaDA, Fast-dLLM); no effect at temperature 0.
    #[cfg_attr(feature = "clap", arg(long))]
    pub tempered_confidence: bool,
    /// How equal confidences rank: `first` (the earlier slot) or `torch` (as `torch.topk` on the
    /// CPU over the row: Dream's and Fast-dLLM's Dream code, where `top_p` makes many
    /// confidences exactly 1).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Ties::First))]
    pub ties: Ties,
    /// Count masked slots over the whole batch (SMDM's reference) instead of per row.
    #[cfg_attr(feature = "clap", arg(long))]
    pub joint_counting: bool,
    /// Give every row of a batch the same time-grid count, from the batch's mean masked count,
    /// each row choosing its own (Dream's `diffusion_generate`: `int(mean x (1 - s/t))`). Rows
    /// then depend on each other where their mask counts differ (a model that proposes its mask
    /// token leaves it masked); a row is never given more than it holds masked.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "joint_counting"))]
    pub mean_counting: bool,
    /// End-of-sequence id: a row stops once everything before its first EOS is revealed, and
    /// its output is cut there (the CLI defaults to the tokenizer's).
    #[cfg_attr(feature = "clap", arg(long = "eos"))]
    #[serde(alias = "eos")]
    pub eos_id: Option<usize>,
    /// Seed of every random choice (row `r` of a batch draws from its own stream, `seed + r`;
    /// one stream for the batch under joint counting).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Run every step's forward pass, even after a step that revealed nothing (MDLM's exact
    /// shortcut, on by default, reuses the previous logits there).
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_reuse: bool,
    /// Time every step (`StepEvent::timing`): the device is synchronised after each forward pass.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip)]
    pub profile: bool,
    /// Block diffusion (LLaDA2, SDAR, Fast-dLLM v2): blocks of `block_length` counted from
    /// position 0 (the prompt fills the first ones; the last is decoded whole, the output cut at
    /// `gen_length`), each step a pass over the positions up to its block's end under the
    /// block-causal mask (a block sees itself and the blocks before it), `steps` counted per
    /// block. With `cache = prefix` the earlier blocks' keys/values are cached: exactly, as they
    /// never see later blocks. A row stops after a block whose generated part holds `eos_id`.
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_causal: bool,
    /// With `block_causal`: a step that reveals `eos_id` ends the row at once when nothing before
    /// its first EOS is still masked (LLaDA2's `eos_early_stop`).
    #[cfg_attr(feature = "clap", arg(long, requires = "block_causal"))]
    pub eos_early_stop: bool,
    /// With `block_causal` and `threshold`: every step reveals at least this many slots (all
    /// those above the threshold when there are that many, else this many of the most
    /// confident) and the block runs until it is full, `steps` unused (LLaDA2.1's
    /// `num_to_transfer`).
    #[cfg_attr(feature = "clap", arg(long, requires = "block_causal"))]
    pub per_step: Option<usize>,
    /// Token editing (LLaDA2.1), with `block_causal`: after each pass, a token already decoded in
    /// the current block (not the prompt, not revealed by this pass) whose most likely
    /// replacement differs and is more than this probable is replaced by it; when the block is
    /// full, passes go on while they edit (at most `max_post_steps`). A row then stops at an EOS
    /// only with `eos_early_stop`, after a block.
    #[cfg_attr(feature = "clap", arg(long, requires = "block_causal"))]
    pub edit_threshold: Option<f64>,
    /// With `edit_threshold`: the most passes a full block gets (LLaDA2.1's `max_post_steps`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 16))]
    pub max_post_steps: usize,
    /// At temperature 0, measure confidences (the entropy, the probability) under
    /// `softmax(logits / T)` with this `T`: the tokens stay the most likely ones, the order they
    /// are revealed in changes (RND1's greedy `diffusion_sample` at a `temperature`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub confidence_temperature: Option<f64>,
    /// RND1's entropy-bounded reveals (`eb_gamma`): each step reveals, in order of decreasing
    /// probability, the longest run of slots whose entropies sum to at most `gamma` more than
    /// their largest (always one), everything at the last step; in [0, inf).
    #[cfg_attr(feature = "clap", arg(long))]
    pub eb_gamma: Option<f64>,
}

impl DecodingOptions {
    /// The first option (by its JSON name) set away from its default that only the masked
    /// sampler reads: the autoregressive baseline takes `gen_length`, `temperature`, `seed` and
    /// `eos_id` alone (and `profile`, which prints timings), so a server or program running it
    /// refuses the rest rather than ignoring them.
    pub fn masked_only_field(&self) -> Option<&'static str> {
        let d = Self::default();
        // every field named: a new option must say here whether the baseline reads it
        let Self {
            gen_length: _,
            temperature: _,
            seed: _,
            eos_id: _,
            profile: _,
            steps: _,
            block_length: _,
            top_p: _,
            top_k: _,
            min_p: _,
            remasking: _,
            alg_temp: _,
            schedule: _,
            eps: _,
            threshold: _,
            factor: _,
            factor_as_stated: _,
            threshold_carry: _,
            cache: _,
            cfg_scale: _,
            tempered_confidence: _,
            ties: _,
            joint_counting: _,
            mean_counting: _,
            no_reuse: _,
            block_causal: _,
            eos_early_stop: _,
            per_step: _,
            edit_threshold: _,
            max_post_steps: _,
            confidence_temperature: _,
            eb_gamma: _,
        } = self;
        [
            ("steps", self.steps != d.steps),
            ("block_length", self.block_length != d.block_length),
            ("top_p", self.top_p != d.top_p),
            ("top_k", self.top_k != d.top_k),
            ("min_p", self.min_p != d.min_p),
            ("remasking", self.remasking != d.remasking),
            ("alg_temp", self.alg_temp != d.alg_temp),
            ("schedule", self.schedule != d.schedule),
            ("eps", self.eps != d.eps),
            ("threshold", self.threshold != d.threshold),
            ("factor", self.factor != d.factor),
            (
                "factor_as_stated",
                self.factor_as_stated != d.factor_as_stated,
            ),
            ("threshold_carry", self.threshold_carry != d.threshold_carry),
            ("cache", self.cache != d.cache),
            ("cfg_scale", self.cfg_scale != d.cfg_scale),
            (
                "tempered_confidence",
                self.tempered_confidence != d.tempered_confidence,
            ),
            ("ties", self.ties != d.ties),
            ("joint_counting", self.joint_counting != d.joint_counting),
            ("mean_counting", self.mean_counting != d.mean_counting),
            ("no_reuse", self.no_reuse != d.no_reuse),
            ("block_causal", self.block_causal != d.block_causal),
            ("eos_early_stop", self.eos_early_stop != d.eos_early_stop),
            ("per_step", self.per_step != d.per_step),
            ("edit_threshold", self.edit_threshold != d.edit_threshold),
            ("max_post_steps", self.max_post_steps != d.max_post_steps),
            (
                "confidence_temperature",
                self.confidence_temperature != d.confidence_temperature,
            ),
            ("eb_gamma", self.eb_gamma != d.eb_gamma),
        ]
        .into_iter()
        .find_map(|(name, differs)| differs.then_some(name))
    }
}

impl Default for DecodingOptions {
    fn default() -> Self {
        Self {
            gen_length: 32,
            steps: None,
            block_length: None,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            min_p: None,
            remasking: NamedRule::LowConfidence,
            alg_temp: None,
            schedule: Schedule::TimeGrid,
            threshold: None,
            factor: None,
            factor_as_stated: false,
            threshold_carry: false,
            eps: DEFAULT_EPS as f64,
            ties: Ties::First,
            tempered_confidence: false,
            cache: CacheMode::None,
            cfg_scale: None,
            joint_counting: false,
            mean_counting: false,
            eos_id: None,
            seed: 0,
            no_reuse: false,
            profile: false,
            block_causal: false,
            eos_early_stop: false,
            per_step: None,
            edit_threshold: None,
            max_post_steps: 16,
            confidence_temperature: None,
            eb_gamma: None,
        }
    }
}

/// The shape of a run: blocks, their length, steps per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// Number of blocks.
    pub count: usize,
    /// Tokens per block.
    pub length: usize,
    /// Steps per block (the parallel rules are not bound by it).
    pub steps: usize,
}

/// The token filters and the temperature of the proposals.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sampling {
    /// Temperature (0 = argmax).
    pub temperature: f64,
    /// Nucleus mass (`None` or 1 = off).
    pub top_p: Option<f64>,
    /// Candidates kept (`None` = all).
    pub top_k: Option<usize>,
    /// Relative probability floor (`None` or 0 = off).
    pub min_p: Option<f64>,
    /// Confidences under the tempered distribution `softmax(logits / T)` (Dream) instead of at
    /// temperature 1 (SMDM, LLaDA); no effect at temperature 0.
    pub tempered_confidence: bool,
    /// At temperature 0, confidences under `softmax(logits / T)` with this `T` (the token is the
    /// most likely whatever it is: RND1's greedy sampler at a temperature).
    pub confidence_temperature: Option<f64>,
}

impl Sampling {
    /// Whether any filter is on.
    pub fn filters(&self) -> bool {
        self.top_p.is_some_and(|p| p < 1.0)
            || self.top_k.is_some()
            || self.min_p.is_some_and(|p| p > 0.0)
    }
}

macro_rules! builder {
    ($(#[$doc:meta] $name:ident($field:ident: $ty:ty) => $value:expr;)*) => {
        $(#[$doc] pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $value;
            self
        })*
    };
}

impl DecodingOptions {
    builder! {
        /// Builder: tokens to generate.
        with_gen_length(gen_length: usize) => gen_length;
        /// Builder: denoising steps.
        with_steps(steps: usize) => Some(steps);
        /// Builder: semi-autoregressive blocks of this length.
        with_block_length(block_length: usize) => Some(block_length);
        /// Builder: temperature.
        with_temperature(temperature: f64) => temperature;
        /// Builder: nucleus filtering.
        with_top_p(top_p: f64) => Some(top_p);
        /// Builder: top-k filtering.
        with_top_k(top_k: usize) => Some(top_k);
        /// Builder: min-p filtering.
        with_min_p(min_p: f64) => Some(min_p);
        /// Builder: the remasking rule.
        with_remasking(remasking: NamedRule) => remasking;
        /// Builder: stochastic choice of positions (Dream's `alg_temp`).
        with_alg_temp(alg_temp: f64) => Some(alg_temp);
        /// Builder: the schedule of scheduled steps.
        with_schedule(schedule: Schedule) => schedule;
        /// Builder: the last time of the time grid.
        with_eps(eps: f64) => eps;
        /// Builder: how equal confidences rank.
        with_ties(ties: Ties) => ties;
        /// Builder: parallel decoding by a confidence threshold.
        with_threshold(threshold: f64) => Some(threshold);
        /// Builder: parallel decoding by Fast-dLLM's factor rule.
        with_factor(factor: f64) => Some(factor);
        /// Builder: a block cache.
        with_cache(cache: CacheMode) => cache;
        /// Builder: classifier-free guidance.
        with_cfg_scale(cfg_scale: f64) => Some(cfg_scale);
        /// Builder: stop rows at this id and cut their output there.
        with_eos(eos_id: usize) => Some(eos_id);
        /// Builder: seed.
        with_seed(seed: u64) => seed;
    }

    /// Builder: Dream's `confidence_threshold`: the threshold caps each step's share of the even
    /// split, what it holds back is carried (see [`Self::threshold_carry`]).
    pub fn with_threshold_carry(mut self, threshold: f64) -> Self {
        self.threshold = Some(threshold);
        self.threshold_carry = true;
        self
    }

    /// Builder: SMDM's joint counting over the batch.
    pub fn with_joint_counting(mut self) -> Self {
        self.joint_counting = true;
        self
    }
    /// Builder: Dream's batch count (every row the batch's mean; see [`Self::mean_counting`]).
    pub fn with_mean_counting(mut self) -> Self {
        self.mean_counting = true;
        self
    }
    /// Builder: time every step.
    pub fn with_profiling(mut self) -> Self {
        self.profile = true;
        self
    }
    /// Builder: run every step's forward pass.
    pub fn without_reuse(mut self) -> Self {
        self.no_reuse = true;
        self
    }

    /// Steps in all (`steps`, or `gen_length` when unset).
    pub fn total_steps(&self) -> usize {
        self.steps.unwrap_or(self.gen_length)
    }

    /// The parallel rule the options ask for.
    pub fn parallel(&self) -> Parallel {
        match (self.threshold, self.factor) {
            (Some(tau), _) => Parallel::Threshold(tau),
            (None, Some(factor)) => Parallel::Factor {
                factor,
                reveal_failing_last_rank: !self.factor_as_stated,
            },
            (None, None) => Parallel::Scheduled,
        }
    }

    /// The proposals' temperature and filters.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            tempered_confidence: self.tempered_confidence,
            confidence_temperature: self.confidence_temperature,
        }
    }

    /// The fixed count every step of a block reveals at least, the block running until it is
    /// full: `per_step`, or 1 with token editing (LLaDA2.1's `num_to_transfer` default).
    pub fn step_quota(&self) -> Option<usize> {
        self.per_step.or(self.edit_threshold.map(|_| 1))
    }

    /// What each proposal's confidence measures: the `remasking` rule's, with the entropy beside
    /// the probability for `eb_gamma`.
    pub fn confidence(&self) -> Confidence {
        if self.eb_gamma.is_some() {
            Confidence::ProbabilityAndEntropy
        } else {
            self.remasking.confidence()
        }
    }

    /// The remasking rule: which of a group's proposals a step reveals.
    pub fn rule(&self) -> Box<dyn Remasking> {
        if let Some(gamma) = self.eb_gamma {
            return Box::new(EntropyBound(gamma));
        }
        match self.parallel() {
            Parallel::Threshold(tau) if self.threshold_carry => {
                return Box::new(CarriedThreshold(tau))
            }
            Parallel::Threshold(tau) if self.step_quota().is_some() => {
                return Box::new(QuotaThreshold {
                    tau,
                    until_full: true,
                })
            }
            Parallel::Threshold(tau) if self.schedule == Schedule::Quota => {
                return Box::new(QuotaThreshold {
                    tau,
                    until_full: false,
                })
            }
            Parallel::Threshold(tau) => return Box::new(Threshold(tau)),
            Parallel::Factor {
                factor,
                reveal_failing_last_rank,
            } => {
                return Box::new(Factor {
                    factor,
                    reveal_failing_last_rank,
                })
            }
            Parallel::Scheduled => {}
        }
        match (self.remasking, self.alg_temp.filter(|&a| a > 0.0)) {
            (NamedRule::Random, _) => Box::new(RandomRemasking),
            (NamedRule::Ancestral, _) => Box::new(Ancestral),
            (_, Some(temperature)) => Box::new(StochasticConfidence { temperature }),
            _ => Box::new(LowConfidence),
        }
    }

    /// Checks every option and their combinations; returns the run's blocks. The one place
    /// options are checked: the sampler runs it first, the server before queueing a request.
    pub fn validate(&self) -> Result<Blocks, OptionError> {
        if self.gen_length == 0 {
            return bad("gen_length", "must be at least 1");
        }
        let steps = self.total_steps();
        if steps == 0 {
            return bad("steps", "must be at least 1");
        }
        let length = self.block_length.unwrap_or(self.gen_length);
        let parallel = self.threshold.is_some() || self.factor.is_some();
        let count = if self.block_causal {
            self.validate_block_causal(length)?
        } else {
            for (field, set) in [
                ("eos_early_stop", self.eos_early_stop),
                ("per_step", self.per_step.is_some()),
                ("edit_threshold", self.edit_threshold.is_some()),
            ] {
                if set {
                    return bad(field, "applies to `block_causal` decoding");
                }
            }
            if length == 0 || !self.gen_length.is_multiple_of(length) {
                return bad(
                    "block_length",
                    format!(
                        "{length} must be positive and divide gen_length {}",
                        self.gen_length
                    ),
                );
            }
            self.gen_length / length
        };
        if !parallel && !self.block_causal && !steps.is_multiple_of(count) {
            return bad(
                "steps",
                format!("{steps} must be a multiple of the number of blocks {count}"),
            );
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} must be finite and >= 0", self.temperature),
            );
        }
        if let Some(g) = self.eb_gamma {
            if !(g.is_finite() && g >= 0.0) {
                return bad("eb_gamma", format!("{g} must be finite and >= 0"));
            }
            if parallel || self.remasking != NamedRule::LowConfidence {
                return bad(
                    "eb_gamma",
                    "ranks by probability: not with `threshold`, `factor` or another `remasking`",
                );
            }
        }
        if let Some(t) = self.confidence_temperature {
            if !(t.is_finite() && t > 0.0) {
                return bad(
                    "confidence_temperature",
                    format!("{t} must be finite and > 0"),
                );
            }
            if self.temperature > 0.0 {
                return bad(
                    "confidence_temperature",
                    "applies at temperature 0 (with a temperature, `tempered_confidence`)",
                );
            }
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad("top_p", format!("{p} must lie in (0, 1]"));
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be at least 1");
        }
        if let Some(p) = self.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return bad("min_p", format!("{p} must lie in [0, 1]"));
        }
        if let Some(a) = self.alg_temp {
            if !(a.is_finite() && a >= 0.0) {
                return bad("alg_temp", format!("{a} must be finite and >= 0"));
            }
            if a > 0.0 && !self.remasking.ranks_by_confidence() {
                return bad(
                    "alg_temp",
                    format!(
                        "draws positions by confidence: `{}` does not rank by confidence",
                        self.remasking
                    ),
                );
            }
            if a > 0.0 && parallel {
                return bad(
                    "alg_temp",
                    "the parallel rules (threshold, factor) reveal by their own test",
                );
            }
        }
        match (self.threshold, self.factor) {
            (Some(_), Some(_)) => {
                return bad("factor", "`threshold` and `factor` are two rules: give one")
            }
            (Some(t), None) if !(0.0..=1.0).contains(&t) => {
                return bad("threshold", format!("{t} must lie in [0, 1]"))
            }
            (None, Some(f)) if !(f > 0.0 && f.is_finite()) => {
                return bad("factor", format!("{f} must be positive and finite"))
            }
            _ => {}
        }
        if parallel && !self.remasking.ranks_by_confidence() {
            return bad(
                "remasking",
                format!(
                    "`threshold`/`factor` reveal by confidence: `{}` does not rank by it",
                    self.remasking
                ),
            );
        }
        if self.mean_counting && self.joint_counting {
            return bad(
                "mean_counting",
                "`joint_counting` already counts over the batch: give one",
            );
        }
        if self.mean_counting && (parallel || self.schedule != Schedule::TimeGrid) {
            return bad(
                "mean_counting",
                "the batch's mean count is the time grid's: not with `schedule = even`, `threshold` or `factor`",
            );
        }
        if self.threshold_carry && self.threshold.is_none() {
            return bad(
                "threshold_carry",
                "carries what `threshold` holds back: give `threshold`",
            );
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad("eps", format!("{} must lie in (0, 1)", self.eps));
        }
        if let Some(w) = self.cfg_scale.filter(|w| !w.is_finite()) {
            return bad("cfg_scale", format!("{w} must be finite"));
        }
        Ok(Blocks {
            count,
            length,
            steps: if self.block_causal {
                steps
            } else {
                (steps / count).max(1)
            },
        })
    }

    /// Block diffusion's options (see [`Self::block_causal`]); the most blocks a prompt can need
    /// (blocks are counted from position 0, so `gen_length` need not be whole blocks and the
    /// number of blocks depends on the prompt; `steps` is per block).
    fn validate_block_causal(&self, length: usize) -> Result<usize, OptionError> {
        if self.block_length.is_none_or(|l| l == 0) {
            return bad(
                "block_length",
                "block diffusion needs a positive block length",
            );
        }
        if self.cache == CacheMode::Dual {
            return bad(
                "cache",
                "block diffusion caches the earlier blocks exactly: `prefix` (a dual cache would keep later blocks it never sees)",
            );
        }
        for (field, set) in [
            ("cfg_scale", self.cfg_scale.is_some()),
            ("factor", self.factor.is_some()),
            ("threshold_carry", self.threshold_carry),
            ("joint_counting", self.joint_counting),
            ("mean_counting", self.mean_counting),
        ] {
            if set {
                return bad(field, "not with `block_causal`");
            }
        }
        if self.eos_early_stop && self.eos_id.is_none() {
            return bad("eos_early_stop", "stops at `eos_id`: give it");
        }
        match self.per_step {
            Some(0) => return bad("per_step", "must be at least 1"),
            Some(_) if self.threshold.is_none() => {
                return bad(
                    "per_step",
                    "is the least a `threshold` step reveals: give one",
                )
            }
            _ => {}
        }
        if let Some(e) = self.edit_threshold {
            if self.threshold.is_none() {
                return bad(
                    "edit_threshold",
                    "token editing fills masks by `threshold` (LLaDA2.1's): give one",
                );
            }
            if !(0.0..=1.0).contains(&e) {
                return bad(
                    "edit_threshold",
                    format!("{e} is not a probability in [0, 1]"),
                );
            }
            if self.remasking != NamedRule::LowConfidence {
                return bad(
                    "edit_threshold",
                    "edits by the replacement's probability: `remasking` must be `low_confidence`",
                );
            }
        }
        // a prompt inside block b needs blocks b.. up to the end of its generation
        Ok(self.gen_length.div_ceil(length) + 1)
    }

    /// [`Self::validate`], and the options that depend on the model: `eos_id` inside its
    /// vocabulary of `vocab` ids.
    pub fn validate_for(&self, vocab: usize) -> Result<Blocks, OptionError> {
        let blocks = self.validate()?;
        if let Some(eos) = self.eos_id.filter(|&e| e >= vocab) {
            return bad(
                "eos_id",
                format!("{eos} is outside the model's vocabulary of {vocab}"),
            );
        }
        Ok(blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let o = DecodingOptions::default();
        let cases: Vec<(DecodingOptions, &str)> = vec![
            (o.clone().with_gen_length(0), "gen_length"),
            (o.clone().with_steps(0), "steps"),
            (o.clone().with_block_length(5), "block_length"),
            (o.clone().with_block_length(8).with_steps(6), "steps"),
            (o.clone().with_temperature(-1.0), "temperature"),
            (o.clone().with_temperature(f64::NAN), "temperature"),
            (o.clone().with_top_p(0.0), "top_p"),
            (o.clone().with_top_k(0), "top_k"),
            (o.clone().with_min_p(1.5), "min_p"),
            (o.clone().with_alg_temp(-1.0), "alg_temp"),
            (
                o.clone()
                    .with_alg_temp(0.5)
                    .with_remasking(NamedRule::Random),
                "alg_temp",
            ),
            (o.clone().with_alg_temp(0.5).with_threshold(0.9), "alg_temp"),
            (o.clone().with_threshold(0.9).with_factor(1.0), "factor"),
            (o.clone().with_threshold(1.5), "threshold"),
            (o.clone().with_factor(0.0), "factor"),
            (
                o.clone()
                    .with_threshold(0.5)
                    .with_remasking(NamedRule::Ancestral),
                "remasking",
            ),
            (o.clone().with_cfg_scale(f64::INFINITY), "cfg_scale"),
        ];
        for (options, field) in cases {
            assert_eq!(options.validate().unwrap_err().field, field, "{options:?}");
        }
        assert_eq!(
            o.clone().with_eos(100).validate_for(100).unwrap_err().field,
            "eos_id"
        );
        let blocks = o
            .with_gen_length(64)
            .with_block_length(16)
            .with_steps(32)
            .validate()
            .unwrap();
        assert_eq!((blocks.count, blocks.length, blocks.steps), (4, 16, 8));
    }

    #[test]
    fn json_names_and_aliases() {
        let o: DecodingOptions = serde_json::from_str(
            r#"{"alg": "maskgit_plus", "alg_temp": 0.2, "top_k": 3, "schedule": "even",
                "cache": "prefix", "eos": 5}"#,
        )
        .unwrap();
        assert_eq!(o.remasking, NamedRule::LowConfidence);
        assert_eq!(
            (o.alg_temp, o.top_k, o.eos_id),
            (Some(0.2), Some(3), Some(5))
        );
        assert_eq!((o.schedule, o.cache), (Schedule::Even, CacheMode::Prefix));
        for (name, rule) in [
            ("topk_margin", NamedRule::Margin),
            ("origin", NamedRule::Ancestral),
            ("entropy", NamedRule::Entropy),
            ("random", NamedRule::Random),
            ("low-confidence", NamedRule::LowConfidence),
        ] {
            let o: DecodingOptions =
                serde_json::from_str(&format!(r#"{{"remasking": "{name}"}}"#)).unwrap();
            assert_eq!(o.remasking, rule, "{name}");
        }
        assert!(serde_json::from_str::<DecodingOptions>(r#"{"remasking": "best"}"#).is_err());
        // serialised and read back: the same options
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<DecodingOptions>(&text).unwrap(), o);
    }
}
