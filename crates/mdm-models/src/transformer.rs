//! The Diff_LLaMA network shared by the masked model and the causal baseline.

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_kernels::quant::GgmlType;
use mdm_kernels::Kernels;
use mdm_kernels::PackedMatrix;

use crate::attention::{CacheAccess, LayerCache, SelfAttention};
use crate::linear::{Proj, WeightFormat};
use crate::mlp::SwiGlu;
use crate::moe::Moe;
use crate::norm::RmsNorm;
use crate::params::{ParamSource, StoredMatrix};
use crate::precision::to_f32;
use crate::rope::{Rope, RopeTables};
use crate::slots::{slots, LayerSlot, Slot};
use crate::{ModelConfig, ModelError};

/// A weight by slot: `(slot, PyTorch-layout shape, row-major values)`.
pub(crate) type NamedWeight = (Slot, Vec<usize>, Vec<f32>);

/// The per-layer caches of one pass and how they are used (see [`CacheAccess`]).
pub(crate) enum Caches<'a, B: Backend> {
    /// No cache: attention over the input alone.
    None,
    /// Append the input's keys/values (one slot per layer).
    Append(&'a mut [Option<LayerCache<B>>]),
    /// Read a cached prefix the input follows.
    Read(&'a [LayerCache<B>]),
    /// Replace the input's positions in a cache of the whole sequence (row `r` of the input at
    /// its own start, see [`Transformer::hidden_rows`]).
    Replace(&'a mut [LayerCache<B>]),
}

/// `x = x + Attn(RMSNorm(x)); x = x + FFN(RMSNorm(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm_1: RmsNorm<B>,
    /// Self-attention.
    pub attn: SelfAttention<B>,
    /// Norm before the MLP.
    pub norm_2: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: Ffn<B>,
}

/// A block's feed-forward, as the architecture chooses it for the layer
/// ([`ModelConfig::is_moe_layer`]).
#[derive(Module, Debug)]
// one per block, built once: the variants' sizes do not matter
#[allow(clippy::large_enum_variant)]
pub enum Ffn<B: Backend> {
    /// A dense SwiGLU.
    Dense(SwiGlu<B>),
    /// A Mixture of Experts.
    Moe(Moe<B>),
}

impl<B: Kernels> Ffn<B> {
    /// `[batch, seq_len, C]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, ModelError> {
        self.forward_routed(x, None)
    }

    /// As [`Self::forward`], a Mixture of Experts appending its router logits to `router_logits`.
    pub fn forward_routed(
        &self,
        x: Tensor<B, 3>,
        router_logits: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        match self {
            Self::Dense(mlp) => Ok(mlp.forward(x)),
            Self::Moe(moe) => moe.forward_routed(x, router_logits),
        }
    }

    /// The projection of a feed-forward slot.
    fn proj(&self, slot: LayerSlot) -> Option<&Proj<B>> {
        use LayerSlot::*;
        fn swiglu<B: Backend>(m: &SwiGlu<B>, s: usize) -> Option<&Proj<B>> {
            Some([&m.w1, &m.w2, &m.w3][s])
        }
        match (self, slot) {
            (Self::Dense(m), FfnGate) => swiglu(m, 0),
            (Self::Dense(m), FfnUp) => swiglu(m, 1),
            (Self::Dense(m), FfnDown) => swiglu(m, 2),
            (Self::Moe(m), Router) => Some(&m.router),
            (Self::Moe(m), ExpertGate(e)) => swiglu(m.experts.get(e)?, 0),
            (Self::Moe(m), ExpertUp(e)) => swiglu(m.experts.get(e)?, 1),
            (Self::Moe(m), ExpertDown(e)) => swiglu(m.experts.get(e)?, 2),
            (Self::Moe(m), SharedGate) => swiglu(m.shared.as_ref()?, 0),
            (Self::Moe(m), SharedUp) => swiglu(m.shared.as_ref()?, 1),
            (Self::Moe(m), SharedDown) => swiglu(m.shared.as_ref()?, 2),
            _ => None,
        }
    }
}

