//! Reading device values on the host: the read-back helpers the samplers share. Logits are read
//! through the backend extension ([`mdm_kernels::Kernels::with_host_f32`]: in place on burn-flex,
//! a copy elsewhere), so no code here looks at a backend's tensor type.

use burn::tensor::TensorData;

use crate::step::SamplerError;

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
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};
    use mdm_kernels::Kernels;

    #[test]
    fn flex_lends_contiguous_logits_and_reads_views_back_in_logical_order() {
        let device = Default::default();
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [3, 4]), &device);
        let whole = Flex::with_host_f32(t.clone(), |v| v.to_vec()).unwrap();
        assert_eq!(whole, values);
        // a transposed view is not contiguous: read back in logical order
        let transposed = Flex::with_host_f32(t.transpose(), |v| v.to_vec()).unwrap();
        let expected: Vec<f32> = (0..4)
            .flat_map(|c| (0..3).map(move |r| (r * 4 + c) as f32))
            .collect();
        assert_eq!(transposed, expected);
    }
}
