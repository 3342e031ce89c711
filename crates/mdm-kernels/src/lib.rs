//! Fused kernels for the hot spots of a transformer pass, through burn's backend extension
//! mechanism: the trait [`Kernels`] extends burn's `Backend` with attention, cross-entropy, RMSNorm,
//! RoPE and SwiGLU. Each method has a default, the composition of burn's tensor ops ([`composed`]),
//! which is what every backend keeps (wgpu, CUDA, ndarray: autodiff differentiates it op by op).
//! burn-flex, the CPU backend, overrides them with our own kernels ([`cpu`]) and, under
//! `Autodiff<Flex>`, with their hand-written backward.
//!
//! The library crates are generic over `B: Kernels` (and [`AutodiffKernels`] where they train), so
//! the models, the samplers, the estimators and the trainer all run the kernels on the CPU without
//! knowing of them. [`set_fused`] (or `MDM_KERNELS=composed` in the environment) turns them off at
//! run time, for comparison: the composition then runs on burn-flex too.
//!
//! # Same inputs, same bits
//! Every CPU kernel, forward and backward, gives bit-identical results for identical inputs,
//! whatever the number of threads in rayon's pool and whatever else the machine is doing, so a
//! seeded training or generation is reproducible run after run. Two rules guarantee it:
//! - **The split of the work is fixed by the sizes alone**: attention by `(batch, key/value group)`
//!   with query blocks of a size computed from the key count; the norm, the loss, RoPE and SwiGLU by
//!   rows or elements in chunks of a constant size. Nothing depends on the thread count or on
//!   which thread steals what; a thread only decides *when* a task runs.
//! - **Every value is computed by one task, sums in a fixed order**: each output element is
//!   written by exactly one task (the attention's key and value gradients accumulate over the
//!   heads and query blocks of their own task, in order); the one reduction across tasks, RMSNorm's
//!   gain gradient, sums blocks of [`cpu::norm`]'s fixed row count into partial sums, which the
//!   calling thread then adds in block order (never rayon's `fold` + `reduce`, whose tree follows
//!   the stealing). The matrix products inside a task are single-threaded `gemm` calls.
//!
//! `tests/deterministic.rs` runs every kernel under pools of 1, 2, 3 and 8 threads and compares
//! the bits; the workspace's `tests/suite/determinism.rs` trains and generates twice under load.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use mdm_kernels::Kernels;
//!
//! let device = Default::default();
//! // [batch, heads, queries, head_size] and [batch, groups, keys, head_size]
//! let q = Tensor::<Flex, 4>::random([1, 4, 6, 8], Distribution::Default, &device);
//! let k = Tensor::<Flex, 4>::random([1, 2, 6, 8], Distribution::Default, &device);
//! let v = Tensor::<Flex, 4>::random([1, 2, 6, 8], Distribution::Default, &device);
//! let fused = Flex::attention(q.clone(), k.clone(), v.clone(), None, 8f64.powf(-0.5));
//! let composed = mdm_kernels::composed::attention(q, k, v, None, 8f64.powf(-0.5));
//! assert_eq!(fused.dims(), [1, 6, 4, 8]);
//! fused.into_data().assert_approx_eq::<f32>(&composed.into_data(), Default::default());
//! ```

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DataError, Int, Tensor};

pub mod composed;
pub mod cpu;
mod flex;
mod others;
pub mod packed;
pub mod quant;

pub use composed::{same_dtype, to_f32};
pub use packed::PackedMatrix;

