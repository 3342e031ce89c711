//! Block key/value caches of a masked model: the hooks of Fast-dLLM's approximate caches for
//! semi-autoregressive decoding (`generate_with_prefix_cache`, `generate_with_dual_cache` of
//! NVlabs/Fast-dLLM `llada/generate.py`). The cache lives outside the model.
//!
//! - [`MaskedTransformer::forward_caching`]: one full pass, returning the keys/values of every
//!   position (done at the start of each block).
//! - Prefix cache: keep [`BlockCache::prefix`] of the positions before the block; each further
//!   step runs the block and everything after it with [`MaskedTransformer::forward_after_prefix`].
//! - Dual cache: keep the whole cache; each further step runs only the block with
//!   [`MaskedTransformer::forward_window`], which reads the cached prefix and suffix and replaces
//!   the block's own entries.
//!
//! Both are approximations: the cached keys/values are those of an earlier step's tokens. With no
//! token changed since the full pass, each gives the full pass's logits (tested).
//!
//! Ragged batches (rows of different lengths, right-padded, as block decoding of prompts of
//! different lengths needs) are exact per row: the cache records each row's length, padding keys
//! are hidden from every query, and each row's window sits at its own positions.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_kernels::Kernels;

use crate::attention::AttentionMask;
use crate::attention::LayerCache;
use crate::transformer::Caches;
use crate::{MaskedTransformer, ModelError};

/// Keys and values of every layer, `[batch, groups, len, head_size]` each, for positions
/// `0..len` of a batch; row `r` holds `lengths()[r]` real positions (the rest is padding, hidden
/// from every query).
#[derive(Debug, Clone)]
pub struct BlockCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    lengths: Vec<usize>,
}

impl<B: Kernels> BlockCache<B> {
    /// Positions held (the longest row's).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The real positions of each row.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// The first `len` positions of every row (the prefix cache of a block starting at `len`).
    pub fn prefix(&self, len: usize) -> Result<Self, ModelError> {
        self.prefix_rows(&vec![len; self.lengths.len()])
    }

    /// The first `starts[r]` positions of row `r` (the prefix caches of a ragged batch whose row
    /// `r`'s block starts at `starts[r]`).
    pub fn prefix_rows(&self, starts: &[usize]) -> Result<Self, ModelError> {
        if starts.len() != self.lengths.len() {
            return Err(ModelError::CacheBatch {
                cached: self.lengths.len(),
                input: starts.len(),
            });
        }
        if let Some((&len, &held)) = starts.iter().zip(&self.lengths).find(|(s, l)| s > l) {
            return Err(ModelError::SequenceTooLong {
                start: 0,
                len,
                block_size: held,
            });
        }
        let keep = starts.iter().copied().max().unwrap_or(0);
        if keep == 0 {
            return Err(ModelError::Config {
                reason: "a prefix cache of no position: every row's block starts at 0".into(),
            });
        }
        Ok(Self {
            layers: self.layers.iter().map(|l| l.truncate(keep)).collect(),
            lengths: starts.to_vec(),
        })
    }

    /// Additive attention bias `[batch, 1, 1, len + extra]` hiding each row's cached positions
    /// past its length (`extra` keys that follow the cache are all visible); `None` when no row is
    /// padded.
    fn key_bias(&self, extra: usize, device: &B::Device) -> Option<Tensor<B, 4>> {
        padding_bias(&self.lengths, self.len(), extra, device)
    }
}

/// Two additive attention biases as one (broadcast to `[batch, 1, queries, keys]`).
pub(crate) fn combined<B: Kernels>(
    a: Option<Tensor<B, 4>>,
    b: Option<Tensor<B, 4>>,
) -> Option<Tensor<B, 4>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// `[batch, 1, 1, total + extra]`: `-inf` at positions `lengths[r]..total` of row `r`, 0 elsewhere;
/// `None` when every row is `total` long.
pub(crate) fn padding_bias<B: Kernels>(
    lengths: &[usize],
    total: usize,
    extra: usize,
    device: &B::Device,
) -> Option<Tensor<B, 4>> {
    if lengths.iter().all(|&l| l == total) {
        return None;
    }
    let keys = total + extra;
    let mut bias = vec![0.0f32; lengths.len() * keys];
    for (r, &len) in lengths.iter().enumerate() {
        bias[r * keys + len.min(total)..r * keys + total].fill(f32::NEG_INFINITY);
    }
    let data = TensorData::new(bias, [lengths.len(), 1, 1, keys]);
    Some(Tensor::from_data(data, device))
}

