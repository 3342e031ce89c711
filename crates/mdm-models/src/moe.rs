//! The Mixture-of-Experts feed-forward: a router scores `E` SwiGLU experts per token, the `k` best
//! are run on that token only, and their outputs are summed with the router's weights (plus a
//! shared expert every token passes through, where the family has one).
//!
//! The choice follows the references' code exactly ([`MoeConfig`]): softmax or sigmoid scores in
//! f32; an expert bias added for the choice only (LLaDA2) or for the weights too (LLaDA-MoE);
//! group-limited top-k (LLaDA2: each group scored by the sum of its two best biased scores, the
//! `topk_groups` best groups kept); the `k` weights renormalised or not; a routed scaling factor.
//!
//! Sparse: the scores come to the host once per layer, the experts are chosen there, and each
//! expert multiplies the rows of the tokens that chose it (gathered), its output weighted and added
//! back at those rows. Experts are visited in order and a token appears once per expert, so the sum
//! is in a fixed order: the same bits run after run, whatever the threads. The weights stay on the
//! device as `scores x (chosen mask)`, so training differentiates through the router as the
//! references do (the gradient reaches the scores of the chosen experts; the choice itself has none).
//! [`load_balancing_loss`] is Switch Transformers' auxiliary loss over the routers' logits, which a
//! forward pass hands out on request ([`Moe::forward_routed`]); training adds it with the weight
//! `router_aux_loss` gives (`mdm_train::objective::masked_loss_balanced`).

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, IndexingUpdateOp, Int, Tensor, TensorData};
use mdm_kernels::Kernels;

use crate::linear::Proj;
use crate::mlp::SwiGlu;
use crate::precision::to_f32;
use crate::{ExpertBias, ModelError, MoeConfig, RouterScore};

/// A Mixture-of-Experts feed-forward layer.
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    /// `[C, E]` router, f32 (the references compute the scores in f32 whatever the weights).
    pub router: Proj<B>,
    /// The routed experts.
    pub experts: Vec<SwiGlu<B>>,
    /// The shared expert, when the family has one.
    pub shared: Option<SwiGlu<B>>,
    /// The expert bias `[E]` (a buffer in the references, never trained).
    #[module(skip)]
    pub expert_bias: Option<Vec<f32>>,
    /// How experts are chosen and weighted.
    #[module(skip)]
    pub config: MoeConfig,
}

/// The experts each token chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// `[tokens, k]` row-major: token `t`'s experts, in the order `torch.topk` returns them
    /// (descending biased score).
    pub experts: Vec<usize>,
    /// Experts per token.
    pub k: usize,
}

impl Routing {
    /// The tokens that chose expert `e`, ascending.
    pub fn tokens_of(&self, e: usize) -> Vec<i64> {
        self.experts
            .chunks(self.k.max(1))
            .enumerate()
            .filter(|(_, row)| row.contains(&e))
            .map(|(t, _)| t as i64)
            .collect()
    }
}

impl MoeConfig {
    /// The experts of each token from the scores `[tokens, E]` (row-major, after softmax or
    /// sigmoid) and the expert bias.
    pub fn choose(&self, scores: &[f32], bias: Option<&[f32]>) -> Routing {
        let e = self.n_experts;
        let per_group = e / self.groups.max(1);
        let mut experts = Vec::with_capacity(scores.len() / e.max(1) * self.top_k);
        let mut biased = vec![0.0f32; e];
        let mut order: Vec<usize> = Vec::with_capacity(e);
        for row in scores.chunks(e) {
            for (j, b) in biased.iter_mut().enumerate() {
                *b = row[j] + bias.map_or(0.0, |bias| bias[j]);
            }
            if self.groups > 1 {
                // a group's score: its two highest biased scores summed
                let group_score = |g: usize| {
                    let mut top = [f32::NEG_INFINITY; 2];
                    for &x in &biased[g * per_group..(g + 1) * per_group] {
                        if x > top[0] {
                            top = [x, top[0]];
                        } else if x > top[1] {
                            top[1] = x;
                        }
                    }
                    top[0] + top[1]
                };
                let scores: Vec<f32> = (0..self.groups).map(group_score).collect();
                let mut groups: Vec<usize> = (0..self.groups).collect();
                groups.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                for &g in &groups[self.topk_groups..] {
                    biased[g * per_group..(g + 1) * per_group].fill(f32::NEG_INFINITY);
                }
            }
            order.clear();
            order.extend(0..e);
            // descending; a tie keeps the lower index first
            order.sort_by(|&a, &b| biased[b].total_cmp(&biased[a]));
            experts.extend_from_slice(&order[..self.top_k]);
        }
        Routing {
            experts,
            k: self.top_k,
        }
    }
}