/// A backend with the fused operations of a transformer pass. Every method's default is the
/// composition of tensor ops in [`composed`]; a backend overrides what it has kernels for.
pub trait Kernels: Backend {
    /// Scaled dot-product attention with grouped queries: `softmax(scale q k^T + bias) v` with
    /// query head `h` attending with key/value group `h / (H / G)`.
    ///
    /// `q`: `[batch, H, queries, head_size]`; `k`, `v`: `[batch, G, keys, head_size]`; `bias`:
    /// additive, broadcastable to `[batch, H, queries, keys]` (a causal mask as `-inf` above the
    /// diagonal), a constant (no gradient reaches it). Returns `[batch, queries, H, head_size]`:
    /// the heads side by side, ready to be reshaped for the output projection.
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        composed::attention(q, k, v, bias, scale)
    }

    /// Cross-entropy of each row of `logits` (`[rows, vocab]`) for `targets` (`[rows]`):
    /// `logsumexp(logits) - logits[target]`, `[rows]`.
    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        composed::cross_entropy(logits, targets)
    }

    /// RMSNorm over the last dimension: `x rsqrt(mean(x^2) + eps) gain`, the statistics in f32
    /// whatever the float type of `x`; `gain`: `[width]`.
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        gain: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        composed::rms_norm(x, gain, eps)
    }

    /// RoPE on a fused q/k/v projection output `x` (`[batch, len, features]`):
    /// `x cos + x[.., perm] sin`, the tables `cos`, `sin` of `x`'s shape (constants: no gradient),
    /// `perm` (`[features]`) the feature each feature is paired with.
    fn rope(
        x: Tensor<Self, 3>,
        cos: Tensor<Self, 3>,
        sin: Tensor<Self, 3>,
        perm: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 3> {
        composed::rope(x, cos, sin, perm)
    }

    /// SwiGLU's product `silu(gate) * up` (same shapes).
    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        composed::swiglu(gate, up)
    }

    /// Whether the backend multiplies by a [`PackedMatrix`] without widening it in memory
    /// ([`Self::linear_packed`]): loaders keep weights packed (stored precision, quantized blocks)
    /// only where this holds, and give other backends dense tensors.
    const PACKS_WEIGHTS: bool = false;

    /// `x W^T` (`x`: `[..., w.cols()]` -> `[..., w.rows()]`) for a weight kept in its stored type.
    /// The default widens `w` on the device for each product ([`composed::linear_packed`]);
    /// burn-flex runs [`cpu::packed::matmul`] on f32 activations.
    fn linear_packed<const D: usize>(x: Tensor<Self, D>, w: &PackedMatrix) -> Tensor<Self, D> {
        composed::linear_packed(x, w)
    }

    /// A weight about to be kept for a model's life, in the layout this backend's products read
    /// (burn-flex: [`cpu::qdot::compact`], the integer kernels' interleaved rows held once). The
    /// default keeps it as it is.
    fn keep_packed(w: PackedMatrix) -> PackedMatrix {
        w
    }

    /// `w` converted to `dtype` on load ([`PackedMatrix::requantize`]: a chunk of rows at a time),
    /// in the layout this backend's products read (burn-flex: straight into the integer kernels'
    /// interleaved rows, [`cpu::qdot::requantize_interleaved`], never stored whole). Errors say
    /// what does not fit.
    fn requantize_packed(
        w: &PackedMatrix,
        dtype: crate::quant::GgmlType,
    ) -> Result<PackedMatrix, String> {
        w.requantize(dtype)
    }

    /// Whether reading a float tensor on the host costs no copy ([`Self::with_host_f32`] lends
    /// the backend's own memory): a caller may then prefer host code over a device reduction.
    const HOST_MEMORY: bool = false;

    /// Runs `f` on the values of `tensor` as a row-major `f32` slice on the host. By default the
    /// tensor is read back (a copy, converted to f32); burn-flex lends its memory in place when
    /// the tensor is contiguous f32.
    fn with_host_f32<const D: usize, R>(
        tensor: Tensor<Self, D>,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, DataError> {
        let values = tensor.into_data().convert::<f32>().into_vec::<f32>()?;
        Ok(f(&values))
    }
}

/// An autodiff backend whose inner backend has the kernels too (training differentiates through
/// them; validation runs them on the inner backend).
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> AutodiffKernels for B
where
    B: AutodiffBackend + Kernels,
    B::InnerBackend: Kernels,
{
}