impl<B: Kernels> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<CacheAccess<'_, B>>,
        router_logits: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let x = x.clone()
            + self
                .attn
                .forward(self.norm_1.forward(x), rope, bias, cache)?;
        Ok(x.clone()
            + self
                .mlp
                .forward_routed(self.norm_2.forward(x), router_logits)?)
    }
}

/// Embedding, blocks, final norm and head. The masked model and the causal baseline wrap it.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// `[embedding_rows, n_embd]` token embedding (`V + 1` rows for the masked model: row `V` is the
    /// mask token; `V` rows for the causal baseline).
    pub wte: Embedding<B>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm.
    pub ln_f: RmsNorm<B>,
    /// `[n_embd, V]` output head: the mask token can never be predicted. `None` when the head is
    /// tied to the embedding ([`ModelConfig::tie_embeddings`]): the logits are then `h wte^T` over
    /// the embedding's first `V` rows, one matrix serving both (one parameter: training sums the
    /// gradients of its two uses, and a checkpoint holds it once).
    pub lm_head: Option<Proj<B>>,
    /// RoPE tables.
    pub rope: Rope<B>,
    /// The hyper-parameters.
    #[module(skip)]
    pub config: ModelConfig,
}

fn tensor<B: Kernels, const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// `[out, in]` row-major (PyTorch layout) → `[in, out]` (burn's `Linear`).
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// How a build keeps its projection weights: the format asked for and whether the backend
/// multiplies by packed weights.
#[derive(Clone, Copy)]
struct Keep {
    format: WeightFormat,
    packs: bool,
}

impl Keep {
    /// The projection of `matrix` (`[d_out, d_in]`) as `self` says: dense f32, or packed in the type
    /// the format gives for its stored type (widened and quantized again only when they differ;
    /// on a backend that does not pack, a quantized type's values widened into a dense tensor).
    fn proj<B: Kernels>(
        self,
        slot: Slot,
        matrix: StoredMatrix,
        (d_out, d_in): (usize, usize),
        device: &B::Device,
    ) -> Result<Proj<B>, ModelError> {
        let stored = matrix.stored_type();
        let target = self
            .format
            .packed_type(stored)
            .map(|t| fitting_type(t, d_in, stored));
        let pack_error = |reason: String| ModelError::Config {
            reason: format!(
                "{slot:?} as {}: {reason}",
                target.map_or("f32", |t| t.name())
            ),
        };
        match (matrix, target) {
            (StoredMatrix::Packed(p), Some(t)) if t == p.dtype() && self.packs => {
                Ok(Proj::packed(p))
            }
            // f32 read in place (a GGUF file's memory map) rather than copied
            (StoredMatrix::Packed(p), None) if p.dtype() == GgmlType::F32 && self.packs => {
                Ok(Proj::packed(p))
            }
            // quantized a chunk of rows at a time: never the whole matrix widened to f32
            (StoredMatrix::Packed(p), Some(t)) if t != GgmlType::F32 && self.packs => Ok(
                Proj::packed(B::requantize_packed(&p, t).map_err(pack_error)?),
            ),
            (matrix, target) => {
                let values = match matrix {
                    StoredMatrix::Values(v, _) => v,
                    StoredMatrix::Packed(p) => p.to_f32(),
                };
                match target {
                    None => Ok(Proj::dense(&values, d_out, d_in, device)),
                    Some(GgmlType::F32) if !self.packs => {
                        Ok(Proj::dense(&values, d_out, d_in, device))
                    }
                    Some(t) => {
                        let packed =
                            PackedMatrix::quantize(t, d_out, d_in, &values).map_err(pack_error)?;
                        Ok(if self.packs {
                            Proj::packed(packed)
                        } else {
                            Proj::dense(&packed.to_f32(), d_out, d_in, device)
                        })
                    }
                }
            }
        }
    }
}

