//! Fused grouped-query attention on `f32` host memory, forward and backward, flash-attention style.
//!
//! One task per `(batch, key/value group)`, spread over rayon's threads (the pool burn-flex uses);
//! a task handles the group's query heads one after the other, in blocks of query rows, so the
//! scores of a block (`rows x keys`) stay in the cache between their product, their softmax and
//! the product with the values. The softmax's log-sum-exp of every row is kept for the backward,
//! which recomputes the probabilities block by block instead of storing them. Query, key and value
//! are read where they lie, through their strides (the views of the fused q/k/v projection); the
//! matrix products are the `gemm` crate's (the one burn-flex's matmul uses), single-threaded
//! inside a task.
//!
//! Why our own: burn-flex 0.21's decomposed attention runs its batched `q k^T` at about 7 GFLOP/s,
//! its softmax's `exp` scalar, and copies the heads apart and back together; its fused attention op
//! was slower still and autodiff never uses it (docs/benchmarks.md).

use rayon::prelude::*;

use super::vector;

/// A read-only strided 4-d view of `f32` values: element `[i, j, k, l]` at
/// `offset + i s0 + j s1 + k s2 + l s3` of `data`.
#[derive(Debug, Clone, Copy)]
pub struct View4<'a> {
    data: &'a [f32],
    offset: usize,
    shape: [usize; 4],
    strides: [isize; 4],
}

impl<'a> View4<'a> {
    /// The view, or `None` when a stride is negative or an element would lie outside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        shape: [usize; 4],
        strides: [isize; 4],
    ) -> Option<Self> {
        if strides.iter().any(|&s| s < 0) {
            return None;
        }
        if shape.contains(&0) {
            return Some(Self {
                data,
                offset,
                shape,
                strides,
            });
        }
        let last = shape
            .iter()
            .zip(&strides)
            .map(|(&n, &s)| (n - 1) * s as usize)
            .sum::<usize>()
            + offset;
        (last < data.len()).then_some(Self {
            data,
            offset,
            shape,
            strides,
        })
    }

    /// A contiguous row-major view of `data` as `shape`.
    pub fn contiguous(data: &'a [f32], shape: [usize; 4]) -> Option<Self> {
        let strides = [
            (shape[1] * shape[2] * shape[3]) as isize,
            (shape[2] * shape[3]) as isize,
            shape[3] as isize,
            1,
        ];
        Self::new(data, 0, shape, strides)
    }

    /// The shape.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Index in `data` of element `[i, j, k, 0]`.
    fn index(&self, i: usize, j: usize, k: usize) -> usize {
        self.offset
            + i * self.strides[0] as usize
            + j * self.strides[1] as usize
            + k * self.strides[2] as usize
    }

    /// Pointer to element `[i, j, k, 0]` (in bounds: checked at construction).
    fn at(&self, i: usize, j: usize, k: usize) -> *const f32 {
        self.data[self.index(i, j, k)..].as_ptr()
    }
}

/// Sizes of one attention call: queries `[batch, heads, queries, head_size]`, keys and values
/// `[batch, groups, keys, head_size]`, `heads` a multiple of `groups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// `B`
    pub batch: usize,
    /// `H`
    pub heads: usize,
    /// `G`
    pub groups: usize,
    /// `T`
    pub queries: usize,
    /// `K`
    pub keys: usize,
    /// `D`
    pub head_size: usize,
}

impl Dims {
    /// The sizes of `q`, `k`, `v` (and a bias broadcastable to `[B, H, T, K]`), or `None` when they
    /// do not fit together.
    pub fn of(q: &View4, k: &View4, v: &View4, bias: Option<&View4>) -> Option<Self> {
        let [batch, heads, queries, head_size] = q.shape;
        let [kb, groups, keys, kd] = k.shape;
        let fits = kb == batch
            && kd == head_size
            && v.shape == k.shape
            && groups > 0
            && heads % groups == 0
            && bias.is_none_or(|b| {
                let [bb, bh, bt, bk] = b.shape;
                (bb == 1 || bb == batch) && (bh == 1 || bh == heads) && bt == queries && bk == keys
            });
        fits.then_some(Self {
            batch,
            heads,
            groups,
            queries,
            keys,
            head_size,
        })
    }

    fn per_group(&self) -> usize {
        self.heads / self.groups
    }

    /// Query rows per block: the block's scores (and in the backward their gradient) stay within
    /// about 256 KB.
    fn block_rows(&self) -> usize {
        (65_536 / self.keys.max(1)).clamp(8, 128)
    }
}

