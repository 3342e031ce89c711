//! The model seam: what samplers, likelihood estimators, the evaluation harness and validation
//! need of a masked diffusion model, whatever its family.
//!
//! [`MaskedTransformer`] implements it for SMDM's Diff_LLaMA and for the LLaDA family (both run on
//! the shared Llama-style network); a new family implements it for its own network (see
//! `docs/architecture.md`, "A new model family").

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use mdm_kernels::Kernels;

use crate::attention::AttentionMask;
use crate::{BlockCache, MaskedTransformer, ModelError};

/// A network that predicts every masked position of a sequence (bidirectional, no time input).
///
/// Ids are `[batch, seq_len]` with masked positions holding [`Self::mask_id`]; logits are over
/// [`Self::vocab_size`] ids.
pub trait MaskPredictor<B: Backend> {
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
    /// Logits `[batch, seq_len, V]`.
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError>;
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
    ) -> Result<(Tensor<B, 2>, BlockCache<B>), ModelError>;
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
    ) -> Result<(Tensor<B, 2>, BlockCache<B>), ModelError> {
        let _ = (ids, lengths, index);
        Err(unsupported_mask(mask))
    }
    /// Logits `[k, V]` at the flat positions `index` (into `[batch * n]`) of the `n` positions
    /// that follow a cached prefix (prefix cache): row `r` at positions `prefix.lengths()[r]..`
    /// (see [`BlockCache::prefix_rows`]); the cache is unchanged.
    fn logits_after_prefix(
        &self,
        ids: Tensor<B, 2, Int>,
        prefix: &BlockCache<B>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError>;
    /// Logits `[k, V]` at the flat positions `index` (into `[batch * n]`) of positions
    /// `starts[r]..starts[r] + n` of row `r` of a cached sequence, their own keys/values written
    /// back into the cache (dual cache).
    fn logits_in_window(
        &self,
        ids: Tensor<B, 2, Int>,
        starts: &[usize],
        cache: &mut BlockCache<B>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError>;
}

/// The error of a network asked for an attention mask it does not take.
fn unsupported_mask(mask: AttentionMask) -> ModelError {
    ModelError::Config {
        reason: format!("this network takes bidirectional attention only, not {mask:?}"),
    }
}

impl<B: Kernels> MaskPredictor<B> for MaskedTransformer<B> {
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
