//! Classifier-free guidance (CFG).
//!
//! `cfg_scale` (`w`) mixes a conditional pass `c = model(x)` and an unconditional pass
//! `u = model(x with every prompt position replaced by mask_id)` as `u + (w + 1)(c - u)` on the
//! pre-softmax logits. `w = 0` returns `c`: guidance off. SMDM's *unsupervised* CFG gets `u` from the
//! same pre-trained model, no prompt dropout needed.

use burn::tensor::{backend::Backend, Int, Tensor};

use crate::error::check_shape;
use crate::forward_process::prompt_mask;
use crate::CoreError;

/// `uncond + (cfg_scale + 1) * (cond - uncond)`, any rank.
pub fn cfg_combine<B: Backend, const D: usize>(
    cond: Tensor<B, D>,
    uncond: Tensor<B, D>,
    cfg_scale: f64,
) -> Result<Tensor<B, D>, CoreError> {
    check_shape("uncond logits", &cond.dims(), &uncond.dims())?;
    if cfg_scale == 0.0 {
        return Ok(cond);
    }
    Ok(uncond.clone() + (cond - uncond) * (cfg_scale + 1.0))
}

/// [`cfg_combine`] on host values: `uncond + (cond - uncond) * (cfg_scale + 1)` element by element
/// in f32, the same operations in the same order as the tensor version (so both give the same
/// bits); `cond` itself when `cfg_scale` is 0.
pub fn cfg_combine_host(
    cond: &[f32],
    uncond: &[f32],
    cfg_scale: f64,
) -> Result<Vec<f32>, CoreError> {
    check_shape("uncond logits", &[cond.len()], &[uncond.len()])?;
    if cfg_scale == 0.0 {
        return Ok(cond.to_vec());
    }
    let factor = (cfg_scale + 1.0) as f32;
    Ok(cond
        .iter()
        .zip(uncond)
        .map(|(&c, &u)| u + (c - u) * factor)
        .collect())
}

/// The unconditional input: `ids` (`[batch, seq_len]`) with the first `prompt_len[b]` positions of
/// row `b` replaced by `mask_id`.
pub fn unconditional_input<B: Backend>(
    ids: Tensor<B, 2, Int>,
    prompt_len: &[usize],
    mask_id: usize,
) -> Result<Tensor<B, 2, Int>, CoreError> {
    let [batch, seq_len] = ids.dims();
    check_shape("prompt_len", &[batch], &[prompt_len.len()])?;
    let prompt = prompt_mask::<B>(prompt_len, seq_len, &ids.device())?;
    Ok(ids.mask_fill(prompt, mask_id as i64))
}

/// Both CFG inputs stacked into one batch `[2 * batch, seq_len]` (conditional rows first), so one
/// forward pass serves both; split the logits with [`split_guided`].
pub fn guided_batch<B: Backend>(
    ids: Tensor<B, 2, Int>,
    prompt_len: &[usize],
    mask_id: usize,
) -> Result<Tensor<B, 2, Int>, CoreError> {
    let uncond = unconditional_input(ids.clone(), prompt_len, mask_id)?;
    Ok(Tensor::cat(vec![ids, uncond], 0))
}

/// Splits the logits of a [`guided_batch`] (`[2 * batch, ...]`) and combines them with `cfg_scale`.
pub fn split_guided<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    cfg_scale: f64,
) -> Result<Tensor<B, D>, CoreError> {
    let rows = logits.dims()[0];
    if !rows.is_multiple_of(2) {
        return Err(CoreError::Value {
            what: "guided batch rows",
            value: rows as f64,
            reason: "must be even (conditional rows then unconditional rows)",
        });
    }
    let cond = logits.clone().narrow(0, 0, rows / 2);
    let uncond = logits.narrow(0, rows / 2, rows / 2);
    cfg_combine(cond, uncond, cfg_scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn host_combination_equals_the_tensor_one_bit_for_bit() {
        let device = Default::default();
        let cond: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 7.0).collect();
        let uncond: Vec<f32> = (0..64).map(|i| (i as f32 * 0.11).cos() * 5.0).collect();
        let t = |v: &Vec<f32>| Tensor::<Flex, 1>::from_floats(v.as_slice(), &device);
        for w in [0.0, 0.5, 1.0, 3.7] {
            let host = cfg_combine_host(&cond, &uncond, w).unwrap();
            let tensor: Vec<f32> = cfg_combine(t(&cond), t(&uncond), w)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(host, tensor, "w = {w}");
        }
        // w = 1: u + 2 (c - u) by hand
        let host = cfg_combine_host(&[3.0], &[1.0], 1.0).unwrap();
        assert_eq!(host, vec![5.0]);
        assert!(cfg_combine_host(&cond, &uncond[1..], 1.0).is_err());
    }

    #[test]
    fn combine_formula_and_w0() {
        let d = Default::default();
        let c = Tensor::<Flex, 1>::from_floats([1.0, 2.0], &d);
        let u = Tensor::<Flex, 1>::from_floats([0.5, 3.0], &d);
        let out: Vec<f32> = cfg_combine(c.clone(), u.clone(), 0.5)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(out, vec![0.5 + 1.5 * 0.5, 3.0 - 1.5]);
        let out: Vec<f32> = cfg_combine(c, u, 0.0)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(out, vec![1.0, 2.0]);
    }

    #[test]
    fn guided_batch_layout() {
        let d = Default::default();
        let x = Tensor::<Flex, 2, Int>::from_ints([[1, 2, 3]], &d);
        let g: Vec<i64> = guided_batch(x, &[2], 7)
            .unwrap()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(g, vec![1, 2, 3, 7, 7, 3]);
    }
}
