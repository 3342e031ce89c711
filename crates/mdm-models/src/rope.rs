//! Rotary position embedding (RoPE), rotate-half (GPT-NeoX) layout.
//!
//! For a head vector `x` of `D` dims whose first `r` dims are rotated, with `a = x[..r/2]` and
//! `b = x[r/2..r]`: `a' = a cos - b sin`, `b' = a sin + b cos`, angle `(p / condense) * base^(-2j/r)`.
//! The published SMDM models build their cos/sin tables in fp32 and store them in bfloat16 (the
//! rotation itself runs in fp32); [`ModelConfig::rope_bf16_tables`] reproduces that rounding.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::{ModelConfig, ModelError};
use mdm_kernels::Kernels;

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

/// RoPE tables on the device (constants, not parameters), laid out for the fused q/k/v projection.
///
/// The rotation is applied to the whole `[batch, seq_len, (H + 2G) D]` output of the fused projection
/// at once, as `qkv * cos + qkv[perm] * sin`: `perm` swaps the two rotated halves of every query and
/// key head, `sin` carries the sign of rotate-half, and value features (and unrotated dims) have
/// `cos = 1`, `sin = 0`. Every operation is then on contiguous tensors of one shape, which the CPU
/// backends run several times faster than the strided, broadcast form, and the result is bit for bit
/// the same (`a cos - b sin = a cos + b (-sin)`).
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    /// `[block_size, (H + 2G) D]`
    cos: Tensor<B, 2>,
    /// `[block_size, (H + 2G) D]`, signed
    sin: Tensor<B, 2>,
    /// `[(H + 2G) D]`, the feature each feature is paired with
    perm: Tensor<B, 1, Int>,
}

impl<B: Backend> Rope<B> {
    /// Builds the tables of `config` on `device`.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let (cos, sin) = rope_tables(config);
        let half = config.rope_dims() / 2;
        let d = config.head_size();
        let per_group = config.n_head / config.query_groups();
        let rows = config.qkv_rows();
        // which features are rotated: q and k slots of each group, first `rope_dims` of each head
        let mut perm = Vec::with_capacity(rows);
        let mut pair = Vec::with_capacity(rows); // (table column, sign) or None
        for _group in 0..config.query_groups() {
            for slot in 0..per_group + 2 {
                let rotated = slot <= per_group; // q heads then k; the last slot is v
                for j in 0..d {
                    let base = perm.len() - (perm.len() % d);
                    if rotated && j < half {
                        perm.push((base + j + half) as i64);
                        pair.push(Some((j, -1.0f32)));
                    } else if rotated && j < 2 * half {
                        perm.push((base + j - half) as i64);
                        pair.push(Some((j - half, 1.0f32)));
                    } else {
                        perm.push((base + j) as i64);
                        pair.push(None);
                    }
                }
            }
        }
        let mut cos_qkv = Vec::with_capacity(config.block_size * rows);
        let mut sin_qkv = Vec::with_capacity(config.block_size * rows);
        for p in 0..config.block_size {
            for f in &pair {
                match *f {
                    Some((col, sign)) => {
                        cos_qkv.push(cos[p * half + col]);
                        sin_qkv.push(sign * sin[p * half + col]);
                    }
                    None => {
                        cos_qkv.push(1.0);
                        sin_qkv.push(0.0);
                    }
                }
            }
        }
        let shape = [config.block_size, rows];
        Self {
            cos: Tensor::from_data(TensorData::new(cos_qkv, shape), device),
            sin: Tensor::from_data(TensorData::new(sin_qkv, shape), device),
            perm: Tensor::from_data(TensorData::new(perm, [rows]), device),
        }
    }

    /// The tables for positions `start..start + seq_len`, repeated over the batch:
    /// `[batch, seq_len, (H + 2G) D]` each. Build them once per forward pass; every layer uses them.
    pub fn tables(
        &self,
        batch: usize,
        start: usize,
        seq_len: usize,
    ) -> Result<RopeTables<B>, ModelError> {
        let block_size = self.cos.dims()[0];
        if start + seq_len > block_size {
            return Err(ModelError::SequenceTooLong {
                start,
                len: seq_len,
                block_size,
            });
        }
        let take = |t: &Tensor<B, 2>| {
            t.clone()
                .narrow(0, start, seq_len)
                .unsqueeze::<3>()
                .repeat_dim(0, batch)
        };
        Ok(RopeTables {
            cos: take(&self.cos),
            sin: take(&self.sin),
            perm: self.perm.clone(),
        })
    }
}

impl<B: Backend> Rope<B> {
    /// The tables of a ragged batch whose row `r` holds positions `starts[r]..starts[r] + seq_len`
    /// (the windows of block decoding over rows of different prompt lengths): `[batch, seq_len,
    /// (H + 2G) D]` each, `batch = starts.len()`. Equal starts give [`Self::tables`].
    pub fn tables_rows(
        &self,
        starts: &[usize],
        seq_len: usize,
    ) -> Result<RopeTables<B>, ModelError> {
        let first = starts.first().copied().unwrap_or(0);
        if starts.iter().all(|&s| s == first) {
            return self.tables(starts.len(), first, seq_len);
        }
        let block_size = self.cos.dims()[0];
        if let Some(&start) = starts.iter().find(|&&s| s + seq_len > block_size) {
            return Err(ModelError::SequenceTooLong {
                start,
                len: seq_len,
                block_size,
            });
        }
        let take = |t: &Tensor<B, 2>| {
            let rows = starts
                .iter()
                .map(|&s| t.clone().narrow(0, s, seq_len).unsqueeze::<3>())
                .collect();
            Tensor::cat(rows, 0)
        };
        Ok(RopeTables {
            cos: take(&self.cos),
            sin: take(&self.sin),
            perm: self.perm.clone(),
        })
    }
}

/// RoPE tables for one forward pass (see [`Rope::tables`]).
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 3>,
    sin: Tensor<B, 3>,
    perm: Tensor<B, 1, Int>,
}

impl<B: Kernels> RopeTables<B> {
    /// Rotates the query and key features of a fused projection output
    /// `[batch, seq_len, (H + 2G) D]`; value features pass unchanged.
    pub fn apply(&self, qkv: Tensor<B, 3>) -> Tensor<B, 3> {
        <B as Kernels>::rope(qkv, self.cos.clone(), self.sin.clone(), self.perm.clone())
    }
}
