//! The network's weights as data: one [`Slot`] per tensor, its shape and its role, in one fixed
//! order ([`slots`]).
//!
//! Everything that walks the weights walks this list: building the network from any source
//! ([`crate::params::ParamSource`] answers slots, not names), seeded initialisation (the draw
//! order is this order), our checkpoints (a slot's SMDM name is [`crate::smdm::smdm_name`]), writing
//! a published folder back, the weight bytes, the memory estimate and the parameter counts. A
//! tensor's name in a file lives only in its family's file ([`crate::families`]): a family maps
//! slots to names, never the other way.

use crate::ModelConfig;

/// One weight of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The token embedding `[rows, C]`.
    Embedding,
    /// A weight of block `l`.
    Layer(usize, LayerSlot),
    /// The final norm's gain `[C]`.
    FinalNorm,
    /// The output head `[V, C]` (absent when tied to the embedding).
    Head,
}

/// A weight within a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerSlot {
    /// The norm before attention `[C]`.
    AttnNorm,
    /// The fused q/k/v projection `[(H + 2G) D, C]`, grouped: for each key/value group its query
    /// heads, its key, its value.
    Qkv,
    /// The fused q/k/v bias `[(H + 2G) D]` (families with [`ModelConfig::qkv_bias`]).
    QkvBias,
    /// The attention output projection `[C, C]`.
    AttnOut,
    /// The norm before the feed-forward `[C]`.
    FfnNorm,
    /// SwiGLU's gate `[I, C]` (`w1`).
    FfnGate,
    /// SwiGLU's up projection `[I, C]` (`w2`).
    FfnUp,
    /// SwiGLU's down projection `[C, I]` (`w3`).
    FfnDown,
}

/// What a slot is, for initialisation and accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The embedding table.
    Embedding,
    /// A norm gain (initialised to 1).
    Norm,
    /// A bias (initialised to 0).
    Bias,
    /// A projection matrix `[out, in]`; `residual` when it writes into the residual stream at the
    /// end of a block's branch (SMDM initialises those smaller).
    Matrix {
        /// Whether it ends a residual branch.
        residual: bool,
    },
}

impl LayerSlot {
    /// A block's slots in order (`QkvBias` only with a bias).
    fn all(qkv_bias: bool) -> impl Iterator<Item = Self> {
        use LayerSlot::*;
        [
            AttnNorm, Qkv, QkvBias, AttnOut, FfnNorm, FfnGate, FfnUp, FfnDown,
        ]
        .into_iter()
        .filter(move |s| qkv_bias || *s != QkvBias)
    }
}

impl Slot {
    /// The slot's role.
    pub fn role(self) -> Role {
        use LayerSlot::*;
        match self {
            Self::Embedding => Role::Embedding,
            Self::FinalNorm | Self::Layer(_, AttnNorm | FfnNorm) => Role::Norm,
            Self::Layer(_, QkvBias) => Role::Bias,
            Self::Layer(_, AttnOut | FfnDown) => Role::Matrix { residual: true },
            Self::Layer(_, Qkv | FfnGate | FfnUp) | Self::Head => Role::Matrix { residual: false },
        }
    }

    /// The slot's shape in PyTorch layout (`[out, in]` for a matrix), for a network whose
    /// embedding has `embedding_rows` rows.
    pub fn shape(self, config: &ModelConfig, embedding_rows: usize) -> Vec<usize> {
        use LayerSlot::*;
        let (c, i) = (config.n_embd, config.intermediate_size);
        match self {
            Self::Embedding => vec![embedding_rows, c],
            Self::FinalNorm | Self::Layer(_, AttnNorm | FfnNorm) => vec![c],
            Self::Layer(_, Qkv) => vec![config.qkv_rows(), c],
            Self::Layer(_, QkvBias) => vec![config.qkv_rows()],
            Self::Layer(_, AttnOut) => vec![c, c],
            Self::Layer(_, FfnGate | FfnUp) => vec![i, c],
            Self::Layer(_, FfnDown) => vec![c, i],
            Self::Head => vec![config.padded_vocab_size(), c],
        }
    }

    /// Values the slot holds.
    pub fn len(self, config: &ModelConfig, embedding_rows: usize) -> usize {
        self.shape(config, embedding_rows).iter().product()
    }
}

/// Every slot of a network of `config`, in the order sources are read and initialisation draws:
/// the embedding, each block's, the final norm, the head unless it is tied.
pub fn slots(config: &ModelConfig) -> impl Iterator<Item = Slot> + '_ {
    let layers = (0..config.n_layer)
        .flat_map(|l| LayerSlot::all(config.qkv_bias).map(move |s| Slot::Layer(l, s)));
    std::iter::once(Slot::Embedding)
        .chain(layers)
        .chain(std::iter::once(Slot::FinalNorm))
        .chain((!config.tie_embeddings).then_some(Slot::Head))
}

/// Values of every slot but the embedding and the head (the `N` of the scaling laws).
pub(crate) fn non_embedding_values(config: &ModelConfig) -> usize {
    slots(config)
        .filter(|s| !matches!(s, Slot::Embedding | Slot::Head))
        .map(|s| s.len(config, 0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_follows_the_config() {
        let mut config = ModelConfig::custom(40, 2, 4, 16, 32, 16);
        assert_eq!(slots(&config).count(), 1 + 2 * 7 + 2);
        config.qkv_bias = true;
        config.tie_embeddings = true;
        let list: Vec<Slot> = slots(&config).collect();
        assert_eq!(list.len(), 1 + 2 * 8 + 1);
        assert_eq!(list[2], Slot::Layer(0, LayerSlot::Qkv));
        assert_eq!(list[3], Slot::Layer(0, LayerSlot::QkvBias));
        assert!(!list.contains(&Slot::Head));
        let rows = config.masked_embedding_rows();
        assert_eq!(Slot::Embedding.shape(&config, rows), vec![rows, 16]);
        assert_eq!(
            Slot::Layer(1, LayerSlot::FfnDown).role(),
            Role::Matrix { residual: true }
        );
    }
}
