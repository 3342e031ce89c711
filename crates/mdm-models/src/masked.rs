//! The bidirectional masked Transformer (Diff_LLaMA): the network of an MDM.

use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use mdm_kernels::Kernels;

use crate::params::SeededInit;
use crate::transformer::{Caches, Transformer};
use crate::{ModelConfig, ModelError};

/// Diff_LLaMA: a Llama-style Transformer without a causal mask that sees a partly masked sequence
/// and predicts every position. It does not see `t` (time-agnostic).
///
/// Embedding `[V + 1, C]` (row `V = mask_id` is the mask token), output head `[C, V]`.
#[derive(Module, Debug)]
pub struct MaskedTransformer<B: Backend> {
    /// The network.
    pub net: Transformer<B>,
}

impl ModelConfig {
    /// A masked Transformer with SMDM's initialisation drawn from `seed`.
    pub fn init_masked<B: Kernels>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        self.init_masked_as(seed, crate::WeightFormat::Stored, device)
    }

    /// As [`Self::init_masked`], the projection weights kept as `format` says (each drawn f32 and
    /// packed or quantized as it is built: never the whole network f32 first).
    pub fn init_masked_as<B: Kernels>(
        &self,
        seed: u64,
        format: crate::WeightFormat,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        let mut init = SeededInit::new(self, seed);
        let rows = self.masked_embedding_rows();
        Ok(MaskedTransformer {
            net: Transformer::build_as(self, rows, &mut init, format, device)?,
        })
    }
}

impl<B: Kernels> MaskedTransformer<B> {
    /// This model with its weights in `precision`, for inference (the logits stay f32; see
    /// [`crate::precision`] for which backends run f16 and bf16).
    pub fn with_precision(self, precision: crate::Precision) -> Self {
        precision.cast_module(self)
    }

    /// Bytes the weights hold at their types.
    pub fn weight_bytes(&self) -> usize {
        self.net.weight_bytes()
    }

    /// Logits `[batch, seq_len, V]` for `ids` `[batch, seq_len]` (mask positions hold `mask_id`).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.head(self.forward_hidden(ids)?))
    }

    /// Logits `[batch, seq_len, V]` for `ids` at positions `0..seq_len` under `mask` (LLaDA2's
    /// block-causal generation, say; [`Self::forward`] is `AttentionMask::Bidirectional`).
    pub fn forward_masked(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: crate::attention::AttentionMask,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let bias = mask.bias(0, ids.dims()[1], &ids.device());
        Ok(self.head(self.net.hidden(ids, 0, bias, Caches::None)?))
    }

    /// Final normalised hidden states `[batch, seq_len, C]`: apply [`Self::head`] to the positions
    /// you need (only masked positions need logits, which saves most of the head's cost).
    pub fn forward_hidden(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        self.net.hidden(ids, 0, None, Caches::None)
    }

    /// Logits `[n, V]` at the row-major flat positions `index` (`[n]`, into `[batch * seq_len]`) only,
    /// e.g. the masked positions of a training batch
    /// ([`MaskedTargets::index`](mdm_core::forward_process::MaskedTargets)).
    pub fn forward_at(
        &self,
        ids: Tensor<B, 2, Int>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        self.logits_at(ids, None, index)
    }

    /// As [`Self::forward_at`], with the router logits `[batch * seq_len, E]` of every
    /// Mixture-of-Experts layer in layer order (none for a dense network): what
    /// [`crate::moe::load_balancing_loss`] reads.
    pub fn forward_at_routed(
        &self,
        ids: Tensor<B, 2, Int>,
        index: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 2>, Vec<Tensor<B, 2>>), ModelError> {
        let (hidden, router_logits) = self.net.hidden_routed(ids, None)?;
        Ok((self.head_at(hidden, index), router_logits))
    }

    /// As [`Self::forward_at`] for a right-padded batch: `padding` (`[batch, seq_len]`, true at padding
    /// positions) hides those keys from every query, so a row's logits are those of the row alone
    /// (up to floating-point summation order).
    pub fn forward_at_padded(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Tensor<B, 2, Bool>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let [batch, seq_len] = ids.dims();
        let bias = Tensor::<B, 2>::zeros([batch, seq_len], &ids.device())
            .mask_fill(padding, f32::NEG_INFINITY)
            .reshape([batch, 1, 1, seq_len]);
        self.logits_at(ids, Some(bias), index)
    }

    /// The network with an optional attention bias, then the head at the flat positions `index`.
    fn logits_at(
        &self,
        ids: Tensor<B, 2, Int>,
        bias: Option<Tensor<B, 4>>,
        index: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let hidden = self.net.hidden(ids, 0, bias, Caches::None)?;
        Ok(self.head_at(hidden, index))
    }

    /// The head at the row-major flat positions `index` of `hidden` (`[batch, n, C]` → `[k, V]`):
    /// only the positions a caller reads pay for the `C x V` projection.
    pub(crate) fn head_at(&self, hidden: Tensor<B, 3>, index: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let [batch, n, c] = hidden.dims();
        if index.dims()[0] == 0 {
            // no position to read (e.g. a cache-building pass whose rows have all finished):
            // burn-cubecl's matmul autotune divides by zero on a zero-row operand
            let vocab = self.net.vocab();
            return Tensor::zeros([0, vocab], &hidden.device());
        }
        self.head(hidden.reshape([batch * n, c]).select(0, index))
    }

    /// The output head: `[..., C]` → `[..., V]`.
    pub fn head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        self.net.head(hidden)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.net.config
    }

    /// The mask token id (`V`).
    pub fn mask_id(&self) -> usize {
        self.net.config.mask_id()
    }
}
