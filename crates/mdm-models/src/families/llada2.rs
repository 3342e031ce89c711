//! LLaDA2.0 / LLaDA2.1 (inclusionAI/LLaDA2.0-mini, -flash, LLaDA2.1-mini): a Bailing-MoE network,
//! from a Hugging Face folder (`model_type: "llada2_moe"`, LLaDA2.1's `"llada21_moe"`;
//! `modeling_llada2_moe.py`).
//!
//! What it computes, as the reference does: RMSNorm blocks; one fused `query_key_value` projection
//! (rows: every query head, then the key heads, then the value heads; regrouped here on load), a
//! per-head RMSNorm of q and k (`query_layernorm`, `key_layernorm`, gain `[head_dim]`) under
//! `use_qk_norm`, rotate-half RoPE on the first `partial_rotary_factor` of each head, `head_dim`
//! apart from `hidden_size / heads`; the first `first_k_dense_replace` layers a dense SwiGLU of
//! `intermediate_size`, the others a Mixture of Experts: `sigmoid` scores in f32, the expert bias
//! (`mlp.gate.expert_bias`) added **for the choice only**, `n_group` groups each scored by its two
//! best biased scores and only the `topk_group` best kept, `topk`, the unbiased scores of the
//! chosen divided by their sum (when `top_k > 1`) and multiplied by `routed_scaling_factor`, plus the
//! shared experts (`num_shared_experts` x `moe_intermediate_size`). Logits unshifted. The network
//! is bidirectional; generation runs it under a block-causal mask.
//!
//! | name (`model.layers.{i}.` + ...) | shape |
//! |---|---|
//! | `model.word_embeddings.weight` | `[V, C]` |
//! | `input_layernorm.weight`, `post_attention_layernorm.weight` | `[C]` |
//! | `attention.query_key_value.weight` | `[(H + 2K) D, C]` |
//! | `attention.query_layernorm.weight`, `key_layernorm.weight` | `[D]` |
//! | `attention.dense.weight` | `[C, H D]` |
//! | `mlp.{gate,up,down}_proj.weight` (dense layers) | |
//! | `mlp.gate.weight`, `mlp.gate.expert_bias` | `[E, C]`, `[E]` |
//! | `mlp.experts.{e}.{gate,up,down}_proj.weight`, `mlp.shared_experts.*` | |
//! | `model.norm.weight`, `lm_head.weight` (absent when tied) | `[C]`, `[V, C]` |

use serde_json::Value;

use super::keys::Keys;
use super::Family;
use crate::hf::HfFolder;
use crate::params::Mapped;
use crate::slots::{LayerSlot, Slot};
use crate::{ExpertBias, ModelConfig, ModelError, MoeConfig, RouterScore};

