//! burn-flex's kernels: the [`cpu`](crate::cpu) kernels on its host tensors, and under
//! `Autodiff<Flex>` each one a single autodiff node with its own backward.
//!
//! A kernel runs on f32 tensors (any layout with non-negative strides: attention reads the views
//! of the fused q/k/v projection in place; the others take contiguous rows, copying a strided
//! input once); anything else (half precision, the switch off, empty sizes) runs the composition.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bytes, DType, Int, Shape, Tensor, TensorData, TensorPrimitive};

use crate::cpu::attention::{self, Dims, Saved, View4};
use crate::cpu::{cross_entropy, norm, packed, rope, vector};
use crate::packed::PackedMatrix;
use crate::{composed, fused, Kernels};

/// A tensor's float primitive.
fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// The tensor of a float primitive.
fn wrap<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A contiguous f32 tensor of `shape` holding `values`.
fn new_tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// `t`'s values as one contiguous row-major f32 slice (copied first when strided).
fn contiguous_f32(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let c = if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    };
    c.as_slice::<f32>()?;
    Some(c)
}

/// A 4-d strided view of an f32 tensor.
fn view4(t: &FlexTensor) -> Option<View4<'_>> {
    let layout = t.layout();
    let shape: [usize; 4] = layout.shape().as_slice().try_into().ok()?;
    let strides: [isize; 4] = layout.strides().try_into().ok()?;
    View4::new(t.storage::<f32>(), layout.start_offset(), shape, strides)
}

/// `t` when a view of it can be read in place, else its contiguous copy; `None` unless f32.
fn viewable(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 || t.layout().num_dims() != 4 {
        return None;
    }
    if view4(&t).is_some() {
        return Some(t);
    }
    let c = t.to_contiguous();
    view4(&c).is_some().then_some(c)
}

/// The inputs of one attention call, ready for the kernel (f32, readable in place).
#[derive(Debug, Clone)]
struct AttentionInputs {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    scale: f32,
    dims: Dims,
}

impl AttentionInputs {
    /// `None` when the kernel does not take them (off, not f32, sizes that do not fit or are 0).
    fn new(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        bias: Option<&FlexTensor>,
        scale: f64,
    ) -> Option<Self> {
        if !fused() {
            return None;
        }
        let (q, k, v) = (
            viewable(q.clone())?,
            viewable(k.clone())?,
            viewable(v.clone())?,
        );
        let bias = match bias {
            Some(b) => Some(viewable(b.clone())?),
            None => None,
        };
        let bias_view = match &bias {
            Some(b) => Some(view4(b)?),
            None => None,
        };
        let dims = Dims::of(&view4(&q)?, &view4(&k)?, &view4(&v)?, bias_view.as_ref())?;
        let sizes = [
            dims.batch,
            dims.heads,
            dims.queries,
            dims.keys,
            dims.head_size,
        ];
        if sizes.contains(&0) {
            return None;
        }
        Some(Self {
            q,
            k,
            v,
            bias,
            scale: scale as f32,
            dims,
        })
    }

    fn views(&self) -> (View4<'_>, View4<'_>, View4<'_>, Option<View4<'_>>) {
        // every view was checked in `new`
        let view = |t| view4(t).expect("checked view");
        (
            view(&self.q),
            view(&self.k),
            view(&self.v),
            self.bias.as_ref().map(view),
        )
    }

    fn out_shape(&self) -> [usize; 4] {
        let d = self.dims;
        [d.batch, d.queries, d.heads, d.head_size]
    }

    /// The output `[B, T, H, D]` and, when asked, the log-sum-exps `[B, H, T]`.
    fn forward(&self, keep_lse: bool) -> (FlexTensor, Option<FlexTensor>) {
        let d = self.dims;
        let (q, k, v, bias) = self.views();
        let mut out = vec![0.0f32; d.batch * d.queries * d.heads * d.head_size];
        let mut lse = keep_lse.then(|| vec![0.0f32; d.batch * d.heads * d.queries]);
        attention::forward(
            &d,
            (&q, &k, &v),
            bias.as_ref(),
            self.scale,
            &mut out,
            lse.as_deref_mut(),
        );
        let lse = lse.map(|l| new_tensor(l, &[d.batch, d.heads, d.queries]));
        (new_tensor(out, &self.out_shape()), lse)
    }
}

