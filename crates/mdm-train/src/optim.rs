//! AdamW with clipping by the global gradient norm and gradient accumulation, written for exact
//! resumption: its state is a list of tensors in parameter visit order, saved with the checkpoint.
//!
//! Same update as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments), applied to
//! every parameter; the gradient is first scaled by `min(1, max_norm / (norm + 1e-6))` where
//! `norm` is the L2 norm over all parameters (as `torch.nn.utils.clip_grad_norm_`).

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::io;
use crate::TrainError;

/// AdamW hyper-parameters (the learning rate is passed per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global-norm clipping threshold (0 = off).
    pub max_norm: f64,
}

/// Gradients of every parameter, flattened, in visit order; summed over micro-batches.
pub struct GradAccumulator<B: Backend> {
    grads: Vec<Tensor<B, 1>>,
    micro_batches: usize,
}

struct Collect<'a, AD: AutodiffBackend> {
    grads: &'a AD::Gradients,
    out: Vec<Tensor<AD::InnerBackend, 1>>,
}

impl<AD: AutodiffBackend> ModuleVisitor<AD> for Collect<'_, AD> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let tensor = param.val();
        let n = tensor.shape().num_elements();
        let grad = tensor
            .grad(self.grads)
            .map(|g| g.reshape([n]))
            .unwrap_or_else(|| Tensor::zeros([n], &tensor.device()));
        self.out.push(grad);
    }
}

impl<B: Backend> Default for GradAccumulator<B> {
    fn default() -> Self {
        Self {
            grads: Vec::new(),
            micro_batches: 0,
        }
    }
}

impl<B: Backend> GradAccumulator<B> {
    /// Adds the gradients of one micro-batch's backward pass.
    pub fn add<AD, M>(&mut self, model: &M, grads: &AD::Gradients)
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        let mut collect = Collect::<AD> {
            grads,
            out: Vec::new(),
        };
        model.visit(&mut collect);
        if self.grads.is_empty() {
            self.grads = collect.out;
        } else {
            for (acc, g) in self.grads.iter_mut().zip(collect.out) {
                *acc = acc.clone() + g;
            }
        }
        self.micro_batches += 1;
    }

    /// Replaces each parameter's gradient by `f` of it (in visit order), e.g. its mean over the
    /// peers of a data-parallel run.
    pub fn try_map(
        &mut self,
        mut f: impl FnMut(Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError>,
    ) -> Result<(), TrainError> {
        for grad in &mut self.grads {
            *grad = f(grad.clone())?;
        }
        Ok(())
    }

    /// Replaces all the gradients at once by `f` of their concatenation (visit order), e.g. their
    /// mean over the ranks of an MPI run in one all-reduce; `f` must keep the length.
    pub fn try_map_flat(
        &mut self,
        f: impl FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError>,
    ) -> Result<(), TrainError> {
        let Some(first) = self.grads.first() else {
            return Ok(());
        };
        let device = first.device();
        let sizes: Vec<usize> = self.grads.iter().map(|g| g.dims()[0]).collect();
        let total: usize = sizes.iter().sum();
        let flat = f(Tensor::cat(std::mem::take(&mut self.grads), 0))?.to_device(&device);
        if flat.dims()[0] != total {
            return Err(TrainError::Config(format!(
                "the reduced gradients have {} values, the model {total}",
                flat.dims()[0]
            )));
        }
        let mut start = 0;
        for size in sizes {
            self.grads.push(flat.clone().narrow(0, start, size));
            start += size;
        }
        Ok(())
    }

    /// Micro-batches added.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }
}

/// AdamW state: moments per parameter (visit order) and the step count.
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    m: Vec<Tensor<B, 1>>,
    v: Vec<Tensor<B, 1>>,
    step: usize,
}

struct Update<'a, B: Backend> {
    optim: &'a mut AdamW<B>,
    grads: Vec<Tensor<B, 1>>,
    index: usize,
    lr: f64,
}

impl<AD: AutodiffBackend> ModuleMapper<AD> for Update<'_, AD::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let require_grad = tensor.is_require_grad();
        let i = self.index;
        self.index += 1;
        let c = self.optim.config;
        let g = self.grads[i].clone();
        let m = self.optim.m[i].clone() * c.beta1 + g.clone() * (1.0 - c.beta1);
        let v = self.optim.v[i].clone() * c.beta2 + g.powi_scalar(2) * (1.0 - c.beta2);
        let t = self.optim.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let denom = (v.clone() / bias2).sqrt() + c.eps;
        let w = tensor.inner().reshape([shape.num_elements()]);
        let w = w * (1.0 - self.lr * c.weight_decay) - (m.clone() / denom) * (self.lr / bias1);
        self.optim.m[i] = m;
        self.optim.v[i] = v;
        let mut w = Tensor::<AD, D>::from_inner(w.reshape(shape));
        if require_grad {
            w = w.require_grad();
        }
        Param::from_mapped_value(id, w, mapper)
    }
}

