//! `y = x W^T` for f32, f16 and bf16 weights multiplied where they lie, converted in registers:
//! the float counterpart of [`super::qdot`]'s integer kernels, with the same interleaved layout.
//!
//! **Why not widen and call `gemm`.** The widened path ([`super::packed`]) converts each panel of 64
//! weight rows to f32 in a buffer and hands it to a single-threaded `gemm`, for every product: at
//! a 32-position window (Fast-dLLM's dual cache) that is one conversion, written and read back,
//! per 32 multiply-adds, and the half-precision weights ran slower than the same model's dense
//! f32 ones (docs/benchmarks.md, "Float weights in registers"). Here the weights are
//! interleaved once, 16 rows to a register (their bytes unchanged in number), and a register of
//! 16 rows is loaded and widened once per 8 activation rows: 8 x 2 fused multiply-adds per two
//! loads, the activations broadcast from their rows as they are (no packing).
//!
//! **The same bits on every path.** Each output is one chain of fused multiply-adds over the
//! inputs in order, `acc = fma(w[c], x[c], acc)` from `acc = 0`, `w[c]` the stored value widened
//! exactly; a SIMD lane computes its row's chain, the portable kernel the same chain with
//! [`f32::mul_add`] (a fused, correctly rounded operation on every target). So the portable, AVX2
//! and AVX-512 kernels give the same bits, a row's result never depends on the rows beside it or
//! on the batch, and the split into tasks (fixed sizes) never changes a value.
//!
//! Written here rather than taken from a crate because the products must be exact to that fixed
//! order on every path and read the weights in their stored type.

use rayon::prelude::*;

use super::attention::Shared;
use super::qdot::{self, Path};
use crate::packed::PackedMatrix;
use crate::quant::GgmlType;
use crate::QuantizedProduct;

/// Values of one row a group's interleaved unit holds ([`super::qdot`]'s groups of 16 rows): a
/// matrix whose rows are not whole units is multiplied row by row.
pub(super) const UNIT: usize = 32;
/// Output rows of one interleaved group (an AVX-512 register of f32).
const LANES: usize = 16;
/// Weight rows per task: two groups (the AVX-512 kernel's 2 x 8 accumulators).
const TASK_ROWS: usize = 2 * LANES;
/// Activation rows per kernel call (and 4, then 1, for the rows after the last 8).
const ROWS: usize = 8;

/// Whether `dtype` is a float type these kernels multiply.
pub fn supports(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
}

/// The float kernels this process runs ([`crate::quantized_product`]): `None` where float
/// weights are widened instead (asked for, or a CPU without AVX2, FMA and F16C).
pub fn path() -> Option<Path> {
    match crate::quantized_product() {
        QuantizedProduct::Widened => None,
        QuantizedProduct::Portable => Some(Path::Portable),
        QuantizedProduct::Integer | QuantizedProduct::Float => {
            Some(kernel_path(qdot::fastest())).filter(|&p| p != Path::Portable)
        }
    }
}

/// Whether the CPU has SIMD float kernels (AVX2, FMA and F16C, or AVX-512 besides).
pub fn has_kernels() -> bool {
    kernel_path(qdot::fastest()) != Path::Portable
}

/// Whether this process interleaves float matrices (a SIMD path runs, see [`path`]).
pub(super) fn interleaves() -> bool {
    path().is_some_and(|p| p != Path::Portable)
}

/// The float kernels `path` runs on this CPU (F16C is needed besides AVX2 or AVX-512).
fn kernel_path(path: Path) -> Path {
    #[cfg(target_arch = "x86_64")]
    if path != Path::Portable
        && qdot::available().contains(&path)
        && std::arch::is_x86_feature_detected!("f16c")
    {
        return path;
    }
    let _ = path;
    Path::Portable
}

/// Writes 32 stored values of one row (`block`) into lane `l` of their interleaved unit: value `v`
/// of lane `l` at `(16 v + l) SIZE`, so a group's values of input `c` are 16 consecutive ones.
pub(super) fn fill<const SIZE: usize>(block: &[u8], l: usize, out: &mut [u8]) {
    for (v, value) in block.chunks_exact(SIZE).enumerate() {
        let at = (LANES * v + l) * SIZE;
        out[at..at + SIZE].copy_from_slice(value);
    }
}

/// The inverse of [`fill`].
pub(super) fn unfill<const SIZE: usize>(unit: &[u8], l: usize, block: &mut [u8]) {
    for (v, value) in block.chunks_exact_mut(SIZE).enumerate() {
        let at = (LANES * v + l) * SIZE;
        value.copy_from_slice(&unit[at..at + SIZE]);
    }
}

