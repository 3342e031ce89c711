//! One model type for everything that generates with or scores a model whatever its kind: the
//! evaluation harness and the server hold a [`LanguageModel`], never a masked-or-causal enum.
//!
//! [`Masked`] puts any network behind the masked seam ([`MaskPredictor`]: every family, or a
//! network of one's own) behind it, [`Causal`] any left-to-right network ([`CausalPredictor`]: the
//! autoregressive baseline). What differs between the two kinds (how a batch is decoded, which
//! requests batch, how a continuation is scored and what that costs) is written once, in their
//! impls here. The trait is object safe: a program that learns the kind at run time (from a
//! checkpoint's metadata) holds a `Box<dyn LanguageModel<B>>`.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_core::rng_from_seed;
use mdm_kernels::Kernels;
use mdm_models::{CausalPredictor, MaskPredictor, ModelError, ModelKind};
use mdm_samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
use mdm_samplers::{
    CacheMode, DecodingOptions, Join, MaskedDiffusionSampler, SamplerError, StepControl, StepEvent,
};

use crate::likelihood::{
    causal_score, chain_rule_cfg, chain_rule_rows, greedy_suffix_matches_cfg, mc_elbo, McOptions,
};
use crate::EvalError;

/// A masked diffusion model: any network behind [`MaskPredictor`].
#[derive(Debug, Clone)]
pub struct Masked<M>(pub M);

/// A left-to-right model: any network behind [`CausalPredictor`] (the autoregressive baseline).
#[derive(Debug, Clone)]
pub struct Causal<C>(pub C);

/// What a piece of work cost the model: forward passes, rows through the network (CFG counts its
/// twins), token positions computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardCost {
    /// Forward passes.
    pub passes: usize,
    /// Rows through the network.
    pub rows: usize,
    /// Token positions computed.
    pub tokens: usize,
}

impl std::ops::AddAssign for ForwardCost {
    fn add_assign(&mut self, other: Self) {
        self.passes += other.passes;
        self.rows += other.rows;
        self.tokens += other.tokens;
    }
}

/// Callbacks of one generation run (all optional; `Run::default()` is a plain run).
#[derive(Default)]
pub struct Run<'a> {
    /// One seed per row (masked models: each row draws from its own stream, so a row in a batch
    /// gets what it gets alone; required to join rows).
    pub seeds: Option<Vec<u64>>,
    /// Called after each decoding step (masked models; the baseline has no steps to show).
    pub on_step: Option<&'a mut dyn FnMut(&StepEvent) -> StepControl>,
    /// Continuous batching: before each block after the first, the rows (prompt, seed) that join
    /// the run there ([`MaskedDiffusionSampler::generate_joined`]); only where
    /// [`LanguageModel::joinable`] says so.
    pub join: Option<Join<'a>>,
}

/// Generated tokens (per row, cut at EOS; rows that joined follow the first ones) and their cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Each row's generated tokens.
    pub rows: Vec<Vec<usize>>,
    /// What the run cost.
    pub cost: ForwardCost,
}

/// How a masked model scores a continuation (the baseline's score is always exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// The exact chain rule ([`chain_rule_cfg`]).
    ChainRule,
    /// The Monte Carlo ELBO ([`mc_elbo`]) with its options (their `cfg_scale` is replaced by the
    /// request's) and the seed of its draws.
    MonteCarlo {
        /// Batch, samples, tolerance.
        options: McOptions,
        /// Seed of the draws.
        seed: u64,
    },
}

/// A continuation's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Negative log-likelihood (nats; a bound for the Monte Carlo ELBO).
    pub nll: f64,
    /// Its standard error (0 for exact scores).
    pub stderr: f64,
    /// Whether the continuation is the model's greedy one (when asked).
    pub is_greedy: Option<bool>,
    /// What scoring cost.
    pub cost: ForwardCost,
}

/// A model the harness evaluates and the server serves, whatever its kind.
pub trait LanguageModel<B: Backend> {
    /// A masked diffusion model or the left-to-right baseline (what requests may ask differs).
    fn kind(&self) -> ModelKind;
    /// The logit width: every token id must be below it.
    fn vocab_size(&self) -> usize;
    /// The longest sequence one scoring pass takes (context and continuation together).
    fn max_positions(&self) -> usize;
    /// Most positions of prompt and generation together (the baseline never feeds its last
    /// token back: one more than a pass).
    fn max_sequence(&self) -> usize {
        self.max_positions()
    }
    /// The mask token (masked models).
    fn mask_id(&self) -> Option<usize>;
    /// Whether a row decoded with `options` in a batch gets the tokens it gets alone (with its
    /// own seed, [`Run::seeds`]).
    fn batchable(&self, options: &DecodingOptions) -> bool;
    /// Whether rows decoded with `options` may join a running batch ([`Run::join`]).
    fn joinable(&self, options: &DecodingOptions) -> bool;
    /// Generates `options.gen_length` tokens after each prompt.
    fn generate(
        &self,
        prompts: &[Vec<usize>],
        options: &DecodingOptions,
        run: Run<'_>,
    ) -> Result<Generation, SamplerError>;
    /// The logits `[k, V]` that predict `tokens[from..]` from what precedes each one (`from` at
    /// least 1), in chunks, in order (the server's `logprobs`).
    fn predictions(&self, tokens: &[usize], from: usize) -> Result<Vec<Tensor<B, 2>>, ModelError>;
    /// The score of `continuation` after `context`, with CFG's scale `cfg_scale` (masked models)
    /// and, when `greedy`, whether it is the model's greedy continuation.
    fn score(
        &self,
        context: &[usize],
        continuation: &[usize],
        scoring: &Scoring,
        cfg_scale: f64,
        greedy: bool,
    ) -> Result<Score, EvalError>;
}