/// 0: not read yet; 1: fused; 2: composed.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Turns the fused kernels on (the default) or off for the whole process: off, burn-flex runs the
/// composition of tensor ops like every other backend. Backends without kernels ignore it.
pub fn set_fused(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the fused kernels run: [`set_fused`]'s last word, else `MDM_KERNELS` from the
/// environment (`composed` turns them off; `fused`, unset or anything else leaves them on).
pub fn fused() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("MDM_KERNELS").map_or(true, |v| v.trim() != "composed");
            // a concurrent set_fused wins over the environment
            let _ = FUSED.compare_exchange(
                0,
                if on { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            FUSED.load(Ordering::Relaxed) == 1
        }
    }
}

/// How burn-flex multiplies activations by packed weights ([`Kernels::linear_packed`]):
/// quantized ones by integer dot products ([`cpu::qdot`]), f32, f16 and bf16 ones by the float
/// kernels ([`cpu::fdot`]), or either widened to f32 panels for `gemm` ([`cpu::packed`]).
///
/// The default is [`Self::Integer`] on a CPU with AVX-512 VNNI (weights interleaved 16 rows to a
/// register: 2-4x f32 `gemm`'s speed, docs/benchmarks.md, "Integer dot products"),
/// [`Self::Float`] on other CPUs with AVX2, FMA and F16C (the row-by-row AVX2 and AVX-512 integer
/// kernels are slower than `gemm` over a whole canvas; the float kernels are not) and
/// [`Self::Widened`] elsewhere. The choice is per process, never per product size, so a row's
/// bits never depend on the batch beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedProduct {
    /// Integer dot products against quantized activations ([`cpu::qdot`], as llama.cpp
    /// computes them) on the fastest kernels the CPU has (AVX-512 VNNI, AVX-512, AVX2); on a CPU
    /// with none, as [`Self::Widened`] (f32 `gemm` there is faster than the plain integer loops).
    Integer,
    /// [`Self::Integer`] on the portable kernels whatever the CPU (the same bits: the tests
    /// compare them).
    Portable,
    /// Weights widened to f32 panels and multiplied by f32 activations ([`cpu::packed`]).
    Widened,
    /// Float weights on the float kernels ([`cpu::fdot`], the fastest the CPU has), quantized
    /// weights widened as [`Self::Widened`].
    Float,
}

/// 0: not read yet; else 1 + the [`QuantizedProduct`]'s index.
static QUANTIZED_PRODUCT: AtomicU8 = AtomicU8::new(0);

/// Chooses how quantized weights are multiplied, for the whole process.
pub fn set_quantized_product(product: QuantizedProduct) {
    QUANTIZED_PRODUCT.store(
        match product {
            QuantizedProduct::Integer => 1,
            QuantizedProduct::Portable => 2,
            QuantizedProduct::Widened => 3,
            QuantizedProduct::Float => 4,
        },
        Ordering::Relaxed,
    );
}

/// [`set_quantized_product`]'s last word, else `MDM_QUANTIZED_PRODUCT` from the environment
/// (`integer`, `portable`, `widened`, `float`), else the default for this CPU (see
/// [`QuantizedProduct`]).
pub fn quantized_product() -> QuantizedProduct {
    if QUANTIZED_PRODUCT.load(Ordering::Relaxed) == 0 {
        let from_env = match std::env::var("MDM_QUANTIZED_PRODUCT")
            .as_deref()
            .map(str::trim)
        {
            Ok("integer") => 1,
            Ok("portable") => 2,
            Ok("widened") => 3,
            Ok("float") => 4,
            _ if cpu::qdot::fastest() == cpu::qdot::Path::Avx512Vnni => 1,
            _ if cpu::fdot::has_kernels() => 4,
            _ => 3,
        };
        // a concurrent set_quantized_product wins over the environment
        let _ =
            QUANTIZED_PRODUCT.compare_exchange(0, from_env, Ordering::Relaxed, Ordering::Relaxed);
    }
    match QUANTIZED_PRODUCT.load(Ordering::Relaxed) {
        1 => QuantizedProduct::Integer,
        2 => QuantizedProduct::Portable,
        4 => QuantizedProduct::Float,
        _ => QuantizedProduct::Widened,
    }
}
