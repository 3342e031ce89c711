//! llama.cpp's GGUF files of the masked diffusion families, as its converter
//! (`convert_hf_to_gguf.py`) writes them, loaded onto the shared network with every projection
//! read in place from the file (its stored type: f32, f16, bf16, Q8_0, Q4_K, Q5_K, Q6_K).
//!
//! | arch (`general.architecture`) | family | what the converter changed |
//! |---|---|---|
//! | `llada` | LLaDA | q/k rows permuted for llama.cpp's interleaved RoPE (undone here) |
//! | `dream` | Dream | nothing (Qwen2's layout); q/k/v biases |
//!
//! Metadata read (`A` the arch): `A.block_count`, `A.embedding_length`, `A.feed_forward_length`,
//! `A.attention.head_count`, `A.attention.head_count_kv`, `A.attention.layer_norm_rms_epsilon`,
//! `A.rope.freq_base`, `A.context_length`, `A.rope.dimension_count` (must be the head size),
//! `A.vocab_size` (else `token_embd`'s rows), `tokenizer.ggml.mask_token_id`, and
//! `diffusion.shift_logits` (llama.cpp's default when absent: true; its LLaDA files say false).
//!
//! | GGUF tensor | shared name |
//! |---|---|
//! | `token_embd.weight` | `transformer.wte.weight` |
//! | `blk.{i}.attn_norm.weight` | `transformer.h.{i}.norm_1.weight` |
//! | `blk.{i}.attn_q.weight`, `attn_k`, `attn_v` (and `.bias`) | `transformer.h.{i}.attn.attn.weight` (fused, grouped) |
//! | `blk.{i}.attn_output.weight` | `transformer.h.{i}.attn.proj.weight` |
//! | `blk.{i}.ffn_norm.weight` | `transformer.h.{i}.norm_2.weight` |
//! | `blk.{i}.ffn_gate.weight`, `ffn_up`, `ffn_down` | `...mlp.swiglu.w1`, `w2`, `w3` |
//! | `output_norm.weight` | `transformer.ln_f.weight` |
//! | `output.weight` (absent: tied to `token_embd`) | `lm_head.weight` |

use std::collections::HashSet;
use std::path::Path;

use mdm_kernels::quant::GgmlType;
use mdm_kernels::{Kernels, PackedMatrix};

use super::{Gguf, Value};
use crate::families::{grouped_rows, layer_part};
use crate::linear::WeightFormat;
use crate::params::{ParamSource, StoredMatrix};
use crate::transformer::Transformer;
use crate::{MaskedTransformer, ModelConfig, ModelError};

/// The diffusion architectures read from GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llada`
    Llada,
    /// `dream`
    Dream,
}

/// A GGUF model file: its config for the shared network and how its tensors map onto it.
pub struct GgufModel {
    gguf: Gguf,
    arch: Arch,
    config: ModelConfig,
}

