//! The model seam: what samplers, likelihood estimators, the evaluation harness and validation
//! need of a masked diffusion model, whatever its family.
//!
//! [`MaskedTransformer`] implements it for SMDM's Diff_LLaMA and for the LLaDA family (both run on
//! the shared Llama-style network); a new family implements it for its own network (see
//! `docs/architecture.md`, "A new model family").

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use mdm_kernels::Kernels;

use crate::attention::AttentionMask;
use crate::{BlockCache, CausalTransformer, KvCache, MaskedTransformer, ModelError};

/// What a network keeps between the passes of a block under the prefix and dual caches
/// ([`MaskPredictor::Cache`]): the decoder only cuts it to each row's prefix. The shared network's
/// is [`BlockCache`]; a network without caches names [`NoCache`].
pub trait DecodingCache: Sized {
    /// The first `starts[r]` positions of row `r` (the prefix cache of a batch whose row `r`'s
    /// block starts at `starts[r]`).
    fn prefix_rows(&self, starts: &[usize]) -> Result<Self, ModelError>;
}

impl<B: Kernels> DecodingCache for BlockCache<B> {
    fn prefix_rows(&self, starts: &[usize]) -> Result<Self, ModelError> {
        BlockCache::prefix_rows(self, starts)
    }
}

/// The cache of a network that has none: no value of it exists, and the cache hooks keep their
/// defaults, which refuse the prefix and dual caches with a [`ModelError::Config`] error that
/// says so.
#[derive(Debug, Clone, Copy)]
pub enum NoCache {}

impl DecodingCache for NoCache {
    fn prefix_rows(&self, _: &[usize]) -> Result<Self, ModelError> {
        match *self {}
    }
}

/// A network that predicts every masked position of a sequence (bidirectional, no time input).
///
/// Ids are `[batch, seq_len]` with masked positions holding [`Self::mask_id`]; logits are over
/// [`Self::vocab_size`] ids.
///
/// A network written outside this crate implements it completely: the required methods are the
/// model's sizes and [`Self::logits_at`]; [`Self::logits`] has a default through it, and the cache
/// hooks (prefix and dual caches, block diffusion's masks) default to an error that says the
/// network does not have them (its `Cache` is then [`NoCache`]).
pub trait MaskPredictor<B: Backend> {
    /// The keys/values (or whatever state) a caching pass returns for the passes after it.
    type Cache: DecodingCache;
    /// The id written at masked positions (SMDM: one past the head; LLaDA: inside the vocabulary).
    fn mask_id(&self) -> usize;
    /// Width of the logits: every id the head can predict, and every id an input may hold
    /// (besides the mask id).
    fn vocab_size(&self) -> usize;
    /// The longest sequence the model takes.
    fn max_positions(&self) -> usize;
    /// The device of the weights.
    fn device(&self) -> B::Device;
    /// Whether the family predicts position `i` from the output at `i - 1` (Dream). The logits
    /// are already aligned (position `i`'s prediction at `i`), but a pass over a window of
    /// positions cannot predict the window's first one (the output before it is not computed):
    /// with a block cache the decoder reveals it from the block's full pass, as Fast-dLLM does.
    fn shifts_logits(&self) -> bool {
        false
    }
    /// Logits `[batch, seq_len, V]` (by default [`Self::logits_at`] at every position).
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, len] = ids.dims();
        let index = Tensor::<B, 1, Int>::arange(0..(batch * len) as i64, &ids.device());
        let logits = self.logits_at(ids, None, index)?;
        let v = logits.dims()[1];
        Ok(logits.reshape([batch, len, v]))
    }
    /// Logits `[n, V]` at the row-major flat positions `index` (into `[batch * seq_len]`) only.
    /// `padding` (`[batch, seq_len]`, true at the padding of right-padded ragged rows) hides those
    /// positions from every query, so a row's logits are those of the row alone.
    fn logits_at(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError>;
    /// A full pass: logits `[k, V]` at the row-major flat positions `index` (into
    /// `[batch * seq_len]`, as [`Self::logits_at`]) and the keys/values of every position (the
    /// start of a block with a prefix or dual cache). `lengths` (one per row; `None`: every row is
    /// `seq_len` long) are the real lengths of right-padded ragged rows: the padding is hidden
    /// from every query, so each row's logits and cache are those of the row alone.
    fn logits_caching(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, Self::Cache), ModelError> {
        let _ = (ids, lengths, index);
        Err(no_cache())
    }
    /// As [`Self::logits_at`] under an attention mask other than bidirectional (LLaDA2's
    /// block-causal mask of block diffusion), the rows right-padded to their `lengths` (`None`:
    /// every row is `seq_len` long). A network that takes only bidirectional attention keeps the
    /// default, which refuses any other mask.
    fn logits_at_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let _ = (ids, lengths, index);
        Err(unsupported_mask(mask))
    }
    /// As [`Self::logits_caching`] under `mask` (block-causal: the keys/values of every block are
    /// then exact for the blocks after it). The default refuses any mask.
    fn logits_caching_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, Self::Cache), ModelError> {
        let _ = (ids, lengths, index);
        Err(unsupported_mask(mask))
    }
    /// Logits `[k, V]` at the flat positions `index` (into `[batch * n]`) of the `n` positions
    /// that follow a cached prefix (prefix cache): row `r` at positions `prefix.lengths()[r]..`
    /// (see [`DecodingCache::prefix_rows`]); the cache is unchanged.
    fn logits_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &Self::Cache,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let _ = (ids, prefix, index);
        Err(no_cache())
    }
    /// Logits `[k, V]` at the flat positions `index` (into `[batch * n]`) of positions
    /// `starts[r]..starts[r] + n` of row `r` of a cached sequence, their own keys/values written
    /// back into the cache (dual cache).
    fn logits_in_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut Self::Cache,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let _ = (ids, starts, cache, index);
        Err(no_cache())
    }
}

