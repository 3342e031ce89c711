//! The Dream family (Dream-org/Dream-v0-Base-7B, Dream-v0-Instruct-7B, Dream-Coder, DiffuCoder):
//! configuration from a Hugging Face `config.json` (`model_type: "Dream"`, Qwen2's keys) and the
//! published tensor names, on the shared network.
//!
//! Dream's network (`modeling_dream.py`) is Qwen2's, run bidirectionally: RMSNorm (fp32),
//! `q_proj` / `k_proj` / `v_proj` **with biases** (fused here, biases too, into the grouped
//! layout), grouped-query attention with `num_key_value_heads` heads, rotate-half RoPE of base
//! `rope_theta` with fp32 tables, SwiGLU `down(silu(gate x) * up x)`, a final norm and `lm_head`
//! (the embedding when `tie_word_embeddings`). The mask token is inside the vocabulary
//! (`mask_token_id`). Dream was trained from an autoregressive model and keeps its **shifted
//! logits**: the token at position `i` is predicted from the output at `i - 1`. The loaded model
//! applies the shift itself ([`ModelConfig::shift_logits`]), so the sampler, the caches, the
//! likelihood estimators, training and the server all read position `i`'s prediction at `i`.
//!
//! | Dream name | shape | shared name |
//! |---|---|---|
//! | `model.embed_tokens.weight` | `[vocab_size, hidden]` | `transformer.wte.weight` |
//! | `model.layers.{i}.input_layernorm.weight` | `[hidden]` | `transformer.h.{i}.norm_1.weight` |
//! | `model.layers.{i}.self_attn.{q,k,v}_proj.weight` | `[H D, hidden]`, `[G D, hidden]` x 2 | `transformer.h.{i}.attn.attn.weight` (fused) |
//! | `model.layers.{i}.self_attn.{q,k,v}_proj.bias` | `[H D]`, `[G D]` x 2 | `transformer.h.{i}.attn.attn.bias` (fused) |
//! | `model.layers.{i}.self_attn.o_proj.weight` | `[hidden, H D]` | `transformer.h.{i}.attn.proj.weight` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[hidden]` | `transformer.h.{i}.norm_2.weight` |
//! | `model.layers.{i}.mlp.gate_proj.weight`, `up_proj` | `[intermediate, hidden]` | `...mlp.swiglu.w1`, `w2` |
//! | `model.layers.{i}.mlp.down_proj.weight` | `[hidden, intermediate]` | `...mlp.swiglu.w3` |
//! | `model.norm.weight` | `[hidden]` | `transformer.ln_f.weight` |
//! | `lm_head.weight` (absent with `tie_word_embeddings`) | `[vocab_size, hidden]` | `lm_head.weight` |
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Int, Tensor, TensorData};
//! use mdm_models::{MaskPredictor, MaskedTransformer};
//!
//! let device = Default::default();
//! let model = MaskedTransformer::<Flex>::load_hf("../../tests/data/dream-parity/model", &device)?;
//! let m = model.mask_id() as i64; // 300: `<|mask|>`
//! let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![5i64, 9, m, 17], [1, 4]), &device);
//! // position 2's prediction, already shifted (the network's output at position 1)
//! let logits = model.logits(ids)?;
//! assert_eq!(logits.dims(), [1, 4, model.vocab_size()]);
//! # Ok::<(), mdm_models::ModelError>(())
//! ```

use mdm_kernels::Kernels;
use std::path::PathBuf;

use serde_json::Value;

use super::keys::Keys;
use super::{llama_cpp, Family, GgufLayout};
use crate::hf::HfFolder;
use crate::params::Mapped;
use crate::slots::{LayerSlot, Slot};
use crate::{MaskedTransformer, ModelConfig, ModelError};

/// The hyper-parameters of a Dream checkpoint, read from its `config.json`
/// (`configuration_dream.py`'s keys, Qwen2's).
#[derive(Debug, Clone, PartialEq)]
pub struct DreamConfig {
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (`num_attention_heads` when absent).
    pub num_key_value_heads: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `vocab_size`: rows of the embedding and of the logits.
    pub vocab_size: usize,
    /// `mask_token_id`.
    pub mask_token_id: usize,
    /// `eos_token_id`, if given.
    pub eos_token_id: Option<usize>,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `tie_word_embeddings`: the head is the embedding.
    pub tie_word_embeddings: bool,
}

impl DreamConfig {
    /// Reads the config of `folder` (its `model_type` must be `Dream`); a value this network does
    /// not compute (another activation, RoPE scaling, sliding windows...) is an error naming the key.
    pub fn from_folder(folder: &HfFolder) -> Result<Self, ModelError> {
        Self::from_json(folder.config(), folder.config_file())
    }

