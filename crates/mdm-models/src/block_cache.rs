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

use burn::tensor::{backend::Backend, Int, Tensor};

use crate::attention::LayerCache;
use crate::transformer::Caches;
use crate::{MaskedTransformer, ModelError};

/// Keys and values of every layer, `[batch, groups, len, head_size]` each, for positions
/// `0..len` of a batch.
#[derive(Debug, Clone)]
pub struct BlockCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> BlockCache<B> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `len` positions (the prefix cache of a block starting at `len`).
    pub fn prefix(&self, len: usize) -> Result<Self, ModelError> {
        if len > self.len() {
            return Err(ModelError::SequenceTooLong {
                start: 0,
                len,
                block_size: self.len(),
            });
        }
        Ok(Self {
            layers: self.layers.iter().map(|l| l.truncate(len)).collect(),
        })
    }
}

impl<B: Backend> MaskedTransformer<B> {
    /// Logits `[batch, seq_len, V]` of a full pass over `ids`, and the keys/values of every
    /// position.
    pub fn forward_caching(
        &self,
        ids: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 3>, BlockCache<B>), ModelError> {
        let mut slots = vec![None; self.net.blocks.len()];
        let hidden = self.net.hidden(ids, 0, None, Caches::Append(&mut slots))?;
        let layers = slots.into_iter().flatten().collect::<Vec<_>>();
        Ok((self.head(hidden), BlockCache { layers }))
    }

    /// Logits `[batch, n, V]` of `ids` (`[batch, n]`) at positions `prefix.len()..` (the block
    /// and everything after it), attending to the cached prefix and to themselves; the cache is
    /// not changed.
    pub fn forward_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let start = prefix.len();
        let hidden = self
            .net
            .hidden(ids, start, None, Caches::Read(&prefix.layers))?;
        Ok(self.head(hidden))
    }

    /// Logits `[batch, n, V]` of `ids` (`[batch, n]`) at positions `start..start + n` of the
    /// cached sequence, attending to every cached position; their own keys/values replace the
    /// cached ones there.
    pub fn forward_window(
        &self,
        ids: Tensor<B, 2, Int>,
        start: usize,
        cache: &mut BlockCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let hidden = self
            .net
            .hidden(ids, start, None, Caches::Replace(&mut cache.layers))?;
        Ok(self.head(hidden))
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
        let (cached_full, cache) = model.forward_caching(ids.clone()).unwrap();
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
            .forward_window(ids.clone().narrow(1, 2, 4), 2, &mut dual)
            .unwrap();
        assert!(max_diff(full.clone().narrow(1, 2, 4), block) < 1e-5);
        assert_eq!(dual.len(), 8);

        // a token changed inside the window moves the window's logits, and its keys are
        // written back: a second window pass over the same tokens sees the new ones
        let changed: Vec<i64> = vec![1, 2, 9, 9, 5, 6, 7, 8];
        let changed = Tensor::<B, 2, Int>::from_data(TensorData::new(changed, [2, 4]), &device);
        let a = model.forward_window(changed.clone(), 2, &mut dual).unwrap();
        assert!(max_diff(full.narrow(1, 2, 4), a.clone()) > 1e-3);
        let b = model.forward_window(changed, 2, &mut dual).unwrap();
        assert!(max_diff(a, b) < 1e-6);

        assert!(cache.prefix(9).is_err());
        let too_far = ids.narrow(1, 0, 4);
        assert!(model.forward_window(too_far, 6, &mut dual).is_err());
    }
}
