//! Lower precision for inference: the weights stored as f16 or bf16, the network run in that
//! type, the logits handed out as f32.
//!
//! burn 0.21 tensors carry their float type at run time, so one backend holds f32 and half
//! tensors side by side; [`Precision::cast_module`] converts every parameter, and the few tensors
//! the network makes itself (RoPE tables, attention biases) follow the type of the activations
//! they meet. RMSNorm's mean of squares is computed in f32 (f16 squares overflow past 256), and the
//! output head's logits are cast to f32, so samplers, estimators and the server see the same
//! type at every precision. Training stays in f32.
//!
//! Which backends run it: burn-flex (CPU) runs f16 and bf16 (tested; on a CPU without
//! half-precision arithmetic it saves memory, not time: docs/reliability.md). burn's CUDA backend
//! offers both and wgpu offers f16 on devices with `shader-f16` (WGSL has no bf16); neither has
//! been run here (no GPU), and `scripts/gpu-check.sh` runs a generation at each precision.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, FloatDType, Tensor};

use crate::ModelError;

/// The float type the weights and activations of an inference model use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats (the default; training always uses them).
    #[default]
    F32,
    /// IEEE half precision (10-bit mantissa, range up to 65,504).
    F16,
    /// bfloat16 (8-bit mantissa, f32's range), the type LLaDA's weights are published in.
    Bf16,
}

impl Precision {
    /// burn's float type for it.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// `module` with every float parameter converted to this precision.
    pub fn cast_module<B: Backend, M: Module<B>>(self, module: M) -> M {
        if self == Precision::F32 {
            return module;
        }
        module.map(&mut CastParams(self.float_dtype()))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(ModelError::Config {
                reason: format!("unknown precision `{other}`: f32, f16 or bf16"),
            }),
        }
    }
}

/// Converts every float parameter to one float type.
struct CastParams(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

pub(crate) use mdm_kernels::to_f32;