    /// Reads a parsed `config.json` (`file` names it in errors).
    pub fn from_json(json: &Value, file: PathBuf) -> Result<Self, ModelError> {
        let k = Keys { json, file };
        k.require(
            "model_type",
            &[Value::from("Dream"), Value::from("dream")],
            "this reader is for model_type `Dream`",
        )?;
        k.require(
            "hidden_act",
            &[Value::from("silu")],
            "only the SwiGLU MLP (`silu`) is supported",
        )?;
        k.require("rope_scaling", &[], "RoPE scaling is not supported")?;
        k.require(
            "use_sliding_window",
            &[Value::from(false)],
            "sliding-window attention is not supported",
        )?;
        let hidden_size = k.usize("hidden_size")?;
        let heads = k.usize("num_attention_heads")?;
        let vocab_size = k.usize("vocab_size")?;
        let config = Self {
            hidden_size,
            num_attention_heads: heads,
            num_key_value_heads: k.opt_usize("num_key_value_heads")?.unwrap_or(heads),
            num_hidden_layers: k.usize("num_hidden_layers")?,
            intermediate_size: k.usize("intermediate_size")?,
            vocab_size,
            mask_token_id: k.usize("mask_token_id")?,
            eos_token_id: k.opt_usize("eos_token_id")?,
            rope_theta: k.f64_or("rope_theta", 10_000.0)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings: k.usize("max_position_embeddings")?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", false)?,
        };
        if config.mask_token_id >= vocab_size {
            return Err(k.unsupported(
                "mask_token_id",
                "must be one of the vocabulary's ids (below vocab_size)",
            ));
        }
        let kv = config.num_key_value_heads;
        if kv == 0 || !heads.is_multiple_of(kv) {
            return Err(k.unsupported("num_key_value_heads", "must divide num_attention_heads"));
        }
        if heads == 0 || !hidden_size.is_multiple_of(heads) {
            return Err(k.unsupported("num_attention_heads", "must divide hidden_size"));
        }
        Ok(config)
    }

    /// The shared network's config: logits over `vocab_size` (the mask token among them),
    /// grouped-query attention with q/k/v biases, fp32 RoPE tables of base `rope_theta`, shifted
    /// logits.
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            name: "dream".into(),
            block_size: self.max_position_embeddings,
            vocab_size: self.vocab_size,
            padding_multiple: 1,
            padded_vocab_size: Some(self.vocab_size),
            n_layer: self.num_hidden_layers,
            n_head: self.num_attention_heads,
            n_embd: self.hidden_size,
            n_query_groups: Some(self.num_key_value_heads),
            intermediate_size: self.intermediate_size,
            norm_eps: self.rms_norm_eps,
            rope_base: self.rope_theta,
            rotary_percentage: 1.0,
            condense_ratio: 1,
            rope_bf16_tables: false,
            mask_token_id: Some(self.mask_token_id),
            qkv_bias: true,
            shift_logits: true,
            tie_embeddings: self.tie_word_embeddings,
            head_dim: None,
            qk_norm: false,
            moe: None,
        }
    }
}

/// Dream's tensor(s) of a slot (the names in the table above).
///
/// The Qwen / OLMoE-style names Dream shares with RND1 (Qwen3-MoE) and LLaDA-MoE: their q/k
/// norms (`self_attn.q_norm`, `k_norm`), routers (`mlp.gate`), routed experts
/// (`mlp.experts.{e}.{gate,up,down}_proj`) and LLaDA-MoE's shared expert (`shared_expert.*`, on the
/// layer) are named here too; a family reads only the slots its config has.
pub(crate) fn qwen_name(slot: Slot) -> Option<Mapped> {
    use LayerSlot::*;
    let Slot::Layer(l, part) = slot else {
        let name = match slot {
            Slot::Embedding => "model.embed_tokens.weight",
            Slot::FinalNorm => "model.norm.weight",
            _ => "lm_head.weight",
        };
        return Some(Mapped::One(name.into()));
    };
    let p = format!("model.layers.{l}.");
    let grouped = |what: &str| {
        Some(Mapped::Grouped {
            q: format!("{p}self_attn.q_proj.{what}"),
            k: format!("{p}self_attn.k_proj.{what}"),
            v: format!("{p}self_attn.v_proj.{what}"),
            interleaved: false,
        })
    };
    let name = match part {
        Qkv => return grouped("weight"),
        QkvBias => return grouped("bias"),
        AttnNorm => "input_layernorm",
        QNorm => "self_attn.q_norm",
        KNorm => "self_attn.k_norm",
        AttnOut => "self_attn.o_proj",
        FfnNorm => "post_attention_layernorm",
        FfnGate => "mlp.gate_proj",
        FfnUp => "mlp.up_proj",
        FfnDown => "mlp.down_proj",
        Router => "mlp.gate",
        ExpertGate(e) => return Some(Mapped::One(format!("{p}mlp.experts.{e}.gate_proj.weight"))),
        ExpertUp(e) => return Some(Mapped::One(format!("{p}mlp.experts.{e}.up_proj.weight"))),
        ExpertDown(e) => return Some(Mapped::One(format!("{p}mlp.experts.{e}.down_proj.weight"))),
        SharedGate => "shared_expert.gate_proj",
        SharedUp => "shared_expert.up_proj",
        SharedDown => "shared_expert.down_proj",
        RouterBias => return None,
    };
    Some(Mapped::One(format!("{p}{name}.weight")))
}