/// A left-to-right network (the autoregressive baseline): position `i`'s logits predict token
/// `i + 1`. What the autoregressive sampler, the causal likelihood and the server ask of it; a
/// network without a key/value cache may keep the ids so far as its
/// [`Self::Cache`] and run them again in [`Self::logits_cached`].
pub trait CausalPredictor<B: Backend> {
    /// The keys/values of the positions decoded so far.
    type Cache;
    /// Width of the logits (every id an input may hold).
    fn vocab_size(&self) -> usize;
    /// The longest sequence one pass takes.
    fn max_positions(&self) -> usize;
    /// The device of the weights.
    fn device(&self) -> B::Device;
    /// Next-token logits `[batch, seq_len, V]` of `ids` `[batch, seq_len]`.
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError>;
    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;
    /// Logits `[batch, new, V]` of `ids` `[batch, new]` that follow the positions already in
    /// `cache`, whose keys/values are appended to it.
    fn logits_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 3>, ModelError>;
}

impl<B: Kernels> CausalPredictor<B> for CausalTransformer<B> {
    type Cache = KvCache<B>;

    fn vocab_size(&self) -> usize {
        self.config().padded_vocab_size()
    }

    fn max_positions(&self) -> usize {
        self.config().block_size
    }

    fn device(&self) -> B::Device {
        self.net.device()
    }

    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        self.forward(ids)
    }

    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self)
    }

    fn logits_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        self.forward_cached(ids, cache)
    }
}

/// The error of a network asked for a cached pass it does not have.
fn no_cache() -> ModelError {
    ModelError::Config {
        reason: "this network has no key/value cache: decode with `cache: none`".into(),
    }
}

/// The error of a network asked for an attention mask it does not take.
fn unsupported_mask(mask: AttentionMask) -> ModelError {
    ModelError::Config {
        reason: format!("this network takes bidirectional attention only, not {mask:?}"),
    }
}

impl<B: Kernels> MaskPredictor<B> for MaskedTransformer<B> {
    type Cache = BlockCache<B>;

    fn mask_id(&self) -> usize {
        MaskedTransformer::mask_id(self)
    }

    fn vocab_size(&self) -> usize {
        self.config().padded_vocab_size()
    }

    fn max_positions(&self) -> usize {
        self.config().block_size
    }

    fn device(&self) -> B::Device {
        self.net.device()
    }

    fn shifts_logits(&self) -> bool {
        self.config().shift_logits
    }

    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        self.forward(ids)
    }

    fn logits_at(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        match padding {
            Some(padding) => self.forward_at_padded(ids, padding, index),
            None => self.forward_at(ids, index),
        }
    }

    fn logits_caching(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, BlockCache<B>), ModelError> {
        let (hidden, cache) = self.hidden_caching(ids, lengths)?;
        Ok((self.head_at(hidden, index), cache))
    }

    fn logits_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &BlockCache<B>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        Ok(self.head_at(self.hidden_after_prefix(ids, prefix)?, index))
    }

    fn logits_at_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        // a caching pass whose cache is dropped: the same bias, one path
        let (logits, _) = self.logits_caching_under(ids, lengths, mask, index)?;
        Ok(logits)
    }

    fn logits_caching_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, BlockCache<B>), ModelError> {
        let (hidden, cache) = self.hidden_caching_under(ids, lengths, mask)?;
        Ok((self.head_at(hidden, index), cache))
    }

    fn logits_in_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut BlockCache<B>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        Ok(self.head_at(self.hidden_window(ids, starts, cache)?, index))
    }
}

/// A borrowed network is the network (`Masked(&model)` in the evaluation harness).
impl<B: Backend, M: MaskPredictor<B> + ?Sized> MaskPredictor<B> for &M {
    type Cache = M::Cache;

    fn mask_id(&self) -> usize {
        (**self).mask_id()
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn max_positions(&self) -> usize {
        (**self).max_positions()
    }
    fn device(&self) -> B::Device {
        (**self).device()
    }
    fn shifts_logits(&self) -> bool {
        (**self).shifts_logits()
    }
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        (**self).logits(ids)
    }
    fn logits_at(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        (**self).logits_at(ids, padding, index)
    }
    fn logits_caching(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, Self::Cache), ModelError> {
        (**self).logits_caching(ids, lengths, index)
    }
    fn logits_at_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        (**self).logits_at_under(ids, lengths, mask, index)
    }
    fn logits_caching_under(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: Option<&[usize]>,
        mask: AttentionMask,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, Self::Cache), ModelError> {
        (**self).logits_caching_under(ids, lengths, mask, index)
    }
    fn logits_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &Self::Cache,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        (**self).logits_after_prefix(ids, prefix, index)
    }
    fn logits_in_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut Self::Cache,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        (**self).logits_in_window(ids, starts, cache, index)
    }
}

/// A borrowed network is the network.
impl<B: Backend, C: CausalPredictor<B> + ?Sized> CausalPredictor<B> for &C {
    type Cache = C::Cache;

    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn max_positions(&self) -> usize {
        (**self).max_positions()
    }
    fn device(&self) -> B::Device {
        (**self).device()
    }
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        (**self).logits(ids)
    }
    fn new_cache(&self) -> Self::Cache {
        (**self).new_cache()
    }
    fn logits_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 3>, ModelError> {
        (**self).logits_cached(ids, cache)
    }
}
