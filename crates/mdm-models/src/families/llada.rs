//! The LLaDA family (LLaDA-8B-Base / Instruct, LLaDA-1.5): configuration from a Hugging Face
//! `config.json` and the published tensor names, on the shared Llama-style network.
//!
//! LLaDA's `LLaDALlamaBlock` (`modeling_llada.py`) computes what [`Transformer`] computes:
//! `x += attn_out(Attn(RMSNorm(x)))`, `x += ff_out(silu(ff_proj u) * up_proj u)` with
//! `u = RMSNorm(x)`, a final RMSNorm and a linear head over `embedding_size` rows, bidirectional
//! attention with `n_kv_heads` key/value heads (query head `h` reads kv head `h / (n_heads /
//! n_kv_heads)`), and rotate-half RoPE with base `rope_theta` and fp32 tables. The differences are
//! in the checkpoint: separate `q_proj` / `k_proj` / `v_proj` (fused here into the grouped layout
//! of the SMDM network when the weights are loaded), other names, a mask token inside the
//! vocabulary (`mask_token_id`), and no bf16 rounding of the RoPE tables.
//!
//! | LLaDA name (`model.transformer.` + ...) | shape | SMDM name |
//! |---|---|---|
//! | `wte.weight` | `[embedding_size, d]` | `transformer.wte.weight` |
//! | `blocks.{i}.attn_norm.weight` | `[d]` | `transformer.h.{i}.norm_1.weight` |
//! | `blocks.{i}.q_proj.weight`, `k_proj`, `v_proj` | `[H D, d]`, `[G D, d]`, `[G D, d]` | `transformer.h.{i}.attn.attn.weight` (fused) |
//! | `blocks.{i}.attn_out.weight` | `[d, d]` | `transformer.h.{i}.attn.proj.weight` |
//! | `blocks.{i}.ff_norm.weight` | `[d]` | `transformer.h.{i}.norm_2.weight` |
//! | `blocks.{i}.ff_proj.weight`, `up_proj.weight` | `[hidden, d]` | `...mlp.swiglu.w1`, `w2` |
//! | `blocks.{i}.ff_out.weight` | `[d, hidden]` | `...mlp.swiglu.w3` |
//! | `ln_f.weight` | `[d]` | `transformer.ln_f.weight` |
//! | `ff_out.weight` (absent with `weight_tying`) | `[embedding_size, d]` | `lm_head.weight` |
//!
//! Load a folder and fill masks (the folder here is the tiny random LLaDA of the parity fixtures;
//! a published one, e.g. `GSAI-ML/LLaDA-8B-Instruct` downloaded with `huggingface-cli`, loads the
//! same way):
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Int, Tensor, TensorData};
//! use mdm_models::{MaskPredictor, MaskedTransformer};
//!
//! let device = Default::default();
//! let model = MaskedTransformer::<Flex>::load_hf("../../tests/data/llada-parity/model", &device)?;
//! let m = model.mask_id() as i64; // 296: LLaDA's mask token is one of its ids
//! let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![5i64, 9, m, 17], [1, 4]), &device);
//! let best: Vec<i64> = model.logits(ids)?.argmax(2).into_data().convert::<i64>().to_vec().unwrap();
//! println!("position 2 -> token {}", best[2]);
//! assert!(best.iter().all(|&t| (t as usize) < model.vocab_size()));
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

/// The hyper-parameters of a LLaDA checkpoint, read from its `config.json`
/// (`configuration_llada.py`'s keys).
#[derive(Debug, Clone, PartialEq)]
pub struct LladaConfig {
    /// `d_model`.
    pub d_model: usize,
    /// `n_heads`.
    pub n_heads: usize,
    /// `n_kv_heads` (`n_heads` when absent; 1 with `multi_query_attention`).
    pub n_kv_heads: usize,
    /// `n_layers`.
    pub n_layers: usize,
    /// `mlp_hidden_size` (`mlp_ratio * d_model` when absent).
    pub mlp_hidden_size: usize,
    /// `vocab_size`: the tokenizer's ids.
    pub vocab_size: usize,
    /// `embedding_size` (`vocab_size` when absent): rows of the embedding and logits.
    pub embedding_size: usize,
    /// `mask_token_id`.
    pub mask_token_id: usize,
    /// `eos_token_id`, if given.
    pub eos_token_id: Option<usize>,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `max_sequence_length`.
    pub max_sequence_length: usize,
    /// `weight_tying`: the head reuses the embedding.
    pub weight_tying: bool,
}

impl LladaConfig {
    /// Reads the config of `folder` (its `model_type` must be `llada`); a value this network does
    /// not compute (ALiBi, LayerNorm, biases, QK norm, logit scaling...) is an error naming the key.
    pub fn from_folder(folder: &HfFolder) -> Result<Self, ModelError> {
        Self::from_json(folder.config(), folder.config_file())
    }

