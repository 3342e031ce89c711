//! A projection `y = x W^T + b` whose weight is either a dense burn tensor (what training and every
//! backend use) or a [`PackedMatrix`] kept in its stored type (f16, bf16, GGUF's quantized blocks)
//! for inference on a backend that multiplies by it in place ([`Kernels::PACKS_WEIGHTS`]).
//!
//! A packed weight is not a parameter: module visitors (optimizers, precision casts, gradient
//! checks) do not see it, and [`crate::transformer::Transformer::state`] widens it to f32 when a
//! model is written. [`WeightFormat`] says how a loader keeps the weights.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use mdm_kernels::quant::GgmlType;
use mdm_kernels::{Kernels, PackedMatrix};

use crate::ModelError;

/// A linear projection without or with a bias.
#[derive(Module, Debug)]
pub struct Proj<B: Backend> {
    /// Dense weight `[d_in, d_out]` (burn's layout); absent when packed.
    weight: Option<Param<Tensor<B, 2>>>,
    /// Bias `[d_out]`.
    bias: Option<Param<Tensor<B, 1>>>,
    /// The weight in its stored type, `[d_out, d_in]` (PyTorch's layout).
    #[module(skip)]
    packed: Option<PackedMatrix>,
}

impl<B: Kernels> Proj<B> {
    /// A dense projection from a PyTorch-layout weight `[d_out, d_in]` (row-major values).
    pub(crate) fn dense(w: &[f32], d_out: usize, d_in: usize, device: &B::Device) -> Self {
        let transposed = crate::transformer::transpose(w, d_out, d_in);
        Self {
            weight: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(transposed, [d_in, d_out]),
                device,
            ))),
            bias: None,
            packed: None,
        }
    }

    /// A projection by a packed weight, in the layout the backend's products read
    /// ([`Kernels::keep_packed`]).
    pub(crate) fn packed(w: PackedMatrix) -> Self {
        Self {
            weight: None,
            bias: None,
            packed: Some(B::keep_packed(w)),
        }
    }

    /// This projection with a bias `[d_out]`.
    pub(crate) fn with_bias(mut self, bias: Vec<f32>, device: &B::Device) -> Self {
        let n = bias.len();
        self.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [n]),
            device,
        )));
        self
    }

    /// `x`: `[..., d_in]` -> `[..., d_out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match (&self.packed, &self.weight) {
            (Some(packed), _) => {
                let y = B::linear_packed(x, packed);
                match bias {
                    Some(b) => y + b.unsqueeze(),
                    None => y,
                }
            }
            (None, Some(w)) => burn::tensor::module::linear(x, w.val(), bias),
            (None, None) => unreachable!("a projection is built with a dense or a packed weight"),
        }
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        match (&self.packed, &self.weight) {
            (Some(p), _) => p.rows(),
            (None, Some(w)) => w.dims()[1],
            (None, None) => 0,
        }
    }

    /// The dense weight `[d_in, d_out]` (burn's layout), when the projection keeps one.
    pub fn weight(&self) -> Option<Tensor<B, 2>> {
        self.weight.as_ref().map(|w| w.val())
    }

    /// The packed weight, when the projection keeps one.
    pub fn packed_weight(&self) -> Option<&PackedMatrix> {
        self.packed.as_ref()
    }

    /// Bytes the weight holds (its stored type), bias excluded.
    pub fn weight_bytes(&self) -> usize {
        match (&self.packed, &self.weight) {
            (Some(p), _) => p.memory_bytes(),
            (None, Some(w)) => w.shape().num_elements() * w.dtype().size(),
            (None, None) => 0,
        }
    }

    /// The weight in PyTorch's layout `[d_out, d_in]` as f32 (a packed weight widened).
    pub(crate) fn weight_f32(&self) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        if let Some(p) = &self.packed {
            return Ok((vec![p.rows(), p.cols()], p.to_f32()));
        }
        let Some(w) = &self.weight else {
            return Ok((vec![0, 0], Vec::new()));
        };
        let [d_in, d_out] = w.dims();
        let values = w
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::ReadBack {
                key: "projection weight".into(),
                reason: format!("{e:?}"),
            })?;
        Ok((
            vec![d_out, d_in],
            crate::transformer::transpose(&values, d_in, d_out),
        ))
    }

    /// The bias, when there is one.
    pub(crate) fn bias(&self) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| b.val())
    }
}

