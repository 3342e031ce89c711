//! # mdm-models: the Diff_LLaMA network of SMDM and its autoregressive baseline
//!
//! - [`ModelConfig`]: the 30 published sizes by name (`Diff_LLaMA_170M` or `170M`) and custom ones.
//! - [`MaskedTransformer`]: the bidirectional network of a masked diffusion model.
//! - [`CausalTransformer`] with [`KvCache`]: the autoregressive baseline.
//! - Checkpoints: [`MaskedTransformer::load_smdm`] reads the published SMDM safetensors files;
//!   `save` / `load` use our folder format ([`checkpoint`]).
//! - The families side by side ([`families`]): SMDM ([`smdm`]), LLaDA ([`llada`]) and Dream
//!   ([`dream`]) on the same network; [`MaskedTransformer::load_hf`] reads a Hugging Face folder
//!   (`config.json` + `model.safetensors` or shards with an index, [`hf`]) by its `model_type`
//!   (`llada`: mask token inside the vocabulary, fp32 RoPE tables; `Dream`: q/k/v biases and
//!   shifted logits as well).
//!
//! Architecture (SMDM.md section 6): token embedding; `n_layer` blocks of
//! `x = x + Attn(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))`; final RMSNorm; linear head; no biases;
//! RoPE in rotate-half layout, optionally with bf16-rounded tables as the published models.
//!
//! The weights are slots ([`slots`]: one per tensor, with its shape and role); each family's file
//! names them ([`families`]); our checkpoints use SMDM's names ([`smdm::smdm_name`]), PyTorch
//! layout `[out, in]`, grouped q/k/v.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Int, Tensor};
//! use mdm_models::ModelConfig;
//!
//! let device = Default::default();
//! let config = ModelConfig::custom(100, 2, 4, 64, 128, 32);
//! let model = config.init_masked::<Flex>(0, &device).unwrap();
//! let mask = config.mask_id() as i32;
//! let ids = Tensor::<Flex, 2, Int>::from_ints([[5, 6, mask, 8]], &device);
//! let logits = model.forward(ids).unwrap();
//! assert_eq!(logits.dims(), [1, 4, 128]);
//! ```

pub mod attention;
pub mod block_cache;
pub mod causal;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod families;
pub mod gguf;
pub mod hf;
pub mod linear;
pub mod masked;
pub mod memory;
pub mod mlp;
pub mod moe;
pub mod norm;
mod params;
pub mod precision;
pub mod predictor;
pub mod rope;
pub mod slots;
pub mod transformer;

pub use block_cache::BlockCache;
pub use causal::{CausalTransformer, KvCache};
pub use checkpoint::{CheckpointMeta, ModelKind};
pub use config::{ExpertBias, ModelConfig, MoeConfig, RouterScore};
pub use error::ModelError;
pub use families::{dream, hf_model_config, is_hf_folder, llada, load_hf, smdm};
pub use linear::{Proj, WeightFormat};
pub use masked::MaskedTransformer;
pub use precision::Precision;
pub use predictor::{CausalPredictor, DecodingCache, MaskPredictor, NoCache};