    /// Reads a parsed `config.json` (`file` names it in errors).
    pub fn from_json(json: &Value, file: PathBuf) -> Result<Self, ModelError> {
        let k = Keys { json, file };
        k.require(
            "model_type",
            &[Value::from("llada")],
            "this reader is for model_type `llada`",
        )?;
        k.require(
            "alibi",
            &[Value::from(false)],
            "ALiBi is not supported (RoPE only)",
        )?;
        k.require(
            "rope",
            &[Value::from(true)],
            "only RoPE positions are supported",
        )?;
        k.require(
            "layer_norm_type",
            &[Value::from("rms")],
            "only RMSNorm (`rms`) is supported",
        )?;
        k.require(
            "layer_norm_with_affine",
            &[Value::from(true)],
            "RMSNorm without a gain is not supported",
        )?;
        k.require(
            "bias_for_layer_norm",
            &[Value::from(false)],
            "norm biases are not supported",
        )?;
        k.require(
            "block_type",
            &[Value::from("llama")],
            "only LLaDA's `llama` block is supported",
        )?;
        k.require(
            "activation_type",
            &[Value::from("silu")],
            "only the SwiGLU MLP (`silu`) is supported",
        )?;
        for key in [
            "include_bias",
            "include_qkv_bias",
            "attention_layer_norm",
            "input_emb_norm",
            "scale_logits",
        ] {
            k.require(key, &[Value::from(false)], "not supported by this network")?;
        }
        k.require("clip_qkv", &[], "q/k/v clipping is not supported")?;
        let n_heads = k.usize("n_heads")?;
        let d_model = k.usize("d_model")?;
        let multi_query = k.bool_or("multi_query_attention", false)?;
        let n_kv_heads = if multi_query {
            1
        } else {
            k.opt_usize("n_kv_heads")?.unwrap_or(n_heads)
        };
        let mlp_hidden_size = match k.opt_usize("mlp_hidden_size")? {
            Some(h) => h,
            None => k.opt_usize("mlp_ratio")?.unwrap_or(4) * d_model,
        };
        let vocab_size = k.usize("vocab_size")?;
        let config = Self {
            d_model,
            n_heads,
            n_kv_heads,
            n_layers: k.usize("n_layers")?,
            mlp_hidden_size,
            vocab_size,
            embedding_size: k.opt_usize("embedding_size")?.unwrap_or(vocab_size),
            mask_token_id: k.usize("mask_token_id")?,
            eos_token_id: k.opt_usize("eos_token_id")?,
            rope_theta: k.f64_or("rope_theta", 10_000.0)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-5)?,
            max_sequence_length: k.usize("max_sequence_length")?,
            weight_tying: k.bool_or("weight_tying", false)?,
        };
        if config.embedding_size < config.vocab_size {
            return Err(k.unsupported("embedding_size", "must be at least vocab_size"));
        }
        if config.mask_token_id >= config.embedding_size {
            return Err(k.unsupported(
                "mask_token_id",
                "must be one of the embedding's rows (below embedding_size)",
            ));
        }
        if config.n_kv_heads == 0 || !config.n_heads.is_multiple_of(config.n_kv_heads) {
            return Err(k.unsupported("n_kv_heads", "must divide n_heads"));
        }
        if !d_model.is_multiple_of(n_heads) {
            return Err(k.unsupported("n_heads", "must divide d_model"));
        }
        Ok(config)
    }

    /// The shared network's config: logits over `embedding_size`, the mask token inside it,
    /// grouped-query attention with `n_kv_heads` groups, fp32 RoPE tables of base `rope_theta`.
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            name: "llada".into(),
            block_size: self.max_sequence_length,
            vocab_size: self.vocab_size,
            padding_multiple: 1,
            padded_vocab_size: Some(self.embedding_size),
            n_layer: self.n_layers,
            n_head: self.n_heads,
            n_embd: self.d_model,
            n_query_groups: Some(self.n_kv_heads),
            intermediate_size: self.mlp_hidden_size,
            norm_eps: self.rms_norm_eps,
            rope_base: self.rope_theta,
            rotary_percentage: 1.0,
            condense_ratio: 1,
            rope_bf16_tables: false,
            mask_token_id: Some(self.mask_token_id),
            qkv_bias: false,
            shift_logits: false,
            tie_embeddings: self.weight_tying,
            head_dim: None,
            qk_norm: false,
            moe: None,
        }
    }
}

