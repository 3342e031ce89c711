//! RND1 (radicalnumerics/RND1-Base, 30B-A3B): a Qwen3-MoE network run bidirectionally, from a
//! Hugging Face folder (`model_type: "rnd1"`, `modeling_rnd.py`).
//!
//! What it computes, as the reference does: RMSNorm blocks; `q_proj` / `k_proj` / `v_proj` (fused
//! here into the grouped layout) with a per-head RMSNorm of q and k (`q_norm`, `k_norm`, gain
//! `[head_dim]`) before rotate-half RoPE over the whole head; `head_dim` apart from `hidden_size /
//! heads`; no attention mask; **every** layer a Mixture of Experts (`RND1DecoderLayer` ignores
//! `mlp_only_layers`): `softmax` scores in f32, `topk`, the weights divided by their sum with
//! `norm_topk_prob`, no shared expert. The network's logits are unshifted but RND1's sampler reads
//! position `i`'s prediction at `i - 1`: the loaded model shifts them itself
//! ([`ModelConfig::shift_logits`], as Dream), so every caller reads position `i` at `i`.
//!
//! Tensor names are Qwen's ([`super::dream::qwen_name`]): `model.embed_tokens.weight`,
//! `model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `self_attn.{q,k}_norm.weight`,
//! `mlp.gate.weight` `[E, hidden]`, `mlp.experts.{e}.{gate,up,down}_proj.weight`,
//! `model.norm.weight`, `lm_head.weight` (RND1 declares no tied weights).

use serde_json::Value;

use super::keys::Keys;
use super::{llama_cpp, Family, GgufLayout, GgufMoe};
use crate::hf::HfFolder;
use crate::{ExpertBias, ModelConfig, ModelError, MoeConfig, RouterScore};

/// The shared network's config of an RND1 `config.json`; a value the network does not compute is
/// an error naming the key.
pub(crate) fn model_config(k: &Keys) -> Result<ModelConfig, ModelError> {
    k.require(
        "model_type",
        &[Value::from("rnd1")],
        "this reader is for model_type `rnd1`",
    )?;
    k.require(
        "attention_bias",
        &[Value::from(false)],
        "q/k/v biases are not in RND1",
    )?;
    k.require("hidden_act", &[Value::from("silu")], "only SwiGLU experts")?;
    k.require(
        "use_sliding_window",
        &[Value::from(false)],
        "sliding-window attention is not supported",
    )?;
    k.require(
        "rope_scaling",
        &[Value::from(false)],
        "RoPE scaling is not supported",
    )?;
    k.require(
        "tie_word_embeddings",
        &[Value::from(false)],
        "RND1 declares no tied weights",
    )?;
    let hidden = k.usize("hidden_size")?;
    let heads = k.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(k.unsupported("num_attention_heads", "must be positive"));
    }
    let moe = MoeConfig {
        n_experts: k.usize("num_experts")?,
        top_k: k.usize("num_experts_per_tok")?,
        expert_size: k.usize("moe_intermediate_size")?,
        shared_size: 0,
        score: RouterScore::Softmax,
        renormalize: k.bool_or("norm_topk_prob", false)?,
        scaling: 1.0,
        groups: 1,
        topk_groups: 1,
        expert_bias: ExpertBias::None,
        dense_layers: Vec::new(),
        // `output_router_logits` changes nothing in `modeling_rnd.py` (its model returns no router
        // logits and no auxiliary loss)
        aux_loss_coef: 0.0,
    };
    let vocab = k.usize("vocab_size")?;
    let config = ModelConfig {
        name: "rnd1".into(),
        block_size: k.usize("max_position_embeddings")?,
        vocab_size: vocab,
        padding_multiple: 1,
        padded_vocab_size: Some(vocab),
        n_layer: k.usize("num_hidden_layers")?,
        n_head: heads,
        n_embd: hidden,
        n_query_groups: Some(k.opt_usize("num_key_value_heads")?.unwrap_or(heads)),
        intermediate_size: k.opt_usize("intermediate_size")?.unwrap_or(0),
        norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
        rope_base: k.f64_or("rope_theta", 10_000.0)?,
        rotary_percentage: 1.0,
        condense_ratio: 1,
        rope_bf16_tables: false,
        mask_token_id: Some(k.usize("mask_token_id")?),
        qkv_bias: false,
        shift_logits: true,
        tie_embeddings: false,
        head_dim: Some(k.opt_usize("head_dim")?.unwrap_or(hidden / heads)),
        qk_norm: true,
        moe: Some(moe),
    };
    config
        .validate()
        .map_err(|e| k.unsupported("num_experts", &e.to_string()))?;
    Ok(config)
}

/// RND1's GGUF files (arch `rnd1`, Qwen3-MoE's layout): llama.cpp's names, nothing permuted,
/// experts stacked per projection, top-k weights renormalised (llama.cpp's graph); shifted
/// logits unless `diffusion.shift_logits` says otherwise.
pub(crate) const GGUF: GgufLayout = GgufLayout {
    arch: "rnd1",
    names: |slot| llama_cpp::tensor_name(slot, false),
    qkv_bias: false,
    moe: Some(GgufMoe { renormalize: true }),
};

/// The RND1 family of `folder`.
pub(crate) fn family(folder: &HfFolder) -> Result<Family, ModelError> {
    let keys = Keys {
        json: folder.config(),
        file: folder.config_file(),
    };
    Ok(Family {
        name: "RND1",
        config: model_config(&keys)?,
        names: super::dream::qwen_name,
    })
}
