//! The backends without kernels of their own: the trait's defaults, the composition of tensor ops.

#[cfg(any(feature = "ndarray", feature = "cuda", feature = "wgpu"))]
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
#[cfg(any(feature = "ndarray", feature = "cuda", feature = "wgpu"))]
use burn::backend::Autodiff;

#[cfg(any(feature = "ndarray", feature = "cuda", feature = "wgpu"))]
use crate::Kernels;

/// `Kernels` by composition for a backend and for it under autodiff.
#[cfg(any(feature = "ndarray", feature = "cuda", feature = "wgpu"))]
macro_rules! composed_kernels {
    ($backend:ty) => {
        impl Kernels for $backend {}
        impl<C: CheckpointStrategy> Kernels for Autodiff<$backend, C> {}
    };
}

#[cfg(feature = "ndarray")]
composed_kernels!(burn::backend::NdArray);
#[cfg(feature = "wgpu")]
composed_kernels!(burn::backend::Wgpu);
#[cfg(feature = "cuda")]
composed_kernels!(burn::backend::Cuda);
