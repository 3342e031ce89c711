//! # mdm-samplers: the reverse process of masked diffusion models
//!
//! The pieces of one denoising step, usable on their own and exact to the SMDM reference:
//! - [`schedule`]: the times `t_i = linspace(1, eps, steps + 1)` (fp32, as PyTorch computes them)
//!   and how many masked slots a step reveals, `floor(n_masked * (1 - s/t))`;
//! - [`proposal`]: a token for every masked slot (Gumbel-max draw with temperature, in f64) and its
//!   confidence: the softmax probability of that token, or Dream's margin or negative entropy;
//! - [`remasking`]: which proposals are revealed: low-confidence remasking (SMDM's `greddy`,
//!   LLaDA's `low_confidence`), random remasking, ancestral (SMDM's `origin`); new rules implement
//!   [`remasking::Remasking`];
//! - [`step`]: one step over a batch, with per-row counting of masked slots, or SMDM's joint
//!   counting over the whole batch as an explicit compatibility switch ([`step::Counting`]).
//!
//! - [`generate`]: the generation loop over a [`MaskedTransformer`](mdm_models::MaskedTransformer):
//!   ragged batches (right-padded, padding hidden from attention), unsupervised CFG (both passes in
//!   one batch), semi-autoregressive blocks, early stop at EOS, a step callback.
//!
//! - [`autoregressive`]: the baseline's sampler, one token per pass with the KV cache, the same
//!   temperature semantics.
//!
//! Still to come (issue "Samplers"): the `generate` example with live display, and the benchmark.

pub mod autoregressive;
pub mod generate;
pub mod proposal;
pub mod remasking;
pub mod schedule;
pub mod step;

pub use generate::{GenerationConfig, MaskedDiffusionSampler, StepEvent};
pub use step::{Counting, SamplerError};
