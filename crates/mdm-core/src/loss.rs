//! Training objectives: the pre-training ELBO loss and the fine-tuning loss.
//!
//! Both are `sum over masked positions of CE(logits, x0) / p_mask, divided by a normaliser`:
//! `batch x seq_len` for pre-training (SMDM `train_mdm.py`), the number of non-prompt positions for
//! fine-tuning (SMDM `finetune_mdm.py`). Unmasked positions contribute nothing.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use mdm_kernels::Kernels;

use crate::error::check_shape;
use crate::forward_process::check_prompt_len;
use crate::CoreError;

/// A weighted masked cross-entropy loss and its parts.
#[derive(Debug, Clone)]
pub struct MaskedLoss<B: Backend> {
    /// `[1]`, the loss to minimise.
    pub loss: Tensor<B, 1>,
    /// `[batch]`, each row's share of `loss` (they sum to it).
    pub loss_per_row: Tensor<B, 1>,
    /// `[batch, seq_len]`, cross-entropy at masked positions, 0 elsewhere (unweighted).
    pub ce: Tensor<B, 2>,
}

/// Cross-entropy of each row of `logits` (`[n, vocab]`) for `targets` (`[n]`):
/// `logsumexp(logits) - logits[target]`, the max subtracted (and detached) for stability.
///
/// Equal to `-log_softmax(logits)[target]` but without materialising the `[n, vocab]` log-softmax:
/// forward and backward are about 35% faster on the CPU backends (docs/benchmarks.md).
pub fn cross_entropy_rows<B: Kernels>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>, CoreError> {
    let [n, _] = logits.dims();
    check_shape("targets", &[n], &targets.dims())?;
    Ok(<B as Kernels>::cross_entropy(logits, targets))
}

/// Per-position cross-entropy `-log softmax(logits)[target]`.
///
/// `logits`: `[batch, seq_len, vocab]`, `targets`: `[batch, seq_len]` → `[batch, seq_len]`.
pub fn token_cross_entropy<B: Kernels>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 2>, CoreError> {
    let [batch, seq_len, vocab] = logits.dims();
    check_shape("targets", &[batch, seq_len], &targets.dims())?;
    let ce = cross_entropy_rows(
        logits.reshape([batch * seq_len, vocab]),
        targets.reshape([batch * seq_len]),
    )?;
    Ok(ce.reshape([batch, seq_len]))
}

/// `sum_{b,l masked} CE[b,l] / p_mask[b] / normaliser`.
///
/// `logits`: `[batch, seq_len, vocab]`; `x0`: `[batch, seq_len]` clean ids; `mask`: `[batch, seq_len]`;
/// `p_mask`: `[batch]`.
pub fn weighted_masked_loss<B: Kernels>(
    logits: Tensor<B, 3>,
    x0: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    p_mask: Tensor<B, 1>,
    normaliser: f64,
) -> Result<MaskedLoss<B>, CoreError> {
    let [batch, seq_len, _] = logits.dims();
    check_shape("mask", &[batch, seq_len], &mask.dims())?;
    check_shape("p_mask", &[batch], &p_mask.dims())?;
    if normaliser <= 0.0 {
        return Err(CoreError::Empty("the loss normaliser is zero"));
    }
    let ce = token_cross_entropy(logits, x0)? * mask.float();
    let loss_per_row = (ce.clone() / p_mask.unsqueeze_dim(1))
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        / normaliser;
    Ok(MaskedLoss {
        loss: loss_per_row.clone().sum(),
        loss_per_row,
        ce,
    })
}

/// The SMDM pre-training loss: `sum over masked of CE / p_mask, divided by batch x seq_len`.
/// An upper bound on the negative log-likelihood per token (nats).
pub fn pretrain_loss<B: Kernels>(
    logits: Tensor<B, 3>,
    x0: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    p_mask: Tensor<B, 1>,
) -> Result<MaskedLoss<B>, CoreError> {
    let [batch, seq_len, _] = logits.dims();
    weighted_masked_loss(logits, x0, mask, p_mask, (batch * seq_len) as f64)
}

/// The SMDM fine-tuning loss: as [`pretrain_loss`] but normalised by the number of non-prompt
/// positions `batch x seq_len - sum(prompt_len)`. The prompt must not be masked (noise it with
/// [`ForwardProcess::noise`](crate::forward_process::ForwardProcess::noise) and `prompt_len`).
pub fn sft_loss<B: Kernels>(
    logits: Tensor<B, 3>,
    x0: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    p_mask: Tensor<B, 1>,
    prompt_len: &[usize],
) -> Result<MaskedLoss<B>, CoreError> {
    let [batch, seq_len, _] = logits.dims();
    check_shape("prompt_len", &[batch], &[prompt_len.len()])?;
    check_prompt_len(prompt_len, seq_len)?;
    let response_positions = batch * seq_len - prompt_len.iter().sum::<usize>();
    weighted_masked_loss(logits, x0, mask, p_mask, response_positions as f64)
}

