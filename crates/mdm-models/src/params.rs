//! Where weights come from when a model is built: a seeded initialisation or a checkpoint.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use mdm_kernels::PackedMatrix;

use crate::{ModelConfig, ModelError};

/// A projection weight as its source holds it.
pub(crate) enum StoredMatrix {
    /// f32 values, row-major `[out, in]`, with the type they were stored in (f16 and bf16 values
    /// widen exactly, so they can be packed back without loss).
    Values(Vec<f32>, mdm_kernels::quant::GgmlType),
    /// Already in a packed type (a GGUF tensor, read in place).
    Packed(PackedMatrix),
}

/// Supplies each weight by its SMDM name and PyTorch-layout shape.
pub(crate) trait ParamSource {
    /// The values of `key`, row-major, `shape` in PyTorch layout (`[out, in]` for linear weights).
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// A projection weight `[out, in]` in the type it is stored in (by default: f32 values).
    fn take_matrix(&mut self, key: &str, shape: &[usize]) -> Result<StoredMatrix, ModelError> {
        Ok(StoredMatrix::Values(
            self.take(key, shape)?,
            mdm_kernels::quant::GgmlType::F32,
        ))
    }
    /// `key`'s stored bytes are no longer needed (its values were copied or converted): a source
    /// that maps a file may drop those pages from memory.
    fn release(&mut self, _key: &str) {}
    /// Called once every weight has been taken (a checkpoint reports unused tensors here).
    fn finish(&mut self) -> Result<(), ModelError> {
        Ok(())
    }
}

/// SMDM's initialisation (SMDM.md section 6): every weight `N(0, sqrt(2 / (5 C)))`, except the
/// attention output projection and SwiGLU `w3`, `N(0, 1 / sqrt(C) / n_layer)`; RMSNorm gains 1.
/// Biases (Qwen2's q/k/v) start at 0. Draws come from a ChaCha8 stream seeded with `seed`, in a fixed key order.
pub(crate) struct SeededInit {
    rng: rand_chacha::ChaCha8Rng,
    std_default: f64,
    std_residual: f64,
}

impl SeededInit {
    pub(crate) fn new(config: &ModelConfig, seed: u64) -> Self {
        let c = config.n_embd as f64;
        Self {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            std_default: (2.0 / (5.0 * c)).sqrt(),
            std_residual: 1.0 / c.sqrt() / config.n_layer.max(1) as f64,
        }
    }
}

impl ParamSource for SeededInit {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let n: usize = shape.iter().product();
        if key.ends_with("norm_1.weight")
            || key.ends_with("norm_2.weight")
            || key.ends_with("ln_f.weight")
        {
            return Ok(vec![1.0; n]);
        }
        if key.ends_with(".bias") {
            return Ok(vec![0.0; n]);
        }
        let std = if key.ends_with("attn.proj.weight") || key.ends_with("swiglu.w3.weight") {
            self.std_residual
        } else {
            self.std_default
        };
        let normal = Normal::new(0.0f32, std as f32).map_err(|e| ModelError::Config {
            reason: format!("initialisation std {std}: {e}"),
        })?;
        Ok((0..n).map(|_| normal.sample(&mut self.rng)).collect())
    }
}
