//! The SwiGLU feed-forward block: `w3(silu(w1 x) * (w2 x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use mdm_kernels::Kernels;

use crate::linear::Proj;

/// SwiGLU with gate `w1`, up projection `w2` and down projection `w3`, no biases.
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// `[n_embd, intermediate]`, the gate (silu side).
    pub w1: Proj<B>,
    /// `[n_embd, intermediate]`, the linear side.
    pub w2: Proj<B>,
    /// `[intermediate, n_embd]`, the down projection.
    pub w3: Proj<B>,
}

impl<B: Kernels> SwiGlu<B> {
    /// `[batch, seq_len, n_embd]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let product = <B as Kernels>::swiglu(self.w1.forward(x.clone()), self.w2.forward(x));
        self.w3.forward(product)
    }
}
