//! Backend selection by Cargo feature.
//!
//! [`Default`](type@Default) is the first enabled of `cuda`, `wgpu`, `flex`, `ndarray`; [`Training`] is it under
//! `Autodiff`. Every example and bench runs on [`Default`](type@Default). Library crates stay generic over
//! `B: Backend`: this module only serves programs.

#[cfg(not(any(
    feature = "cuda",
    feature = "wgpu",
    feature = "flex",
    feature = "ndarray"
)))]
compile_error!("enable one backend feature of `mdm`: flex (default), ndarray, cuda or wgpu");

/// The backend examples and benches run on.
#[cfg(feature = "cuda")]
pub type Default = burn::backend::Cuda;
/// The backend examples and benches run on.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Default = burn::backend::Wgpu;
/// The backend examples and benches run on.
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Default = burn::backend::Flex;
/// The backend examples and benches run on.
#[cfg(all(
    feature = "ndarray",
    not(any(feature = "cuda", feature = "wgpu", feature = "flex"))
))]
pub type Default = burn::backend::NdArray;

/// [`Default`](type@Default) with automatic differentiation, for training.
pub type Training = burn::backend::Autodiff<Default>;

/// Name of [`Default`](type@Default), for printing.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else if cfg!(feature = "flex") {
    "flex (CPU)"
} else {
    "ndarray (CPU)"
};

/// The default device of [`Default`](type@Default) (the first GPU, or the CPU).
pub fn device() -> burn::tensor::Device<Default> {
    std::default::Default::default()
}