impl Kernels for Flex {
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let (q, k, v) = (float(q), float(k), float(v));
        let bias = bias.map(float);
        match AttentionInputs::new(&q, &k, &v, bias.as_ref(), scale) {
            Some(inputs) => wrap(inputs.forward(false).0),
            None => composed::attention(wrap(q), wrap(k), wrap(v), bias.map(wrap), scale),
        }
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        let logits = float(logits);
        let ids = targets.into_primitive();
        match CrossEntropyInputs::new(&logits, &ids) {
            Some(inputs) => wrap(inputs.forward().0),
            None => composed::cross_entropy(wrap(logits), Tensor::from_primitive(ids)),
        }
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        gain: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let (x, gain) = (float(x), float(gain));
        match NormInputs::new(&x, &gain, eps) {
            Some(inputs) => wrap(inputs.forward().0),
            None => composed::rms_norm(wrap(x), wrap(gain), eps),
        }
    }

    fn rope(
        x: Tensor<Self, 3>,
        cos: Tensor<Self, 3>,
        sin: Tensor<Self, 3>,
        perm: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 3> {
        let (x, cos, sin) = (float(x), float(cos), float(sin));
        let perm = perm.into_primitive();
        match RopeInputs::new(&x, &cos, &sin, &perm) {
            Some(inputs) => wrap(inputs.forward()),
            None => composed::rope(wrap(x), wrap(cos), wrap(sin), Tensor::from_primitive(perm)),
        }
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        let (gate, up) = (float(gate), float(up));
        match SwigluInputs::new(&gate, &up) {
            Some(inputs) => wrap(inputs.forward()),
            None => composed::swiglu(wrap(gate), wrap(up)),
        }
    }

    const HOST_MEMORY: bool = true;

    const PACKS_WEIGHTS: bool = true;

    fn keep_packed(w: PackedMatrix) -> PackedMatrix {
        crate::cpu::qdot::compact(w)
    }

    fn requantize_packed(
        w: &PackedMatrix,
        dtype: crate::quant::GgmlType,
    ) -> Result<PackedMatrix, String> {
        crate::cpu::qdot::requantize_interleaved(w, dtype).unwrap_or_else(|| w.requantize(dtype))
    }

    fn linear_packed<const D: usize>(x: Tensor<Self, D>, w: &PackedMatrix) -> Tensor<Self, D> {
        let dims = x.dims();
        if !fused() || x.dtype() != DType::F32 || dims[D - 1] != w.cols() {
            return composed::linear_packed(x, w);
        }
        let m = dims[..D - 1].iter().product::<usize>();
        let device = x.device();
        let Ok(y) = Self::with_host_f32(x.clone(), |values| packed::matmul(values, m, w)) else {
            return composed::linear_packed(x, w);
        };
        let mut out = dims;
        out[D - 1] = w.rows();
        Tensor::from_data(TensorData::new(y, out), &device)
    }

    /// In place when the tensor is contiguous f32 (the logits a forward pass returns), read
    /// back otherwise.
    fn with_host_f32<const D: usize, R>(
        tensor: Tensor<Self, D>,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, burn::tensor::DataError> {
        let primitive = float(tensor);
        if let Some(values) = primitive.as_slice::<f32>() {
            return Ok(f(values));
        }
        let data = wrap::<Self, D>(primitive).into_data();
        Ok(f(&data.convert::<f32>().into_vec::<f32>()?))
    }
}

/// Logits and targets for the cross-entropy kernel.
#[derive(Debug, Clone)]
struct CrossEntropyInputs {
    logits: FlexTensor,
    targets: Vec<Option<usize>>,
    vocab: usize,
}

impl CrossEntropyInputs {
    fn new(logits: &FlexTensor, targets: &FlexTensor) -> Option<Self> {
        if !fused() {
            return None;
        }
        let dims = logits.layout().shape().as_slice();
        let (rows, vocab) = match dims {
            [r, v] if *v > 0 => (*r, *v),
            _ => return None,
        };
        // a negative target is a NaN loss, as one past the vocabulary
        let targets = int_values(targets)?;
        if targets.len() != rows {
            return None;
        }
        let targets = targets
            .into_iter()
            .map(|t| t.filter(|&t| t < vocab))
            .collect();
        Some(Self {
            logits: contiguous_f32(logits)?,
            targets,
            vocab,
        })
    }

    fn logits(&self) -> &[f32] {
        self.logits
            .as_slice::<f32>()
            .expect("contiguous f32 logits")
    }

    /// `(losses [rows], log-sum-exps)`.
    fn forward(&self) -> (FlexTensor, Vec<f32>) {
        let (loss, lse) = cross_entropy::forward(self.logits(), self.vocab, &self.targets);
        let rows = loss.len();
        (new_tensor(loss, &[rows]), lse)
    }
}

/// Input and gain for the RMSNorm kernel.
#[derive(Debug, Clone)]
struct NormInputs {
    x: FlexTensor,
    gain: FlexTensor,
    eps: f32,
}

impl NormInputs {
    fn new(x: &FlexTensor, gain: &FlexTensor, eps: f64) -> Option<Self> {
        let width = *x.layout().shape().as_slice().last()?;
        if !fused() || width == 0 || gain.layout().shape().as_slice() != [width] {
            return None;
        }
        Some(Self {
            x: contiguous_f32(x)?,
            gain: contiguous_f32(gain)?,
            eps: eps as f32,
        })
    }

    fn slices(&self) -> (&[f32], &[f32]) {
        let x = self.x.as_slice::<f32>().expect("contiguous f32 input");
        (x, self.gain.as_slice::<f32>().expect("contiguous f32 gain"))
    }

    /// `(y, inv_rms per row)`.
    fn forward(&self) -> (FlexTensor, Vec<f32>) {
        let (x, gain) = self.slices();
        let (y, inv) = norm::forward(x, gain, self.eps);
        (new_tensor(y, self.x.layout().shape().as_slice()), inv)
    }
}

/// An Int tensor's values as indices (`None` for each negative one); `None` for another dtype.
fn int_values(t: &FlexTensor) -> Option<Vec<Option<usize>>> {
    let t = t.to_contiguous();
    let index = |i: i64| usize::try_from(i).ok();
    match t.dtype() {
        DType::I64 => Some(t.as_slice::<i64>()?.iter().map(|&i| index(i)).collect()),
        DType::I32 => Some(
            t.as_slice::<i32>()?
                .iter()
                .map(|&i| index(i.into()))
                .collect(),
        ),
        _ => None,
    }
}

/// An Int tensor's values as indices (`None` for a negative one or another dtype).
fn indices(t: &FlexTensor) -> Option<Vec<usize>> {
    int_values(t)?.into_iter().collect()
}

/// Input, tables and pairing for the RoPE kernel.
#[derive(Debug, Clone)]
struct RopeInputs {
    x: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    perm: Vec<usize>,
    inverse: Vec<usize>,
}

impl RopeInputs {
    fn new(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, perm: &FlexTensor) -> Option<Self> {
        let shape = x.layout().shape();
        let features = *shape.as_slice().last()?;
        if !fused() || cos.layout().shape() != shape || sin.layout().shape() != shape {
            return None;
        }
        let perm = indices(perm)?;
        if perm.len() != features {
            return None;
        }
        let inverse = rope::inverse(&perm)?;
        Some(Self {
            x: contiguous_f32(x)?,
            cos: contiguous_f32(cos)?,
            sin: contiguous_f32(sin)?,
            perm,
            inverse,
        })
    }

    fn tables(&self) -> (&[f32], &[f32]) {
        let cos = self.cos.as_slice::<f32>().expect("contiguous f32 cos");
        (cos, self.sin.as_slice::<f32>().expect("contiguous f32 sin"))
    }

    fn forward(&self) -> FlexTensor {
        let (cos, sin) = self.tables();
        let x = self.x.as_slice::<f32>().expect("contiguous f32 input");
        let y = rope::forward(x, cos, sin, &self.perm);
        new_tensor(y, self.x.layout().shape().as_slice())
    }
}

/// Gate and up projection for the SwiGLU kernel.
#[derive(Debug, Clone)]
struct SwigluInputs {
    gate: FlexTensor,
    up: FlexTensor,
}

/// Elements handled by one rayon task in the element-wise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 14;

impl SwigluInputs {
    fn new(gate: &FlexTensor, up: &FlexTensor) -> Option<Self> {
        if !fused() || gate.layout().shape() != up.layout().shape() {
            return None;
        }
        Some(Self {
            gate: contiguous_f32(gate)?,
            up: contiguous_f32(up)?,
        })
    }

    fn slices(&self) -> (&[f32], &[f32]) {
        let gate = self.gate.as_slice::<f32>().expect("contiguous f32 gate");
        (gate, self.up.as_slice::<f32>().expect("contiguous f32 up"))
    }

    fn shape(&self) -> &[usize] {
        self.gate.layout().shape().as_slice()
    }

    fn forward(&self) -> FlexTensor {
        use rayon::prelude::*;
        let (gate, up) = self.slices();
        let mut out = vec![0.0f32; gate.len()];
        out.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(
                gate.par_chunks(ELEMENTS_PER_TASK)
                    .zip(up.par_chunks(ELEMENTS_PER_TASK)),
            )
            .for_each(|(o, (g, u))| vector::swiglu(g, u, o));
        new_tensor(out, self.shape())
    }

    fn backward(&self, dy: &[f32]) -> (FlexTensor, FlexTensor) {
        use rayon::prelude::*;
        let (gate, up) = self.slices();
        let (mut d_gate, mut d_up) = (vec![0.0f32; gate.len()], vec![0.0f32; gate.len()]);
        d_gate
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(d_up.par_chunks_mut(ELEMENTS_PER_TASK))
            .zip(
                gate.par_chunks(ELEMENTS_PER_TASK)
                    .zip(up.par_chunks(ELEMENTS_PER_TASK)),
            )
            .zip(dy.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(((dg, du), (g, u)), dy)| vector::swiglu_backward(g, u, dy, dg, du));
        (
            new_tensor(d_gate, self.shape()),
            new_tensor(d_up, self.shape()),
        )
    }
}

/// A node's gradient as one contiguous f32 buffer.
fn f32_grad(grad: FlexTensor) -> FlexTensor {
    contiguous_f32(&grad).unwrap_or_else(|| {
        // gradients of f32 nodes are f32: this is a cast for safety, never expected to run
        let cast: Tensor<Flex, 1> = wrap::<Flex, 1>(grad).cast(burn::tensor::FloatDType::F32);
        contiguous_f32(&float(cast)).expect("f32 gradient")
    })
}

fn grad_slice(grad: &FlexTensor) -> &[f32] {
    grad.as_slice::<f32>().expect("contiguous f32 gradient")
}

/// Registers `grad` for `parent` when it is tracked (a macro: burn does not export the node type).
macro_rules! register {
    ($grads:expr, $parent:expr, $grad:expr) => {
        if let Some(node) = &$parent {
            $grads.register::<Flex>(node.id, $grad);
        }
    };
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Debug, Clone)]
struct AttentionState {
    inputs: AttentionInputs,
    out: FlexTensor,
    lse: FlexTensor,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = f32_grad(grads.consume::<Flex>(&ops.node));
        let AttentionState { inputs, out, lse } = ops.state;
        let d = inputs.dims;
        let (q, k, v, bias) = inputs.views();
        let mut dq = vec![0.0f32; d.batch * d.heads * d.queries * d.head_size];
        let mut dk = vec![0.0f32; d.batch * d.groups * d.keys * d.head_size];
        let mut dv = vec![0.0f32; dk.len()];
        attention::backward(
            &d,
            (&q, &k, &v),
            bias.as_ref(),
            inputs.scale,
            Saved {
                out: out.as_slice::<f32>().expect("contiguous output"),
                lse: lse.as_slice::<f32>().expect("contiguous log-sum-exp"),
            },
            grad_slice(&d_out),
            &mut dq,
            (&mut dk, &mut dv),
        );
        let [pq, pk, pv] = ops.parents;
        register!(
            grads,
            &pq,
            new_tensor(dq, &[d.batch, d.heads, d.queries, d.head_size])
        );
        let kv = [d.batch, d.groups, d.keys, d.head_size];
        register!(grads, &pk, new_tensor(dk, &kv));
        register!(grads, &pv, new_tensor(dv, &kv));
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

#[derive(Debug, Clone)]
struct CrossEntropyState {
    inputs: CrossEntropyInputs,
    lse: Vec<f32>,
}

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = f32_grad(grads.consume::<Flex>(&ops.node));
        let CrossEntropyState { inputs, lse } = ops.state;
        let d_logits = cross_entropy::backward(
            inputs.logits(),
            inputs.vocab,
            &inputs.targets,
            &lse,
            grad_slice(&grad),
        );
        let [parent] = ops.parents;
        register!(
            grads,
            &parent,
            new_tensor(d_logits, inputs.logits.layout().shape().as_slice())
        );
    }
}

