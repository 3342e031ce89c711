//! The autoregressive baseline: the same network with a causal mask, and a KV cache.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};
use mdm_kernels::Kernels;

use crate::attention::LayerCache;
use crate::params::SeededInit;
use crate::transformer::{Caches, Transformer};
use crate::{ModelConfig, ModelError};

/// The causal (autoregressive) baseline: Diff_LLaMA blocks with a causal mask, an embedding of
/// `V` rows (no mask token) and the same `[C, V]` head. Position `i` predicts token `i + 1`.
#[derive(Module, Debug)]
pub struct CausalTransformer<B: Backend> {
    /// The network.
    pub net: Transformer<B>,
}

/// Keys and values of every layer for the positions decoded so far.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    len: usize,
}

impl<B: Kernels> KvCache<B> {
    /// An empty cache for `model`.
    pub fn new(model: &CausalTransformer<B>) -> Self {
        Self {
            layers: vec![None; model.net.blocks.len()],
            len: 0,
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }
}

impl ModelConfig {
    /// A causal baseline with SMDM's initialisation drawn from `seed`.
    pub fn init_causal<B: Kernels>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<CausalTransformer<B>, ModelError> {
        let mut init = SeededInit::new(self, seed);
        Ok(CausalTransformer {
            net: Transformer::build(self, self.padded_vocab_size(), &mut init, device)?,
        })
    }
}

/// `[1, 1, new, start + new]` additive bias: `-inf` where key position > query position.
fn causal_bias<B: Kernels>(start: usize, new: usize, device: &B::Device) -> Tensor<B, 4> {
    let bias = crate::attention::AttentionMask::Causal.bias(start, new, device);
    bias.unwrap_or_else(|| Tensor::zeros([1, 1, new, start + new], device))
}

impl<B: Kernels> CausalTransformer<B> {
    /// This model with its weights in `precision`, for inference (the logits stay f32; see
    /// [`crate::precision`] for which backends run f16 and bf16).
    pub fn with_precision(self, precision: crate::Precision) -> Self {
        precision.cast_module(self)
    }

    /// Next-token logits `[batch, seq_len, V]` for `ids` `[batch, seq_len]` (no cache).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        let [_, seq_len] = ids.dims();
        let bias = causal_bias(0, seq_len, &ids.device());
        Ok(self
            .net
            .head(self.net.hidden(ids, 0, Some(bias), Caches::None)?))
    }

    /// Incremental decoding: logits `[batch, new, V]` for `ids` `[batch, new]` that follow the
    /// `cache.len()` positions already in `cache`; their keys and values are appended to it.
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [_, new] = ids.dims();
        let start = cache.len;
        let bias = (new > 1).then(|| causal_bias(start, new, &ids.device()));
        let hidden = self
            .net
            .hidden(ids, start, bias, Caches::Append(&mut cache.layers))?;
        cache.len += new;
        Ok(self.net.head(hidden))
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.net.config
    }
}