/// `x` (`[m, w.cols()]` row-major) times `w^T`, `[m, w.rows()]`; `None` when `w` is not a float
/// type ([`supports`]) or no kernel path runs ([`path`]: the widened `gemm` path then).
///
/// # Panics
/// If `x` does not hold `m * w.cols()` values.
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix) -> Option<Vec<f32>> {
    matmul_on(path()?, x, m, w)
}

/// [`matmul`] on the kernels of `path` (a path the CPU lacks runs the portable kernel).
pub fn matmul_on(path: Path, x: &[f32], m: usize, w: &PackedMatrix) -> Option<Vec<f32>> {
    let dtype = w.dtype();
    if !supports(dtype) {
        return None;
    }
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "float matmul: x is not [{m}, {k}]");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Some(y);
    }
    let path = kernel_path(path);
    let whole = n / LANES * LANES;
    let interleaved = (path != Path::Portable && whole > 0 && k.is_multiple_of(UNIT))
        .then(|| w.repacked(whole, qdot::interleave_float));
    let out = Shared(y.as_mut_ptr());
    (0..n.div_ceil(TASK_ROWS)).into_par_iter().for_each(|task| {
        let rows = task * TASK_ROWS..((task + 1) * TASK_ROWS).min(n);
        let write = |i: usize, r: usize, v: f32| {
            // SAFETY: `y` is `[m, n]`; this task alone writes column `r` (its rows are disjoint
            // from every other task's) and `i < m`.
            unsafe { *out.get().add(i * n + r) = v }
        };
        let mut first = rows.start;
        if let Some(packed) = interleaved.as_deref() {
            let groups = (rows.end.min(whole).saturating_sub(rows.start)) / LANES;
            if groups > 0 {
                let size = k * LANES * dtype.block().1;
                let at = rows.start / LANES * size;
                let packed = &packed[at..at + groups * size];
                simd(path, dtype, packed, groups, x, m, k, |i, l, v| {
                    write(i, rows.start + l, v)
                });
                first += groups * LANES;
            }
        }
        let mut wide = vec![0f32; k];
        for r in first..rows.end {
            w.rows_f32(r..r + 1, &mut wide);
            for i in 0..m {
                write(i, r, chain(&wide, &x[i * k..(i + 1) * k]));
            }
        }
    });
    Some(y)
}

/// One output: `acc = fma(w[c], x[c], acc)` over `c` in order from 0 (the portable kernel).
fn chain(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0f32, |acc, (w, x)| w.mul_add(*x, acc))
}

/// `groups` (1 or 2) interleaved groups of `k` inputs against every row of `x`, each output
/// `(row i, lane l)` given to `store`.
#[allow(clippy::too_many_arguments)]
fn simd(
    path: Path,
    dtype: GgmlType,
    packed: &[u8],
    groups: usize,
    x: &[f32],
    m: usize,
    k: usize,
    mut store: impl FnMut(usize, usize, f32),
) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut i = 0;
        for rows in [ROWS, 4, 1] {
            while i + rows <= m {
                let xs = &x[i * k..(i + rows) * k];
                let got = match path {
                    // SAFETY: these paths are chosen only where the CPU has their features
                    // (`kernel_path`); `packed` holds `groups` groups of `k` inputs of `dtype`,
                    // `xs` `rows` rows of `k`.
                    Path::Avx512 | Path::Avx512Vnni => unsafe {
                        avx512::run(dtype, packed, groups, xs, rows, k)
                    },
                    _ => unsafe { avx2::run(dtype, packed, groups, xs, rows, k) },
                };
                for (t, row) in got.chunks_exact(groups * LANES).enumerate() {
                    for (l, &v) in row.iter().enumerate() {
                        store(i + t, l, v);
                    }
                }
                i += rows;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, dtype, packed, groups, x, m, k, &mut store);
        unreachable!("the float kernels interleave only on x86_64");
    }
}

