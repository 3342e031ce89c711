//! Multi-head / grouped-query self-attention with SMDM's fused, grouped q/k/v projection.
//!
//! The fused projection's output features come in `G` consecutive groups of `(P + 2) D` features
//! (`P = H / G` queries per group): the `P` query heads of group `g`, then its key, then its value.
//! Query head `h` attends with the key/value of group `h / P`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use mdm_kernels::Kernels;

use crate::linear::Proj;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;
use crate::ModelError;

/// Which keys a query sees, as an architecture or a decoder asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMask {
    /// Every key (masked diffusion models).
    Bidirectional,
    /// Keys at or before the query (the autoregressive baseline).
    Causal,
    /// Blocks of this many positions counted from position 0: a query sees every key of its own
    /// block and of the blocks before it (LLaDA2's block diffusion: `k / block <= q / block`).
    BlockCausal(usize),
}

impl AttentionMask {
    /// The additive bias `[1, 1, new, start + new]` (0 where a key is seen, `-inf` where not) of
    /// queries at positions `start..start + new` over keys at `0..start + new`; `None` when every
    /// key is seen.
    pub fn bias<B: Backend>(
        self,
        start: usize,
        new: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4>> {
        let keys = start + new;
        match self {
            Self::Bidirectional => None,
            Self::Causal => {
                let future = Tensor::<B, 2, Bool>::tril_mask([new, keys], start as i64, device);
                Some(
                    Tensor::<B, 2>::zeros([new, keys], device)
                        .mask_fill(future, f32::NEG_INFINITY)
                        .unsqueeze::<4>(),
                )
            }
            Self::BlockCausal(block) => {
                let block = block.max(1);
                let values: Vec<f32> = (0..new * keys)
                    .map(|i| {
                        let (q, k) = (start + i / keys, i % keys);
                        if k / block <= q / block {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                Some(Tensor::from_data(
                    TensorData::new(values, [1, 1, new, keys]),
                    device,
                ))
            }
        }
    }
}

/// Cached keys and values of one layer: `[batch, groups, cached_len, head_size]` each.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// Rotated keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

impl<B: Kernels> LayerCache<B> {
    /// The first `len` positions.
    pub fn truncate(&self, len: usize) -> Self {
        Self {
            k: self.k.clone().narrow(2, 0, len),
            v: self.v.clone().narrow(2, 0, len),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.k.dims()[2]
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How one layer's attention uses a key/value cache.
pub enum CacheAccess<'a, B: Backend> {
    /// The input follows the cached positions: its keys/values are appended to the cache (created
    /// when empty) and attention runs over all of them (autoregressive decoding, filling a cache).
    Append(&'a mut Option<LayerCache<B>>),
    /// The input follows the cached positions and attends to them, but the cache is left as it is
    /// (Fast-dLLM's prefix cache: every step of a block rereads the same prefix).
    Read(&'a LayerCache<B>),
    /// Row `r` of the input holds positions `starts[r]..starts[r] + len` of the cached sequence:
    /// its keys/values replace the cached ones there (written back), and attention runs over the
    /// whole cached sequence (Fast-dLLM's dual cache, `replace_position`).
    Replace {
        /// The layer's cache of the whole sequence.
        cache: &'a mut LayerCache<B>,
        /// First position of each row of the input.
        starts: &'a [usize],
    },
}

/// `old` (`[batch, groups, total, D]`) with row `r`'s positions `starts[r]..starts[r] + n` replaced
/// by `new` (`[batch, groups, n, D]`); one splice for the whole batch when the starts agree.
fn splice_rows<B: Kernels>(
    old: &Tensor<B, 4>,
    new: Tensor<B, 4>,
    starts: &[usize],
) -> Tensor<B, 4> {
    let splice = |old: Tensor<B, 4>, new: Tensor<B, 4>, start: usize| {
        let (total, n) = (old.dims()[2], new.dims()[2]);
        let mut parts = Vec::with_capacity(3);
        if start > 0 {
            parts.push(old.clone().narrow(2, 0, start));
        }
        parts.push(new);
        if start + n < total {
            parts.push(old.narrow(2, start + n, total - start - n));
        }
        Tensor::cat(parts, 2)
    };
    let first = starts.first().copied().unwrap_or(0);
    if starts.iter().all(|&s| s == first) {
        return splice(old.clone(), new, first);
    }
    let rows = starts
        .iter()
        .enumerate()
        .map(|(r, &s)| splice(old.clone().narrow(0, r, 1), new.clone().narrow(0, r, 1), s))
        .collect();
    Tensor::cat(rows, 0)
}

/// Self-attention of one block.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `[n_embd, (H + 2G) D]`, fused q/k/v in SMDM's grouped layout.
    pub qkv: Proj<B>,
    /// `[H D, n_embd]`, output projection (heads concatenated head-major).
    pub proj: Proj<B>,
    /// Per-head RMSNorm of the queries (gain `[D]`), before RoPE, when the family has one.
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of the keys.
    pub k_norm: Option<RmsNorm<B>>,
    /// `H`
    pub n_head: usize,
    /// `G`
    pub n_query_groups: usize,
    /// `D`
    pub head_size: usize,
}

impl<B: Kernels> SelfAttention<B> {
    /// `x`: `[batch, seq_len, n_embd]`; `rope`: the tables of its positions.
    /// `bias`: additive attention bias broadcastable to `[batch, H, seq_len, keys]` (a causal mask as
    /// `-inf` above the diagonal), or none for bidirectional attention.
    /// `cache`: how the keys/values of other positions come in ([`CacheAccess`]).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<CacheAccess<'_, B>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, seq_len, _] = x.dims();
        let (h, g, d) = (self.n_head, self.n_query_groups, self.head_size);
        let per_group = h / g;
        let qkv = rope.apply(self.qk_normed(self.qkv.forward(x))).reshape([
            batch,
            seq_len,
            g,
            per_group + 2,
            d,
        ]);
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
        let check_batch = |cached: &LayerCache<B>| {
            let cached = cached.k.dims()[0];
            if cached == batch {
                Ok(())
            } else {
                Err(ModelError::CacheBatch {
                    cached,
                    input: batch,
                })
            }
        };
        match cache {
            None => {}
            Some(CacheAccess::Append(cache)) => {
                if let Some(prev) = cache.take() {
                    check_batch(&prev)?;
                    k = Tensor::cat(vec![prev.k, k], 2);
                    v = Tensor::cat(vec![prev.v, v], 2);
                }
                *cache = Some(LayerCache {
                    k: k.clone(),
                    v: v.clone(),
                });
            }
            Some(CacheAccess::Read(prev)) => {
                check_batch(prev)?;
                k = Tensor::cat(vec![prev.k.clone(), k], 2);
                v = Tensor::cat(vec![prev.v.clone(), v], 2);
            }
            Some(CacheAccess::Replace { cache, starts }) => {
                check_batch(cache)?;
                let total = cache.len();
                if let Some(&start) = starts.iter().find(|&&s| s + seq_len > total) {
                    return Err(ModelError::SequenceTooLong {
                        start,
                        len: seq_len,
                        block_size: total,
                    });
                }
                k = splice_rows(&cache.k, k, starts);
                v = splice_rows(&cache.v, v, starts);
                cache.k = k.clone();
                cache.v = v.clone();
            }
        }
        let scale = 1.0 / (d as f64).sqrt();
        let y = <B as Kernels>::attention(q, k, v, bias, scale).reshape([batch, seq_len, h * d]);
        Ok(self.proj.forward(y))
    }

    /// The fused projection's output `[batch, seq_len, (H + 2G) D]` with each query and key head
    /// normalised by its RMSNorm (values untouched), when the family has q/k norms.
    fn qk_normed(&self, qkv: Tensor<B, 3>) -> Tensor<B, 3> {
        let (Some(q_norm), Some(k_norm)) = (&self.q_norm, &self.k_norm) else {
            return qkv;
        };
        let [batch, seq_len, rows] = qkv.dims();
        let (g, d) = (self.n_query_groups, self.head_size);
        let p = self.n_head / g;
        let grouped = qkv.reshape([batch, seq_len, g, p + 2, d]);
        let q = q_norm.forward(grouped.clone().narrow(3, 0, p));
        let k = k_norm.forward(grouped.clone().narrow(3, p, 1));
        let v = grouped.narrow(3, p + 1, 1);
        Tensor::cat(vec![q, k, v], 3).reshape([batch, seq_len, rows])
    }
}
