//! SMDM (Diff_LLaMA, ML-GSAI/SMDM): the published safetensors files of the masked models and their
//! autoregressive baselines. The shared network's names are SMDM's own (see the crate docs' table),
//! so the file maps one to one; the configuration is one of the 30 published sizes
//! ([`ModelConfig::named`]) or the one a checkpoint was trained with.

use std::path::Path;

use mdm_kernels::Kernels;

use crate::checkpoint::load_net;
use crate::{CausalTransformer, MaskedTransformer, ModelConfig, ModelError};

impl<B: Kernels> MaskedTransformer<B> {
    /// Loads an SMDM safetensors file (SMDM names, grouped q/k/v, f32/bf16/f16 tensors) with the
    /// config it was trained with. Every tensor must be present with its exact shape and nothing
    /// else may be in the file.
    pub fn load_smdm(
        path: impl AsRef<Path>,
        config: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let rows = config.masked_embedding_rows();
        Ok(Self {
            net: load_net(path.as_ref(), config, rows, device)?,
        })
    }
}

impl<B: Kernels> CausalTransformer<B> {
    /// Loads an autoregressive-baseline safetensors file with SMDM names (embedding of `V` rows).
    pub fn load_smdm(
        path: impl AsRef<Path>,
        config: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let rows = config.padded_vocab_size();
        Ok(Self {
            net: load_net(path.as_ref(), config, rows, device)?,
        })
    }
}