/// What an optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping (of the micro-batch mean).
    pub grad_norm: f64,
    /// The factor the gradient was scaled by (1 when not clipped).
    pub clip_scale: f64,
}

impl<B: Backend> AdamW<B> {
    /// Fresh state (moments are created on the first step).
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update of `model` with the mean of the accumulated gradients at learning rate `lr`.
    pub fn step<AD, M>(
        &mut self,
        model: M,
        accumulated: GradAccumulator<B>,
        lr: f64,
    ) -> (M, StepReport)
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        let scale_mean = 1.0 / accumulated.micro_batches.max(1) as f64;
        let grads: Vec<Tensor<B, 1>> = accumulated
            .grads
            .into_iter()
            .map(|g| g * scale_mean)
            .collect();
        let squares: Vec<Tensor<B, 1>> = grads
            .iter()
            .map(|g| g.clone().powi_scalar(2).sum())
            .collect();
        let norm = Tensor::cat(squares, 0)
            .sum()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .map(|v| v[0].sqrt())
            .unwrap_or(f64::NAN);
        // torch's clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)) (so a norm just
        // below max_norm is still scaled by a hair)
        let clip_scale = if self.config.max_norm > 0.0 {
            (self.config.max_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let grads = if clip_scale < 1.0 {
            grads.into_iter().map(|g| g * clip_scale).collect()
        } else {
            grads
        };
        if self.m.is_empty() {
            self.m = grads.iter().map(|g| g.zeros_like()).collect();
            self.v = grads.iter().map(|g| g.zeros_like()).collect();
        }
        self.step += 1;
        let mut update = Update {
            optim: self,
            grads,
            index: 0,
            lr,
        };
        let model = model.map(&mut update);
        (
            model,
            StepReport {
                grad_norm: norm,
                clip_scale,
            },
        )
    }

    /// Writes the moments and the step count to a safetensors file (f32, exact).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut buffers: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (name, list) in [("m", &self.m), ("v", &self.v)] {
            for (i, t) in list.iter().enumerate() {
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| TrainError::Config(format!("optimizer state read-back: {e:?}")))?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                buffers.push((format!("{name}.{i:04}"), bytes, values.len()));
            }
        }
        let views: Vec<(String, TensorView)> = buffers
            .iter()
            .map(|(name, bytes, n)| {
                let view =
                    TensorView::new(Dtype::F32, vec![*n], bytes).expect("f32 buffer of n elements");
                (name.clone(), view)
            })
            .collect();
        let meta = HashMap::from([("step".to_string(), self.step.to_string())]);
        let bytes = safetensors::serialize(views, &Some(meta))
            .map_err(|e| TrainError::Config(format!("optimizer state: {e}")))?;
        crate::checkpoint::write_atomic(path, &bytes)
    }

    /// Reads the state written by [`Self::save`]; the tensors must match `model`'s parameters.
    pub fn load<AD, M>(
        config: AdamWConfig,
        path: &Path,
        model: &M,
        device: &B::Device,
    ) -> Result<Self, TrainError>
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let bad = |reason: String| TrainError::Checkpoint {
            dir: path.to_path_buf(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let step: usize = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no `step` in the optimizer state".into()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let sizes = param_sizes(model);
        let mut state = Self::new(config);
        state.step = step;
        if step == 0 {
            return Ok(state);
        }
        for (name, list) in [("m", &mut state.m), ("v", &mut state.v)] {
            for (i, &n) in sizes.iter().enumerate() {
                let key = format!("{name}.{i:04}");
                let view = tensors
                    .tensor(&key)
                    .map_err(|_| bad(format!("missing `{key}`")))?;
                if view.dtype() != Dtype::F32 || view.shape() != [n] {
                    return Err(bad(format!(
                        "`{key}` is {:?} {:?}, the model needs F32 [{n}]",
                        view.dtype(),
                        view.shape()
                    )));
                }
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                list.push(Tensor::from_data(TensorData::new(values, [n]), device));
            }
        }
        if tensors.len() != 2 * sizes.len() {
            return Err(bad(format!(
                "{} tensors for a model of {} parameters",
                tensors.len(),
                sizes.len()
            )));
        }
        Ok(state)
    }
}

/// Element counts of a module's float parameters in visit order.
pub fn param_sizes<B: Backend, M: burn::module::Module<B>>(model: &M) -> Vec<usize> {
    struct Sizes(Vec<usize>);
    impl<B: Backend> ModuleVisitor<B> for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().shape().num_elements());
        }
    }
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    sizes.0
}
