//! The SwiGLU feed-forward block: `w3(silu(w1 x) * (w2 x))`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{activation::silu, backend::Backend, Tensor};

/// SwiGLU with gate `w1`, up projection `w2` and down projection `w3`, no biases.
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// `[n_embd, intermediate]`, the gate (silu side).
    pub w1: Linear<B>,
    /// `[n_embd, intermediate]`, the linear side.
    pub w2: Linear<B>,
    /// `[intermediate, n_embd]`, the down projection.
    pub w3: Linear<B>,
}

impl<B: Backend> SwiGlu<B> {
    /// `[batch, seq_len, n_embd]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(self.w1.forward(x.clone()));
        self.w3.forward(gate * self.w2.forward(x))
    }
}
