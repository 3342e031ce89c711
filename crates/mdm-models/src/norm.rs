//! RMSNorm: `x * rsqrt(mean(x^2) + eps) * gain`, over the last dimension.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use mdm_kernels::Kernels;

/// Root-mean-square layer norm with a learned gain and no bias.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Gain `[n_embd]`.
    pub gain: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root (1e-5 in SMDM).
    pub eps: f64,
}

impl<B: Kernels> RmsNorm<B> {
    /// From a gain tensor `[n_embd]`.
    pub fn new(gain: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            gain: Param::from_tensor(gain),
            eps,
        }
    }

    /// `[..., n_embd]` → same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // the statistics in f32 whatever the precision (f16 squares overflow past 256)
        <B as Kernels>::rms_norm(x, self.gain.val(), self.eps)
    }
}