impl Keep {
    /// Whether the embedding of a matrix stored as `stored` is narrowed to half precision.
    fn narrows(self, stored: GgmlType) -> bool {
        self.packs
            && self
                .format
                .packed_type(stored)
                .is_some_and(|t| t != GgmlType::F32)
    }

    /// The token embedding: f32, or half (the projections' half type, else bf16) when the
    /// projections are packed in a type other than f32 (a lookup needs no more than half's
    /// precision, and LLaDA-8B's embedding is 2 GB as f32). The pass widens what it looks up.
    fn embedding<B: Kernels>(
        self,
        matrix: StoredMatrix,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Embedding<B> {
        let data = match (self.packs, self.format.packed_type(matrix.stored_type())) {
            (false, _) | (_, None | Some(GgmlType::F32)) => {
                let values = match matrix {
                    StoredMatrix::Values(v, _) => v,
                    StoredMatrix::Packed(p) => p.to_f32(),
                };
                TensorData::new(values, shape)
            }
            (true, Some(GgmlType::F16)) => {
                TensorData::new(narrowed(&matrix, shape, half::f16::from_f32), shape)
            }
            (true, Some(_)) => {
                TensorData::new(narrowed(&matrix, shape, half::bf16::from_f32), shape)
            }
        };
        // created in the data's own type: burn's `from_data` would widen it to the device's
        // default float type otherwise
        let dtype = data.dtype;
        Embedding {
            weight: Param::from_tensor(Tensor::from_data(data, (device, dtype))),
        }
    }
}

/// `matrix` (`[rows, cols]`) in a narrower type, widened a few rows at a time (a packed matrix is
/// never copied whole as f32).
fn narrowed<T>(matrix: &StoredMatrix, [rows, cols]: [usize; 2], convert: fn(f32) -> T) -> Vec<T> {
    match matrix {
        StoredMatrix::Values(v, _) => v.iter().map(|&x| convert(x)).collect(),
        StoredMatrix::Packed(p) => {
            let mut out = Vec::with_capacity(rows * cols);
            let mut buf = Vec::new();
            for start in (0..rows).step_by(256) {
                let end = (start + 256).min(rows);
                buf.resize((end - start) * cols, 0.0);
                p.rows_f32(start..end, &mut buf);
                out.extend(buf.iter().map(|&x| convert(x)));
            }
            out
        }
    }
}

/// `wanted`, or what llama.cpp's quantizer falls back to when a row of `cols` values is not whole
/// blocks of it: Q4_K -> Q8_0 (blocks of 32), then the stored half type (bf16 for f32 weights).
fn fitting_type(wanted: GgmlType, cols: usize, stored: GgmlType) -> GgmlType {
    let fits = |t: GgmlType| cols.is_multiple_of(t.block().0);
    if fits(wanted) {
        wanted
    } else if fits(GgmlType::Q8_0) && wanted == GgmlType::Q4K {
        GgmlType::Q8_0
    } else if stored == GgmlType::F16 {
        GgmlType::F16
    } else {
        GgmlType::Bf16
    }
}

fn linear<B: Kernels>(
    src: &mut dyn ParamSource,
    slot: Slot,
    shape: &[usize],
    keep: Keep,
    device: &B::Device,
) -> Result<Proj<B>, ModelError> {
    let w = src.take_matrix(slot, shape)?;
    proj_from(src, slot, w, shape, keep, device)
}

/// The projection of `slot` from its stored matrix `w` (`shape` `[out, in]`), the source's bytes
/// released when they were copied rather than read in place.
fn proj_from<B: Kernels>(
    src: &mut dyn ParamSource,
    slot: Slot,
    w: StoredMatrix,
    shape: &[usize],
    keep: Keep,
    device: &B::Device,
) -> Result<Proj<B>, ModelError> {
    let source = match &w {
        StoredMatrix::Packed(p) => p.stored_at(),
        StoredMatrix::Values(..) => None,
    };
    let proj = keep.proj(slot, w, (shape[0], shape[1]), device)?;
    if source.is_none() || proj.packed_weight().and_then(|p| p.stored_at()) != source {
        src.release(slot);
    }
    Ok(proj)
}

/// Whether a tied head is kept as a packed matrix beside the embedding: on a backend that packs,
/// when the lookup table was narrowed to half precision (the head then multiplies the stored or
/// quantized matrix in place rather than half activations) and the embedding has the head's `V`
/// rows.
fn tied_head_packed<B: Kernels>(wte: &Embedding<B>, vocab: usize) -> bool {
    let w = wte.weight.val();
    B::PACKS_WEIGHTS && w.dtype() != burn::tensor::DType::F32 && w.dims()[0] == vocab
}

/// Reads the slots of a network in their order ([`slots`]), each with its shape.
struct Reader<'a> {
    src: &'a mut dyn ParamSource,
    config: &'a ModelConfig,
    rows: usize,
    keep: Keep,
}