/// The shared network's config of a LLaDA2 `config.json`; a value the network does not compute is
/// an error naming the key.
pub(crate) fn model_config(k: &Keys) -> Result<ModelConfig, ModelError> {
    k.require(
        "model_type",
        &[Value::from("llada2_moe"), Value::from("llada21_moe")],
        "this reader is for model_type `llada2_moe` and `llada21_moe`",
    )?;
    for key in [
        "use_qkv_bias",
        "use_bias",
        "norm_head",
        "use_sliding_window",
    ] {
        k.require(key, &[Value::from(false)], "not supported by this network")?;
    }
    k.require("rope_scaling", &[], "RoPE scaling is not supported")?;
    k.require("hidden_act", &[Value::from("silu")], "only SwiGLU experts")?;
    k.require(
        "score_function",
        &[Value::from("sigmoid")],
        "LLaDA2's gate scores with sigmoid",
    )?;
    let hidden = k.usize("hidden_size")?;
    let heads = k.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(k.unsupported("num_attention_heads", "must be positive"));
    }
    let n_layer = k.usize("num_hidden_layers")?;
    let first_dense = k.opt_usize("first_k_dense_replace")?.unwrap_or(0);
    let top_k = k.usize("num_experts_per_tok")?;
    let expert_size = k.usize("moe_intermediate_size")?;
    let moe = MoeConfig {
        n_experts: k.usize("num_experts")?,
        top_k,
        expert_size,
        shared_size: expert_size * k.opt_usize("num_shared_experts")?.unwrap_or(0),
        score: RouterScore::Sigmoid,
        // the reference divides by the sum only when more than one expert is chosen
        renormalize: top_k > 1,
        scaling: k.f64_or("routed_scaling_factor", 1.0)?,
        groups: k.opt_usize("n_group")?.unwrap_or(1),
        topk_groups: k.opt_usize("topk_group")?.unwrap_or(1),
        expert_bias: if k.bool_or("moe_router_enable_expert_bias", true)? {
            ExpertBias::Selection
        } else {
            ExpertBias::None
        },
        dense_layers: (0..first_dense.min(n_layer)).collect(),
        // balanced by its expert bias: `modeling_llada2_moe.py`'s `aux_loss` is always None
        aux_loss_coef: 0.0,
    };
    let vocab = k.usize("vocab_size")?;
    let config = ModelConfig {
        name: "llada2".into(),
        block_size: k.usize("max_position_embeddings")?,
        vocab_size: vocab,
        padding_multiple: 1,
        padded_vocab_size: Some(vocab),
        n_layer,
        n_head: heads,
        n_embd: hidden,
        n_query_groups: Some(k.opt_usize("num_key_value_heads")?.unwrap_or(heads)),
        intermediate_size: k.usize("intermediate_size")?,
        norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
        rope_base: k.f64_or("rope_theta", 10_000.0)?,
        rotary_percentage: k.f64_or("partial_rotary_factor", 1.0)?,
        condense_ratio: 1,
        rope_bf16_tables: false,
        mask_token_id: Some(k.usize("mask_token_id")?),
        qkv_bias: false,
        shift_logits: false,
        tie_embeddings: k.bool_or("tie_word_embeddings", false)?,
        head_dim: Some(k.opt_usize("head_dim")?.unwrap_or(hidden / heads)),
        qk_norm: k.bool_or("use_qk_norm", false)?,
        moe: Some(moe),
    };
    config
        .validate()
        .map_err(|e| k.unsupported("num_experts", &e.to_string()))?;
    Ok(config)
}

/// LLaDA2's tensor(s) of a slot (the table above).
pub(crate) fn llada2_name(slot: Slot) -> Option<Mapped> {
    use LayerSlot::*;
    let Slot::Layer(l, part) = slot else {
        let name = match slot {
            Slot::Embedding => "model.word_embeddings.weight",
            Slot::FinalNorm => "model.norm.weight",
            _ => "lm_head.weight",
        };
        return Some(Mapped::One(name.into()));
    };
    let p = format!("model.layers.{l}.");
    let expert = |e: usize, w: &str| Some(Mapped::One(format!("{p}mlp.experts.{e}.{w}.weight")));
    let name = match part {
        Qkv => {
            return Some(Mapped::Stacked(format!(
                "{p}attention.query_key_value.weight"
            )))
        }
        QkvBias => return None,
        RouterBias => return Some(Mapped::One(format!("{p}mlp.gate.expert_bias"))),
        ExpertGate(e) => return expert(e, "gate_proj"),
        ExpertUp(e) => return expert(e, "up_proj"),
        ExpertDown(e) => return expert(e, "down_proj"),
        AttnNorm => "input_layernorm",
        QNorm => "attention.query_layernorm",
        KNorm => "attention.key_layernorm",
        AttnOut => "attention.dense",
        FfnNorm => "post_attention_layernorm",
        FfnGate => "mlp.gate_proj",
        FfnUp => "mlp.up_proj",
        FfnDown => "mlp.down_proj",
        Router => "mlp.gate",
        SharedGate => "mlp.shared_experts.gate_proj",
        SharedUp => "mlp.shared_experts.up_proj",
        SharedDown => "mlp.shared_experts.down_proj",
    };
    Some(Mapped::One(format!("{p}{name}.weight")))
}

/// The LLaDA2 family of `folder`.
pub(crate) fn family(folder: &HfFolder) -> Result<Family, ModelError> {
    let keys = Keys {
        json: folder.config(),
        file: folder.config_file(),
    };
    Ok(Family {
        name: "LLaDA2",
        config: model_config(&keys)?,
        names: llada2_name,
    })
}
