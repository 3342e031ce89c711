//! The Diff_LLaMA network shared by the masked model and the causal baseline.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_kernels::Kernels;

use crate::attention::{CacheAccess, LayerCache, SelfAttention};
use crate::mlp::SwiGlu;
use crate::norm::RmsNorm;
use crate::params::ParamSource;
use crate::precision::to_f32;
use crate::rope::{Rope, RopeTables};
use crate::{ModelConfig, ModelError};

/// A weight under its SMDM name: `(name, PyTorch-layout shape, row-major values)`.
pub(crate) type NamedWeight = (String, Vec<usize>, Vec<f32>);

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

/// `x = x + Attn(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm_1: RmsNorm<B>,
    /// Self-attention.
    pub attn: SelfAttention<B>,
    /// Norm before the MLP.
    pub norm_2: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: SwiGlu<B>,
}

impl<B: Kernels> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<CacheAccess<'_, B>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let x = x.clone()
            + self
                .attn
                .forward(self.norm_1.forward(x), rope, bias, cache)?;
        Ok(x.clone() + self.mlp.forward(self.norm_2.forward(x)))
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
    /// `[n_embd, V]` output head: the mask token can never be predicted.
    pub lm_head: Linear<B>,
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

fn linear<B: Kernels>(
    src: &mut dyn ParamSource,
    key: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    let w = src.take(key, &[d_out, d_in])?;
    Ok(Linear {
        weight: Param::from_tensor(tensor(transpose(&w, d_out, d_in), [d_in, d_out], device)),
        bias: None,
    })
}

/// The fused q/k/v projection, with its bias `[(H + 2G) D]` when the family has one.
fn qkv<B: Kernels>(
    src: &mut dyn ParamSource,
    prefix: &str,
    config: &ModelConfig,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    let (c, rows) = (config.n_embd, config.qkv_rows());
    let mut linear = linear(src, &format!("{prefix}.attn.attn.weight"), c, rows, device)?;
    if config.qkv_bias {
        let b = src.take(&format!("{prefix}.attn.attn.bias"), &[rows])?;
        linear.bias = Some(Param::from_tensor(tensor(b, [rows], device)));
    }
    Ok(linear)
}

fn norm<B: Kernels>(
    src: &mut dyn ParamSource,
    key: &str,
    config: &ModelConfig,
    device: &B::Device,
) -> Result<RmsNorm<B>, ModelError> {
    let c = config.n_embd;
    Ok(RmsNorm::new(
        tensor(src.take(key, &[c])?, [c], device),
        config.norm_eps,
    ))
}

impl<B: Kernels> Transformer<B> {
    /// The output head: hidden states `[..., C]` → logits `[..., V]`, always f32 (see
    /// [`crate::precision`]: a no-op at f32).
    pub fn head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        to_f32(self.lm_head.forward(hidden))
    }

    /// Builds the network with `embedding_rows` embedding rows, taking every weight from `src`
    /// (random initialisation or a checkpoint) under its SMDM name.
    pub(crate) fn build(
        config: &ModelConfig,
        embedding_rows: usize,
        src: &mut dyn ParamSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let (c, i, v) = (
            config.n_embd,
            config.intermediate_size,
            config.padded_vocab_size(),
        );
        let wte = Embedding {
            weight: Param::from_tensor(tensor(
                src.take("transformer.wte.weight", &[embedding_rows, c])?,
                [embedding_rows, c],
                device,
            )),
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let p = format!("transformer.h.{l}");
            blocks.push(Block {
                norm_1: norm(src, &format!("{p}.norm_1.weight"), config, device)?,
                attn: SelfAttention {
                    qkv: qkv(src, &p, config, device)?,
                    proj: linear(src, &format!("{p}.attn.proj.weight"), c, c, device)?,
                    n_head: config.n_head,
                    n_query_groups: config.query_groups(),
                    head_size: config.head_size(),
                },
                norm_2: norm(src, &format!("{p}.norm_2.weight"), config, device)?,
                mlp: SwiGlu {
                    w1: linear(src, &format!("{p}.mlp.swiglu.w1.weight"), c, i, device)?,
                    w2: linear(src, &format!("{p}.mlp.swiglu.w2.weight"), c, i, device)?,
                    w3: linear(src, &format!("{p}.mlp.swiglu.w3.weight"), i, c, device)?,
                },
            });
        }
        let ln_f = norm(src, "transformer.ln_f.weight", config, device)?;
        let lm_head = linear(src, "lm_head.weight", c, v, device)?;
        src.finish()?;
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
        mut caches: Caches<'_, B>,
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
            x = block.forward(x, &rope, bias.clone(), access)?;
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

    /// Every weight under its SMDM name, in PyTorch layout: `(name, shape, values)`.
    pub(crate) fn state(&self) -> Result<Vec<NamedWeight>, ModelError> {
        let mut out = Vec::new();
        let host = |key: &str, t: Tensor<B, 2>| -> Result<Vec<f32>, ModelError> {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| ModelError::ReadBack {
                    key: key.to_string(),
                    reason: format!("{e:?}"),
                })
        };
        let push_linear = |out: &mut Vec<_>, key: String, l: &Linear<B>| {
            let [d_in, d_out] = l.weight.dims();
            let w = host(&key, l.weight.val())?;
            out.push((key, vec![d_out, d_in], transpose(&w, d_in, d_out)));
            Ok::<(), ModelError>(())
        };
        let push_norm = |out: &mut Vec<_>, key: String, n: &RmsNorm<B>| {
            let w = host(&key, n.gain.val().unsqueeze::<2>())?;
            out.push((key, vec![w.len()], w));
            Ok::<(), ModelError>(())
        };
        let wte = self.wte.weight.val();
        let shape = wte.dims().to_vec();
        out.push((
            "transformer.wte.weight".into(),
            shape,
            host("transformer.wte.weight", wte)?,
        ));
        for (l, b) in self.blocks.iter().enumerate() {
            let p = format!("transformer.h.{l}");
            push_norm(&mut out, format!("{p}.norm_1.weight"), &b.norm_1)?;
            push_linear(&mut out, format!("{p}.attn.attn.weight"), &b.attn.qkv)?;
            if let Some(bias) = &b.attn.qkv.bias {
                let key = format!("{p}.attn.attn.bias");
                let w = host(&key, bias.val().unsqueeze::<2>())?;
                out.push((key, vec![w.len()], w));
            }
            push_linear(&mut out, format!("{p}.attn.proj.weight"), &b.attn.proj)?;
            push_norm(&mut out, format!("{p}.norm_2.weight"), &b.norm_2)?;
            push_linear(&mut out, format!("{p}.mlp.swiglu.w1.weight"), &b.mlp.w1)?;
            push_linear(&mut out, format!("{p}.mlp.swiglu.w2.weight"), &b.mlp.w2)?;
            push_linear(&mut out, format!("{p}.mlp.swiglu.w3.weight"), &b.mlp.w3)?;
        }
        push_norm(&mut out, "transformer.ln_f.weight".into(), &self.ln_f)?;
        push_linear(&mut out, "lm_head.weight".into(), &self.lm_head)?;
        Ok(out)
    }
}
