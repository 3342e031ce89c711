//! Host access to logits without a copy where the backend already keeps them in host memory.
//!
//! burn's `into_data` copies a tensor out of the backend. On the CPU backend burn-flex the values
//! already live in host memory, and the sampler only needs to read them once per step; this module
//! lends them as a slice instead (a runtime check of the backend's tensor type, so every function
//! stays generic over `B: Backend`). Other backends, and flex tensors that are not contiguous f32,
//! get `None` and take the copying path.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::step::SamplerError;

/// The values of a float tensor's primitive as a contiguous row-major `f32` slice, when the backend
/// holds them in host memory in that form (burn-flex with the `flex` feature); `None` otherwise.
pub fn host_f32<B: Backend>(primitive: &TensorPrimitive<B>) -> Option<&[f32]> {
    #[cfg(feature = "flex")]
    if let TensorPrimitive::Float(tensor) = primitive {
        let any: &dyn std::any::Any = tensor;
        if let Some(flex) = any.downcast_ref::<burn::backend::flex::FlexTensor>() {
            return flex.as_slice::<f32>();
        }
    }
    #[cfg(not(feature = "flex"))]
    let _ = primitive;
    None
}

/// Runs `f` on the values of `tensor` (row-major `f32`): borrowed in place on burn-flex, read back
/// from the device otherwise.
pub fn with_host_f32<B: Backend, const D: usize, R>(
    tensor: Tensor<B, D>,
    what: &str,
    f: impl FnOnce(&[f32]) -> R,
) -> Result<R, SamplerError> {
    let primitive = tensor.into_primitive();
    if let Some(values) = host_f32::<B>(&primitive) {
        return Ok(f(values));
    }
    let values: Vec<f32> = read_back(Tensor::<B, D>::from_primitive(primitive).into_data(), what)?;
    Ok(f(&values))
}

/// A tensor's data as a `Vec<T>`, converted from its element type; `what` names it in the error.
pub(crate) fn read_back<T: burn::tensor::Element>(
    data: TensorData,
    what: &str,
) -> Result<Vec<T>, SamplerError> {
    data.convert::<T>()
        .into_vec::<T>()
        .map_err(|e| device_error(what, e))
}

/// A failure of the device (read-back, synchronisation) while handling `what`.
pub(crate) fn device_error(what: &str, error: impl std::fmt::Debug) -> SamplerError {
    SamplerError::Model(mdm_models::ModelError::ReadBack {
        key: what.into(),
        reason: format!("{error:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn flex_tensors_are_lent_in_place_and_views_are_read_back() {
        let device = Default::default();
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [3, 4]), &device);
        let primitive = t.clone().into_primitive();
        #[cfg(feature = "flex")]
        assert_eq!(host_f32::<Flex>(&primitive), Some(&values[..]));
        #[cfg(not(feature = "flex"))]
        assert_eq!(host_f32::<Flex>(&primitive), None);
        // a transposed view is not contiguous: read back in logical order either way
        let transposed = with_host_f32(t.transpose(), "test", |v| v.to_vec()).unwrap();
        let expected: Vec<f32> = (0..4)
            .flat_map(|c| (0..3).map(move |r| (r * 4 + c) as f32))
            .collect();
        assert_eq!(transposed, expected);
    }
}
