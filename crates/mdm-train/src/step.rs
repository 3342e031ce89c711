//! One optimizer step: the micro-batches' losses and gradients accumulated, a hook for reducing
//! them across peers (data parallel), global-norm clipping and AdamW.
//!
//! The loss of each micro-batch comes from a closure, so the same step trains the MDM on SMDM's
//! draws ([`TrainModel::loss`](crate::TrainModel::loss)), on a masking scheme of the caller's
//! ([`MaskedTrainBatch::from_mask`](crate::objective::MaskedTrainBatch::from_mask) +
//! [`masked_loss`](crate::objective::masked_loss)), or the baseline.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::optim::{AdamW, GradAccumulator};
use crate::TrainError;

/// What happens to the accumulated gradients before clipping: nothing on one device; the mean
/// over all peers in data-parallel training.
pub trait GradientReduce<B: Backend> {
    /// Replaces `grads` (this peer's sum over its micro-batches) by what the update must use.
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError>;

    /// The loss the step reports: this peer's mean loss over its micro-batches, made the mean over
    /// all peers (one device: as it is).
    fn mean_loss(&mut self, loss: f64) -> Result<f64, TrainError> {
        Ok(self.mean_of(&[loss])?.first().copied().unwrap_or(loss))
    }

    /// The mean over all peers of each of a few scalars (one device: the values themselves).
    fn mean_of(&mut self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        Ok(values.to_vec())
    }

    /// Names the optimizer step the next calls belong to (for errors).
    fn at_step(&mut self, _step: usize) {}
}

/// One device: the gradients are used as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleDevice;

impl<B: Backend> GradientReduce<B> for SingleDevice {
    fn reduce(&mut self, _grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the micro-batches (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Factor the gradient was scaled by (1 when not clipped).
    pub clip_scale: f64,
}

/// The scalar value of a one-element tensor.
pub fn scalar<B: Backend>(tensor: Tensor<B, 1>) -> f64 {
    tensor
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

/// Runs `micro_batches` forward/backward passes (`loss_of(&model, i)` gives micro-batch `i`'s
/// scalar loss), reduces the summed gradients with `reduce`, and updates `model` by `optim` at
/// learning rate `lr` with the mean gradient. `step` (0-based) only names the step in errors: a
/// non-finite loss stops before any update, a non-finite gradient norm after it (the run must
/// then stop: its last checkpoint is intact).
pub fn optimizer_step<AD, M>(
    model: M,
    optim: &mut AdamW<AD::InnerBackend>,
    lr: f64,
    micro_batches: usize,
    step: usize,
    reduce: &mut dyn GradientReduce<AD::InnerBackend>,
    mut loss_of: impl FnMut(&M, usize) -> Result<Tensor<AD, 1>, TrainError>,
) -> Result<(M, StepOutcome), TrainError>
where
    AD: AutodiffBackend,
    M: AutodiffModule<AD>,
{
    let mut grads = GradAccumulator::default();
    let mut loss_sum = 0.0;
    for i in 0..micro_batches.max(1) {
        let loss = loss_of(&model, i)?;
        let value = scalar(loss.clone());
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: "loss",
                loss: value,
            });
        }
        loss_sum += value;
        grads.add(&model, &loss.backward());
    }
    reduce.reduce(&mut grads)?;
    let loss = reduce.mean_loss(loss_sum / micro_batches.max(1) as f64)?;
    let (model, report) = optim.step(model, grads, lr);
    if !report.grad_norm.is_finite() {
        return Err(TrainError::NonFinite {
            step,
            what: "gradient norm",
            loss: report.grad_norm,
        });
    }
    Ok((
        model,
        StepOutcome {
            loss,
            grad_norm: report.grad_norm,
            clip_scale: report.clip_scale,
        },
    ))
}
