//! SMDM (Diff_LLaMA, ML-GSAI/SMDM): the published safetensors files of the masked models and their
//! autoregressive baselines. The shared network's names are SMDM's own (see the crate docs' table),
//! so the file maps one to one; the configuration is one of the 30 published sizes
//! ([`ModelConfig::named`]) or the one a checkpoint was trained with.

use std::path::Path;

use mdm_kernels::Kernels;

use crate::checkpoint::load_net;
use crate::params::Mapped;
use crate::slots::{LayerSlot, Slot};
use crate::{CausalTransformer, MaskedTransformer, ModelConfig, ModelError, WeightFormat};

/// A slot's SMDM name (our checkpoints' names too), PyTorch layout:
///
/// | slot | SMDM name |
/// |---|---|
/// | embedding | `transformer.wte.weight` |
/// | block `i`'s norms | `transformer.h.{i}.norm_1.weight`, `norm_2.weight` |
/// | fused q/k/v (grouped), bias | `transformer.h.{i}.attn.attn.weight`, `.bias` |
/// | attention output | `transformer.h.{i}.attn.proj.weight` |
/// | q/k norms | `transformer.h.{i}.attn.q_norm.weight`, `k_norm` |
/// | SwiGLU gate, up, down | `transformer.h.{i}.mlp.swiglu.w1.weight`, `w2`, `w3` |
/// | router, expert bias | `transformer.h.{i}.mlp.router.weight`, `.expert_bias` |
/// | expert `e`'s / the shared expert's gate, up, down | `transformer.h.{i}.mlp.experts.{e}.w1.weight`, ... / `mlp.shared.w1.weight`, ... |
/// | final norm | `transformer.ln_f.weight` |
/// | head | `lm_head.weight` |
pub fn smdm_name(slot: Slot) -> String {
    use LayerSlot::*;
    let Slot::Layer(l, part) = slot else {
        return match slot {
            Slot::Embedding => "transformer.wte.weight",
            Slot::FinalNorm => "transformer.ln_f.weight",
            _ => "lm_head.weight",
        }
        .into();
    };
    let expert = |e: usize, w: &str| format!("transformer.h.{l}.mlp.experts.{e}.{w}.weight");
    let part = match part {
        AttnNorm => "norm_1.weight",
        Qkv => "attn.attn.weight",
        QkvBias => "attn.attn.bias",
        QNorm => "attn.q_norm.weight",
        KNorm => "attn.k_norm.weight",
        AttnOut => "attn.proj.weight",
        FfnNorm => "norm_2.weight",
        FfnGate => "mlp.swiglu.w1.weight",
        FfnUp => "mlp.swiglu.w2.weight",
        FfnDown => "mlp.swiglu.w3.weight",
        Router => "mlp.router.weight",
        RouterBias => "mlp.router.expert_bias",
        SharedGate => "mlp.shared.w1.weight",
        SharedUp => "mlp.shared.w2.weight",
        SharedDown => "mlp.shared.w3.weight",
        ExpertGate(e) => return expert(e, "w1"),
        ExpertUp(e) => return expert(e, "w2"),
        ExpertDown(e) => return expert(e, "w3"),
    };
    format!("transformer.h.{l}.{part}")
}

/// SMDM's name map: every slot one tensor of the shared layout.
pub(crate) fn smdm_names(slot: Slot) -> Option<Mapped> {
    Some(Mapped::One(smdm_name(slot)))
}

impl<B: Kernels> MaskedTransformer<B> {
    /// Loads an SMDM safetensors file (SMDM names, grouped q/k/v, f32/bf16/f16 tensors, kept in
    /// their stored type) with the config it was trained with. Every tensor must be present with
    /// its exact shape and nothing else may be in the file.
    pub fn load_smdm(
        path: impl AsRef<Path>,
        config: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::load_smdm_as(path, config, WeightFormat::Stored, device)
    }

    /// As [`Self::load_smdm`], the projection weights kept as `format` says.
    pub fn load_smdm_as(
        path: impl AsRef<Path>,
        config: &ModelConfig,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let rows = config.masked_embedding_rows();
        Ok(Self {
            net: load_net(path.as_ref(), config, rows, format, device)?,
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
            net: load_net(path.as_ref(), config, rows, WeightFormat::Stored, device)?,
        })
    }
}