impl<B: Kernels> Moe<B> {
    /// The experts chosen for each row of the router's logits `[tokens, E]` and their weights
    /// `[tokens, E]` (zero where not chosen; renormalised and scaled as the family does).
    pub fn route_logits(
        &self,
        logits: Tensor<B, 2>,
    ) -> Result<(Routing, Tensor<B, 2>), ModelError> {
        let scores = match self.config.score {
            RouterScore::Softmax => activation::softmax(logits, 1),
            RouterScore::Sigmoid => activation::sigmoid(logits),
        };
        self.route(scores)
    }

    /// The choice and the weights `[tokens, E]` from the scores.
    fn route(&self, scores: Tensor<B, 2>) -> Result<(Routing, Tensor<B, 2>), ModelError> {
        let [n, e] = scores.dims();
        let host = scores
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|err| ModelError::ReadBack {
                key: "router scores".into(),
                reason: format!("{err:?}"),
            })?;
        let routing = self.config.choose(&host, self.expert_bias.as_deref());
        let mut chosen = vec![0.0f32; n * e];
        for (t, row) in routing.experts.chunks(routing.k).enumerate() {
            for &x in row {
                chosen[t * e + x] = 1.0;
            }
        }
        let device = scores.device();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(chosen, [n, e]), &device);
        let mut weights = scores;
        if let (ExpertBias::Weights, Some(bias)) = (self.config.expert_bias, &self.expert_bias) {
            let bias = Tensor::<B, 1>::from_data(TensorData::new(bias.clone(), [e]), &device);
            weights = weights + bias.unsqueeze::<2>();
        }
        weights = weights * mask;
        if self.config.renormalize {
            weights = weights.clone() / weights.sum_dim(1);
        }
        if self.config.scaling != 1.0 {
            weights = weights * self.config.scaling;
        }
        Ok((routing, weights))
    }

    /// `[batch, seq_len, C]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, ModelError> {
        self.forward_routed(x, None)
    }

    /// As [`Self::forward`], appending the router's logits `[batch * seq_len, E]` (f32, before
    /// softmax or sigmoid) to `router_logits` when given.
    pub fn forward_routed(
        &self,
        x: Tensor<B, 3>,
        router_logits: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, seq_len, c] = x.dims();
        let n = batch * seq_len;
        let u = x.reshape([n, c]);
        let logits = to_f32(self.router.forward(u.clone()));
        if let Some(sink) = router_logits {
            sink.push(logits.clone());
        }
        let (routing, weights) = self.route_logits(logits)?;
        let device = u.device();
        let mut y = u.zeros_like();
        for (e, expert) in self.experts.iter().enumerate() {
            let tokens = routing.tokens_of(e);
            let m = tokens.len();
            if m == 0 {
                continue;
            }
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(tokens, [m]), &device);
            let out = expert
                .forward(u.clone().select(0, index.clone()).unsqueeze::<3>())
                .reshape([m, c]);
            let w = weights.clone().select(0, index.clone()).narrow(1, e, 1);
            let w = if w.dtype() == out.dtype() {
                w
            } else {
                w.cast(out.dtype())
            };
            y = y.select_assign(0, index, out * w, IndexingUpdateOp::Add);
        }
        if let Some(shared) = &self.shared {
            y = y + shared.forward(u.unsqueeze::<3>()).reshape([n, c]);
        }
        Ok(y.reshape([batch, seq_len, c]))
    }
}