/// A pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: each task writes only its own `(batch, group)` slots (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst (m x n) = beta * lhs (m x k) rhs (k x n)`, plus `dst` itself when `accumulate`; every
/// matrix given by a pointer and its (row, column) strides.
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not overlap
/// the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `scores (rows x K) = scale q[b, h, t0..t0 + rows] k[b, g]^T + bias[b, h, t0..t0 + rows]`.
#[allow(clippy::too_many_arguments)]
fn block_scores(
    dims: &Dims,
    q: &View4,
    k: &View4,
    bias: Option<&View4>,
    scale: f32,
    (b, h, g): (usize, usize, usize),
    (t0, rows): (usize, usize),
    scores: &mut [f32],
) {
    let keys = dims.keys;
    // SAFETY: the views were bounds-checked at construction and `scores` holds rows x keys.
    unsafe {
        gemm(
            (rows, keys, dims.head_size),
            scores.as_mut_ptr(),
            (keys as isize, 1),
            false,
            q.at(b, h, t0),
            (q.strides[2], q.strides[3]),
            k.at(b, g, 0),
            (k.strides[3], k.strides[2]),
            scale,
        );
    }
    if let Some(bias) = bias {
        let bb = if bias.shape[0] == 1 { 0 } else { b };
        let bh = if bias.shape[1] == 1 { 0 } else { h };
        for (i, row) in scores.chunks_exact_mut(keys).take(rows).enumerate() {
            let base = bias.index(bb, bh, t0 + i);
            let s3 = bias.strides[3] as usize;
            if s3 == 1 {
                for (x, &add) in row.iter_mut().zip(&bias.data[base..base + keys]) {
                    *x += add;
                }
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x += bias.data[base + j * s3];
                }
            }
        }
    }
}

/// Attention forward: `out[b, t, h] = softmax(scale q k^T + bias) v` written as `[B, T, H, D]`
/// (the heads merged, ready for the output projection), and, when asked, the log-sum-exp of every
/// score row as `[B, H, T]`. A row whose scores are all `-inf` gives NaN, as the composed softmax
/// does.
pub fn forward(
    dims: &Dims,
    (q, k, v): (&View4, &View4, &View4),
    bias: Option<&View4>,
    scale: f32,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let (t_len, d, h_len, p_len) = (dims.queries, dims.head_size, dims.heads, dims.per_group());
    assert_eq!(
        out.len(),
        dims.batch * t_len * h_len * d,
        "attention output size"
    );
    let out_ptr = Shared(out.as_mut_ptr());
    let lse_ptr = lse.map(|l| {
        assert_eq!(l.len(), dims.batch * h_len * t_len, "log-sum-exp size");
        Shared(l.as_mut_ptr())
    });
    let block = dims.block_rows();
    (0..dims.batch * dims.groups)
        .into_par_iter()
        .for_each(|task| {
            let (b, g) = (task / dims.groups, task % dims.groups);
            let mut scores = vec![0.0f32; block * dims.keys];
            for p in 0..p_len {
                let h = g * p_len + p;
                for t0 in (0..t_len).step_by(block) {
                    let rows = block.min(t_len - t0);
                    block_scores(dims, q, k, bias, scale, (b, h, g), (t0, rows), &mut scores);
                    for (i, row) in scores.chunks_exact_mut(dims.keys).take(rows).enumerate() {
                        let m = vector::max(row);
                        let log_sum = if m == f32::NEG_INFINITY {
                            row.fill(f32::NAN);
                            f32::NAN
                        } else {
                            let sum = vector::exp_shifted_in_place(row, m);
                            vector::scale_in_place(row, (1.0 / sum) as f32);
                            m + sum.ln() as f32
                        };
                        if let Some(lse) = lse_ptr {
                            // SAFETY: row (b, h, t0 + i) of the [B, H, T] buffer is this task's.
                            unsafe { *lse.get().add((b * h_len + h) * t_len + t0 + i) = log_sum };
                        }
                    }
                    // SAFETY: rows t0.. of head h of batch b in [B, T, H, D] are this task's; the
                    // view v is bounds-checked and `scores` holds rows x keys.
                    unsafe {
                        gemm(
                            (rows, d, dims.keys),
                            out_ptr.get().add(((b * t_len + t0) * h_len + h) * d),
                            ((h_len * d) as isize, 1),
                            false,
                            scores.as_ptr(),
                            (dims.keys as isize, 1),
                            v.at(b, g, 0),
                            (v.strides[2], v.strides[3]),
                            1.0,
                        );
                    }
                }
            }
        });
}

/// What the backward needs from the forward: its output `[B, T, H, D]` and log-sum-exps `[B, H, T]`.
#[derive(Debug, Clone, Copy)]
pub struct Saved<'a> {
    /// The forward's output.
    pub out: &'a [f32],
    /// The forward's log-sum-exp of every score row.
    pub lse: &'a [f32],
}

