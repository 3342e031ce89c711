//! # mdm-samplers: the reverse process of masked diffusion models
//!
//! The pieces of one denoising step, usable on their own and exact to the SMDM reference:
//! - [`schedule`]: the times `t_i = linspace(1, eps, steps + 1)` (fp32, as PyTorch computes them)
//!   and how many masked slots a step reveals, `floor(n_masked * (1 - s/t))`;
//! - [`proposal`]: a token for every masked slot and its confidence (the softmax probability of
//!   that token, or Dream's margin or negative entropy), as the f64 reference: SMDM's Gumbel-max
//!   draw over every logit;
//! - [`greedy`]: the temperature-0 proposals (argmax and its probability) computed in place on
//!   the host by a vectorised kernel ([`kernel`], [`host`]), or reduced on the device;
//! - [`draw`]: [`draw::proposals`], the one function every path proposes with: any temperature,
//!   the `top_p` / `top_k` / `min_p` filters and every confidence, by the same kernels (one uniform
//!   per slot: the distribution of SMDM's Gumbel-max draw);
//! - [`remasking`]: which proposals are revealed: low-confidence remasking (SMDM's `greddy`,
//!   LLaDA's `low_confidence`), random remasking, ancestral (SMDM's `origin`); new rules implement
//!   [`remasking::Remasking`];
//! - [`step`]: one step over a batch, with per-row counting of masked slots, or SMDM's joint
//!   counting over the whole batch as an explicit compatibility switch ([`step::Counting`]).
//!
//! - [`options`]: [`DecodingOptions`], every decoding option in one type (serde, clap), checked
//!   once by [`DecodingOptions::validate`];
//! - [`decode`]: the one decoding loop every method runs through (whole sequence or blocks,
//!   infilling, no / prefix / dual cache, the schedules and the parallel rules, CFG, ragged batches
//!   with per-row EOS, MDLM's skipped pass, step events and a callback that can stop the run);
//! - [`generate`]: [`MaskedDiffusionSampler`], generation, decoding and infilling over any
//!   [`MaskPredictor`](mdm_models::MaskPredictor).
//!
//! - [`autoregressive`]: the baseline's sampler, one token per pass with the KV cache, the same
//!   temperature semantics.
//!
//! ## Embedding the sampler in a program
//!
//! Load a checkpoint folder and its tokenizer (as `pretrain` leaves them in `<out>/model/`),
//! encode a prompt, generate, decode. Here the folder is made on the spot from a tiny random model
//! so that the example runs anywhere:
//!
//! ```
//! use burn::backend::Flex;
//! use mdm_data::Tokenizer;
//! use mdm_models::{MaskedTransformer, ModelConfig};
//! use mdm_samplers::{DecodingOptions, MaskedDiffusionSampler};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let text = std::iter::repeat_n("In the beginning God created the heaven and the earth.", 20);
//! # let tok = Tokenizer::train_bpe(text, 300)?;
//! # tok.save(dir.path().join("tokenizer.json"))?;
//! # let config = ModelConfig::custom(tok.vocab_size(), 2, 2, 32, 64, 64);
//! # config.init_masked::<Flex>(0, &Default::default())?.save(dir.path())?;
//! let device = Default::default();
//! let model = MaskedTransformer::<Flex>::load(dir.path(), &device)?;
//! let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json"))?;
//!
//! let prompt: Vec<usize> = tokenizer
//!     .encode("In the beginning", true)?
//!     .into_iter()
//!     .map(|t| t as usize)
//!     .collect();
//! let config = DecodingOptions::default()
//!     .with_gen_length(16)
//!     .with_steps(8)
//!     .with_eos(tokenizer.eos_id() as usize)
//!     .with_seed(7);
//! let sampler = MaskedDiffusionSampler::new(&model, config);
//! let outputs = sampler.generate(&[prompt], |event| {
//!     eprintln!("step {}: {} revealed", event.step, event.revealed.len());
//! })?;
//! let ids: Vec<u32> = outputs[0].iter().map(|&t| t as u32).collect();
//! println!("{}", tokenizer.decode(&ids)?);
//! assert!(outputs[0].len() <= 16);
//! # Ok(()) }
//! ```

pub mod autoregressive;
pub mod decode;
pub mod draw;
pub mod generate;
pub mod greedy;
pub mod host;
pub mod kernel;
pub mod options;
pub mod proposal;
pub mod remasking;
pub mod schedule;
pub mod step;
pub mod ties;

pub use decode::{Decoded, Join, StepControl, StepCost, StepEvent, StepTiming};
pub use generate::MaskedDiffusionSampler;
pub use options::{CacheMode, DecodingOptions, OptionError, Parallel, Schedule};
pub use remasking::NamedRule;
pub use step::{Counting, SamplerError};
pub use ties::Ties;
