//! Rotary position embedding (RoPE), rotate-half (GPT-NeoX) layout.
//!
//! For a head vector `x` of `D` dims whose first `r` dims are rotated, with `a = x[..r/2]` and
//! `b = x[r/2..r]`: `a' = a cos - b sin`, `b' = a sin + b cos`, angle `(p / condense) * base^(-2j/r)`.
//! The published SMDM models build their cos/sin tables in fp32 and store them in bfloat16 (the
//! rotation itself runs in fp32); [`ModelConfig::rope_bf16_tables`] reproduces that rounding.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::{ModelConfig, ModelError};

/// The cos/sin tables `[block_size, r / 2]` on the host, rounded to bf16 when asked.
pub fn rope_tables(config: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let half = config.rope_dims() / 2;
    let dims = config.rope_dims() as f32;
    let base = config.rope_base as f32;
    let theta: Vec<f32> = (0..half)
        .map(|j| 1.0f32 / base.powf((2 * j) as f32 / dims))
        .collect();
    let round = |x: f32| {
        if config.rope_bf16_tables {
            half::bf16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let mut cos = Vec::with_capacity(config.block_size * half);
    let mut sin = Vec::with_capacity(config.block_size * half);
    for p in 0..config.block_size {
        let pos = p as f32 / config.condense_ratio as f32;
        for &th in &theta {
            let angle = pos * th;
            cos.push(round(angle.cos()));
            sin.push(round(angle.sin()));
        }
    }
    (cos, sin)
}

/// RoPE tables on the device (constants, not parameters).
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    /// `[block_size, r / 2]`
    cos: Tensor<B, 2>,
    /// `[block_size, r / 2]`
    sin: Tensor<B, 2>,
    /// Rotated dims per head `r`.
    rope_dims: usize,
}

impl<B: Backend> Rope<B> {
    /// Builds the tables of `config` on `device`.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let (cos, sin) = rope_tables(config);
        let shape = [config.block_size, config.rope_dims() / 2];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            rope_dims: config.rope_dims(),
        }
    }

    /// Rotates `x` (`[batch, heads, seq_len, head_size]`) for positions `start..start + seq_len`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Result<Tensor<B, 4>, ModelError> {
        let [_, _, seq_len, head_size] = x.dims();
        let block_size = self.cos.dims()[0];
        if start + seq_len > block_size {
            return Err(ModelError::SequenceTooLong {
                start,
                len: seq_len,
                block_size,
            });
        }
        let half = self.rope_dims / 2;
        if half == 0 {
            return Ok(x);
        }
        let cos = self.cos.clone().narrow(0, start, seq_len).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, start, seq_len).unsqueeze::<4>();
        let a = x.clone().narrow(3, 0, half);
        let b = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(
            vec![
                a.clone() * cos.clone() - b.clone() * sin.clone(),
                a * sin + b * cos,
            ],
            3,
        );
        if self.rope_dims == head_size {
            Ok(rotated)
        } else {
            let rest = x.narrow(3, self.rope_dims, head_size - self.rope_dims);
            Ok(Tensor::cat(vec![rotated, rest], 3))
        }
    }
}
