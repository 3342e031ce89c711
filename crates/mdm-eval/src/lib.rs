//! # mdm-eval: likelihoods of a continuation given a context
//!
//! SMDM.md section 4, for a [`MaskedTransformer`](mdm_models::MaskedTransformer):
//! - [`likelihood::chain_rule`]: the exact left-to-right likelihood, `n` passes batched; pass `k`
//!   sees the prefix, `y_<k` and masks at positions `>= k`;
//! - [`likelihood::mc_elbo`]: the Monte Carlo ELBO bound with stratified `t` per batch, with its
//!   standard error, optionally adaptive (stop once the standard error is below a tolerance);
//! - [`likelihood::greedy_suffix_matches`]: the greedy suffix check (LAMBADA accuracy);
//! - [`likelihood::causal_nll`]: the exact NLL under the autoregressive baseline.
//! - [`perplexity`]: per-token bounds and NLLs over held-out blocks (validation shards), with the
//!   unigram entropy to compare them with.
//!
//!   [`perplexity::generative_perplexity`] scores generations under an autoregressive judge.
//! - [`tasks`]: JSONL task files (multiple choice, LAMBADA-style continuations, GSM8K, prompt /
//!   completion), shape read from the keys; [`metrics`]: `acc`, `acc_norm`, standard errors,
//!   GSM8K answers, reverse-curse exact match, sentence BLEU; [`harness`]: a task on a model, with
//!   the estimator and CFG scale chosen per task, a results table and what it cost.
//!
//! Every estimator of an MDM takes an unsupervised classifier-free guidance scale (`cfg_scale`, `w`:
//! logits `u + (w + 1)(c - u)` where `u` comes from the same input with the prefix masked).

pub mod harness;
pub mod likelihood;
pub mod metrics;
pub mod model;
pub mod perplexity;
pub mod tasks;

pub use likelihood::{EvalError, NllEstimate};
pub use model::{Causal, ForwardCost, Generation, LanguageModel, Masked, Run, Score, Scoring};