/// The first position [`LanguageModel::predictions`] predicts (the first token has nothing
/// before it); `None` when none is left.
fn first_predicted(tokens: &[usize], from: usize) -> Option<usize> {
    let from = from.max(1);
    (from < tokens.len()).then_some(from)
}

/// Rows of the chain rule per forward pass in [`LanguageModel::predictions`].
const PREDICTION_ROWS: usize = 32;

impl<B: Kernels, M: MaskPredictor<B>> LanguageModel<B> for Masked<M> {
    fn kind(&self) -> ModelKind {
        ModelKind::Masked
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }

    fn mask_id(&self) -> Option<usize> {
        Some(self.0.mask_id())
    }

    /// Every row draws from its own stream: all but counting over the whole batch batches.
    fn batchable(&self, o: &DecodingOptions) -> bool {
        !o.joint_counting && !o.mean_counting
    }

    /// See [`MaskedDiffusionSampler::generate_joined`] for what it refuses.
    fn joinable(&self, o: &DecodingOptions) -> bool {
        self.batchable(o) && !o.block_causal && o.cache != CacheMode::Prefix
    }

    fn generate(
        &self,
        prompts: &[Vec<usize>],
        options: &DecodingOptions,
        run: Run<'_>,
    ) -> Result<Generation, SamplerError> {
        let mut sampler = MaskedDiffusionSampler::new(&self.0, options.clone());
        if let Some(seeds) = run.seeds {
            sampler = sampler.with_row_seeds(seeds);
        }
        let mut cost = ForwardCost::default();
        let mut on_step = run.on_step;
        let step = |e: &StepEvent| {
            cost.passes += usize::from(e.cost.forward_rows > 0);
            cost.rows += e.cost.forward_rows;
            cost.tokens += e.cost.positions;
            on_step.as_mut().map_or(StepControl::Continue, |f| f(e))
        };
        let rows = match run.join {
            Some(join) => sampler.generate_joined(prompts, step, join)?,
            None => sampler.generate(prompts, step)?,
        };
        Ok(Generation { rows, cost })
    }

    fn predictions(&self, tokens: &[usize], from: usize) -> Result<Vec<Tensor<B, 2>>, ModelError> {
        let (n, Some(from)) = (tokens.len(), first_predicted(tokens, from)) else {
            return Ok(Vec::new());
        };
        let device = self.0.device();
        // row k: tokens[..from + k], masks after it, scored at position from + k
        let rows = chain_rule_rows(&tokens[..from], &tokens[from..], self.0.mask_id());
        rows.chunks(PREDICTION_ROWS)
            .enumerate()
            .map(|(c, chunk)| {
                let first = from + c * PREDICTION_ROWS;
                let index: Vec<i64> = (0..chunk.len())
                    .map(|r| (r * n + first + r) as i64)
                    .collect();
                let index =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(index, [chunk.len()]), &device);
                let ids = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(chunk.concat(), [chunk.len(), n]),
                    &device,
                );
                self.0.logits_at(ids, None, index)
            })
            .collect()
    }

    fn score(
        &self,
        context: &[usize],
        continuation: &[usize],
        scoring: &Scoring,
        cfg_scale: f64,
        greedy: bool,
    ) -> Result<Score, EvalError> {
        let m = &self.0;
        let len = context.len() + continuation.len();
        let mut cost = ForwardCost::default();
        let est = match *scoring {
            Scoring::ChainRule => {
                cost.passes += 1;
                chain_rule_cfg(m, context, continuation, cfg_scale)?
            }
            Scoring::MonteCarlo { options, seed } => {
                let options = options.with_cfg_scale(cfg_scale);
                let est = mc_elbo(m, context, continuation, options, &mut rng_from_seed(seed))?;
                cost.passes += est.samples.div_ceil(options.batch.max(1));
                est
            }
        };
        cost.rows += est.forward_rows;
        cost.tokens += est.forward_rows * len;
        let is_greedy = if greedy {
            let twins = if cfg_scale == 0.0 { 1 } else { 2 };
            let n = continuation.len();
            cost += ForwardCost {
                passes: n,
                rows: n * twins,
                tokens: n * twins * len,
            };
            Some(greedy_suffix_matches_cfg(
                m,
                context,
                continuation,
                cfg_scale,
            )?)
        } else {
            None
        };
        Ok(Score {
            nll: est.nll,
            stderr: est.stderr,
            is_greedy,
            cost,
        })
    }
}

