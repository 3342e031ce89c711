//! # mdm: masked diffusion language models in Rust
//!
//! The facade of the `mdm-rs` workspace: it re-exports the science crates and picks the backend
//! that examples and benches run on, by Cargo feature.
//!
//! | crate | re-exported as | what |
//! |---|---|---|
//! | `mdm-kernels` | [`kernels`] | fused attention, cross-entropy, RMSNorm, SwiGLU: our own on the CPU backend |
//! | `mdm-core` | [`diffusion`] | schedule, forward process, losses, CFG, Gumbel draws |
//! | `mdm-models` | [`models`] | networks, the families (one file each), weight reading, the seams |
//! | `mdm-hub` | [`hub`] | where a model comes from: `ModelSource`, the hub, the memory check, `ModelArgs` |
//! | `mdm-samplers` | [`samplers`] | the one decoding loop and its options |
//! | `mdm-eval` | [`eval`] | likelihoods, perplexity, tasks; `LanguageModel` (masked or causal) |
//! | `mdm-data` | [`data`] | tokenizers, packed token shards, fine-tuning datasets |
//! | `mdm-train` | [`train`](mod@train) | the training loop: MDM and baseline, pre-training and fine-tuning |
//!
//! The server, `mdm-serve`, is a crate of its own (binary `mdm-serve`).
//!
//! Backends (exactly as the features say; the first enabled one in this order is [`backend::Default`](type@backend::Default)):
//! `cuda` (burn-cuda), `wgpu` (burn-wgpu), `flex` (burn-flex, pure-Rust CPU, the default),
//! `ndarray` (burn-ndarray).
//!
//! ```
//! use mdm::backend::{self, Default as B};
//! use mdm::burn::tensor::{Int, Tensor};
//! use mdm::models::ModelConfig;
//!
//! let device = backend::device();
//! let config = ModelConfig::custom(1000, 2, 4, 64, 256, 128);
//! let model = config.init_masked::<B>(42, &device).unwrap();
//! let ids = Tensor::<B, 2, Int>::from_ints([[1, 2, config.mask_id() as i32, 4]], &device);
//! let logits = model.forward(ids).unwrap();
//! assert_eq!(logits.dims(), [1, 4, config.padded_vocab_size()]);
//! ```

pub use burn;
pub use mdm_core as diffusion;
pub use mdm_data as data;
pub use mdm_eval as eval;
pub use mdm_hub as hub;
pub use mdm_kernels as kernels;
pub use mdm_models as models;
pub use mdm_samplers as samplers;
pub use mdm_train as train;

mod allocator;
pub mod backend;
pub mod cli;

pub use allocator::Allocator;

/// The types most programs need.
pub mod prelude {
    pub use crate::backend::{self, Default as DefaultBackend};
    pub use mdm_core::{
        cfg::cfg_combine, forward_process::ForwardProcess, gumbel::sample_tokens,
        loss::pretrain_loss, rng_from_seed, MdmRng,
    };
    pub use mdm_eval::{Causal, LanguageModel, Masked};
    pub use mdm_hub::{ModelArgs, ModelSource};
    pub use mdm_models::{
        CausalPredictor, CausalTransformer, KvCache, MaskPredictor, MaskedTransformer, ModelConfig,
        ModelError,
    };
}

/// The README's Rust example, compiled by `cargo test` (not run: it needs a published checkpoint).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