/// The auxiliary load-balancing loss of Switch Transformers as LLaDA-MoE's
/// `load_balancing_loss_func` computes it (without an attention mask, as a diffusion model calls
/// it) over the router logits of every Mixture-of-Experts layer (`[tokens, E]` each, concatenated
/// by rows into `N` rows): with `p = softmax(logits)`, `f_e` the share of the `N` rows whose top
/// `k` of `p` holds expert `e` and `P_e` the mean of `p[:, e]`,
/// `loss = E * sum_e f_e P_e` (`k` when every expert is chosen and scored equally; the top `k` of
/// the plain softmax, whatever bias or groups the router chooses with, as the reference does).
/// The gradient flows through `P` only (the choice is a one-hot, as in the reference).
pub fn load_balancing_loss<B: Backend>(
    router_logits: Vec<Tensor<B, 2>>,
    n_experts: usize,
    top_k: usize,
) -> Result<Tensor<B, 1>, ModelError> {
    if router_logits.is_empty() {
        return Err(ModelError::Config {
            reason: "a load-balancing loss needs router logits: the model has no \
                     Mixture-of-Experts layer"
                .into(),
        });
    }
    let probs = activation::softmax(Tensor::cat(router_logits, 0), 1);
    let [n, e] = probs.dims();
    if e != n_experts || top_k == 0 || top_k > e {
        return Err(ModelError::Config {
            reason: format!(
                "router logits of {e} experts for a load-balancing loss over {n_experts} experts, \
                 top {top_k}"
            ),
        });
    }
    let host = probs
        .clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|err| ModelError::ReadBack {
            key: "router probabilities".into(),
            reason: format!("{err:?}"),
        })?;
    let mut counts = vec![0.0f32; e];
    let mut order: Vec<usize> = Vec::with_capacity(e);
    for row in host.chunks(e) {
        order.clear();
        order.extend(0..e);
        // descending; a tie keeps the lower index first
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for &x in &order[..top_k] {
            counts[x] += 1.0;
        }
    }
    let share: Vec<f32> = counts.iter().map(|&c| c / n as f32).collect();
    let share = Tensor::<B, 2>::from_data(TensorData::new(share, [1, e]), &probs.device());
    Ok((probs.mean_dim(0) * share).sum() * n_experts as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(groups: usize, topk_groups: usize) -> MoeConfig {
        MoeConfig {
            n_experts: 8,
            top_k: 2,
            expert_size: 4,
            shared_size: 0,
            score: RouterScore::Sigmoid,
            renormalize: true,
            scaling: 1.0,
            groups,
            topk_groups,
            expert_bias: ExpertBias::Selection,
            dense_layers: vec![],
            aux_loss_coef: 0.0,
        }
    }

    #[test]
    fn groups_limit_the_choice_and_the_bias_only_chooses() {
        // the best single expert (7) sits in a group whose second best is poor
        let scores = [0.5, 0.49, 0.1, 0.1, 0.1, 0.1, 0.0, 0.9];
        let free = config(1, 1).choose(&scores, None);
        assert_eq!(free.experts, vec![7, 0]);
        // 4 groups of 2: [0.99, 0.2, 0.2, 0.9]; two kept: groups 0 and 3
        let limited = config(4, 2).choose(&scores, None);
        assert_eq!(limited.experts, vec![7, 0]);
        // one group kept: group 0 only
        let one = config(4, 1).choose(&scores, None);
        assert_eq!(one.experts, vec![0, 1]);
        // a bias moves the choice
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0];
        assert_eq!(
            config(1, 1).choose(&scores, Some(&bias)).experts,
            vec![7, 5]
        );
        assert_eq!(free.tokens_of(7), vec![0]);
        assert!(free.tokens_of(3).is_empty());
    }
}