impl GgufModel {
    /// Opens `path` and reads its config; errors name the key that is missing or not supported.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let gguf = Gguf::open(path)?;
        let (arch, config) = read_config(&gguf)?;
        Ok(Self { gguf, arch, config })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
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
        for t in self.gguf.tensors.iter().filter(|t| t.dims.len() == 2) {
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
        let mut source = GgufSource {
            gguf: &self.gguf,
            heads: (c.n_head, c.query_groups(), c.head_size()),
            unpermute_qk: self.arch == Arch::Llada,
            used: HashSet::new(),
        };
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
fn read_config(gguf: &Gguf) -> Result<(Arch, ModelConfig), ModelError> {
    let arch_name = gguf
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| fault(gguf, "no string `general.architecture`".into()))?;
    let arch = match arch_name {
        "llada" => Arch::Llada,
        "dream" => Arch::Dream,
        other => {
            return Err(fault(
                gguf,
                format!("`general.architecture` = \"{other}\": the diffusion models read are llada and dream"),
            ))
        }
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
    let embd = gguf
        .tensor("token_embd.weight")
        .ok_or_else(|| fault(gguf, "no tensor `token_embd.weight`".into()))?;
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
    if n_head == 0 || n_kv == 0 || n_embd % n_head != 0 || n_head % n_kv != 0 {
        return Err(fault(
            gguf,
            format!("{n_head} heads, {n_kv} key/value heads and width {n_embd} do not divide"),
        ));
    }
    let head_size = n_embd / n_head;
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
        intermediate_size: int(&key("feed_forward_length"))?,
        norm_eps: float(&key("attention.layer_norm_rms_epsilon"))?,
        rope_base: float(&key("rope.freq_base"))?,
        rotary_percentage: 1.0,
        condense_ratio: 1,
        rope_bf16_tables: false,
        mask_token_id: Some(mask),
        qkv_bias: arch == Arch::Dream,
        shift_logits,
        tie_embeddings: gguf.tensor("output.weight").is_none(),
    };
    config.validate()?;
    Ok((arch, config))
}

/// Where the GGUF keeps a shared name.
enum Mapped {
    One(String),
    Grouped(String),
}

/// The GGUF tensor(s) of a shared-network name (`Grouped(layer)`: `blk.{layer}.attn_q/k/v`).
fn gguf_name(shared: &str) -> Option<Mapped> {
    let one = |name: &str| Some(Mapped::One(name.to_string()));
    match shared {
        "transformer.wte.weight" => return one("token_embd.weight"),
        "transformer.ln_f.weight" => return one("output_norm.weight"),
        "lm_head.weight" => return one("output.weight"),
        _ => {}
    }
    let (layer, part) = layer_part(shared)?;
    let name = match part {
        "attn.attn.weight" => return Some(Mapped::Grouped(format!("blk.{layer}.{{}}.weight"))),
        "attn.attn.bias" => return Some(Mapped::Grouped(format!("blk.{layer}.{{}}.bias"))),
        "norm_1.weight" => "attn_norm.weight",
        "attn.proj.weight" => "attn_output.weight",
        "norm_2.weight" => "ffn_norm.weight",
        "mlp.swiglu.w1.weight" => "ffn_gate.weight",
        "mlp.swiglu.w2.weight" => "ffn_up.weight",
        "mlp.swiglu.w3.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(Mapped::One(format!("blk.{layer}.{name}")))
}

/// q, k and v in one type, to be fused: as they are when they agree; otherwise (llama.cpp's mixes:
/// Q4_K_M keeps `attn_v` in Q6_K) each widened and quantized to Q8_0, which holds every type read
/// here but f32 and f16 within its own rounding (f32 and f16 parts go to f16).
fn same_type(parts: Vec<PackedMatrix>) -> Result<Vec<PackedMatrix>, String> {
    let first = parts.first().map(PackedMatrix::dtype);
    if parts.iter().all(|p| Some(p.dtype()) == first) {
        return Ok(parts);
    }
    let wide = parts
        .iter()
        .any(|p| matches!(p.dtype(), GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16));
    let target = if wide { GgmlType::F16 } else { GgmlType::Q8_0 };
    parts.iter().map(|p| p.requantize(target)).collect()
}

/// A GGUF file as the shared network's parameter source.
struct GgufSource<'a> {
    gguf: &'a Gguf,
    /// Query heads, key/value heads, head size.
    heads: (usize, usize, usize),
    /// LLaDA: the converter's q/k row permutation is undone.
    unpermute_qk: bool,
    used: HashSet<String>,
}

impl GgufSource<'_> {
    fn fault(&self, reason: String) -> ModelError {
        fault(self.gguf, reason)
    }

    fn mapped(&self, key: &str) -> Result<Mapped, ModelError> {
        gguf_name(key).ok_or_else(|| self.fault(format!("no GGUF tensor for `{key}`")))
    }