/// Dream's GGUF files: llama.cpp's names as Qwen2's, nothing permuted, q/k/v biases.
pub(crate) const GGUF: GgufLayout = GgufLayout {
    arch: "dream",
    names: |slot| llama_cpp::tensor_name(slot, false),
    qkv_bias: true,
    moe: None,
};

/// The Dream family of `folder`: its config and names.
pub(crate) fn family(folder: &HfFolder) -> Result<Family, ModelError> {
    let dream = DreamConfig::from_folder(folder)?;
    Ok(Family {
        name: "Dream",
        config: dream.model_config(),
        names: qwen_name,
    })
}

impl<B: Kernels> MaskedTransformer<B> {
    /// Loads a Dream Hugging Face folder (`config.json` with `model_type: "Dream"`, one
    /// `model.safetensors` or shards with an index; f32, bf16 or f16 tensors, kept in their stored type).
    pub fn load_dream(folder: &HfFolder, device: &B::Device) -> Result<Self, ModelError> {
        family(folder)?.build(folder, crate::WeightFormat::Stored, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "Dream", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 160,
            "vocab_size": 320, "mask_token_id": 300, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "tie_word_embeddings": false,
            "hidden_act": "silu", "rope_scaling": null, "use_sliding_window": false
        })
    }

    #[test]
    fn a_config_maps_onto_the_shared_network() {
        let c = DreamConfig::from_json(&base(), "config.json".into()).unwrap();
        let m = c.model_config();
        m.validate().unwrap();
        assert_eq!((m.mask_id(), m.padded_vocab_size()), (300, 320));
        assert_eq!(m.masked_embedding_rows(), 320);
        assert_eq!((m.query_groups(), m.head_size()), (2, 16));
        assert!(m.qkv_bias && m.shift_logits && !m.rope_bf16_tables);
    }

    #[test]
    fn unsupported_values_name_their_key() {
        for (key, value) in [
            ("hidden_act", Value::from("gelu")),
            ("rope_scaling", serde_json::json!({"type": "yarn"})),
            ("use_sliding_window", Value::from(true)),
            ("model_type", Value::from("llada")),
            ("num_key_value_heads", Value::from(3)),
            ("mask_token_id", Value::from(320)),
            ("tie_word_embeddings", Value::from("yes")),
        ] {
            let mut json = base();
            json[key] = value;
            match DreamConfig::from_json(&json, "x/config.json".into()) {
                Err(ModelError::Unsupported { key: k, file, .. }) => {
                    assert_eq!(k, key);
                    assert_eq!(file, PathBuf::from("x/config.json"));
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_map_biases_and_the_tied_head() {
        match qwen_name(Slot::Layer(1, LayerSlot::QkvBias)) {
            Some(Mapped::Grouped { q, k, v, .. }) => {
                assert_eq!(q, "model.layers.1.self_attn.q_proj.bias");
                assert_eq!(k, "model.layers.1.self_attn.k_proj.bias");
                assert_eq!(v, "model.layers.1.self_attn.v_proj.bias");
            }
            _ => panic!("q/k/v biases are fused"),
        }
        assert!(matches!(
            qwen_name(Slot::Head),
            Some(Mapped::One(n)) if n == "lm_head.weight"
        ));
        assert!(matches!(
            qwen_name(Slot::Layer(0, LayerSlot::FfnDown)),
            Some(Mapped::One(n)) if n == "model.layers.0.mlp.down_proj.weight"
        ));
    }
}
