//! llama.cpp's GGUF files of the masked diffusion families, as its converter
//! (`convert_hf_to_gguf.py`) writes them, loaded onto the shared network with every projection
//! read in place from the file (its stored type: f32, f16, bf16, Q8_0, Q4_K, Q5_K, Q6_K).
//!
//! | arch (`general.architecture`) | family | what the converter changed |
//! |---|---|---|
//! | `llada` | LLaDA | q/k rows permuted for llama.cpp's interleaved RoPE (undone here) |
//! | `dream` | Dream | nothing (Qwen2's layout); q/k/v biases |
//! | `llada-moe` | LLaDA-MoE | experts stacked per projection; every layer MoE, no shared expert |
//! | `rnd1` | RND1 | experts stacked per projection (Qwen3-MoE's layout) |
//!
//! Metadata read (`A` the arch): `A.block_count`, `A.embedding_length`, `A.feed_forward_length`,
//! `A.attention.head_count`, `A.attention.head_count_kv`, `A.attention.layer_norm_rms_epsilon`,
//! `A.rope.freq_base`, `A.context_length`, `A.rope.dimension_count` (must be the head size),
//! `A.vocab_size` (else `token_embd`'s rows), `tokenizer.ggml.mask_token_id`, and
//! `diffusion.shift_logits` (llama.cpp's default when absent: true; its LLaDA files say false);
//! for the Mixture-of-Experts archs `A.expert_count`, `A.expert_used_count`,
//! `A.expert_feed_forward_length`, `A.expert_shared_feed_forward_length` and
//! `A.expert_weights_scale` when present, and `A.attention.key_length` (the head size, when it is
//! not the width over the heads); q/k norms when block 0 has `attn_q_norm`.
//!
//! The tensor names are llama.cpp's ([`crate::families::llama_cpp`]); each family's file says its
//! layout (`GGUF` beside its Hugging Face names).

use std::path::Path;

use mdm_kernels::quant::GgmlType;
use mdm_kernels::Kernels;

use super::{Gguf, Value};
use crate::families::{GgufLayout, GGUF_LAYOUTS};
use crate::linear::WeightFormat;
use crate::params::{Mapped, NamedSource};
use crate::slots::Slot;
use crate::transformer::Transformer;
use crate::{ExpertBias, MaskedTransformer, ModelConfig, ModelError, MoeConfig, RouterScore};

/// A GGUF model file: its config for the shared network and how its tensors map onto it.
pub struct GgufModel {
    gguf: Gguf,
    layout: &'static GgufLayout,
    config: ModelConfig,
}