impl<B: Kernels, C: CausalPredictor<B>> LanguageModel<B> for Causal<C> {
    fn kind(&self) -> ModelKind {
        ModelKind::Causal
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }

    fn max_sequence(&self) -> usize {
        self.0.max_positions() + 1
    }

    fn mask_id(&self) -> Option<usize> {
        None
    }

    /// The sampler draws a batch's tokens from one stream: only greedy decoding batches.
    fn batchable(&self, o: &DecodingOptions) -> bool {
        o.temperature == 0.0
    }

    fn joinable(&self, _: &DecodingOptions) -> bool {
        false
    }

    /// Reads `gen_length`, `temperature`, `eos_id` and `seed` (the rest are a masked model's;
    /// the server refuses them for the baseline, [`DecodingOptions::masked_only_field`]). No step
    /// events, no joining.
    fn generate(
        &self,
        prompts: &[Vec<usize>],
        options: &DecodingOptions,
        _: Run<'_>,
    ) -> Result<Generation, SamplerError> {
        let config = AutoregressiveConfig {
            max_new_tokens: options.gen_length,
            temperature: options.temperature,
            eos_id: options.eos_id,
            seed: options.seed,
        };
        let rows = generate_autoregressive(&self.0, prompts, &config)?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + options.gen_length;
        // the prompt's pass and one pass per further token, each over the cached positions
        let cost = ForwardCost {
            passes: options.gen_length,
            rows: prompts.len(),
            tokens: prompts.len() * longest,
        };
        Ok(Generation { rows, cost })
    }

    fn predictions(&self, tokens: &[usize], from: usize) -> Result<Vec<Tensor<B, 2>>, ModelError> {
        let (n, Some(from)) = (tokens.len(), first_predicted(tokens, from)) else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &self.0.device());
        let logits = self.0.logits(ids)?;
        let v = logits.dims()[2];
        // position i - 1 predicts token i
        Ok(vec![logits
            .narrow(1, from - 1, n - from)
            .reshape([n - from, v])])
    }

    /// Exact in one pass; `scoring` and `cfg_scale` are a masked model's and not read.
    fn score(
        &self,
        context: &[usize],
        continuation: &[usize],
        _: &Scoring,
        _: f64,
        greedy: bool,
    ) -> Result<Score, EvalError> {
        let (est, is_greedy) = causal_score(&self.0, context, continuation)?;
        Ok(Score {
            nll: est.nll,
            stderr: 0.0,
            is_greedy: greedy.then_some(is_greedy),
            cost: ForwardCost {
                passes: 1,
                rows: 1,
                tokens: context.len() + continuation.len(),
            },
        })
    }
}

/// A model behind a pointer is the model (`Box<dyn LanguageModel<B>>`, `&Masked<M>`).
macro_rules! forward_language_model {
    ($($ptr:ty),*) => {$(
        impl<B: Backend, L: LanguageModel<B> + ?Sized> LanguageModel<B> for $ptr {
            fn kind(&self) -> ModelKind {
                (**self).kind()
            }
            fn vocab_size(&self) -> usize {
                (**self).vocab_size()
            }
            fn max_positions(&self) -> usize {
                (**self).max_positions()
            }
            fn max_sequence(&self) -> usize {
                (**self).max_sequence()
            }
            fn mask_id(&self) -> Option<usize> {
                (**self).mask_id()
            }
            fn batchable(&self, options: &DecodingOptions) -> bool {
                (**self).batchable(options)
            }
            fn joinable(&self, options: &DecodingOptions) -> bool {
                (**self).joinable(options)
            }
            fn generate(
                &self,
                prompts: &[Vec<usize>],
                options: &DecodingOptions,
                run: Run<'_>,
            ) -> Result<Generation, SamplerError> {
                (**self).generate(prompts, options, run)
            }
            fn predictions(
                &self,
                tokens: &[usize],
                from: usize,
            ) -> Result<Vec<Tensor<B, 2>>, ModelError> {
                (**self).predictions(tokens, from)
            }
            fn score(
                &self,
                context: &[usize],
                continuation: &[usize],
                scoring: &Scoring,
                cfg_scale: f64,
                greedy: bool,
            ) -> Result<Score, EvalError> {
                (**self).score(context, continuation, scoring, cfg_scale, greedy)
            }
        }
    )*};
}

forward_language_model!(Box<L>, &L);