/// The interleaved value of lane `l`, input `c` (bytes `size` each), widened: the portable
/// reading of the layout, for the tests.
#[cfg(test)]
fn lane_value(dtype: GgmlType, packed: &[u8], k: usize, l: usize, c: usize) -> f32 {
    let size = dtype.block().1;
    let at = (c * LANES + l) * size;
    let _ = k;
    let b = &packed[at..at + size];
    match dtype {
        GgmlType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        _ => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GgmlType, LANES};

    /// 16 stored values widened to f32.
    trait Widen {
        const SIZE: usize;
        unsafe fn load(p: *const u8) -> __m512;
    }
    struct F32;
    struct F16;
    struct Bf16;
    impl Widen for F32 {
        const SIZE: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512 {
            // SAFETY: callers pass 64 readable bytes.
            unsafe { _mm512_loadu_ps(p as *const f32) }
        }
    }
    impl Widen for F16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512 {
            // SAFETY: callers pass 32 readable bytes.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
        }
    }
    impl Widen for Bf16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512 {
            // SAFETY: callers pass 32 readable bytes; a bf16 is the high half of its f32.
            unsafe {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
            }
        }
    }

    /// `rows` activation rows (`x`, `[rows, k]`) against `groups` interleaved groups: `[rows,
    /// groups * 16]`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW, AVX2, FMA and F16C; `packed` holds `groups` (1 or 2) groups
    /// of `k` inputs of `dtype`, `rows` is 8, 4 or 1.
    pub(super) unsafe fn run(
        dtype: GgmlType,
        packed: &[u8],
        groups: usize,
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<f32> {
        macro_rules! go {
            ($w:ty) => {
                // SAFETY: forwarded.
                unsafe {
                    match (groups, rows) {
                        (2, 8) => block::<$w, 2, 8>(packed, x, k),
                        (2, 4) => block::<$w, 2, 4>(packed, x, k),
                        (2, _) => block::<$w, 2, 1>(packed, x, k),
                        (_, 8) => block::<$w, 1, 8>(packed, x, k),
                        (_, 4) => block::<$w, 1, 4>(packed, x, k),
                        _ => block::<$w, 1, 1>(packed, x, k),
                    }
                }
            };
        }
        match dtype {
            GgmlType::F32 => go!(F32),
            GgmlType::F16 => go!(F16),
            _ => go!(Bf16),
        }
    }

    /// `R` rows against `V` groups: a lane's chain of fused multiply-adds over the inputs in
    /// order (the module's definition).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn block<W: Widen, const V: usize, const R: usize>(
        packed: &[u8],
        x: &[f32],
        k: usize,
    ) -> Vec<f32> {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let group = k * LANES * W::SIZE;
        let (wp, xp) = (packed.as_ptr(), x.as_ptr());
        // SAFETY: `packed` holds `V` groups of `k` inputs (`group` bytes each), `x` `R` rows of
        // `k` (the caller's contract); register operations otherwise.
        unsafe {
            for c in 0..k {
                let mut w = [_mm512_setzero_ps(); V];
                for (v, w) in w.iter_mut().enumerate() {
                    *w = W::load(wp.add(v * group + c * LANES * W::SIZE));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xp.add(r * k + c));
                    for v in 0..V {
                        acc[v] = _mm512_fmadd_ps(w[v], xb, acc[v]);
                    }
                }
            }
            let mut out = vec![0f32; R * V * LANES];
            for (r, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add((r * V + v) * LANES), *a);
                }
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GgmlType, LANES};

    /// 16 stored values widened to f32, as two registers of 8.
    trait Widen {
        const SIZE: usize;
        unsafe fn load(p: *const u8) -> [__m256; 2];
    }
    struct F32;
    struct F16;
    struct Bf16;
    impl Widen for F32 {
        const SIZE: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> [__m256; 2] {
            // SAFETY: callers pass 64 readable bytes.
            unsafe {
                let p = p as *const f32;
                [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
            }
        }
    }
    impl Widen for F16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> [__m256; 2] {
            // SAFETY: callers pass 32 readable bytes.
            unsafe {
                let p = p as *const __m128i;
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(p)),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                ]
            }
        }
    }
    impl Widen for Bf16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> [__m256; 2] {
            // SAFETY: callers pass 32 readable bytes; a bf16 is the high half of its f32.
            unsafe {
                let p = p as *const __m128i;
                let wide =
                    |h| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
                [wide(_mm_loadu_si128(p)), wide(_mm_loadu_si128(p.add(1)))]
            }
        }
    }

    /// [`super::avx512::run`] on AVX2 (one group at a time, 4 rows at most).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `packed` holds `groups` groups of `k` inputs of `dtype`.
    pub(super) unsafe fn run(
        dtype: GgmlType,
        packed: &[u8],
        groups: usize,
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<f32> {
        let group = k * LANES * dtype.block().1;
        let mut out = vec![0f32; rows * groups * LANES];
        let mut i = 0;
        while i < rows {
            let take = if rows - i >= 4 { 4 } else { 1 };
            let xs = &x[i * k..(i + take) * k];
            for g in 0..groups {
                let one = &packed[g * group..(g + 1) * group];
                macro_rules! go {
                    ($w:ty) => {
                        // SAFETY: forwarded.
                        unsafe {
                            if take == 4 {
                                block::<$w, 4>(one, xs, k)
                            } else {
                                block::<$w, 1>(one, xs, k)
                            }
                        }
                    };
                }
                let got = match dtype {
                    GgmlType::F32 => go!(F32),
                    GgmlType::F16 => go!(F16),
                    _ => go!(Bf16),
                };
                for t in 0..take {
                    let at = (i + t) * groups * LANES + g * LANES;
                    out[at..at + LANES].copy_from_slice(&got[t * LANES..(t + 1) * LANES]);
                }
            }
            i += take;
        }
        out
    }

    /// `R` rows against one group (the module's chains, 8 lanes a register).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<W: Widen, const R: usize>(packed: &[u8], x: &[f32], k: usize) -> Vec<f32> {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (wp, xp) = (packed.as_ptr(), x.as_ptr());
        // SAFETY: `packed` holds one group of `k` inputs, `x` `R` rows of `k` (the caller's
        // contract); register operations otherwise.
        unsafe {
            for c in 0..k {
                let w = W::load(wp.add(c * LANES * W::SIZE));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm256_set1_ps(*xp.add(r * k + c));
                    acc[0] = _mm256_fmadd_ps(w[0], xb, acc[0]);
                    acc[1] = _mm256_fmadd_ps(w[1], xb, acc[1]);
                }
            }
            let mut out = vec![0f32; R * LANES];
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(r * LANES), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(r * LANES + 8), acc[1]);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::Bf16];

    /// 13 activation rows (8, 4 and 1), 53 weight rows (a task of two groups, one of a group and
    /// five rows after it), 96 inputs (three units).
    fn case(dtype: GgmlType, seed: u64) -> (Vec<f32>, usize, PackedMatrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (m, n, k) = (13, 53, 96);
        let mut w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        w[5] = 0.0;
        w[k + 7] = 3.0e-6; // below f16's normal range: widened exactly all the same
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        (x, m, PackedMatrix::quantize(dtype, n, k, &w).unwrap())
    }

    #[test]
    fn every_path_gives_the_bits_of_the_chain_of_fused_multiply_adds() {
        for (seed, dtype) in TYPES.into_iter().enumerate() {
            let (x, m, w) = case(dtype, seed as u64);
            let (n, k) = (w.rows(), w.cols());
            let wide = w.to_f32();
            let want: Vec<u32> = (0..m * n)
                .map(|o| {
                    let (i, r) = (o / n, o % n);
                    chain(&wide[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]).to_bits()
                })
                .collect();
            for path in qdot::available() {
                let got = matmul_on(path, &x, m, &w).unwrap();
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{} on {path:?}", dtype.name());
                // a row alone gives its bits in the batch
                let alone = matmul_on(path, &x[3 * k..4 * k], 1, &w).unwrap();
                assert!(alone
                    .iter()
                    .zip(&want[3 * n..4 * n])
                    .all(|(a, b)| a.to_bits() == *b));
            }
            // and the products are the f64 ones to f32 rounding
            for (o, got) in want.iter().enumerate() {
                let (i, r) = (o / n, o % n);
                let exact: f64 = (0..k)
                    .map(|c| wide[r * k + c] as f64 * x[i * k + c] as f64)
                    .sum();
                assert!((f32::from_bits(*got) as f64 - exact).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn the_interleaved_layout_holds_each_value_once_and_rebuilds_the_stored_bytes() {
        for (seed, dtype) in TYPES.into_iter().enumerate() {
            let (_, _, w) = case(dtype, 10 + seed as u64);
            let (n, k) = (w.rows(), w.cols());
            let packed = qdot::interleave_float(&w);
            assert_eq!(packed.len(), n / LANES * LANES * w.row_bytes());
            let wide = w.to_f32();
            for g in 0..n / LANES {
                let size = k * LANES * dtype.block().1;
                let group = &packed[g * size..(g + 1) * size];
                for l in 0..LANES {
                    for c in 0..k {
                        let v = lane_value(dtype, group, k, l, c);
                        assert_eq!(v.to_bits(), wide[(g * LANES + l) * k + c].to_bits());
                    }
                }
            }
            let rebuilt = qdot::deinterleave_float(dtype, &packed, k);
            assert_eq!(rebuilt, w.bytes()[..rebuilt.len()]);
        }
    }
}