    /// Checks `name`'s shape against `shape` and marks it read.
    fn expect(&mut self, name: &str, shape: &[usize]) -> Result<(), ModelError> {
        let info = self
            .gguf
            .tensor(name)
            .ok_or_else(|| ModelError::MissingKey {
                file: self.gguf.path().to_path_buf(),
                key: name.to_string(),
                expected: shape.to_vec(),
            })?;
        if info.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.gguf.path().to_path_buf(),
                key: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        self.used.insert(name.to_string());
        Ok(())
    }

    /// The order of the fused grouped rows in the stack `[q; k; v]` as the file holds them: for
    /// each key/value group its query heads, its key, its value; LLaDA's q and k rows permuted
    /// back from llama.cpp's interleaved-RoPE order (file row `h D + 2 j + a` holds the original
    /// row `h D + a D / 2 + j`).
    fn grouped_order(&self) -> Vec<usize> {
        let d = self.heads.2;
        let unpermute = self.unpermute_qk;
        grouped_rows(self.heads, move |row| {
            if !unpermute {
                return row;
            }
            let (head, within) = (row / d, row % d);
            let (a, j) = (within / (d / 2), within % (d / 2));
            head * d + 2 * j + a
        })
    }

    fn names(pattern: &str) -> [String; 3] {
        ["attn_q", "attn_k", "attn_v"].map(|part| pattern.replace("{}", part))
    }

    fn part_shapes(&self, width: Option<usize>) -> [Vec<usize>; 3] {
        let (h, g, d) = self.heads;
        [h * d, g * d, g * d].map(|rows| match width {
            Some(w) => vec![rows, w],
            None => vec![rows],
        })
    }
}

impl ParamSource for GgufSource<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        match self.mapped(key)? {
            Mapped::One(name) => {
                self.expect(&name, shape)?;
                Ok(self.gguf.dequantize(&name)?.0)
            }
            Mapped::Grouped(pattern) => {
                // biases (Dream; LLaDA has none, so no permutation)
                let names = Self::names(&pattern);
                let shapes = self.part_shapes(shape.get(1).copied());
                let mut stacked = Vec::new();
                for (name, shape) in names.iter().zip(&shapes) {
                    self.expect(name, shape)?;
                    stacked.extend(self.gguf.dequantize(name)?.0);
                }
                let width = shape.get(1).copied().unwrap_or(1);
                let mut fused = Vec::with_capacity(stacked.len());
                for row in self.grouped_order() {
                    fused.extend_from_slice(&stacked[row * width..(row + 1) * width]);
                }
                Ok(fused)
            }
        }
    }

    fn take_matrix(&mut self, key: &str, shape: &[usize]) -> Result<StoredMatrix, ModelError> {
        let packed = match self.mapped(key)? {
            Mapped::One(name) => {
                self.expect(&name, shape)?;
                self.gguf.packed(&name)?
            }
            Mapped::Grouped(pattern) => {
                let names = Self::names(&pattern);
                let shapes = self.part_shapes(shape.get(1).copied());
                let mut parts = Vec::with_capacity(3);
                for (name, shape) in names.iter().zip(&shapes) {
                    self.expect(name, shape)?;
                    parts.push(self.gguf.packed(name)?);
                }
                let parts = same_type(parts)
                    .map_err(|reason| self.fault(format!("{}: {reason}", names.join(", "))))?;
                let refs: Vec<&PackedMatrix> = parts.iter().collect();
                PackedMatrix::stack(&refs)
                    .and_then(|m| m.permute_rows(&self.grouped_order()))
                    .map_err(|reason| self.fault(format!("{}: {reason}", names.join(", "))))?
            }
        };
        Ok(StoredMatrix::Packed(packed))
    }

    fn finish(&mut self) -> Result<(), ModelError> {
        match self
            .gguf
            .tensors
            .iter()
            .find(|t| !self.used.contains(&t.name))
        {
            Some(t) => Err(ModelError::UnexpectedKey {
                file: self.gguf.path().to_path_buf(),
                key: t.name.clone(),
                found: t.shape(),
            }),
            None => Ok(()),
        }
    }
}
