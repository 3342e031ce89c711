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

/// A `--devices` list that does not fit the backend this program was built with.
#[derive(Debug, thiserror::Error)]
#[error("--devices `{spec}`: {reason}")]
pub struct DeviceSpecError {
    /// The list as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The devices of a data-parallel run from a `--devices` list: empty for [`device`] alone;
/// `cpu:K` for `K` peers on the CPU backend (flex, ndarray); `cuda:0,cuda:1` (or `cuda:0,1`) on
/// CUDA; `wgpu:0,wgpu:1` for the first and second discrete GPUs on wgpu. A kind other than this
/// build's backend, a repeated GPU or a malformed entry is an error naming it.
pub fn devices(spec: &str) -> Result<Vec<burn::tensor::Device<Default>>, DeviceSpecError> {
    let spec = spec.trim();
    let error = |reason: String| DeviceSpecError {
        spec: spec.to_string(),
        reason,
    };
    if spec.is_empty() {
        return Ok(vec![device()]);
    }
    let expected = if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else {
        "cpu"
    };
    let mut kind = None;
    let mut indices = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let (k, index) = match item.split_once(':') {
            Some((k, i)) => (Some(k), i),
            None => (None, item),
        };
        if let Some(k) = k {
            if k != expected {
                return Err(error(format!(
                    "`{item}`: this program was built for {NAME}: give {expected}:N \
                     (other backends are Cargo features: --features cuda / wgpu)"
                )));
            }
            kind = Some(k);
        } else if kind.is_none() && item == expected {
            kind = Some(expected);
            indices.push(1);
            continue;
        } else if kind.is_none() {
            return Err(error(format!("`{item}`: expected {expected}:N")));
        }
        let n: usize = index
            .parse()
            .map_err(|_| error(format!("`{item}`: `{index}` is not a number")))?;
        if indices.contains(&n) && expected != "cpu" {
            return Err(error(format!("`{item}` is listed twice")));
        }
        indices.push(n);
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return Ok(indices.into_iter().map(gpu).collect());
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let [peers] = indices[..] else {
            return Err(error("on the CPU give one count of peers: cpu:K".into()));
        };
        if peers == 0 {
            return Err(error("cpu:0 has no peers".into()));
        }
        Ok(vec![device(); peers])
    }
}

#[cfg(feature = "cuda")]
fn gpu(index: usize) -> burn::tensor::Device<Default> {
    burn::backend::cuda::CudaDevice::new(index)
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
fn gpu(index: usize) -> burn::tensor::Device<Default> {
    burn::backend::wgpu::WgpuDevice::DiscreteGpu(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists() {
        if NAME.contains("CPU") {
            assert_eq!(devices("").unwrap().len(), 1);
            assert_eq!(devices("cpu").unwrap().len(), 1);
            assert_eq!(devices("cpu:3").unwrap().len(), 3);
            for bad in ["cuda:0", "cpu:x", "cpu:0", "cpu:1,cpu:2", "2"] {
                let e = devices(bad).unwrap_err().to_string();
                assert!(e.contains(bad), "{e}");
            }
        }
    }
}
