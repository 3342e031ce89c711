//! LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-Base / -Instruct): an OLMoE-style network run
//! bidirectionally, from a Hugging Face folder (`model_type: "lladamoe"`, `modeling_lladamoe.py`),
//! decoded as LLaDA.
//!
//! What it computes, as the reference does: RMSNorm blocks; `q_proj` / `k_proj` / `v_proj` (fused
//! here) with, under `qk_layernorm`, a per-head RMSNorm of q and k (gain `[hidden / heads]`) before
//! rotate-half RoPE on the first `partial_rotary_factor` of each head; no mask (a padded batch
//! hides its padding keys); a Mixture of Experts in the layers `moe_layer_freq` marks 1 (a 0 marks a
//! dense SwiGLU of `dense_intermediate_size`): `softmax` scores in f32, `topk` **without**
//! renormalising (the block hard-codes `norm_topk_prob = False`, whatever the config says; the
//! config's `routed_scaling_factor` and `router_num_group` are not used), plus the shared expert
//! (`shared_expert.*`, on the layer) when `shared_expert_intermediate_size` is set. Logits
//! unshifted. `output_router_logits` with `router_aux_loss_coef` sets the weight of the
//! load-balancing loss training adds (`MoeConfig::aux_loss_coef`; the reference's own forward fails
//! when asked for it: docs/training.md).
//!
//! Tensor names are Qwen's ([`super::dream::qwen_name`]): `model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `self_attn.{q,k}_norm.weight`,
//! `mlp.gate.weight`, `mlp.experts.{e}.{gate,up,down}_proj.weight`, dense layers'
//! `mlp.{gate,up,down}_proj.weight`, `shared_expert.{gate,up,down}_proj.weight`, `model.norm.weight`,
//! `lm_head.weight` (absent when `tie_word_embeddings`).

use serde_json::Value;

use super::keys::Keys;
use super::{llama_cpp, Family, GgufLayout, GgufMoe};
use crate::hf::HfFolder;
use crate::{ExpertBias, ModelConfig, ModelError, MoeConfig, RouterScore};

/// The dense layers of `moe_layer_freq` (a list of 0/1 per layer, or the integer 1: every layer a
/// Mixture of Experts).
fn dense_layers(k: &Keys, n_layer: usize) -> Result<Vec<usize>, ModelError> {
    match k.json.get("moe_layer_freq") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Vec::new()),
        Some(Value::Array(flags)) if flags.len() == n_layer => {
            let mut dense = Vec::new();
            for (l, flag) in flags.iter().enumerate() {
                match flag.as_u64() {
                    Some(0) => dense.push(l),
                    Some(1) => {}
                    _ => return Err(k.unsupported("moe_layer_freq", "entries must be 0 or 1")),
                }
            }
            Ok(dense)
        }
        Some(_) => Err(k.unsupported(
            "moe_layer_freq",
            "must be 1 or a list of 0/1, one per layer",
        )),
    }
}

/// The shared network's config of a LLaDA-MoE `config.json`; a value the network does not compute
/// is an error naming the key.
pub(crate) fn model_config(k: &Keys) -> Result<ModelConfig, ModelError> {
    k.require(
        "model_type",
        &[Value::from("lladamoe")],
        "this reader is for model_type `lladamoe`",
    )?;
    k.require(
        "attention_bias",
        &[Value::from(false)],
        "q/k/v biases are not supported",
    )?;
    k.require("clip_qkv", &[], "q/k/v clipping is not supported")?;
    k.require("rope_scaling", &[], "RoPE scaling is not supported")?;
    k.require("hidden_act", &[Value::from("silu")], "only SwiGLU experts")?;
    k.require(
        "moe_router_score_function",
        &[Value::from("softmax")],
        "LLaDA-MoE's block scores with softmax",
    )?;
    k.require(
        "moe_router_enable_expert_bias",
        &[Value::from(false)],
        "no published LLaDA-MoE has an expert bias (its tensor name is unknown)",
    )?;
    let hidden = k.usize("hidden_size")?;
    let heads = k.usize("num_attention_heads")?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(k.unsupported("num_attention_heads", "must divide hidden_size"));
    }
    let n_layer = k.usize("num_hidden_layers")?;
    let moe = MoeConfig {
        n_experts: k.usize("num_experts")?,
        top_k: k.usize("num_experts_per_tok")?,
        expert_size: k.usize("expert_intermediate_size")?,
        shared_size: k.opt_usize("shared_expert_intermediate_size")?.unwrap_or(0),
        score: RouterScore::Softmax,
        renormalize: false,
        scaling: 1.0,
        groups: 1,
        topk_groups: 1,
        expert_bias: ExpertBias::None,
        dense_layers: dense_layers(k, n_layer)?,
        aux_loss_coef: if k.bool_or("output_router_logits", false)? {
            k.f64_or("router_aux_loss_coef", 0.01)?
        } else {
            0.0
        },
    };
    let vocab = k.usize("vocab_size")?;
    let config = ModelConfig {
        name: "lladamoe".into(),
        block_size: k.usize("max_position_embeddings")?,
        vocab_size: vocab,
        padding_multiple: 1,
        padded_vocab_size: Some(vocab),
        n_layer,
        n_head: heads,
        n_embd: hidden,
        n_query_groups: Some(k.opt_usize("num_key_value_heads")?.unwrap_or(heads)),
        intermediate_size: k.opt_usize("dense_intermediate_size")?.unwrap_or(0),
        norm_eps: k.f64_or("rms_norm_eps", 1e-5)?,
        rope_base: k.f64_or("rope_theta", 10_000.0)?,
        rotary_percentage: k.f64_or("partial_rotary_factor", 1.0)?,
        condense_ratio: 1,
        rope_bf16_tables: false,
        mask_token_id: Some(k.usize("mask_token_id")?),
        qkv_bias: false,
        shift_logits: false,
        tie_embeddings: k.bool_or("tie_word_embeddings", false)?,
        head_dim: None,
        qk_norm: k.bool_or("qk_layernorm", false)?,
        moe: Some(moe),
    };
    if !moe_dense_sized(&config) {
        return Err(k.unsupported(
            "dense_intermediate_size",
            "a layer marked 0 in moe_layer_freq needs a dense size",
        ));
    }
    config
        .validate()
        .map_err(|e| k.unsupported("num_experts", &e.to_string()))?;
    Ok(config)
}

/// Dense layers have a size.
fn moe_dense_sized(config: &ModelConfig) -> bool {
    config
        .moe
        .as_ref()
        .is_none_or(|m| m.dense_layers.is_empty() || config.intermediate_size > 0)
}

/// LLaDA-MoE's GGUF files (arch `llada-moe`): llama.cpp's names, nothing permuted (rotate-half
/// RoPE), experts stacked per projection; every layer a Mixture of Experts without a shared
/// expert and top-k weights not renormalised, as llama.cpp's graph computes it.
pub(crate) const GGUF: GgufLayout = GgufLayout {
    arch: "llada-moe",
    names: |slot| llama_cpp::tensor_name(slot, false),
    qkv_bias: false,
    moe: Some(GgufMoe { renormalize: false }),
};

/// The LLaDA-MoE family of `folder`.
pub(crate) fn family(folder: &HfFolder) -> Result<Family, ModelError> {
    let keys = Keys {
        json: folder.config(),
        file: folder.config_file(),
    };
    Ok(Family {
        name: "LLaDA-MoE",
        config: model_config(&keys)?,
        names: super::dream::qwen_name,
    })
}
