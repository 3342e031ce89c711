//! `y = x W^T` with `W` a [`PackedMatrix`]: quantized weights by integer dot products against
//! quantized activations ([`super::qdot`]); f32, f16 and bf16 weights (and quantized types without
//! an integer kernel) with activations and accumulation in f32, as follows.
//!
//! The output features are split into panels of [`PANEL_ROWS`] rows (a constant: the split never
//! depends on the thread count); a task widens its panel's rows of `W` to f32 in a buffer of its
//! own (at most `PANEL_ROWS x cols` values, a few hundred KB) and multiplies `x` by it with one
//! single-threaded `gemm`, writing its own columns of `y`. Every output value is computed by one
//! task in one fixed order, so the bits never depend on the pool or the load; the widening costs
//! `rows x cols` conversions per product against `m x rows x cols` multiply-adds.

use rayon::prelude::*;

use super::attention::{gemm, Shared};
use crate::packed::PackedMatrix;
use crate::quant::GgmlType;

/// Output features per task.
pub const PANEL_ROWS: usize = 64;

/// `x` (`[m, w.cols()]` row-major) times `w^T`: `[m, w.rows()]` row-major.
///
/// # Panics
/// If `x` does not hold `m * w.cols()` values.
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix) -> Vec<f32> {
    if let Some(y) = super::qdot::matmul(x, m, w).or_else(|| super::fdot::matmul(x, m, w)) {
        return y;
    }
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "packed matmul: x is not [{m}, {k}]");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let out = Shared(y.as_mut_ptr());
    let panels = n.div_ceil(PANEL_ROWS);
    // f32 rows that lie aligned in memory (a GGUF file's map) are multiplied where they are
    let in_place = (w.dtype() == GgmlType::F32
        && (w.bytes().as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()))
    .then(|| Shared(w.bytes().as_ptr() as *mut f32));
    (0..panels)
        .into_par_iter()
        .for_each_init(Vec::new, |panel, p| {
            let rows = p * PANEL_ROWS..((p + 1) * PANEL_ROWS).min(n);
            let width = rows.len();
            let rhs = match in_place {
                // SAFETY: the bytes hold `n x k` aligned f32 values (checked above); rows
                // `rows` start at value `rows.start * k`, only read.
                Some(base) => unsafe { base.get().add(rows.start * k) as *const f32 },
                None => {
                    panel.resize(width * k, 0.0);
                    w.rows_f32(rows.clone(), panel);
                    panel.as_ptr()
                }
            };
            // SAFETY: `y` is `[m, n]`; this task writes only columns `rows` of it (the panels are
            // disjoint), `x` is `[m, k]` and `panel` is `[width, k]`, read as its transpose `[k, width]`.
            unsafe {
                gemm(
                    (m, width, k),
                    out.get().add(rows.start),
                    (n as isize, 1),
                    false,
                    x.as_ptr(),
                    (k as isize, 1),
                    rhs,
                    (1, k as isize),
                    1.0,
                );
            }
        });
    y
}