/// How a loaded model keeps its projection weights (attention, MLP, output head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored: f32 files give dense f32 tensors; f16 and bf16 tensors and GGUF's quantized
    /// blocks stay in their type where the backend packs weights (burn-flex), and are widened to
    /// f32 elsewhere.
    #[default]
    Stored,
    /// As stored, f32 included: where the backend packs weights (burn-flex) every projection is
    /// kept packed, so f32 weights too are multiplied by the float kernels
    /// ([`mdm_kernels::cpu::fdot`]: Dream's dual-cache decoding 1.6x as fast as on dense `gemm`,
    /// docs/benchmarks.md, "Float weights in registers"),
    /// elsewhere as [`Self::Stored`]. For inference only: a packed projection is not a parameter
    /// (nothing trains it). The inference commands' default ([`Self::from_flags`] without flags).
    Inference,
    /// Converted (f16, bf16) or quantized (Q8_0, Q4_K) on load, whatever the stored type. A
    /// weight whose rows are not whole blocks of the type falls back as llama.cpp's quantizer
    /// does: Q4_K to Q8_0, then to half precision (the stored half type, else bf16).
    As(GgmlType),
}

impl WeightFormat {
    /// The type a tensor stored as `stored` is kept in, or `None` for a dense f32 tensor.
    pub fn packed_type(self, stored: GgmlType) -> Option<GgmlType> {
        match self {
            WeightFormat::Stored if stored == GgmlType::F32 => None,
            WeightFormat::Stored | WeightFormat::Inference => Some(stored),
            WeightFormat::As(t) => Some(t),
        }
    }

    /// Bytes per value of a weight kept in `dtype` (block overhead included).
    pub fn bytes_per_value(dtype: GgmlType) -> f64 {
        let (values, bytes) = dtype.block();
        bytes as f64 / values as f64
    }
}

impl WeightFormat {
    /// The format the command-line flags ask for: `--dtype f32|f16|bf16` (converted) or
    /// `--quant q8_0|q4_k` (quantized); neither keeps the stored types, packed for inference
    /// ([`Self::Inference`]); both is an error.
    pub fn from_flags(dtype: Option<&str>, quant: Option<&str>) -> Result<Self, ModelError> {
        let refuse = |flag: &str, value: &str, allowed: &str| ModelError::Config {
            reason: format!("--{flag} {value}: one of {allowed}"),
        };
        match (dtype, quant) {
            (Some(d), Some(q)) => Err(ModelError::Config {
                reason: format!("--dtype {d} and --quant {q}: give one"),
            }),
            (Some(d), None) => match d.parse()? {
                f @ WeightFormat::As(GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16) => Ok(f),
                _ => Err(refuse(
                    "dtype",
                    d,
                    "f32, f16, bf16 (quantized types: --quant)",
                )),
            },
            (None, Some(q)) => match q.parse()? {
                f @ WeightFormat::As(GgmlType::Q8_0 | GgmlType::Q4K) => Ok(f),
                _ => Err(refuse("quant", q, "q8_0, q4_k")),
            },
            (None, None) => Ok(WeightFormat::Inference),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::Stored | WeightFormat::Inference => f.write_str("stored"),
            WeightFormat::As(t) => f.write_str(&t.name().to_ascii_lowercase()),
        }
    }
}

impl FromStr for WeightFormat {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "stored" | "auto" => WeightFormat::Stored,
            "f32" | "fp32" | "float32" => WeightFormat::As(GgmlType::F32),
            "f16" | "fp16" | "float16" | "half" => WeightFormat::As(GgmlType::F16),
            "bf16" | "bfloat16" => WeightFormat::As(GgmlType::Bf16),
            "q8_0" | "q8" => WeightFormat::As(GgmlType::Q8_0),
            "q4_k" | "q4k" => WeightFormat::As(GgmlType::Q4K),
            other => {
                return Err(ModelError::Config {
                    reason: format!(
                        "unknown weight format `{other}`: stored, f32, f16, bf16, q8_0 or q4_k"
                    ),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_choose_one_format() {
        assert_eq!(
            WeightFormat::from_flags(None, None).unwrap(),
            WeightFormat::Inference
        );
        assert_eq!(
            WeightFormat::Inference.packed_type(GgmlType::F32),
            Some(GgmlType::F32)
        );
        assert_eq!(WeightFormat::Stored.packed_type(GgmlType::F32), None);
        assert_eq!(
            WeightFormat::from_flags(Some("bf16"), None).unwrap(),
            WeightFormat::As(GgmlType::Bf16)
        );
        assert_eq!(
            WeightFormat::from_flags(None, Some("Q4_K")).unwrap(),
            WeightFormat::As(GgmlType::Q4K)
        );
        assert!(WeightFormat::from_flags(Some("q8_0"), None).is_err());
        assert!(WeightFormat::from_flags(None, Some("f16")).is_err());
        assert!(WeightFormat::from_flags(Some("f16"), Some("q8_0")).is_err());
        assert!(WeightFormat::from_flags(None, Some("q3")).is_err());
        assert_eq!(WeightFormat::As(GgmlType::Q8_0).to_string(), "q8_0");
    }
}
