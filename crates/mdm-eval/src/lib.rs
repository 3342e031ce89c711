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
//! Work in progress (issue "Evaluation"): CFG in the estimators, the task readers and scorers, and
//! the `evaluate` example.

pub mod likelihood;
pub mod perplexity;

pub use likelihood::{EvalError, NllEstimate};