impl GgufModel {
    /// Opens `path` and reads its config; errors name the key that is missing or not supported.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let gguf = Gguf::open(path)?;
        let (layout, config) = read_config(&gguf)?;
        Ok(Self {
            gguf,
            layout,
            config,
        })
    }

    /// The architecture (`general.architecture`).
    pub fn arch(&self) -> &'static str {
        self.layout.arch
    }

    /// The shared network's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// The byte-level BPE vocabulary of the file's `tokenizer.ggml.*` keys (llama.cpp's `gpt2`
    /// tokenizer model: GPT-2's, Qwen2's, Llama 3's); `None` when the file has no tokenizer.
    /// SentencePiece vocabularies (`llama`) are an error naming the key.
    pub fn bpe_vocab(&self) -> Result<Option<mdm_data::BpeVocab>, ModelError> {
        let gguf = &self.gguf;
        let Some(model) = gguf.get("tokenizer.ggml.model") else {
            return Ok(None);
        };
        if model.as_str() != Some("gpt2") {
            return Err(fault(
                gguf,
                format!(
                    "`tokenizer.ggml.model` = {model:?}: only byte-level BPE (`gpt2`) \
                     vocabularies are read from GGUF files (pass a tokenizer.json)"
                ),
            ));
        }
        let strings = |key: &str, required: bool| -> Result<Vec<String>, ModelError> {
            match gguf.get(key) {
                None if !required => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| fault(gguf, format!("`{key}` {i} is not a string")))
                    })
                    .collect(),
                _ => Err(fault(gguf, format!("no string array `{key}`"))),
            }
        };
        let token_types = match gguf.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::I32(t) => Ok(*t),
                    _ => Err(fault(
                        gguf,
                        format!("`tokenizer.ggml.token_type` {i} is not an i32"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(fault(
                    gguf,
                    "`tokenizer.ggml.token_type` is not an array".into(),
                ))
            }
        };
        let id = |key: &str| {
            gguf.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        // llama.cpp's default: a BOS only for Llama 3's byte-level vocabularies
        let llama3 = matches!(pre.as_str(), "llama3" | "llama-v3" | "llama-bpe");
        let add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.as_bool().ok_or_else(|| {
                fault(gguf, "`tokenizer.ggml.add_bos_token` is not a bool".into())
            })?,
            None => llama3,
        };
        Ok(Some(mdm_data::BpeVocab {
            tokens: strings("tokenizer.ggml.tokens", true)?,
            merges: strings("tokenizer.ggml.merges", true)?,
            token_types,
            pre,
            eos_id: id("tokenizer.ggml.eos_token_id"),
            bos_id: id("tokenizer.ggml.bos_token_id"),
            add_bos,
        }))
    }

    /// The file's `tokenizer.chat_template`, with the BOS / EOS token strings its ids name.
    pub fn chat_prompt(&self) -> Option<mdm_data::chat::ChatPrompt> {
        let gguf = &self.gguf;
        let template = gguf.get("tokenizer.chat_template")?.as_str()?;
        let token = |key: &str| -> String {
            let id = gguf.get(key).and_then(Value::as_u64);
            match (id, gguf.get("tokenizer.ggml.tokens")) {
                (Some(id), Some(Value::Array(tokens))) => tokens
                    .get(id as usize)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        Some(mdm_data::chat::ChatPrompt::from_source(
            template,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
        ))
    }

    /// The type most of the projection values are stored in (for the memory check).
    pub fn stored_type(&self) -> GgmlType {
        let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
        for t in self.gguf.tensors.iter().filter(|t| t.dims.len() >= 2) {
            match by_type.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += t.len(),
                None => by_type.push((t.dtype, t.len())),
            }
        }
        by_type
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map_or(GgmlType::F32, |(t, _)| t)
    }

    /// The network, projections kept as `format` says (by default in the file's types, read in
    /// place on a backend that packs weights).
    pub fn load<B: Kernels>(
        &self,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        let c = &self.config;
        let mut source = NamedSource::new(&self.gguf, self.layout.names, c, self.layout.arch);
        let rows = c.masked_embedding_rows();
        Ok(MaskedTransformer {
            net: Transformer::build_as(c, rows, &mut source, format, device)?,
        })
    }
}

fn fault(gguf: &Gguf, reason: String) -> ModelError {
    ModelError::Gguf {
        file: gguf.path().to_path_buf(),
        offset: 0,
        reason,
    }
}