#[derive(Debug)]
struct NormBackward;

#[derive(Debug, Clone)]
struct NormState {
    inputs: NormInputs,
    inv: Vec<f32>,
}

impl Backward<Flex, 2> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = f32_grad(grads.consume::<Flex>(&ops.node));
        let NormState { inputs, inv } = ops.state;
        let (x, gain) = inputs.slices();
        let (dx, d_gain) = norm::backward(x, gain, &inv, grad_slice(&dy));
        let [px, pg] = ops.parents;
        register!(
            grads,
            &px,
            new_tensor(dx, inputs.x.layout().shape().as_slice())
        );
        register!(grads, &pg, new_tensor(d_gain, &[gain.len()]));
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = RopeInputs;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = f32_grad(grads.consume::<Flex>(&ops.node));
        let inputs = ops.state;
        let (cos, sin) = inputs.tables();
        let dx = rope::backward(grad_slice(&dy), cos, sin, &inputs.inverse);
        let [parent] = ops.parents;
        register!(
            grads,
            &parent,
            new_tensor(dx, inputs.x.layout().shape().as_slice())
        );
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = SwigluInputs;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = f32_grad(grads.consume::<Flex>(&ops.node));
        let (d_gate, d_up) = ops.state.backward(grad_slice(&dy));
        let [pg, pu] = ops.parents;
        register!(grads, &pg, d_gate);
        register!(grads, &pu, d_up);
    }
}

