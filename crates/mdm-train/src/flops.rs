//! FLOPs accounting: training compute as the paper counts it (`6 N D`, `N` the non-embedding
//! parameters, `D` the training tokens) next to a fuller count with the attention and
//! embedding/head terms (Chinchilla's convention: a backward pass costs twice a forward pass), and
//! the forward cost of sampling for speed-quality comparisons.
//!
//! Per token, one forward pass costs
//! - `2 N` for the matrix multiplications of the blocks (the paper's `N`; of a Mixture of Experts
//!   only the `top_k` experts a token passes through count),
//! - `4 n_layer n_ctx H D` (`d` for most families) for the attention scores and their weighted sum over `n_ctx` positions,
//! - `2 d V` for the output head (the embedding lookup is free).
//!
//! ```
//! use mdm_models::ModelConfig;
//! use mdm_train::flops::{training_flops_breakdown, SamplingCost};
//!
//! let config = ModelConfig::named("170M").unwrap();
//! let f = training_flops_breakdown(&config, 2048, 1e9);
//! assert_eq!(f.paper, 6.0 * config.non_embedding_params() as f64 * 1e9);
//! assert!(f.full > f.paper);
//! // a 256-token answer: MDM with 256 steps vs the baseline with a KV cache
//! let c = SamplingCost::new(&config, 0, 256);
//! assert!(c.mdm_per_token(256) > 100.0 * c.arm_per_token());
//! ```

use mdm_models::ModelConfig;
use serde::Serialize;

/// Training FLOPs counted two ways.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FlopsBreakdown {
    /// `6 N D`: the paper's count.
    pub paper: f64,
    /// `3 x 4 n_layer n_ctx d D`: attention scores and weighted sums, forward and backward.
    pub attention: f64,
    /// `3 x 2 d V D`: the output head, forward and backward.
    pub head: f64,
    /// `paper + attention + head`.
    pub full: f64,
}

/// Forward FLOPs per token at context `n_ctx`: `(blocks, attention, head)`.
fn forward_per_token(config: &ModelConfig, n_ctx: f64) -> (f64, f64, f64) {
    let n = config.active_non_embedding_params() as f64;
    // the attention's width is `H D` (`C` unless a family sets its head size apart)
    let attn = (config.n_head * config.head_size()) as f64;
    let d = config.n_embd as f64;
    let v = config.padded_vocab_size() as f64;
    (
        2.0 * n,
        4.0 * config.n_layer as f64 * n_ctx * attn,
        2.0 * d * v,
    )
}

/// Training FLOPs of `tokens` tokens in sequences of `seq_len`.
pub fn training_flops_breakdown(
    config: &ModelConfig,
    seq_len: usize,
    tokens: f64,
) -> FlopsBreakdown {
    let (blocks, attention, head) = forward_per_token(config, seq_len as f64);
    let paper = 3.0 * blocks * tokens;
    let attention = 3.0 * attention * tokens;
    let head = 3.0 * head * tokens;
    FlopsBreakdown {
        paper,
        attention,
        head,
        full: paper + attention + head,
    }
}

/// The forward cost of generating `gen_len` tokens after `prompt_len` prompt tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingCost {
    config: ModelConfig,
    prompt_len: usize,
    gen_len: usize,
}

impl SamplingCost {
    /// The cost model of `config` for a `prompt_len` prompt and `gen_len` generated tokens.
    pub fn new(config: &ModelConfig, prompt_len: usize, gen_len: usize) -> Self {
        Self {
            config: config.clone(),
            prompt_len,
            gen_len,
        }
    }

    /// One MDM denoising step: a bidirectional pass over all `prompt_len + gen_len` positions.
    pub fn mdm_per_step(&self) -> f64 {
        let len = (self.prompt_len + self.gen_len) as f64;
        let (b, a, h) = forward_per_token(&self.config, len);
        len * (b + a + h)
    }

    /// MDM FLOPs per generated token with `steps` denoising steps.
    pub fn mdm_per_token(&self, steps: usize) -> f64 {
        steps as f64 * self.mdm_per_step() / self.gen_len.max(1) as f64
    }

    /// Baseline FLOPs of the whole generation with a KV cache: the prompt in one pass (causal
    /// attention over `i + 1` positions at position `i`), then one position per generated token,
    /// attending to everything before it.
    pub fn arm_total(&self) -> f64 {
        let (b, _, h) = forward_per_token(&self.config, 0.0);
        let per_position_attention = 4.0 * self.config.n_layer as f64 * self.config.n_embd as f64;
        let positions = self.prompt_len + self.gen_len;
        // the prompt pass emits the first token, so gen_len - 1 more passes follow it
        let fed = positions.saturating_sub(1).max(self.prompt_len) as f64;
        let attended: f64 = (1..=fed as usize).map(|i| i as f64).sum();
        fed * (b + h) + per_position_attention * attended
    }

    /// Baseline FLOPs per generated token with a KV cache.
    pub fn arm_per_token(&self) -> f64 {
        self.arm_total() / self.gen_len.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        // 1 layer, width 8, vocab 16 (padded to 64), intermediate 16
        let c = ModelConfig::custom(16, 1, 2, 8, 16, 32);
        let n = c.non_embedding_params() as f64;
        let v = c.padded_vocab_size() as f64;
        let f = training_flops_breakdown(&c, 32, 100.0);
        assert_eq!(f.paper, 6.0 * n * 100.0);
        assert_eq!(f.attention, 3.0 * 4.0 * 32.0 * 8.0 * 100.0);
        assert_eq!(f.head, 3.0 * 2.0 * 8.0 * v * 100.0);
        assert_eq!(f.full, f.paper + f.attention + f.head);
        // sampling: 4 prompt + 4 generated tokens
        let s = SamplingCost::new(&c, 4, 4);
        let per_pos = 2.0 * n + 2.0 * 8.0 * v;
        assert_eq!(s.mdm_per_step(), 8.0 * (per_pos + 4.0 * 8.0 * 8.0));
        assert_eq!(s.mdm_per_token(8), 8.0 * s.mdm_per_step() / 4.0);
        // 7 positions fed (the last token is never fed back); position i attends to i of them
        let expected = 7.0 * per_pos + 4.0 * 8.0 * (1..=7).sum::<usize>() as f64;
        assert_eq!(s.arm_total(), expected);
        assert_eq!(s.arm_per_token(), expected / 4.0);
    }
}
