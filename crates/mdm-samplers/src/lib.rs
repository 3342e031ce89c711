//! # mdm-samplers: the reverse process of masked diffusion models
//!
//! The pieces of one denoising step, usable on their own and exact to the SMDM reference:
//! - [`schedule`]: the times `t_i = linspace(1, eps, steps + 1)` (fp32, as PyTorch computes them)
//!   and how many masked slots a step reveals, `floor(n_masked * (1 - s/t))`;
//! - [`proposal`]: a token for every masked slot (Gumbel-max draw with temperature, in f64) and its
//!   confidence, the softmax probability of that token;
//! - [`remasking`]: which proposals are revealed: low-confidence remasking (SMDM's `greddy`,
//!   LLaDA's `low_confidence`), random remasking, ancestral (SMDM's `origin`); new rules implement
//!   [`remasking::Remasking`];
//! - [`step`]: one step over a batch, with per-row counting of masked slots, or SMDM's joint
//!   counting over the whole batch as an explicit compatibility switch ([`step::Counting`]).
//!
//! Work in progress (issue "Samplers"): the generation loop over a model (ragged batches, CFG,
//! semi-autoregressive blocks, early stop at EOS, step callback), the autoregressive sampler and the
//! `generate` example build on these pieces.

pub mod proposal;
pub mod remasking;
pub mod schedule;
pub mod step;

pub use step::{Counting, SamplerError};
