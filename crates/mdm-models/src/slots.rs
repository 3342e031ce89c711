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
#[non_exhaustive]
pub enum LayerSlot {
    /// The norm before attention `[C]`.
    AttnNorm,
    /// The fused q/k/v projection `[(H + 2G) D, C]`, grouped: for each key/value group its query
    /// heads, its key, its value.
    Qkv,
    /// The fused q/k/v bias `[(H + 2G) D]` (families with [`ModelConfig::qkv_bias`]).
    QkvBias,
    /// The per-head RMSNorm gain of the queries `[D]` (with [`ModelConfig::qk_norm`]).
    QNorm,
    /// The per-head RMSNorm gain of the keys `[D]`.
    KNorm,
    /// The attention output projection `[C, H D]`.
    AttnOut,
    /// The norm before the feed-forward `[C]`.
    FfnNorm,
    /// SwiGLU's gate `[I, C]` (`w1`).
    FfnGate,
    /// SwiGLU's up projection `[I, C]` (`w2`).
    FfnUp,
    /// SwiGLU's down projection `[C, I]` (`w3`).
    FfnDown,
    /// A Mixture-of-Experts layer's router `[E, C]`.
    Router,
    /// The router's expert bias `[E]` ([`crate::ExpertBias`]).
    RouterBias,
    /// Routed expert `e`'s SwiGLU gate `[Ie, C]`.
    ExpertGate(usize),
    /// Routed expert `e`'s up projection `[Ie, C]`.
    ExpertUp(usize),
    /// Routed expert `e`'s down projection `[C, Ie]`.
    ExpertDown(usize),
    /// The shared expert's gate `[Is, C]`.
    SharedGate,
    /// The shared expert's up projection `[Is, C]`.
    SharedUp,
    /// The shared expert's down projection `[C, Is]`.
    SharedDown,
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
    /// Block `l`'s slots in order: attention (its bias and q/k norms when the config has them),
    /// then the dense SwiGLU or the Mixture of Experts (router, its bias, each expert's gate, up
    /// and down, the shared expert).
    fn all(config: &ModelConfig, l: usize) -> Vec<Self> {
        use LayerSlot::*;
        let mut out = vec![AttnNorm, Qkv];
        if config.qkv_bias {
            out.push(QkvBias);
        }
        if config.qk_norm {
            out.extend([QNorm, KNorm]);
        }
        out.extend([AttnOut, FfnNorm]);
        match config.moe.as_ref().filter(|_| config.is_moe_layer(l)) {
            None => out.extend([FfnGate, FfnUp, FfnDown]),
            Some(moe) => {
                out.push(Router);
                if moe.expert_bias != crate::ExpertBias::None {
                    out.push(RouterBias);
                }
                for e in 0..moe.n_experts {
                    out.extend([ExpertGate(e), ExpertUp(e), ExpertDown(e)]);
                }
                if moe.shared_size > 0 {
                    out.extend([SharedGate, SharedUp, SharedDown]);
                }
            }
        }
        out
    }
}

impl Slot {
    /// The slot's role.
    pub fn role(self) -> Role {
        use LayerSlot::*;
        match self {
            Self::Embedding => Role::Embedding,
            Self::FinalNorm | Self::Layer(_, AttnNorm | FfnNorm | QNorm | KNorm) => Role::Norm,
            Self::Layer(_, QkvBias | RouterBias) => Role::Bias,
            Self::Layer(_, AttnOut | FfnDown | ExpertDown(_) | SharedDown) => {
                Role::Matrix { residual: true }
            }
            Self::Layer(
                _,
                Qkv | FfnGate | FfnUp | Router | ExpertGate(_) | ExpertUp(_) | SharedGate
                | SharedUp,
            )
            | Self::Head => Role::Matrix { residual: false },
        }
    }

    /// The slot's shape in PyTorch layout (`[out, in]` for a matrix), for a network whose
    /// embedding has `embedding_rows` rows.
    pub fn shape(self, config: &ModelConfig, embedding_rows: usize) -> Vec<usize> {
        use LayerSlot::*;
        let (c, i) = (config.n_embd, config.intermediate_size);
        let moe = config.moe.as_ref();
        let (e, ie) = moe.map_or((0, 0), |m| (m.n_experts, m.expert_size));
        let is = moe.map_or(0, |m| m.shared_size);
        let d = config.head_size();
        match self {
            Self::Embedding => vec![embedding_rows, c],
            Self::FinalNorm | Self::Layer(_, AttnNorm | FfnNorm) => vec![c],
            Self::Layer(_, QNorm | KNorm) => vec![d],
            Self::Layer(_, Qkv) => vec![config.qkv_rows(), c],
            Self::Layer(_, QkvBias) => vec![config.qkv_rows()],
            Self::Layer(_, AttnOut) => vec![c, config.n_head * d],
            Self::Layer(_, FfnGate | FfnUp) => vec![i, c],
            Self::Layer(_, FfnDown) => vec![c, i],
            Self::Layer(_, Router) => vec![e, c],
            Self::Layer(_, RouterBias) => vec![e],
            Self::Layer(_, ExpertGate(_) | ExpertUp(_)) => vec![ie, c],
            Self::Layer(_, ExpertDown(_)) => vec![c, ie],
            Self::Layer(_, SharedGate | SharedUp) => vec![is, c],
            Self::Layer(_, SharedDown) => vec![c, is],
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
    let layers = (0..config.n_layer).flat_map(|l| {
        LayerSlot::all(config, l)
            .into_iter()
            .map(move |s| Slot::Layer(l, s))
    });
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

/// As [`non_embedding_values`], counting of the routed experts only the `top_k` of `E` a token
/// passes through: the weights one token multiplies (what a pass's FLOPs follow).
pub(crate) fn active_non_embedding_values(config: &ModelConfig) -> usize {
    let routed = |s: &Slot| {
        matches!(
            s,
            Slot::Layer(
                _,
                LayerSlot::ExpertGate(_) | LayerSlot::ExpertUp(_) | LayerSlot::ExpertDown(_)
            )
        )
    };
    let (k, e) = config
        .moe
        .as_ref()
        .map_or((1, 1), |m| (m.top_k, m.n_experts));
    let all = non_embedding_values(config);
    let experts: usize = slots(config).filter(routed).map(|s| s.len(config, 0)).sum();
    all - experts + experts / e * k
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