/// The shared network's config from the metadata.
fn read_config(gguf: &Gguf) -> Result<(&'static GgufLayout, ModelConfig), ModelError> {
    let arch_name = gguf
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| fault(gguf, "no string `general.architecture`".into()))?;
    let Some(layout) = GGUF_LAYOUTS.iter().find(|l| l.arch == arch_name) else {
        let known: Vec<&str> = GGUF_LAYOUTS.iter().map(|l| l.arch).collect();
        return Err(fault(
            gguf,
            format!(
                "`general.architecture` = \"{arch_name}\": the diffusion models read are {}",
                known.join(", ")
            ),
        ));
    };
    let key = |name: &str| format!("{arch_name}.{name}");
    let int = |k: &str| -> Result<usize, ModelError> {
        gguf.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| fault(gguf, format!("no integer `{k}`")))
    };
    let float = |k: &str| -> Result<f64, ModelError> {
        gguf.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| fault(gguf, format!("no number `{k}`")))
    };
    let n_embd = int(&key("embedding_length"))?;
    let n_head = int(&key("attention.head_count"))?;
    let n_kv = match gguf.get(&key("attention.head_count_kv")) {
        Some(v) => v.as_u64().ok_or_else(|| {
            fault(
                gguf,
                format!("`{}` is not an integer", key("attention.head_count_kv")),
            )
        })? as usize,
        None => n_head,
    };
    let embd_name = match (layout.names)(Slot::Embedding) {
        Some(Mapped::One(name)) => name,
        _ => String::new(),
    };
    let embd = gguf
        .tensor(&embd_name)
        .ok_or_else(|| fault(gguf, format!("no tensor `{embd_name}`")))?;
    let rows = embd.shape().first().copied().unwrap_or(0);
    let vocab = match gguf.get(&key("vocab_size")) {
        Some(v) => v.as_u64().unwrap_or(rows as u64) as usize,
        None => rows,
    };
    let mask = int("tokenizer.ggml.mask_token_id")?;
    if mask >= rows {
        return Err(fault(
            gguf,
            format!("`tokenizer.ggml.mask_token_id` = {mask} is past the {rows} embedding rows"),
        ));
    }
    let shift_logits = match gguf.get("diffusion.shift_logits") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| fault(gguf, "`diffusion.shift_logits` is not a bool".into()))?,
    };
    let opt_int = |k: &str| -> Result<Option<usize>, ModelError> {
        match gguf.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|v| Some(v as usize))
                .ok_or_else(|| fault(gguf, format!("`{k}` is not an integer"))),
        }
    };
    // a head size apart from the width / heads (Qwen3-MoE's)
    let head_dim = opt_int(&key("attention.key_length"))?.filter(|&d| d * n_head != n_embd);
    let divides = head_dim.is_some() || n_embd % n_head.max(1) == 0;
    if n_head == 0 || n_kv == 0 || !divides || n_head % n_kv != 0 {
        return Err(fault(
            gguf,
            format!("{n_head} heads, {n_kv} key/value heads and width {n_embd} do not divide"),
        ));
    }
    let head_size = head_dim.unwrap_or(n_embd / n_head);
    if let Some(rot) = gguf
        .get(&key("rope.dimension_count"))
        .and_then(Value::as_u64)
    {
        if rot as usize != head_size {
            return Err(fault(
                gguf,
                format!(
                    "`{}` = {rot}: partial rotary embeddings are not supported (head size {head_size})",
                    key("rope.dimension_count")
                ),
            ));
        }
    }
    let moe = match &layout.moe {
        None => None,
        Some(m) => Some(MoeConfig {
            n_experts: int(&key("expert_count"))?,
            top_k: int(&key("expert_used_count"))?,
            expert_size: int(&key("expert_feed_forward_length"))?,
            shared_size: opt_int(&key("expert_shared_feed_forward_length"))?.unwrap_or(0),
            score: RouterScore::Softmax,
            renormalize: m.renormalize,
            // llama.cpp scales only by a weight scale given and not 0
            scaling: match gguf.get(&key("expert_weights_scale")) {
                Some(v) => v.as_f64().filter(|&s| s != 0.0).unwrap_or(1.0),
                None => 1.0,
            },
            groups: 1,
            topk_groups: 1,
            expert_bias: ExpertBias::None,
            dense_layers: Vec::new(),
            aux_loss_coef: 0.0,
        }),
    };
    let intermediate_size = if moe.is_some() {
        opt_int(&key("feed_forward_length"))?.unwrap_or(0)
    } else {
        int(&key("feed_forward_length"))?
    };
    let config = ModelConfig {
        name: arch_name.to_string(),
        block_size: int(&key("context_length"))?,
        vocab_size: vocab,
        padding_multiple: 1,
        padded_vocab_size: Some(rows),
        n_layer: int(&key("block_count"))?,
        n_head,
        n_embd,
        n_query_groups: Some(n_kv),
        intermediate_size,
        norm_eps: float(&key("attention.layer_norm_rms_epsilon"))?,
        rope_base: float(&key("rope.freq_base"))?,
        rotary_percentage: 1.0,
        condense_ratio: 1,
        rope_bf16_tables: false,
        mask_token_id: Some(mask),
        qkv_bias: layout.qkv_bias,
        shift_logits,
        tie_embeddings: match (layout.names)(Slot::Head) {
            Some(Mapped::One(name)) => gguf.tensor(&name).is_none(),
            _ => true,
        },
        head_dim,
        // the first layer's q norm, by the layout's own names
        qk_norm: match (layout.names)(Slot::Layer(0, crate::slots::LayerSlot::QNorm)) {
            Some(Mapped::One(name)) => gguf.tensor(&name).is_some(),
            _ => false,
        },
        moe,
    };
    config.validate()?;
    Ok((layout, config))
}
