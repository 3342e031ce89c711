//! The kernels as compositions of burn's tensor ops: what every backend without kernels of its own
//! runs (autodiff differentiates it op by op), what the fused kernels fall back to on inputs they
//! do not take (half precision, odd layouts, the switch off), and the reference their tests
//! compare against.

use burn::tensor::{activation, backend::Backend, DType, FloatDType, Int, Tensor, TensorData};

use crate::packed::PackedMatrix;

/// `t` in the float type `like` (a no-op when it already is).
pub fn same_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, like: DType) -> Tensor<B, D> {
    if t.dtype() == like {
        t
    } else {
        t.cast(FloatDType::from(like))
    }
}

/// `t` as f32 (a no-op when it already is).
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    same_dtype(t, DType::F32)
}

/// See [`crate::Kernels::attention`].
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, _, head_size] = q.dims();
    let [_, groups, keys, _] = k.dims();
    let per_group = heads / groups.max(1);
    let (k, v) = if per_group > 1 {
        let expand = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, groups, per_group, keys, head_size])
                .reshape([batch, heads, keys, head_size])
        };
        (expand(k), expand(v))
    } else {
        (k, v)
    };
    let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
    if let Some(bias) = bias {
        let dtype = scores.dtype();
        scores = scores + same_dtype(bias, dtype);
    }
    activation::softmax(scores, 3).matmul(v).swap_dims(1, 2)
}

/// See [`crate::Kernels::cross_entropy`].
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let max = logits.clone().max_dim(1).detach();
    let log_sum_exp = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let target_logit = logits.gather(1, targets.unsqueeze_dim(1));
    (log_sum_exp - target_logit).squeeze_dim::<1>(1)
}

/// See [`crate::Kernels::rms_norm`].
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gain: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    // the statistics in f32 whatever the precision (f16 squares overflow past 256)
    let wide = to_f32(x);
    let mean_square = (wide.clone() * wide.clone()).mean_dim(D - 1);
    let inv_rms = (mean_square + eps).sqrt().recip();
    same_dtype(wide * inv_rms, dtype) * gain.unsqueeze::<D>()
}

/// See [`crate::Kernels::swiglu`].
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    activation::silu(gate) * up
}

/// See [`crate::Kernels::rope`].
pub fn rope<B: Backend>(
    x: Tensor<B, 3>,
    cos: Tensor<B, 3>,
    sin: Tensor<B, 3>,
    perm: Tensor<B, 1, Int>,
) -> Tensor<B, 3> {
    let paired = x.clone().select(2, perm);
    let dtype = x.dtype();
    x * same_dtype(cos, dtype) + paired * same_dtype(sin, dtype)
}

/// See [`crate::Kernels::linear_packed`]: `w` widened to f32 on `x`'s device, in `x`'s float
/// type, then one matrix product.
pub fn linear_packed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &PackedMatrix,
) -> Tensor<B, D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let m = dims[..D - 1].iter().product::<usize>();
    let weight = Tensor::<B, 2>::from_data(
        TensorData::new(w.to_f32(), [w.rows(), w.cols()]),
        &x.device(),
    );
    let weight = same_dtype(weight, x.dtype());
    let mut out = dims;
    out[D - 1] = w.rows();
    x.reshape([m, k]).matmul(weight.transpose()).reshape(out)
}