impl Reader<'_> {
    fn shape(&self, slot: Slot) -> Vec<usize> {
        slot.shape(self.config, self.rows)
    }

    fn proj<B: Kernels>(&mut self, slot: Slot, device: &B::Device) -> Result<Proj<B>, ModelError> {
        let shape = self.shape(slot);
        linear(self.src, slot, &shape, self.keep, device)
    }

    fn norm<B: Kernels>(
        &mut self,
        slot: Slot,
        device: &B::Device,
    ) -> Result<RmsNorm<B>, ModelError> {
        let shape = self.shape(slot);
        let gain = self.src.take(slot, &shape)?;
        Ok(RmsNorm::new(
            tensor(gain, [shape[0]], device),
            self.config.norm_eps,
        ))
    }

    /// The fused q/k/v projection of layer `l`, with its bias when the family has one.
    fn qkv<B: Kernels>(&mut self, l: usize, device: &B::Device) -> Result<Proj<B>, ModelError> {
        let proj = self.proj(Slot::Layer(l, LayerSlot::Qkv), device)?;
        if !self.config.qkv_bias {
            return Ok(proj);
        }
        let slot = Slot::Layer(l, LayerSlot::QkvBias);
        let bias = self.src.take(slot, &self.shape(slot))?;
        Ok(proj.with_bias(bias, device))
    }

    fn block<B: Kernels>(&mut self, l: usize, device: &B::Device) -> Result<Block<B>, ModelError> {
        let config = self.config;
        let at = |s| Slot::Layer(l, s);
        let norm_1 = self.norm(at(LayerSlot::AttnNorm), device)?;
        let qkv = self.qkv(l, device)?;
        let (q_norm, k_norm) = if config.qk_norm {
            (
                Some(self.norm(at(LayerSlot::QNorm), device)?),
                Some(self.norm(at(LayerSlot::KNorm), device)?),
            )
        } else {
            (None, None)
        };
        Ok(Block {
            norm_1,
            attn: SelfAttention {
                qkv,
                proj: self.proj(at(LayerSlot::AttnOut), device)?,
                q_norm,
                k_norm,
                n_head: config.n_head,
                n_query_groups: config.query_groups(),
                head_size: config.head_size(),
            },
            norm_2: self.norm(at(LayerSlot::FfnNorm), device)?,
            mlp: self.ffn(l, device)?,
        })
    }

    /// A SwiGLU from its three slots.
    fn swiglu<B: Kernels>(
        &mut self,
        [gate, up, down]: [Slot; 3],
        device: &B::Device,
    ) -> Result<SwiGlu<B>, ModelError> {
        Ok(SwiGlu {
            w1: self.proj(gate, device)?,
            w2: self.proj(up, device)?,
            w3: self.proj(down, device)?,
        })
    }

    /// Layer `l`'s feed-forward: the dense SwiGLU or the Mixture of Experts.
    fn ffn<B: Kernels>(&mut self, l: usize, device: &B::Device) -> Result<Ffn<B>, ModelError> {
        use LayerSlot::*;
        let at = |s| Slot::Layer(l, s);
        let Some(moe) = self
            .config
            .moe
            .as_ref()
            .filter(|_| self.config.is_moe_layer(l))
        else {
            return Ok(Ffn::Dense(
                self.swiglu([at(FfnGate), at(FfnUp), at(FfnDown)], device)?,
            ));
        };
        // the router stays f32 whatever the format (the references score in f32)
        let router_shape = self.shape(at(Router));
        let router = self.src.take(at(Router), &router_shape)?;
        let router = Proj::dense(&router, router_shape[0], router_shape[1], device);
        let expert_bias = match moe.expert_bias {
            crate::ExpertBias::None => None,
            _ => Some(self.src.take(at(RouterBias), &self.shape(at(RouterBias)))?),
        };
        let experts = (0..moe.n_experts)
            .map(|e| {
                self.swiglu(
                    [at(ExpertGate(e)), at(ExpertUp(e)), at(ExpertDown(e))],
                    device,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = if moe.shared_size > 0 {
            Some(self.swiglu([at(SharedGate), at(SharedUp), at(SharedDown)], device)?)
        } else {
            None
        };
        Ok(Ffn::Moe(Moe {
            router,
            experts,
            shared,
            expert_bias,
            config: moe.clone(),
        }))
    }
}

impl<B: Kernels> Transformer<B> {
    /// The output head: hidden states `[..., C]` → logits `[..., V]`, always f32 (see
    /// [`crate::precision`]: a no-op at f32).
    pub fn head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let Some(head) = &self.lm_head else {
            let w = self.wte.weight.val();
            let vocab = self.vocab();
            let w = if w.dims()[0] > vocab {
                w.narrow(0, 0, vocab)
            } else {
                w
            };
            // a half embedding (packed inference) multiplies half activations
            let hidden = if hidden.dtype() == w.dtype() {
                hidden
            } else {
                hidden.cast(w.dtype())
            };
            return to_f32(burn::tensor::module::linear(hidden, w.transpose(), None));
        };
        to_f32(head.forward(hidden))
    }

    /// The head's width `V` (logits per position).
    pub fn vocab(&self) -> usize {
        match &self.lm_head {
            Some(head) => head.d_out(),
            None => self.config.padded_vocab_size(),
        }
    }

    /// Whether the projections are packed (they then take f32 activations).
    fn packs(&self) -> bool {
        self.lm_head
            .as_ref()
            .or_else(|| self.blocks.first().map(|b| &b.attn.qkv))
            .is_some_and(|p| p.packed_weight().is_some())
    }

    /// The device the network's weights are on.
    pub fn device(&self) -> B::Device {
        self.wte.weight.device()
    }

    /// Bytes the weights hold, at their types (packed projections at their stored size).
    pub fn weight_bytes(&self) -> usize {
        let projections: usize = slots(&self.config)
            .filter_map(|slot| self.proj(slot))
            .map(Proj::weight_bytes)
            .sum();
        let wte = self.wte.weight.val();
        let embedding = wte.shape().num_elements() * wte.dtype().size();
        // a tied head packed beside a half lookup table is not in the slot list
        let tied_packed = match (&self.lm_head, self.config.tie_embeddings) {
            (Some(head), true) => head.weight_bytes(),
            _ => 0,
        };
        projections + embedding + tied_packed
    }

    /// The projection of `slot`, for a matrix slot.
    fn proj(&self, slot: Slot) -> Option<&Proj<B>> {
        use LayerSlot::*;
        match slot {
            Slot::Head => self.lm_head.as_ref(),
            Slot::Layer(l, s) => {
                let b = self.blocks.get(l)?;
                match s {
                    Qkv => Some(&b.attn.qkv),
                    AttnOut => Some(&b.attn.proj),
                    s => b.mlp.proj(s),
                }
            }
            Slot::Embedding | Slot::FinalNorm => None,
        }
    }

    /// The norm of `slot`, for a norm slot.
    fn norm(&self, slot: Slot) -> Option<&RmsNorm<B>> {
        match slot {
            Slot::FinalNorm => Some(&self.ln_f),
            Slot::Layer(l, LayerSlot::AttnNorm) => self.blocks.get(l).map(|b| &b.norm_1),
            Slot::Layer(l, LayerSlot::FfnNorm) => self.blocks.get(l).map(|b| &b.norm_2),
            Slot::Layer(l, LayerSlot::QNorm) => self.blocks.get(l)?.attn.q_norm.as_ref(),
            Slot::Layer(l, LayerSlot::KNorm) => self.blocks.get(l)?.attn.k_norm.as_ref(),
            _ => None,
        }
    }

    /// Builds the network with `embedding_rows` embedding rows, taking every slot from `src`
    /// (seeded initialisation, a checkpoint), dense f32.
    pub(crate) fn build(
        config: &ModelConfig,
        embedding_rows: usize,
        src: &mut dyn ParamSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::build_as(config, embedding_rows, src, WeightFormat::Stored, device)
    }

    /// As [`Self::build`], the projection weights kept as `format` says: the one path every
    /// origin takes (a matrix arrives in its stored type and is kept, packed or widened once).
    pub(crate) fn build_as(
        config: &ModelConfig,
        embedding_rows: usize,
        src: &mut dyn ParamSource,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let keep = Keep {
            format,
            packs: B::PACKS_WEIGHTS,
        };
        let mut read = Reader {
            src,
            config,
            rows: embedding_rows,
            keep,
        };
        let shape = read.shape(Slot::Embedding);
        let table = read.src.take_matrix(Slot::Embedding, &shape)?;
        // a tied head kept packed beside a half lookup table multiplies the stored matrix
        let v = config.padded_vocab_size();
        let tied_copy =
            (config.tie_embeddings && keep.narrows(table.stored_type()) && shape[0] == v)
                .then(|| table.clone());
        let wte = keep.embedding(table, [shape[0], shape[1]], device);
        read.src.release(Slot::Embedding);
        let blocks = (0..config.n_layer)
            .map(|l| read.block(l, device))
            .collect::<Result<Vec<_>, _>>()?;
        let ln_f = read.norm(Slot::FinalNorm, device)?;
        let lm_head = match tied_copy {
            None if !config.tie_embeddings => Some(read.proj(Slot::Head, device)?),
            Some(table) if tied_head_packed(&wte, v) => {
                // not a parameter: written once, as the embedding
                let head_shape = Slot::Head.shape(config, embedding_rows);
                Some(proj_from(
                    read.src,
                    Slot::Embedding,
                    table,
                    &head_shape,
                    keep,
                    device,
                )?)
            }
            _ => None,
        };
        read.src.finish()?;
        Ok(Self {
            wte,
            blocks,
            ln_f,
            lm_head,
            rope: Rope::new(config, device),
            config: config.clone(),
        })
    }

    /// The hidden states that predict each position (`[batch, seq_len, n_embd]`, after the final
    /// norm) for `ids`
    /// (`[batch, seq_len]`) at positions `start..`, the layers' keys/values of other positions as
    /// `caches` says.
    pub(crate) fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        start: usize,
        bias: Option<Tensor<B, 4>>,
        caches: Caches<'_, B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let starts = vec![start; ids.dims()[0]];
        self.hidden_rows(ids, &starts, bias, caches)
    }

    /// As [`Self::hidden`], row `r` of `ids` at positions `starts[r]..` (ragged batches of block
    /// decoding: each row's block sits after its own prompt).
    pub(crate) fn hidden_rows(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        bias: Option<Tensor<B, 4>>,
        caches: Caches<'_, B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        self.run(ids, starts, bias, caches, None)
    }

    /// As [`Self::hidden`] at positions `0..` without a cache, with the router logits `[batch *
    /// seq_len, E]` of every Mixture-of-Experts layer in layer order (training's load-balancing
    /// loss).
    pub(crate) fn hidden_routed(
        &self,
        ids: Tensor<B, 2, Int>,
        bias: Option<Tensor<B, 4>>,
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 2>>), ModelError> {
        let starts = vec![0; ids.dims()[0]];
        let mut router_logits = Vec::new();
        let hidden = self.run(ids, &starts, bias, Caches::None, Some(&mut router_logits))?;
        Ok((hidden, router_logits))
    }

    /// The blocks over `ids`, each row from its own start, the caches as `caches` says and the
    /// routers' logits appended to `router_logits` when given.
    fn run(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        bias: Option<Tensor<B, 4>>,
        mut caches: Caches<'_, B>,
        mut router_logits: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, seq_len] = ids.dims();
        if starts.len() != batch {
            return Err(ModelError::CacheBatch {
                cached: starts.len(),
                input: batch,
            });
        }
        let rope = self.rope.tables_rows(starts, seq_len)?;
        let mut x = self.wte.forward(ids);
        if self.packs() {
            // packed projections take f32 activations (a half embedding widens here)
            x = to_f32(x);
        }
        for (l, block) in self.blocks.iter().enumerate() {
            let access = match &mut caches {
                Caches::None => None,
                Caches::Append(layers) => Some(CacheAccess::Append(&mut layers[l])),
                Caches::Read(layers) => Some(CacheAccess::Read(&layers[l])),
                Caches::Replace(layers) => Some(CacheAccess::Replace {
                    cache: &mut layers[l],
                    starts,
                }),
            };
            x = block.forward(x, &rope, bias.clone(), access, router_logits.as_deref_mut())?;
        }
        Ok(self.aligned(self.ln_f.forward(x)))
    }

    /// With [`ModelConfig::shift_logits`], position `i` takes the output of `i - 1` (position 0
    /// keeps its own), as Dream's `cat([logits[:, :1], logits[:, :-1]], 1)`: the shift is applied
    /// within the positions computed, so a window's first position predicts from itself (Fast-dLLM
    /// reveals a block's first token from the full pass for this reason). Unchanged otherwise.
    fn aligned(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let n = hidden.dims()[1];
        if !self.config.shift_logits || n < 2 {
            return hidden;
        }
        let first = hidden.clone().narrow(1, 0, 1);
        Tensor::cat(vec![first, hidden.narrow(1, 0, n - 1)], 1)
    }

    /// Every weight by slot, in the slots' order and PyTorch layout: `(slot, shape, values)`.
    pub(crate) fn state(&self) -> Result<Vec<NamedWeight>, ModelError> {
        let host = |slot: Slot, t: Tensor<B, 2>| -> Result<Vec<f32>, ModelError> {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| ModelError::ReadBack {
                    key: format!("{slot:?}"),
                    reason: format!("{e:?}"),
                })
        };
        let mut out = Vec::new();
        for slot in slots(&self.config) {
            let (shape, values) = match slot {
                Slot::Embedding => {
                    let wte = self.wte.weight.val();
                    (wte.dims().to_vec(), host(slot, wte)?)
                }
                Slot::Layer(l, LayerSlot::QkvBias) => {
                    let Some(bias) = self.blocks.get(l).and_then(|b| b.attn.qkv.bias()) else {
                        continue;
                    };
                    let values = host(slot, bias.unsqueeze::<2>())?;
                    (vec![values.len()], values)
                }
                Slot::Layer(l, LayerSlot::RouterBias) => {
                    let bias = match self.blocks.get(l).map(|b| &b.mlp) {
                        Some(Ffn::Moe(moe)) => moe.expert_bias.clone(),
                        _ => None,
                    };
                    let Some(values) = bias else { continue };
                    (vec![values.len()], values)
                }
                _ => match (self.proj(slot), self.norm(slot)) {
                    (Some(p), _) => p.weight_f32()?,
                    (None, Some(n)) => {
                        let values = host(slot, n.gain.val().unsqueeze::<2>())?;
                        (vec![values.len()], values)
                    }
                    (None, None) => continue,
                },
            };
            out.push((slot, shape, values));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::module::AutodiffModule;

    use super::*;
    use crate::params::SeededInit;

    type A = burn::backend::Autodiff<burn::backend::Flex>;

    /// Weights by slot.
    struct Named(HashMap<Slot, Vec<f32>>);

    impl ParamSource for Named {
        fn take(&mut self, slot: Slot, _shape: &[usize]) -> Result<Vec<f32>, ModelError> {
            self.0.get(&slot).cloned().ok_or(ModelError::Config {
                reason: format!("no {slot:?}"),
            })
        }
    }

    fn host<const D: usize>(t: Tensor<burn::backend::Flex, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn a_tied_head_is_one_parameter_whose_gradient_sums_both_uses() {
        // LLaDA's layout: the mask token inside the vocabulary, embedding and head of V rows
        let mut config = ModelConfig::custom(40, 2, 4, 16, 32, 16).with_query_groups(2);
        config.padded_vocab_size = Some(40);
        config.mask_token_id = Some(39);
        config.tie_embeddings = true;
        let (v, c) = (40, 16);
        let device = Default::default();
        let rows = config.masked_embedding_rows();
        let tied: Transformer<A> =
            Transformer::build(&config, rows, &mut SeededInit::new(&config, 5), &device).unwrap();
        assert!(tied.lm_head.is_none(), "no second matrix");
        let state = tied.state().unwrap();
        assert!(state.iter().all(|(k, _, _)| *k != Slot::Head));
        // the same weights with a head of its own, equal to the embedding
        let mut named: HashMap<Slot, Vec<f32>> =
            state.into_iter().map(|(k, _, w)| (k, w)).collect();
        named.insert(Slot::Head, named[&Slot::Embedding].clone());
        let untied_config = ModelConfig {
            tie_embeddings: false,
            ..config.clone()
        };
        let untied: Transformer<A> =
            Transformer::build(&untied_config, rows, &mut Named(named), &device).unwrap();
        assert_eq!(untied.num_params() - tied.num_params(), v * c);

        let ids = Tensor::<A, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 39, 7, 39, 2, 0, 39], [2, 4]),
            &device,
        );
        let weights = Tensor::<A, 3>::from_data(
            TensorData::new(
                (0..2 * 4 * v)
                    .map(|i| ((i * 7) % 11) as f32 - 5.0)
                    .collect::<Vec<_>>(),
                [2, 4, v],
            ),
            &device,
        );
        let logits = |net: &Transformer<A>| {
            net.head(net.hidden(ids.clone(), 0, None, Caches::None).unwrap())
        };
        let (lt, lu) = (logits(&tied), logits(&untied));
        let diff = host(lt.clone().inner())
            .iter()
            .zip(host(lu.clone().inner()))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "logits differ by {diff}");
        let gt = (lt * weights.clone()).sum().backward();
        let gu = (lu * weights).sum().backward();
        let tied_grad = host(tied.wte.weight.grad(&gt).unwrap());
        let wte_grad = host(untied.wte.weight.grad(&gu).unwrap());
        let head = untied.lm_head.as_ref().unwrap().weight().unwrap();
        // burn's layout [C, V] -> [V, C]
        let head_grad = host(head.grad(&gu).unwrap().transpose());
        let worst = tied_grad
            .iter()
            .zip(wte_grad.iter().zip(&head_grad))
            .map(|(t, (e, h))| (t - (e + h)).abs())
            .fold(0.0f32, f32::max);
        let scale = head_grad.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            scale > 0.0 && worst <= 1e-5 * scale.max(1.0),
            "{worst} at scale {scale}"
        );
        // an inference copy keeps the tie
        assert!(tied.valid().lm_head.is_none());
    }
}
