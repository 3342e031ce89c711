//! Multi-head / grouped-query self-attention with SMDM's fused, grouped q/k/v projection.
//!
//! The fused projection's output features come in `G` consecutive groups of `(P + 2) D` features
//! (`P = H / G` queries per group): the `P` query heads of group `g`, then its key, then its value.
//! Query head `h` attends with the key/value of group `h / P`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{activation::softmax, backend::Backend, Tensor};

use crate::rope::RopeTables;
use crate::ModelError;

/// Cached keys and values of one layer: `[batch, groups, cached_len, head_size]` each.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// Rotated keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

/// Self-attention of one block.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `[n_embd, (H + 2G) D]`, fused q/k/v in SMDM's grouped layout.
    pub qkv: Linear<B>,
    /// `[n_embd, n_embd]`, output projection (heads concatenated head-major).
    pub proj: Linear<B>,
    /// `H`
    pub n_head: usize,
    /// `G`
    pub n_query_groups: usize,
    /// `D`
    pub head_size: usize,
}

impl<B: Backend> SelfAttention<B> {
    /// `x`: `[batch, seq_len, n_embd]`; `rope`: the tables of its positions.
    /// `bias`: additive attention bias broadcastable to `[batch, H, seq_len, keys]` (a causal mask as
    /// `-inf` above the diagonal), or none for bidirectional attention.
    /// `cache`: when given, the new keys/values are appended to it and attention runs over all of it.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, seq_len, n_embd] = x.dims();
        let (h, g, d) = (self.n_head, self.n_query_groups, self.head_size);
        let per_group = h / g;
        let qkv = rope
            .apply(self.qkv.forward(x))
            .reshape([batch, seq_len, g, per_group + 2, d]);
        // [B, T, G, P, D] -> [B, H, T, D]
        let q = qkv
            .clone()
            .narrow(3, 0, per_group)
            .reshape([batch, seq_len, h, d])
            .swap_dims(1, 2);
        // [B, T, G, 1, D] -> [B, G, T, D]
        let mut k = qkv
            .clone()
            .narrow(3, per_group, 1)
            .reshape([batch, seq_len, g, d])
            .swap_dims(1, 2);
        let mut v = qkv
            .narrow(3, per_group + 1, 1)
            .reshape([batch, seq_len, g, d])
            .swap_dims(1, 2);
        if let Some(cache) = cache {
            if let Some(prev) = cache.as_ref() {
                let cached = prev.k.dims()[0];
                if cached != batch {
                    return Err(ModelError::CacheBatch {
                        cached,
                        input: batch,
                    });
                }
            }
            if let Some(prev) = cache.take() {
                k = Tensor::cat(vec![prev.k, k], 2);
                v = Tensor::cat(vec![prev.v, v], 2);
            }
            *cache = Some(LayerCache {
                k: k.clone(),
                v: v.clone(),
            });
        }
        let keys = k.dims()[2];
        let (k, v) = if per_group > 1 {
            let expand = |t: Tensor<B, 4>| {
                t.unsqueeze_dim::<5>(2)
                    .expand([batch, g, per_group, keys, d])
                    .reshape([batch, h, keys, d])
            };
            (expand(k), expand(v))
        } else {
            (k, v)
        };
        let scale = 1.0 / (d as f64).sqrt();
        let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        let y = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq_len, n_embd]);
        Ok(self.proj.forward(y))
    }
}