/// LLaDA's tensor(s) of a slot (`model.transformer.` + the names in the table above).
fn llada_name(slot: Slot) -> Option<Mapped> {
    use LayerSlot::*;
    const T: &str = "model.transformer.";
    let Slot::Layer(l, part) = slot else {
        let name = match slot {
            Slot::Embedding => "wte",
            Slot::FinalNorm => "ln_f",
            _ => "ff_out",
        };
        return Some(Mapped::One(format!("{T}{name}.weight")));
    };
    let b = format!("{T}blocks.{l}.");
    let name = match part {
        Qkv => {
            return Some(Mapped::Grouped {
                q: format!("{b}q_proj.weight"),
                k: format!("{b}k_proj.weight"),
                v: format!("{b}v_proj.weight"),
                interleaved: false,
            })
        }
        QkvBias => return None,
        AttnNorm => "attn_norm",
        AttnOut => "attn_out",
        FfnNorm => "ff_norm",
        FfnGate => "ff_proj",
        FfnUp => "up_proj",
        FfnDown => "ff_out",
        _ => return None,
    };
    Some(Mapped::One(format!("{b}{name}.weight")))
}

/// LLaDA's GGUF files: llama.cpp's names, q and k rows permuted by its converter.
pub(crate) const GGUF: GgufLayout = GgufLayout {
    arch: "llada",
    names: |slot| llama_cpp::tensor_name(slot, true),
    qkv_bias: false,
    moe: None,
};

/// The LLaDA family of `folder`: its config and names.
pub(crate) fn family(folder: &HfFolder) -> Result<Family, ModelError> {
    let llada = LladaConfig::from_folder(folder)?;
    Ok(Family {
        name: "LLaDA",
        config: llada.model_config(),
        names: llada_name,
    })
}

impl<B: Kernels> MaskedTransformer<B> {
    /// Loads a LLaDA Hugging Face folder (`config.json` with `model_type: "llada"`, one
    /// `model.safetensors` or shards with an index; f32, bf16 or f16 tensors, kept in their stored type).
    pub fn load_llada(folder: &HfFolder, device: &B::Device) -> Result<Self, ModelError> {
        family(folder)?.build(folder, crate::WeightFormat::Stored, device)
    }

    /// Loads a Hugging Face folder of a family we know, chosen by `config.json`'s `model_type`
    /// (see [`crate::families`]).
    pub fn load_hf(
        dir: impl AsRef<std::path::Path>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        super::load_hf(dir, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llada", "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
            "mlp_hidden_size": 160, "vocab_size": 300, "embedding_size": 320,
            "mask_token_id": 296, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "max_sequence_length": 256, "weight_tying": false, "alibi": false,
            "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu",
            "include_bias": false, "rope": true
        })
    }

    #[test]
    fn a_config_maps_onto_the_shared_network() {
        let c = LladaConfig::from_json(&base(), "config.json".into()).unwrap();
        let m = c.model_config();
        m.validate().unwrap();
        assert_eq!((m.mask_id(), m.padded_vocab_size()), (296, 320));
        assert_eq!(m.masked_embedding_rows(), 320);
        assert_eq!(
            (m.query_groups(), m.head_size(), m.rope_base),
            (2, 16, 500000.0)
        );
        assert!(!m.rope_bf16_tables);
    }

    #[test]
    fn unsupported_values_name_their_key() {
        for (key, value) in [
            ("alibi", Value::from(true)),
            ("layer_norm_type", Value::from("default")),
            ("include_bias", Value::from(true)),
            ("model_type", Value::from("dream")),
            ("n_kv_heads", Value::from(3)),
            ("mask_token_id", Value::from(400)),
            ("clip_qkv", Value::from(8.0)),
        ] {
            let mut json = base();
            json[key] = value;
            match LladaConfig::from_json(&json, "x/config.json".into()) {
                Err(ModelError::Unsupported { key: k, file, .. }) => {
                    assert_eq!(k, key);
                    assert_eq!(file, PathBuf::from("x/config.json"));
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let mut json = base();
        json.as_object_mut().unwrap().remove("n_layers");
        assert!(matches!(
            LladaConfig::from_json(&json, "c".into()),
            Err(ModelError::Unsupported { key, .. }) if key == "n_layers"
        ));
    }

    fn one(m: Option<Mapped>) -> String {
        match m {
            Some(Mapped::One(n)) => n,
            _ => panic!("not one tensor"),
        }
    }

    #[test]
    fn names_map_both_ways_of_the_head() {
        assert_eq!(
            one(llada_name(Slot::Layer(3, LayerSlot::FfnDown))),
            "model.transformer.blocks.3.ff_out.weight"
        );
        assert_eq!(
            one(llada_name(Slot::Head)),
            "model.transformer.ff_out.weight"
        );
        assert!(matches!(
            llada_name(Slot::Layer(0, LayerSlot::Qkv)),
            Some(Mapped::Grouped { .. })
        ));
        assert!(llada_name(Slot::Layer(0, LayerSlot::QkvBias)).is_none());
    }
}