/// Gradients of the attention for the output gradient `d_out` (`[B, T, H, D]`, contiguous):
/// `dq` as `[B, H, T, D]`, `dk` and `dv` as `[B, G, K, D]` (all overwritten). The bias gets none:
/// it is a constant (masks).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: &Dims,
    (q, k, v): (&View4, &View4, &View4),
    bias: Option<&View4>,
    scale: f32,
    saved: Saved<'_>,
    d_out: &[f32],
    dq: &mut [f32],
    (dk, dv): (&mut [f32], &mut [f32]),
) {
    let (t_len, k_len, d) = (dims.queries, dims.keys, dims.head_size);
    let (h_len, p_len) = (dims.heads, dims.per_group());
    let row_stride = h_len * d;
    assert_eq!(
        d_out.len(),
        dims.batch * t_len * row_stride,
        "output gradient size"
    );
    assert_eq!(
        dq.len(),
        dims.batch * h_len * t_len * d,
        "query gradient size"
    );
    assert_eq!(
        dk.len(),
        dims.batch * dims.groups * k_len * d,
        "key gradient size"
    );
    assert_eq!(dv.len(), dk.len(), "value gradient size");
    let block = dims.block_rows();
    dk.fill(0.0);
    dv.fill(0.0);
    dq.par_chunks_mut(p_len * t_len * d)
        .zip(dk.par_chunks_mut(k_len * d))
        .zip(dv.par_chunks_mut(k_len * d))
        .enumerate()
        .for_each(|(task, ((dq, dk), dv))| {
            let (b, g) = (task / dims.groups, task % dims.groups);
            let mut probs = vec![0.0f32; block * k_len];
            let mut d_probs = vec![0.0f32; block * k_len];
            let mut delta = vec![0.0f32; block];
            for p in 0..p_len {
                let h = g * p_len + p;
                for t0 in (0..t_len).step_by(block) {
                    let rows = block.min(t_len - t0);
                    let row_at = |i: usize| ((b * t_len + t0 + i) * h_len + h) * d;
                    for (i, delta) in delta.iter_mut().take(rows).enumerate() {
                        let at = row_at(i);
                        *delta = vector::dot(&d_out[at..at + d], &saved.out[at..at + d]) as f32;
                    }
                    block_scores(dims, q, k, bias, scale, (b, h, g), (t0, rows), &mut probs);
                    for (i, row) in probs.chunks_exact_mut(k_len).take(rows).enumerate() {
                        vector::exp_shifted_in_place(
                            row,
                            saved.lse[(b * h_len + h) * t_len + t0 + i],
                        );
                    }
                    let d_out_block = d_out[row_at(0)..].as_ptr();
                    // SAFETY: every operand is in bounds (views checked at construction, buffers
                    // sized above); dq/dk/dv are this task's chunks, distinct from the operands.
                    unsafe {
                        // dv += p^T d_out
                        gemm(
                            (k_len, d, rows),
                            dv.as_mut_ptr(),
                            (d as isize, 1),
                            true,
                            probs.as_ptr(),
                            (1, k_len as isize),
                            d_out_block,
                            (row_stride as isize, 1),
                            1.0,
                        );
                        // d_probs = d_out v^T
                        gemm(
                            (rows, k_len, d),
                            d_probs.as_mut_ptr(),
                            (k_len as isize, 1),
                            false,
                            d_out_block,
                            (row_stride as isize, 1),
                            v.at(b, g, 0),
                            (v.strides[3], v.strides[2]),
                            1.0,
                        );
                    }
                    for ((row, d_row), &delta) in probs
                        .chunks_exact_mut(k_len)
                        .zip(d_probs.chunks_exact(k_len))
                        .zip(&delta)
                        .take(rows)
                    {
                        // the gradient of the scaled scores, times the scale: of q k^T
                        vector::softmax_backward_in_place(row, d_row, delta, scale);
                    }
                    // SAFETY: as above.
                    unsafe {
                        // dq = d_scores k
                        gemm(
                            (rows, d, k_len),
                            dq.as_mut_ptr().add((p * t_len + t0) * d),
                            (d as isize, 1),
                            false,
                            probs.as_ptr(),
                            (k_len as isize, 1),
                            k.at(b, g, 0),
                            (k.strides[2], k.strides[3]),
                            1.0,
                        );
                        // dk += d_scores^T q
                        gemm(
                            (k_len, d, rows),
                            dk.as_mut_ptr(),
                            (d as isize, 1),
                            true,
                            probs.as_ptr(),
                            (1, k_len as isize),
                            q.at(b, h, t0),
                            (q.strides[2], q.strides[3]),
                            1.0,
                        );
                    }
                }
            }
        });
}