/// The masked loss from logits computed **only at masked positions** (`[n_masked, V]`, in the order
/// of [`MaskedTargets`](crate::forward_process::MaskedTargets)): `sum CE / p_mask / normaliser`.
///
/// Equal to [`weighted_masked_loss`] (unmasked positions contribute nothing there), but the output
/// head and the softmax run on about half the positions: use it for training.
pub fn sparse_masked_loss<B: Kernels>(
    masked_logits: Tensor<B, 2>,
    targets: &crate::forward_process::MaskedTargets<B>,
    normaliser: f64,
) -> Result<Tensor<B, 1>, CoreError> {
    let [n, _] = masked_logits.dims();
    check_shape("masked logits rows", &targets.targets.dims(), &[n])?;
    if normaliser <= 0.0 {
        return Err(CoreError::Empty("the loss normaliser is zero"));
    }
    let ce = cross_entropy_rows(masked_logits, targets.targets.clone())?;
    Ok((ce / targets.p_mask.clone()).sum() / normaliser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn scalar(t: Tensor<B, 1>) -> f64 {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
    }

    /// A case small enough to do by hand: vocab 2, logits (0, ln 3) → p = (1/4, 3/4).
    #[test]
    fn hand_computed_pretrain_and_sft_loss() {
        let d = Default::default();
        let ln3 = 3f32.ln();
        // batch 2, len 2
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.0, ln3, 0.0, ln3, 0.0, ln3, 0.0, ln3], [2, 2, 2]),
            &d,
        );
        let x0 = Tensor::<B, 2, Int>::from_ints([[0, 1], [1, 1]], &d);
        // row 0: both masked; row 1: only position 1 masked
        let mask = Tensor::<B, 2, Bool>::from_bool(
            TensorData::new(vec![true, true, false, true], [2, 2]),
            &d,
        );
        let p_mask = Tensor::<B, 1>::from_floats([0.5, 0.25], &d);
        let ce0 = -(0.25f64).ln(); // ln 4
        let ce1 = -(0.75f64).ln(); // ln 4/3
        let row0 = (ce0 + ce1) / 0.5;
        let row1 = ce1 / 0.25;
        let out = pretrain_loss(logits.clone(), x0.clone(), mask.clone(), p_mask.clone()).unwrap();
        assert!((scalar(out.loss) - (row0 + row1) / 4.0).abs() < 1e-6);
        let per_row: Vec<f32> = out.loss_per_row.into_data().to_vec().unwrap();
        assert!((per_row[0] as f64 - row0 / 4.0).abs() < 1e-6);
        assert!((per_row[1] as f64 - row1 / 4.0).abs() < 1e-6);
        let ce: Vec<f32> = out.ce.into_data().to_vec().unwrap();
        assert!(
            (ce[2] as f64).abs() < 1e-12,
            "unmasked positions contribute nothing"
        );

        // fine-tuning, prompt of row 1 = 1 position → normaliser 4 - 1 = 3
        let out = sft_loss(logits, x0, mask, p_mask, &[0, 1]).unwrap();
        assert!((scalar(out.loss) - (row0 + row1) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn sparse_loss_equals_dense_loss() {
        use crate::forward_process::ForwardProcess;
        use crate::rng_from_seed;
        let d = Default::default();
        let (b, l, v) = (3, 17, 11);
        let logits: Vec<f32> = (0..b * l * v)
            .map(|i| ((i * 37 % 101) as f32 / 17.0).sin() * 3.0)
            .collect();
        let logits = Tensor::<B, 3>::from_data(TensorData::new(logits, [b, l, v]), &d);
        let x0: Vec<i64> = (0..b * l).map(|i| (i * 7 % v) as i64).collect();
        let x0 = Tensor::<B, 2, Int>::from_data(TensorData::new(x0, [b, l]), &d);
        let noised = ForwardProcess::new(v)
            .noise(x0.clone(), &[0.2, 0.5, 0.9], None, &mut rng_from_seed(1))
            .unwrap();
        let dense = pretrain_loss(
            logits.clone(),
            x0.clone(),
            noised.mask.clone(),
            noised.p_mask.clone(),
        )
        .unwrap();
        let targets = noised.masked_targets(x0).unwrap();
        let selected = logits.reshape([b * l, v]).select(0, targets.index.clone());
        let sparse = sparse_masked_loss(selected, &targets, (b * l) as f64).unwrap();
        let (a, s) = (scalar(dense.loss), scalar(sparse));
        assert!((a - s).abs() < 1e-5 * a.abs(), "{a} vs {s}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let d = Default::default();
        let logits = Tensor::<B, 3>::zeros([2, 3, 5], &d);
        let x0 = Tensor::<B, 2, Int>::zeros([2, 3], &d);
        let mask = Tensor::<B, 2, Bool>::from_bool(TensorData::new(vec![true; 6], [2, 3]), &d);
        let p = Tensor::<B, 1>::ones([3], &d);
        assert!(matches!(
            pretrain_loss(logits.clone(), x0.clone(), mask.clone(), p),
            Err(CoreError::Shape { what: "p_mask", .. })
        ));
        let p = Tensor::<B, 1>::ones([2], &d);
        assert!(matches!(
            sft_loss(logits, x0, mask, p, &[3, 3]),
            Err(CoreError::Empty(_))
        ));
    }
}