impl<B: Kernels> MaskedTransformer<B> {
    /// Logits `[batch, seq_len, V]` of a full pass over `ids`, and the keys/values of every
    /// position. `lengths` (one per row, or `None` for rows of `seq_len`) are the real lengths of
    /// right-padded rows: padding keys are hidden from every query and recorded in the cache.
    pub fn forward_caching(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
    ) -> Result<(Tensor<B, 3>, BlockCache<B>), ModelError> {
        let (hidden, cache) = self.hidden_caching(ids, lengths)?;
        Ok((self.head(hidden), cache))
    }

    /// [`Self::forward_caching`] before the head: hidden states `[batch, seq_len, C]`.
    pub(crate) fn hidden_caching(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
    ) -> Result<(Tensor<B, 3>, BlockCache<B>), ModelError> {
        self.hidden_caching_under(ids, lengths, AttentionMask::Bidirectional)
    }

    /// As [`Self::hidden_caching`] under `mask` (block-causal: every block's keys/values are then
    /// exactly those of the blocks up to it, the cache of LLaDA2's block diffusion).
    pub(crate) fn hidden_caching_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
    ) -> Result<(Tensor<B, 3>, BlockCache<B>), ModelError> {
        let [batch, seq_len] = ids.dims();
        let lengths = match lengths {
            Some(l) if l.len() != batch => {
                return Err(ModelError::CacheBatch {
                    cached: l.len(),
                    input: batch,
                })
            }
            Some(l) => {
                if let Some(&len) = l.iter().find(|&&n| n > seq_len) {
                    return Err(ModelError::SequenceTooLong {
                        start: 0,
                        len,
                        block_size: seq_len,
                    });
                }
                l.to_vec()
            }
            None => vec![seq_len; batch],
        };
        let device = ids.device();
        let bias = combined(
            padding_bias(&lengths, seq_len, 0, &device),
            mask.bias(0, seq_len, &device),
        );
        let mut slots = vec![None; self.net.blocks.len()];
        let hidden = self.net.hidden(ids, 0, bias, Caches::Append(&mut slots))?;
        let layers = slots.into_iter().flatten().collect::<Vec<_>>();
        Ok((hidden, BlockCache { layers, lengths }))
    }

    /// Logits `[batch, n, V]` of `ids` (`[batch, n]`): row `r` at positions `prefix.lengths()[r]..`
    /// (the block and everything after it), attending to its cached prefix and to itself; the
    /// cache is not changed.
    pub fn forward_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.head(self.hidden_after_prefix(ids, prefix)?))
    }

    /// [`Self::forward_after_prefix`] before the head: hidden states `[batch, n, C]`.
    pub(crate) fn hidden_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let n = ids.dims()[1];
        let bias = prefix.key_bias(n, &ids.device());
        self.net
            .hidden_rows(ids, &prefix.lengths, bias, Caches::Read(&prefix.layers))
    }

    /// Logits `[batch, n, V]` of `ids` (`[batch, n]`): row `r` at positions `starts[r]..starts[r] +
    /// n` of the cached sequence, attending to every real cached position of its row; their own
    /// keys/values replace the cached ones there.
    pub fn forward_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.head(self.hidden_window(ids, starts, cache)?))
    }

    /// [`Self::forward_window`] before the head: hidden states `[batch, n, C]`.
    pub(crate) fn hidden_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let n = ids.dims()[1];
        if let Some((&start, &len)) = starts
            .iter()
            .zip(&cache.lengths)
            .find(|&(&s, &l)| s + n > l)
        {
            return Err(ModelError::SequenceTooLong {
                start,
                len: n,
                block_size: len,
            });
        }
        let bias = cache.key_bias(0, &ids.device());
        self.net
            .hidden_rows(ids, starts, bias, Caches::Replace(&mut cache.layers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn caches_reproduce_the_full_pass_when_nothing_changed() {
        let device = Default::default();
        let config = ModelConfig::custom(50, 2, 4, 32, 64, 16).with_query_groups(2);
        let model = config.init_masked::<B>(3, &device).unwrap();
        let m = config.mask_id() as i64;
        let ids: Vec<i64> = vec![1, 2, 3, m, m, m, m, m, 4, 5, 6, 7, m, m, m, m];
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 8]), &device);
        let full = model.forward(ids.clone()).unwrap();
        let (cached_full, cache) = model.forward_caching(ids.clone(), None).unwrap();
        assert_eq!(cache.len(), 8);
        assert!(max_diff(full.clone(), cached_full) < 1e-6);

        // prefix cache: positions 3.. against the cached 0..3
        let prefix = cache.prefix(3).unwrap();
        let tail = model
            .forward_after_prefix(ids.clone().narrow(1, 3, 5), &prefix)
            .unwrap();
        assert!(max_diff(full.clone().narrow(1, 3, 5), tail) < 1e-5);
        assert_eq!(prefix.len(), 3, "reading leaves the prefix as it was");

        // dual cache: the block 2..6 against the cached rest
        let mut dual = cache.clone();
        let block = model
            .forward_window(ids.clone().narrow(1, 2, 4), &[2, 2], &mut dual)
            .unwrap();
        assert!(max_diff(full.clone().narrow(1, 2, 4), block) < 1e-5);
        assert_eq!(dual.len(), 8);

        // a token changed inside the window moves the window's logits, and its keys are
        // written back: a second window pass over the same tokens sees the new ones
        let changed: Vec<i64> = vec![1, 2, 9, 9, 5, 6, 7, 8];
        let changed = Tensor::<B, 2, Int>::from_data(TensorData::new(changed, [2, 4]), &device);
        let a = model
            .forward_window(changed.clone(), &[2, 2], &mut dual)
            .unwrap();
        assert!(max_diff(full.narrow(1, 2, 4), a.clone()) > 1e-3);
        let b = model.forward_window(changed, &[2, 2], &mut dual).unwrap();
        assert!(max_diff(a, b) < 1e-6);

        assert!(cache.prefix(9).is_err());
        let too_far = ids.narrow(1, 0, 4);
        assert!(model.forward_window(too_far, &[6, 6], &mut dual).is_err());
    }

    #[test]
    fn ragged_rows_equal_each_row_alone() {
        let device = Default::default();
        let config = ModelConfig::custom(50, 2, 4, 32, 64, 16).with_query_groups(2);
        let model = config.init_masked::<B>(5, &device).unwrap();
        let m = config.mask_id() as i64;
        let ids = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, n]), &device)
        };
        // rows of 7 and 9 positions (prompts of 3 and 5, four masks each), padded to 9
        let short: Vec<i64> = vec![1, 2, 3, m, m, m, m];
        let long: Vec<i64> = vec![4, 5, 6, 7, 8, m, m, m, m];
        let mut padded = short.clone();
        padded.extend([0, 0]);
        padded.extend(long.iter().copied());
        let batch = Tensor::<B, 2, Int>::from_data(TensorData::new(padded, [2, 9]), &device);
        let (full, cache) = model.forward_caching(batch.clone(), Some(&[7, 9])).unwrap();
        let (alone_s, cache_s) = model.forward_caching(ids(short.clone()), None).unwrap();
        let (alone_l, cache_l) = model.forward_caching(ids(long.clone()), None).unwrap();
        assert!(max_diff(full.clone().narrow(0, 0, 1).narrow(1, 0, 7), alone_s) < 1e-5);
        assert!(max_diff(full.narrow(0, 1, 1), alone_l) < 1e-5);
        assert_eq!(cache.lengths(), &[7, 9]);

        // prefix caches ending at each row's own block start (3 and 5), windows of 4 positions
        let window: Vec<i64> = vec![m, 9, m, m, m, m, 10, m];
        let window = Tensor::<B, 2, Int>::from_data(TensorData::new(window, [2, 4]), &device);
        let prefix = cache.prefix_rows(&[3, 5]).unwrap();
        let tail = model.forward_after_prefix(window.clone(), &prefix).unwrap();
        let tail_s = model
            .forward_after_prefix(window.clone().narrow(0, 0, 1), &cache_s.prefix(3).unwrap())
            .unwrap();
        let tail_l = model
            .forward_after_prefix(window.clone().narrow(0, 1, 1), &cache_l.prefix(5).unwrap())
            .unwrap();
        assert!(max_diff(tail.clone().narrow(0, 0, 1), tail_s) < 1e-5);
        assert!(max_diff(tail.narrow(0, 1, 1), tail_l) < 1e-5);

        // dual cache: each row's window at its own start, written back at its own place
        let (mut dual, mut dual_s, mut dual_l) = (cache.clone(), cache_s, cache_l);
        for _ in 0..2 {
            let both = model
                .forward_window(window.clone(), &[3, 5], &mut dual)
                .unwrap();
            let s = model
                .forward_window(window.clone().narrow(0, 0, 1), &[3], &mut dual_s)
                .unwrap();
            let l = model
                .forward_window(window.clone().narrow(0, 1, 1), &[5], &mut dual_l)
                .unwrap();
            assert!(max_diff(both.clone().narrow(0, 0, 1), s) < 1e-5);
            assert!(max_diff(both.narrow(0, 1, 1), l) < 1e-5);
        }
        // a window past a row's real length is refused
        assert!(model
            .forward_window(window.clone(), &[4, 5], &mut dual)
            .is_err());
        assert!(cache.prefix_rows(&[8, 5]).is_err());
        assert!(cache.prefix_rows(&[3]).is_err());
    }
}