type Ad<C> = Autodiff<Flex, C>;

/// The float primitive of `Autodiff<Flex>` (burn does not export its name).
type AdTensor<C> = <Ad<C> as BackendTypes>::FloatTensorPrimitive;

fn ad_float<C: CheckpointStrategy, const D: usize>(t: Tensor<Ad<C>, D>) -> AdTensor<C> {
    float(t)
}

/// Runs a kernel as one autodiff node over `parents`: `forward(keep)` returns the output and, when
/// `keep` (some parent is tracked), the state `backward` needs.
fn node<C, BO, const N: usize>(
    backward: BO,
    parents: [&AdTensor<C>; N],
    forward: impl FnOnce(bool) -> (FlexTensor, Option<BO::State>),
) -> AdTensor<C>
where
    C: CheckpointStrategy,
    BO: Backward<Flex, N>,
{
    let prepared = backward
        .prepare::<C>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful();
    match prepared {
        OpsKind::Tracked(prep) => match forward(true) {
            (out, Some(state)) => prep.finish(state, out),
            (_, None) => unreachable!("every kernel's forward keeps its state when asked"),
        },
        OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
    }
}

impl<C: CheckpointStrategy> Kernels for Autodiff<Flex, C> {
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let (q, k, v) = (ad_float(q), ad_float(k), ad_float(v));
        let bias = bias.map(ad_float);
        let inputs = AttentionInputs::new(
            &q.primitive,
            &k.primitive,
            &v.primitive,
            bias.as_ref().map(|b| &b.primitive),
            scale,
        );
        let Some(inputs) = inputs else {
            return composed::attention(wrap(q), wrap(k), wrap(v), bias.map(wrap), scale);
        };
        wrap(node::<C, _, _>(AttentionBackward, [&q, &k, &v], |keep| {
            let (out, lse) = inputs.forward(keep);
            let state = lse.map(|lse| AttentionState {
                inputs,
                out: out.clone(),
                lse,
            });
            (out, state)
        }))
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        let logits = ad_float(logits);
        let ids = targets.into_primitive();
        let Some(inputs) = CrossEntropyInputs::new(&logits.primitive, &ids) else {
            return composed::cross_entropy(wrap(logits), Tensor::from_primitive(ids));
        };
        wrap(node::<C, _, _>(CrossEntropyBackward, [&logits], |keep| {
            let (loss, lse) = inputs.forward();
            (loss, keep.then(|| CrossEntropyState { inputs, lse }))
        }))
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        gain: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let (x, gain) = (ad_float(x), ad_float(gain));
        let Some(inputs) = NormInputs::new(&x.primitive, &gain.primitive, eps) else {
            return composed::rms_norm(wrap(x), wrap(gain), eps);
        };
        wrap(node::<C, _, _>(NormBackward, [&x, &gain], |keep| {
            let (y, inv) = inputs.forward();
            (y, keep.then(|| NormState { inputs, inv }))
        }))
    }

    fn rope(
        x: Tensor<Self, 3>,
        cos: Tensor<Self, 3>,
        sin: Tensor<Self, 3>,
        perm: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 3> {
        let (x, cos, sin) = (ad_float(x), ad_float(cos), ad_float(sin));
        let perm = perm.into_primitive();
        let inputs = RopeInputs::new(&x.primitive, &cos.primitive, &sin.primitive, &perm);
        let Some(inputs) = inputs else {
            let perm = Tensor::from_primitive(perm);
            return composed::rope(wrap(x), wrap(cos), wrap(sin), perm);
        };
        wrap(node::<C, _, _>(RopeBackward, [&x], |keep| {
            let y = inputs.forward();
            (y, keep.then_some(inputs))
        }))
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        let (gate, up) = (ad_float(gate), ad_float(up));
        let Some(inputs) = SwigluInputs::new(&gate.primitive, &up.primitive) else {
            return composed::swiglu(wrap(gate), wrap(up));
        };
        wrap(node::<C, _, _>(SwigluBackward, [&gate, &up], |keep| {
            let y = inputs.forward();
            (y, keep.then_some(inputs))
        }))
    }
}
