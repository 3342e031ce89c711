//! `y = x W^T` at the weights' precision: GGUF's quantized weights (Q8_0, Q4_K, Q5_K, Q6_K)
//! multiplied by integer dot products against activations quantized per block, as llama.cpp does
//! (its `vec_dot_type`: Q8_0 activations for Q8_0 weights, Q8_K for the k-quants).
//!
//! **Activations.** Each row of `x` is quantized once per product: to Q8_0 as llama.cpp's AVX2
//! `quantize_row_q8_0` (`d = max |x| / 127` stored as f16, `q = round-half-even(x 127 / max |x|)`),
//! or to Q8_K as its `quantize_row_q8_K_ref` (`d = max / -127` of the value of largest magnitude,
//! `q = min(127, nearest(x / d))`); the sums of every 16 and 32 quantized values are kept for the
//! minimums and offsets. A row's quantization depends on that row alone.
//!
//! **Kernels.** With AVX-512 VNNI, Q8_0, Q4_K and Q6_K matrices are interleaved once (on load,
//! [`compact`], for matrices whose bytes are their own; on their first product,
//! [`PackedMatrix::repacked`], for those read in place from a file) 16 rows to a register: one `dpbusd` multiplies 4
//! values of 16 output rows by 4 activations broadcast, and each lane ends as its row's result, with
//! no horizontal sums. Row-by-row kernels (AVX-512 BW, AVX2's `maddubs` + `madd`, portable) take
//! the other CPUs, Q5_K, and the rows after the last whole group of 16.
//!
//! **Exactness and the same bits on every path.** Inside a block every product and sum is an
//! integer, computed exactly (the bounds are in each kernel's comment); the floats are then
//! combined in one fixed order that every path shares:
//! - Q8_0: a block's exact sum of products `S`, `acc = fma(S, dw dx, acc)` per block in order;
//! - Q4_K, Q5_K: a super-block's scaled products `S` and minimums term `M` are exact integers,
//!   then `acc = fma(S, d dx, acc)`, `acc = fma(M, -(dmin dx), acc)` per super-block in order
//!   (what a lane of the interleaved kernel computes for its row);
//! - Q6_K: a super-block's exact total `T` (levels times activations less 32 times their sums,
//!   each 16 values times their scale), `acc = fma(T, d dx, acc)` per super-block in order.
//!
//! So the portable kernels (plain Rust, any CPU) give the bits of the SIMD ones, a row's result
//! never depends on the rows beside it (a batch row equals the row alone), nor on the threads
//! (each output is one task's, in one order). [`crate::set_quantized_product`] chooses the
//! portable path, or no integer products at all (weights widened to f32, [`super::packed`]).
//!
//! Written here rather than taken from a crate because the result must be exact to a fixed order
//! on every path; llama.cpp's `ggml-cpu` kernels (read, not copied) are the definition of the
//! formats and of the activation quantization.

use half::f16;
use rayon::prelude::*;

use super::attention::Shared;
use super::fdot;
use crate::packed::PackedMatrix;
use crate::quant::{GgmlType, QK_K};
use crate::QuantizedProduct;

/// Activation rows a kernel call multiplies against one weight row (they share its unpacking).
const GROUP: usize = 4;
/// Weight rows per task (any split gives the same bits: each output is one dot product); a task
/// is one interleaved group where the weights are interleaved.
const TASK_ROWS: usize = LANES;
/// Output rows of one interleaved group: the i32 lanes of an AVX-512 register.
const LANES: usize = 16;

/// Bytes of one interleaved block (Q8_0) or super-block of [`LANES`] rows.
/// - Q8_0: the 16 rows' `d` (f32), then per quad `g < 8` 64 bytes: row `l`'s values `4 g ..+4`
///   plus 128 (unsigned) at bytes `4 l ..+4`.
/// - Q4_K: the 16 rows' `d` and `dmin` (f32), their 8 scales and 8 minimums (a byte per row), then
///   per sub-block `j` of 32 values and quad `g < 4` 64 bytes: row `l`'s values `32 j + 4 g ..+4`
///   in the low nibbles of bytes `4 l ..+4`, its values `32 j + 16 + 4 g ..+4` in the high ones.
/// - Q6_K: the 16 rows' `d` (f32), their 16 scales (a byte per row per 16 values), then per 16
///   values `t` and quad `g < 4` 64 bytes: row `l`'s levels of values `16 t + 4 g ..+4` at bytes
///   `4 l ..+4`.
/// - f32, f16, bf16 ([`super::fdot`]): per unit of 32 values, value `v` of row `l` at
///   `(16 v + l) size`.
const fn interleaved_block(dtype: GgmlType) -> usize {
    match dtype {
        GgmlType::F32 => 4 * fdot::UNIT * LANES,
        GgmlType::F16 | GgmlType::Bf16 => 2 * fdot::UNIT * LANES,
        GgmlType::Q8_0 => 4 * LANES + 8 * 64,
        GgmlType::Q6K => 4 * LANES + 16 * LANES + 16 * 4 * 64,
        _ => 2 * 4 * LANES + 2 * 8 * LANES + 8 * 4 * 64,
    }
}

/// Bytes per weight value of the interleaved copy this process holds of a `dtype` matrix in place
/// of its stored bytes ([`compact`] on load, or on the first product of a matrix read in place
/// from a mapped file, whose stored pages are then freed), or `None` where it makes none: the
/// memory check counts it.
pub fn interleaved_bytes_per_value(dtype: GgmlType) -> Option<f64> {
    let interleaves = matches!(dtype, GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K)
        && path() == Some(Path::Avx512Vnni);
    interleaves.then(|| interleaved_block(dtype) as f64 / (LANES * dtype.block().0) as f64)
}

/// Bytes of one interleaved group of [`LANES`] rows of `k` values.
fn interleaved_bytes(dtype: GgmlType, k: usize) -> usize {
    k / unit(dtype).0 * interleaved_block(dtype)
}

/// The values and stored bytes of one row's part of an interleaved block: a block or
/// super-block of a quantized type, 32 values of a float type.
fn unit(dtype: GgmlType) -> (usize, usize) {
    if fdot::supports(dtype) {
        (fdot::UNIT, fdot::UNIT * dtype.block().1)
    } else {
        dtype.block()
    }
}

/// A float matrix's whole groups interleaved ([`interleaved_block`]), for [`super::fdot`].
pub(super) fn interleave_float(w: &PackedMatrix) -> Vec<u8> {
    interleave(w, float_fill(w.dtype()))
}

/// The fill of a float type's interleaved units.
fn float_fill(dtype: GgmlType) -> Fill {
    if dtype == GgmlType::F32 {
        fdot::fill::<4>
    } else {
        fdot::fill::<2>
    }
}

/// The stored rows of a float matrix's interleaved groups ([`interleave_float`]).
pub(super) fn deinterleave_float(dtype: GgmlType, packed: &[u8], cols: usize) -> Vec<u8> {
    if dtype == GgmlType::F32 {
        deinterleave(dtype, packed, cols, fdot::unfill::<4>)
    } else {
        deinterleave(dtype, packed, cols, fdot::unfill::<2>)
    }
}

fn deinterleave_f32(packed: &[u8], cols: usize) -> Vec<u8> {
    deinterleave_float(GgmlType::F32, packed, cols)
}

/// f16 and bf16 alike: two bytes a value.
fn deinterleave_half(packed: &[u8], cols: usize) -> Vec<u8> {
    deinterleave_float(GgmlType::F16, packed, cols)
}

/// Writes one row's stored block (or super-block) into lane `l` of its group's interleaved one.
type Fill = fn(&[u8], usize, &mut [u8]);

/// Q8_0's blocks interleaved ([`interleaved_block`]).
fn interleave_q8_0(w: &PackedMatrix) -> Vec<u8> {
    interleave(w, fill_q8_0)
}

fn fill_q8_0(block: &[u8], l: usize, out: &mut [u8]) {
    out[4 * l..4 * l + 4].copy_from_slice(&half(block, 0).to_le_bytes());
    for (v, &q) in block[2..34].iter().enumerate() {
        out[64 + 64 * (v / 4) + 4 * l + v % 4] = q ^ 0x80;
    }
}

/// The whole groups of [`LANES`] rows of `w` interleaved, `fill(block, lane, out)` writing one
/// row's super-block into its group's interleaved super-block (the rows after the last whole
/// group stay in the matrix's own layout).
fn interleave(w: &PackedMatrix, fill: Fill) -> Vec<u8> {
    let (k, row_bytes, bytes) = (w.cols(), w.row_bytes(), w.bytes());
    let groups = w.rows() / LANES;
    let mut out = vec![0u8; groups * interleaved_bytes(w.dtype(), k)];
    out.par_chunks_mut(interleaved_bytes(w.dtype(), k).max(1))
        .enumerate()
        .for_each(|(g, out)| {
            let rows = &bytes[g * LANES * row_bytes..(g + 1) * LANES * row_bytes];
            interleave_group(w.dtype(), rows, out, fill);
        });
    out
}

/// One group: [`LANES`] stored rows (row-major, `rows`) into their interleaved bytes `out`.
fn interleave_group(dtype: GgmlType, rows: &[u8], out: &mut [u8], fill: Fill) {
    let (stored, size) = (unit(dtype).1, interleaved_block(dtype));
    let row_bytes = rows.len() / LANES;
    for (b, out) in out.chunks_mut(size).enumerate() {
        for l in 0..LANES {
            let row = l * row_bytes;
            fill(&rows[row + stored * b..row + stored * (b + 1)], l, out);
        }
    }
}

/// Q6_K's super-blocks interleaved ([`interleaved_block`]).
fn interleave_q6_k(w: &PackedMatrix) -> Vec<u8> {
    interleave(w, fill_q6_k)
}

fn fill_q6_k(block: &[u8], l: usize, out: &mut [u8]) {
    let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
    out[4 * l..4 * l + 4].copy_from_slice(&half(block, 208).to_le_bytes());
    for t in 0..16 {
        out[64 + 16 * t + l] = scales[t];
    }
    for v in 0..QK_K {
        let (c, g, i) = (v / 128, v % 128 / 32, v % 32);
        let byte = ql[64 * c + i + 32 * (g % 2)];
        let low = if g < 2 { byte & 0x0f } else { byte >> 4 };
        let level = low | (((qh[32 * c + i] >> (2 * g)) & 3) << 4);
        out[320 + 256 * (v / 16) + 64 * (v % 16 / 4) + 4 * l + v % 4] = level;
    }
}

/// Q4_K's super-blocks interleaved ([`interleaved_block`]).
fn interleave_q4_k(w: &PackedMatrix) -> Vec<u8> {
    interleave(w, fill_q4_k)
}

fn fill_q4_k(block: &[u8], l: usize, out: &mut [u8]) {
    let (d, dmin) = (half(block, 0), half(block, 2));
    out[4 * l..4 * l + 4].copy_from_slice(&d.to_le_bytes());
    out[64 + 4 * l..64 + 4 * l + 4].copy_from_slice(&dmin.to_le_bytes());
    let (sc, mn) = scales_mins(&block[4..16]);
    for j in 0..8 {
        out[128 + 16 * j + l] = sc[j];
        out[256 + 16 * j + l] = mn[j];
    }
    // the level of value `v` (< 32) of sub-block `j`
    let level = |j: usize, v: usize| (block[16 + 32 * (j / 2) + v] >> (4 * (j % 2))) & 0x0f;
    for j in 0..8 {
        for q in 0..4 {
            for t in 0..4 {
                out[384 + 256 * j + 64 * q + 4 * l + t] =
                    level(j, 4 * q + t) | (level(j, 16 + 4 * q + t) << 4);
            }
        }
    }
}

/// The inverse of [`interleave`]: the row-major stored bytes of the `16 g` rows of `packed`
/// (`g` whole interleaved groups of `cols` values), `unfill(interleaved, lane, block)` writing one
/// row's stored super-block (zeroed) from its group's interleaved one.
fn deinterleave(
    dtype: GgmlType,
    packed: &[u8],
    cols: usize,
    unfill: impl Fn(&[u8], usize, &mut [u8]) + Sync,
) -> Vec<u8> {
    let (stored, size) = (unit(dtype).1, interleaved_block(dtype));
    let group = interleaved_bytes(dtype, cols).max(1);
    let row_bytes = cols / unit(dtype).0 * stored;
    let mut out = vec![0u8; packed.len() / group * LANES * row_bytes];
    out.par_chunks_mut((LANES * row_bytes).max(1))
        .zip(packed.par_chunks(group))
        .for_each(|(rows, packed)| {
            for (b, packed) in packed.chunks(size).enumerate() {
                for l in 0..LANES {
                    let at = l * row_bytes + stored * b;
                    unfill(packed, l, &mut rows[at..at + stored]);
                }
            }
        });
    out
}

/// The f32 at byte `at` of `b`, back to the f16 it was widened from (exact).
fn narrow(b: &[u8], at: usize) -> [u8; 2] {
    let v = f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// Q8_0's blocks from their interleaved copy ([`interleave_q8_0`]).
fn deinterleave_q8_0(packed: &[u8], cols: usize) -> Vec<u8> {
    deinterleave(GgmlType::Q8_0, packed, cols, |group, l, block| {
        block[0..2].copy_from_slice(&narrow(group, 4 * l));
        for v in 0..32 {
            block[2 + v] = group[64 + 64 * (v / 4) + 4 * l + v % 4] ^ 0x80;
        }
    })
}

/// Q6_K's super-blocks from their interleaved copy ([`interleave_q6_k`]).
fn deinterleave_q6_k(packed: &[u8], cols: usize) -> Vec<u8> {
    deinterleave(GgmlType::Q6K, packed, cols, |group, l, block| {
        block[208..210].copy_from_slice(&narrow(group, 4 * l));
        for t in 0..16 {
            block[192 + t] = group[64 + 16 * t + l];
        }
        for v in 0..QK_K {
            let level = group[320 + 256 * (v / 16) + 64 * (v % 16 / 4) + 4 * l + v % 4];
            let (c, g, i) = (v / 128, v % 128 / 32, v % 32);
            block[64 * c + i + 32 * (g % 2)] |= (level & 0x0f) << if g < 2 { 0 } else { 4 };
            block[128 + 32 * c + i] |= ((level >> 4) & 3) << (2 * g);
        }
    })
}

/// Q4_K's super-blocks from their interleaved copy ([`interleave_q4_k`]).
fn deinterleave_q4_k(packed: &[u8], cols: usize) -> Vec<u8> {
    deinterleave(GgmlType::Q4K, packed, cols, |group, l, block| {
        block[0..2].copy_from_slice(&narrow(group, 4 * l));
        block[2..4].copy_from_slice(&narrow(group, 64 + 4 * l));
        let sc: [u8; 8] = std::array::from_fn(|j| group[128 + 16 * j + l]);
        let mn: [u8; 8] = std::array::from_fn(|j| group[256 + 16 * j + l]);
        // the six-bit packing [`scales_mins`] reads
        for j in 0..4 {
            block[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            block[8 + j] = mn[j] | ((mn[j + 4] >> 4) << 6);
            block[12 + j] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
        }
        for j in 0..8 {
            for q in 0..4 {
                for t in 0..4 {
                    let byte = group[384 + 256 * j + 64 * q + 4 * l + t];
                    let shift = 4 * (j % 2);
                    block[16 + 32 * (j / 2) + 4 * q + t] |= (byte & 0x0f) << shift;
                    block[16 + 32 * (j / 2) + 16 + 4 * q + t] |= (byte >> 4) << shift;
                }
            }
        }
    })
}

/// `w` as this process's integer kernels will multiply it for as long as it lives: where they
/// interleave its type (AVX-512 VNNI; Q8_0, Q4_K, Q6_K), its whole groups of 16 rows are
/// interleaved now and their stored bytes dropped ([`PackedMatrix::compacted`]: rebuilt exactly if
/// ever read), so a matrix quantized, stacked or reordered on load is held once rather than beside
/// its copy. Others are returned as they are (one read in place from a mapped file frees its
/// stored pages on its first product instead).
pub fn compact(w: PackedMatrix) -> PackedMatrix {
    let Some((fill, unpack)) = interleaving(w.dtype(), w.cols()).filter(|_| w.rows() >= LANES)
    else {
        return w;
    };
    let (whole, cols) = (w.rows() / LANES * LANES, w.cols());
    w.compacted(whole, |w| interleave(w, fill), move |p| unpack(p, cols))
}

/// Rebuilds a matrix's stored rows from its interleaved copy (`cols` values a row).
type Unpack = fn(&[u8], usize) -> Vec<u8>;

/// How this process interleaves `dtype` matrices of `cols` values a row, if it does (AVX-512
/// VNNI's integer kernels; the float kernels of [`super::fdot`] on any SIMD path, rows of whole
/// units).
fn interleaving(dtype: GgmlType, cols: usize) -> Option<(Fill, Unpack)> {
    if fdot::supports(dtype) {
        let half = (float_fill(dtype), deinterleave_half as Unpack);
        let whole = fdot::interleaves() && cols.is_multiple_of(fdot::UNIT);
        return whole.then_some(match dtype {
            GgmlType::F32 => (float_fill(dtype), deinterleave_f32 as Unpack),
            _ => half,
        });
    }
    if path() != Some(Path::Avx512Vnni) {
        return None;
    }
    match dtype {
        GgmlType::Q4K => Some((fill_q4_k as Fill, deinterleave_q4_k as Unpack)),
        GgmlType::Q6K => Some((fill_q6_k, deinterleave_q6_k)),
        GgmlType::Q8_0 => Some((fill_q8_0, deinterleave_q8_0)),
        _ => None,
    }
}

/// `w` (any stored type) quantized to `dtype` straight into the layout [`compact`] gives: each
/// group of 16 rows widened, quantized and interleaved on its own (in parallel; a group's bytes
/// depend on its rows alone), so neither an f32 copy nor a stored copy of the whole matrix is
/// ever held, and a mapped source frees its pages group by group as
/// [`PackedMatrix::requantize`] does. The same bytes and products as
/// `compact(w.requantize(dtype))`; `None` where this process does not interleave `dtype` (then
/// requantize, and keep the result as it is).
pub fn requantize_interleaved(
    w: &PackedMatrix,
    dtype: GgmlType,
) -> Option<Result<PackedMatrix, String>> {
    let (fill, unpack) = interleaving(dtype, w.cols()).filter(|_| w.rows() >= LANES)?;
    Some(interleaved_from(w, dtype, fill, unpack))
}

/// [`requantize_interleaved`] with the layout given.
fn interleaved_from(
    w: &PackedMatrix,
    dtype: GgmlType,
    fill: Fill,
    unpack: Unpack,
) -> Result<PackedMatrix, String> {
    // a task: 16 groups (256 rows), whose source pages are freed together once read
    const GROUPS: usize = 16;
    let (rows, cols) = (w.rows(), w.cols());
    let whole = rows / LANES * LANES;
    let group = interleaved_bytes(dtype, cols).max(1);
    let mut packed = vec![0u8; whole / LANES * group];
    packed
        .par_chunks_mut(GROUPS * group)
        .enumerate()
        .try_for_each(|(task, out)| {
            let first = task * GROUPS * LANES;
            for (g, out) in out.chunks_mut(group).enumerate() {
                let at = first + g * LANES;
                let stored = w.quantized_rows(dtype, at..at + LANES)?;
                interleave_group(dtype, &stored, out, fill);
            }
            w.release_rows(first..first + out.len() / group * LANES);
            Ok::<_, String>(())
        })?;
    let tail = w.quantized_rows(dtype, whole..rows)?;
    w.release_rows(whole..rows);
    PackedMatrix::from_repacked(dtype, rows, cols, packed, whole, tail, move |p| {
        unpack(p, cols)
    })
}

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain Rust for any CPU.
    Portable,
    /// AVX2 + FMA (x86_64, chosen at run time).
    Avx2,
    /// AVX-512 F + BW (x86_64, chosen at run time).
    Avx512,
    /// AVX-512 F + BW with VNNI's 8-bit dot products (x86_64, chosen at run time).
    Avx512Vnni,
}

/// The integer kernels this process runs ([`crate::quantized_product`]): `None` where quantized
/// weights are widened instead (asked for, or a CPU without VNNI, where f32 `gemm` is faster
/// than the row-by-row integer loops).
pub fn path() -> Option<Path> {
    match crate::quantized_product() {
        QuantizedProduct::Widened | QuantizedProduct::Float => None,
        QuantizedProduct::Portable => Some(Path::Portable),
        QuantizedProduct::Integer => Some(fastest()).filter(|&p| p != Path::Portable),
    }
}

/// The fastest kernels the CPU has.
pub fn fastest() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni") {
            return Path::Avx512Vnni;
        }
        if has_avx512() {
            return Path::Avx512;
        }
        if super::vector::has_avx2_fma() {
            return Path::Avx2;
        }
    }
    Path::Portable
}

/// Whether the CPU has AVX-512 F and BW (and AVX2 + FMA, which every such CPU has).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && super::vector::has_avx2_fma()
}

/// Every path this CPU can run, the portable one first.
pub fn available() -> Vec<Path> {
    let mut paths = vec![Path::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if super::vector::has_avx2_fma() {
            paths.push(Path::Avx2);
        }
        if has_avx512() {
            paths.push(Path::Avx512);
            if std::arch::is_x86_feature_detected!("avx512vnni") {
                paths.push(Path::Avx512Vnni);
            }
        }
    }
    paths
}

/// Whether [`matmul`] multiplies weights of `dtype` by integer dot products.
pub fn supports(dtype: GgmlType) -> bool {
    matches!(
        dtype,
        GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Activation rows quantized per block: `qs` `[m, k]`, `d` one scale per block, `sums` the sum of
/// every 16 quantized values (Q8_K only).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    /// Values per block: 32 (Q8_0) or 256 (Q8_K).
    pub block: usize,
    /// Values per row.
    pub k: usize,
    /// The quantized values, row-major.
    pub qs: Vec<i8>,
    /// One scale per block, row-major.
    pub d: Vec<f32>,
    /// Sums of 16 consecutive quantized values (empty for Q8_0).
    pub sums: Vec<i32>,
    /// Sums of 32 consecutive quantized values.
    pub sums32: Vec<i32>,
}

impl QuantizedRows {
    fn row<'a>(&'a self, i: usize) -> Row<'a> {
        let blocks = self.k / self.block;
        let part = |v: &'a [i32], per: usize| {
            if v.is_empty() {
                v
            } else {
                &v[i * self.k / per..(i + 1) * self.k / per]
            }
        };
        Row {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            d: &self.d[i * blocks..(i + 1) * blocks],
            sums: part(&self.sums, 16),
            sums32: part(&self.sums32, 32),
        }
    }
}

/// One quantized activation row.
#[derive(Clone, Copy)]
struct Row<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    sums: &'a [i32],
    sums32: &'a [i32],
}

/// `m` rows of `k` values (`k` a multiple of 32) as Q8_0.
pub fn quantize_q8_0(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let mut qs = vec![0i8; m * k];
    let mut d = vec![0f32; m * k / 32];
    let mut sums32 = vec![0i32; m * k / 32];
    qs.par_chunks_mut(k)
        .zip(d.par_chunks_mut(k / 32))
        .zip(sums32.par_chunks_mut(k / 32))
        .zip(x.par_chunks(k))
        .for_each(|(((qs, d), sums), x)| {
            for (((q, d), sum), x) in qs.chunks_mut(32).zip(d).zip(sums).zip(x.chunks(32)) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                *d = f16::from_f32(amax / 127.0).to_f32();
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
                }
                *sum = q.iter().map(|&v| v as i32).sum();
            }
        });
    QuantizedRows {
        block: 32,
        k,
        qs,
        d,
        sums: Vec::new(),
        sums32,
    }
}

/// `m` rows of `k` values (`k` a multiple of 256) as Q8_K.
pub fn quantize_q8_k(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let mut qs = vec![0i8; m * k];
    let mut d = vec![0f32; m * k / QK_K];
    let mut sums = vec![0i32; m * k / 16];
    qs.par_chunks_mut(k)
        .zip(d.par_chunks_mut(k / QK_K))
        .zip(sums.par_chunks_mut(k / 16))
        .zip(x.par_chunks(k))
        .for_each(|(((qs, d), sums), x)| {
            for (((q, d), sums), x) in qs
                .chunks_mut(QK_K)
                .zip(d)
                .zip(sums.chunks_mut(QK_K / 16))
                .zip(x.chunks(QK_K))
            {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                if amax == 0.0 {
                    *d = 0.0;
                    q.fill(0);
                    sums.fill(0);
                    continue;
                }
                let iscale = -127.0 / max;
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = nearest_int(iscale * v).clamp(-127, 127) as i8;
                }
                for (s, q) in sums.iter_mut().zip(q.chunks(16)) {
                    *s = q.iter().map(|&v| v as i32).sum();
                }
                *d = 1.0 / iscale;
            }
        });
    let sums32 = sums.chunks(2).map(|p| p[0] + p[1]).collect();
    QuantizedRows {
        block: QK_K,
        k,
        qs,
        d,
        sums,
        sums32,
    }
}

/// llama.cpp's `nearest_int`: round half to even through the float's mantissa (`|v| < 2^22`).
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The activations `x` (`[m, w.cols()]`) quantized for `w`'s type.
pub fn quantize_for(dtype: GgmlType, x: &[f32], m: usize, k: usize) -> QuantizedRows {
    if dtype == GgmlType::Q8_0 {
        quantize_q8_0(x, m, k)
    } else {
        quantize_q8_k(x, m, k)
    }
}

/// `x` (`[m, w.cols()]` row-major) times `w^T`, `[m, w.rows()]`, by integer dot products; `None`
/// when `w`'s type has no integer kernel ([`supports`]) or no integer path runs ([`path`]).
///
/// # Panics
/// If `x` does not hold `m * w.cols()` values.
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix) -> Option<Vec<f32>> {
    matmul_on(path()?, x, m, w)
}

/// [`matmul`] on the kernels of `path` (a path the CPU lacks runs the portable kernels).
pub fn matmul_on(path: Path, x: &[f32], m: usize, w: &PackedMatrix) -> Option<Vec<f32>> {
    let dtype = w.dtype();
    if !supports(dtype) {
        return None;
    }
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "quantized matmul: x is not [{m}, {k}]");
    let acts = quantize_for(dtype, x, m, k);
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Some(y);
    }
    let out = Shared(y.as_mut_ptr());
    let path = if available().contains(&path) {
        path
    } else {
        Path::Portable
    };
    // Q4_K on VNNI: groups of 16 rows interleaved once per matrix, one output row per lane
    #[cfg(target_arch = "x86_64")]
    let interleaved = (path == Path::Avx512Vnni && n >= LANES)
        .then(|| {
            // the whole groups: their rows are read from the copy alone from now on
            let whole = n / LANES * LANES;
            match dtype {
                GgmlType::Q4K => Some(w.repacked(whole, interleave_q4_k)),
                GgmlType::Q6K => Some(w.repacked(whole, interleave_q6_k)),
                GgmlType::Q8_0 => Some(w.repacked(whole, interleave_q8_0)),
                _ => None,
            }
        })
        .flatten();
    (0..n.div_ceil(TASK_ROWS)).into_par_iter().for_each(|task| {
        let rows = task * TASK_ROWS..((task + 1) * TASK_ROWS).min(n);
        let write = |i: usize, r: usize, v: f32| {
            // SAFETY: `y` is `[m, n]`; this task alone writes column `r` (its rows are disjoint
            // from every other task's) and `i < m`.
            unsafe { *out.get().add(i * n + r) = v }
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = interleaved.as_deref().filter(|_| rows.len() == LANES) {
            let size = interleaved_bytes(dtype, k);
            let group = &packed[task * size..(task + 1) * size];
            let store = |i: usize, v: [f32; LANES]| {
                for (l, v) in v.into_iter().enumerate() {
                    write(i, rows.start + l, v);
                }
            };
            let mut i = 0;
            while i + GROUP <= m {
                let x: [Row; GROUP] = std::array::from_fn(|t| acts.row(i + t));
                // SAFETY: `Path::Avx512Vnni` only where the CPU has it; `group` is one
                // interleaved group of `k` columns.
                let v = unsafe { avx512::interleaved(dtype, group, &x) };
                for (t, v) in v.into_iter().enumerate() {
                    store(i + t, v);
                }
                i += GROUP;
            }
            for i in i..m {
                // SAFETY: as above.
                let [v] = unsafe { avx512::interleaved(dtype, group, &[acts.row(i)]) };
                store(i, v);
            }
            return;
        }
        let mut i = 0;
        while i + GROUP <= m {
            let group: [Row; GROUP] = std::array::from_fn(|t| acts.row(i + t));
            for r in rows.clone() {
                let v = dot(path, dtype, w.stored_rows(r..r + 1), &group);
                for (t, v) in v.into_iter().enumerate() {
                    write(i + t, r, v);
                }
            }
            i += GROUP;
        }
        for i in i..m {
            let one = [acts.row(i)];
            for r in rows.clone() {
                let [v] = dot(path, dtype, w.stored_rows(r..r + 1), &one);
                write(i, r, v);
            }
        }
    });
    Some(y)
}

/// One weight row (whole blocks of `dtype`) against `R` activation rows.
fn dot<const R: usize>(path: Path, dtype: GgmlType, w: &[u8], x: &[Row; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512 || path == Path::Avx512Vnni {
        // SAFETY: `Path::Avx512` is chosen only where the CPU has AVX-512 F and BW, and
        // `Avx512Vnni` where it has VNNI too; the row lengths agree (whole blocks of one width,
        // checked by the callers' construction).
        return unsafe {
            match dtype {
                // one block of 32 per instruction is AVX2's kernel
                GgmlType::Q8_0 => avx2::q8_0(w, x),
                GgmlType::Q4K => avx512::q4_k(w, x),
                GgmlType::Q5K => avx512::q5_k(w, x),
                _ => avx512::q6_k(w, x),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx2 {
        // SAFETY: `Path::Avx2` is chosen only where the CPU has AVX2 and FMA; the row lengths
        // agree (whole blocks of one width, checked by the callers' construction).
        return unsafe {
            match dtype {
                GgmlType::Q8_0 => avx2::q8_0(w, x),
                GgmlType::Q4K => avx2::q4_k(w, x),
                GgmlType::Q5K => avx2::q5_k(w, x),
                _ => avx2::q6_k(w, x),
            }
        };
    }
    let _ = path;
    match dtype {
        GgmlType::Q8_0 => portable::q8_0(w, x),
        GgmlType::Q4K => portable::q4_k(w, x),
        GgmlType::Q5K => portable::q5_k(w, x),
        _ => portable::q6_k(w, x),
    }
}

/// The f16 at byte `at` of `b`, as f32.
#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The six-bit scales and minimums of a Q4_K / Q5_K super-block's 12 scale bytes.
#[inline(always)]
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// The float steps of a Q4_K / Q5_K super-block for one row, on every path: its exact integer
/// totals `s` (scaled products, under 2^25) and `m` (minimums times activation sums, under 2^21),
/// `acc = fma(s, d dx, acc)` then `acc = fma(m, -(dmin dx), acc)`.
#[inline(always)]
fn k4_step(acc: f32, s: i32, m: i32, d: f32, dmin: f32, dx: f32) -> f32 {
    let acc = (s as f32).mul_add(d * dx, acc);
    (m as f32).mul_add(-(dmin * dx), acc)
}

/// `sum_i mn[i] * sums32[i]`: a Q4_K / Q5_K super-block's minimums term (exact).
#[inline(always)]
fn mins_total(mn: &[u8; 8], sums32: &[i32]) -> i32 {
    (0..8).map(|i| mn[i] as i32 * sums32[i]).sum()
}

/// The float step of a Q6_K super-block for one row, on every path: its exact integer total (the
/// levels times the activations less 32 times their sums, each 16 times its scale: under 2^29),
/// `acc = fma(total, d dx, acc)`.
#[inline(always)]
fn q6_step(acc: f32, total: i32, d: f32, dx: f32) -> f32 {
    (total as f32).mul_add(d * dx, acc)
}

/// Q6_K's offsets of one super-block: scale `t` times the sum of activations `16 t ..`, at most
/// 128 x 16 x 127 (each then times `-32 d dx`).
#[inline(always)]
fn offset_lanes(scales: &[u8], sums16: &[i32]) -> [i32; 16] {
    std::array::from_fn(|t| scales[t] as i8 as i32 * sums16[t])
}

/// The float step of a Q8_0 block for one row, on every path: its exact sum of products (at
/// most 32 x 128 x 127), `acc = fma(sum, dw dx, acc)`.
#[inline(always)]
fn q8_step(acc: f32, sum: i32, dw: f32, dx: f32) -> f32 {
    (sum as f32).mul_add(dw * dx, acc)
}

/// The plain Rust kernels (any CPU); the same bits as [`avx2`].
mod portable {
    use super::*;

    pub(super) fn q8_0<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let mut acc = [0f32; R];
        for (b, block) in w.chunks_exact(34).enumerate() {
            let dw = half(block, 0);
            let qw = &block[2..34];
            for (r, row) in x.iter().enumerate() {
                let qx = &row.qs[32 * b..32 * b + 32];
                let s: i32 = qw
                    .iter()
                    .zip(qx)
                    .map(|(&w, &x)| w as i8 as i32 * x as i32)
                    .sum();
                acc[r] = q8_step(acc[r], s, dw, row.d[b]);
            }
        }
        acc
    }

    /// Lane `l < 8` holds values `64 j + 4 l ..+4` (low nibbles), lane `8 + l` values
    /// `64 j + 32 + 4 l ..+4` (high nibbles), each times its sub-block's scale, over `j < 4`.
    fn k4_lanes(q: impl Fn(usize, usize) -> u8, sc: &[u8; 8], qx: &[i8]) -> [i32; 16] {
        let mut s = [0i32; 16];
        for j in 0..4 {
            for l in 0..8 {
                let (mut lo, mut hi) = (0i32, 0i32);
                for t in 0..4 {
                    let i = 4 * l + t;
                    lo += q(j, i) as i32 * qx[64 * j + i] as i32;
                    hi += q(j, 32 + i) as i32 * qx[64 * j + 32 + i] as i32;
                }
                s[l] += sc[2 * j] as i32 * lo;
                s[8 + l] += sc[2 * j + 1] as i32 * hi;
            }
        }
        s
    }

    /// Q4_K / Q5_K: `bytes` per super-block, `value(block, j, i)` the level of value `64 j + i`.
    fn k4<const R: usize>(
        w: &[u8],
        x: &[Row; R],
        bytes: usize,
        value: impl Fn(&[u8], usize, usize) -> u8,
    ) -> [f32; R] {
        let mut acc = [0f32; R];
        for (b, block) in w.chunks_exact(bytes).enumerate() {
            let (d, dmin) = (half(block, 0), half(block, 2));
            let (sc, mn) = scales_mins(&block[4..16]);
            for (r, row) in x.iter().enumerate() {
                let qx = &row.qs[QK_K * b..QK_K * (b + 1)];
                let s: i32 = k4_lanes(|j, i| value(block, j, i), &sc, qx).iter().sum();
                let m = mins_total(&mn, &row.sums32[8 * b..8 * b + 8]);
                acc[r] = k4_step(acc[r], s, m, d, dmin, row.d[b]);
            }
        }
        acc
    }

    pub(super) fn q4_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        k4(w, x, 144, |block, j, i| {
            let q = block[16 + 32 * j + i % 32];
            if i < 32 {
                q & 0x0f
            } else {
                q >> 4
            }
        })
    }

    pub(super) fn q5_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        k4(w, x, 176, |block, j, i| {
            let (l, high) = (i % 32, i / 32);
            let q = block[48 + 32 * j + l];
            let nibble = if high == 0 { q & 0x0f } else { q >> 4 };
            nibble | (((block[16 + l] >> (2 * j + high)) & 1) << 4)
        })
    }

    pub(super) fn q6_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let mut acc = [0f32; R];
        for (b, block) in w.chunks_exact(210).enumerate() {
            let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
            let d = half(block, 208);
            let level = |index: usize| {
                let (c, g, l) = (index / 128, index % 128 / 32, index % 32);
                let byte = ql[64 * c + l + 32 * (g % 2)];
                let low = if g < 2 { byte & 0x0f } else { byte >> 4 };
                low | (((qh[32 * c + l] >> (2 * g)) & 3) << 4)
            };
            for (r, row) in x.iter().enumerate() {
                let qx = &row.qs[QK_K * b..QK_K * (b + 1)];
                let mut s = [0i32; 16];
                for chunk in 0..4 {
                    for (l, lane) in s.iter_mut().enumerate() {
                        let at = 64 * chunk + 4 * l;
                        let part: i32 = (at..at + 4).map(|i| level(i) as i32 * qx[i] as i32).sum();
                        *lane += scales[at / 16] as i8 as i32 * part;
                    }
                }
                let offsets: i32 = offset_lanes(scales, &row.sums[16 * b..16 * b + 16])
                    .iter()
                    .sum();
                let total = s.iter().sum::<i32>() - 32 * offsets;
                acc[r] = q6_step(acc[r], total, d, row.d[b]);
            }
        }
        acc
    }
}

/// The AVX2 kernels: `maddubs` (unsigned 8-bit weights or their absolute values times signed 8-bit
/// activations, pairs summed into 16 bits) then `madd` (pairs into 32 bits); every bound is below
/// the type's range, so the integers are exact.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: callers pass 32 readable bytes.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    /// Per block: `|w|` times `x` with `w`'s sign (`sign_epi8`), pairs (at most 2 x 128 x 127)
    /// then quads into eight i32 lanes, added into the block's exact sum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q8_0<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let mut acc = [0f32; R];
        let ones = _mm256_set1_epi16(1);
        for (b, block) in w.chunks_exact(34).enumerate() {
            let dw = half(block, 0);
            // SAFETY: a block holds 2 + 32 bytes.
            let qw = unsafe { load(block.as_ptr().add(2)) };
            let aw = _mm256_sign_epi8(qw, qw);
            for r in 0..R {
                let row = &x[r];
                // SAFETY: the row holds `32 (b + 1)` values; register operations.
                let s = unsafe {
                    let qx = load(row.qs.as_ptr().add(32 * b) as *const u8);
                    hsum_i32(_mm256_madd_epi16(
                        _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw)),
                        ones,
                    ))
                };
                acc[r] = q8_step(acc[r], s, dw, row.d[b]);
            }
        }
        acc
    }

    /// The 8 lanes of an i32 vector added (exact).
    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        // SAFETY: register operations (AVX2 is enabled by the callers).
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
            _mm_cvtsi128_si32(s)
        }
    }

    /// Q4_K / Q5_K for `R` rows: `levels(j)` the 64 levels of values `64 j ..` as two registers
    /// (low nibbles, high nibbles). Nibbles (at most 31) times values (pairs at most
    /// 2 x 31 x 128), times the six-bit scale: each lane under 4 x 4 x 31 x 128 x 63 < 2^24.
    #[inline(always)]
    unsafe fn k4<const R: usize>(
        w: &[u8],
        x: &[Row; R],
        bytes: usize,
        levels: impl Fn(&[u8], usize) -> (__m256i, __m256i),
    ) -> [f32; R] {
        // SAFETY: register operations and loads within the rows (AVX2 enabled by the callers).
        unsafe {
            let mut acc = [0f32; R];
            for (b, block) in w.chunks_exact(bytes).enumerate() {
                let (d, dmin) = (half(block, 0), half(block, 2));
                let (sc, mn) = scales_mins(&block[4..16]);
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for j in 0..4 {
                    let (q_lo, q_hi) = levels(block, j);
                    let s_lo = _mm256_set1_epi16(sc[2 * j] as i16);
                    let s_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
                    for r in 0..R {
                        let at = x[r].qs.as_ptr().add(QK_K * b + 64 * j) as *const u8;
                        let (x_lo, x_hi) = (load(at), load(at.add(32)));
                        let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(q_lo, x_lo), s_lo);
                        let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(q_hi, x_hi), s_hi);
                        lo[r] = _mm256_add_epi32(lo[r], p_lo);
                        hi[r] = _mm256_add_epi32(hi[r], p_hi);
                    }
                }
                for r in 0..R {
                    let s = hsum_i32(_mm256_add_epi32(lo[r], hi[r]));
                    let m = mins_total(&mn, &x[r].sums32[8 * b..8 * b + 8]);
                    acc[r] = k4_step(acc[r], s, m, d, dmin, x[r].d[b]);
                }
            }
            acc
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm256_set1_epi8(0x0f);
        // SAFETY: AVX2 is enabled; each block holds its 128 value bytes at 16.
        unsafe {
            k4(w, x, 144, |block, j| {
                let q = load(block.as_ptr().add(16 + 32 * j));
                (
                    _mm256_and_si256(q, low),
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                )
            })
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q5_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm256_set1_epi8(0x0f);
        let bit = _mm256_set1_epi8(1);
        // SAFETY: AVX2 is enabled; each block holds 32 high-bit bytes at 16, values at 48.
        unsafe {
            k4(w, x, 176, |block, j| {
                let qh = load(block.as_ptr().add(16));
                let q = load(block.as_ptr().add(48 + 32 * j));
                let h_lo =
                    _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32)), bit);
                let h_hi = _mm256_and_si256(
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32 + 1)),
                    bit,
                );
                (
                    _mm256_or_si256(_mm256_and_si256(q, low), _mm256_slli_epi16(h_lo, 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                        _mm256_slli_epi16(h_hi, 4),
                    ),
                )
            })
        }
    }

    /// Six-bit levels (at most 63: pairs at most 2 x 63 x 128) times a signed 8-bit scale per 16
    /// values: each lane under 4 x 4 x 63 x 127 x 128 < 2^24 (activations are within +-127).
    /// Groups `g` of 32 values: even ones on the low lanes, odd ones on the high lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q6_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm256_set1_epi8(0x0f);
        let two = _mm256_set1_epi8(3);
        // SAFETY: loads within each 210-byte block and within the rows; register operations.
        unsafe {
            let mut acc = [0f32; R];
            for (b, block) in w.chunks_exact(210).enumerate() {
                let scales = &block[192..208];
                let d = half(block, 208);
                let sc_lo =
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales.as_ptr() as *const __m128i));
                let sc_hi =
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales.as_ptr().add(8) as *const __m128i));
                let mut lanes = [[_mm256_setzero_si256(); 2]; R];
                for c in 0..2 {
                    let ql_a = load(block.as_ptr().add(64 * c));
                    let ql_b = load(block.as_ptr().add(64 * c + 32));
                    let qh = load(block.as_ptr().add(128 + 32 * c));
                    let highs = [
                        qh,
                        _mm256_srli_epi16(qh, 2),
                        _mm256_srli_epi16(qh, 4),
                        _mm256_srli_epi16(qh, 6),
                    ];
                    let lows = [
                        _mm256_and_si256(ql_a, low),
                        _mm256_and_si256(ql_b, low),
                        _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), low),
                        _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), low),
                    ];
                    for g in 0..4 {
                        let q = _mm256_or_si256(
                            lows[g],
                            _mm256_slli_epi16(_mm256_and_si256(highs[g], two), 4),
                        );
                        let t = 8 * c + 2 * g;
                        let s = _mm256_set_m128i(
                            _mm_set1_epi16(scales[t + 1] as i8 as i16),
                            _mm_set1_epi16(scales[t] as i8 as i16),
                        );
                        for r in 0..R {
                            let at = x[r].qs.as_ptr().add(QK_K * b + 128 * c + 32 * g);
                            let p = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(q, load(at as *const u8)),
                                s,
                            );
                            lanes[r][g % 2] = _mm256_add_epi32(lanes[r][g % 2], p);
                        }
                    }
                }
                for r in 0..R {
                    let sums = x[r].sums[16 * b..16 * b + 16].as_ptr() as *const u8;
                    let aux_lo = _mm256_mullo_epi32(sc_lo, load(sums));
                    let aux_hi = _mm256_mullo_epi32(sc_hi, load(sums.add(32)));
                    let products = hsum_i32(_mm256_add_epi32(lanes[r][0], lanes[r][1]));
                    let offsets = hsum_i32(_mm256_add_epi32(aux_lo, aux_hi));
                    acc[r] = q6_step(acc[r], products - 32 * offsets, d, x[r].d[b]);
                }
            }
            acc
        }
    }
}

/// The AVX-512 kernels: AVX2's with 64 values per instruction (two Q8_0 blocks, or a k-quant's
/// two sub-blocks of 32 side by side); the same integers, the same float steps.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline(always)]
    unsafe fn load256(p: *const u8) -> __m256i {
        // SAFETY: callers pass 32 readable bytes.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    #[inline(always)]
    unsafe fn load512(p: *const i8) -> __m512i {
        // SAFETY: callers pass 64 readable bytes.
        unsafe { _mm512_loadu_si512(p as *const __m512i) }
    }

    /// `lo` in the low 256 bits, `hi` in the high.
    #[inline(always)]
    unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
        // SAFETY: register operations (AVX-512 F is enabled by the callers).
        unsafe { _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1) }
    }

    /// Scales `a` for the low 256 bits, `b` for the high, as i16.
    #[inline(always)]
    unsafe fn scales2(a: i16, b: i16) -> __m512i {
        // SAFETY: register operations.
        unsafe { join(_mm256_set1_epi16(a), _mm256_set1_epi16(b)) }
    }

    /// Q4_K / Q5_K: `levels(j)` the 64 levels of values `64 j ..` (low nibbles on the low half,
    /// high nibbles on the high half); the bounds of [`super::avx2::q5_k`].
    #[inline(always)]
    unsafe fn k4<const R: usize>(
        w: &[u8],
        x: &[Row; R],
        bytes: usize,
        levels: impl Fn(&[u8], usize) -> __m512i,
    ) -> [f32; R] {
        // SAFETY: register operations and loads within the rows (AVX-512 enabled by the callers).
        unsafe {
            let mut acc = [0f32; R];
            for (b, block) in w.chunks_exact(bytes).enumerate() {
                let (d, dmin) = (half(block, 0), half(block, 2));
                let (sc, mn) = scales_mins(&block[4..16]);
                let mut sums = [_mm512_setzero_si512(); R];
                for j in 0..4 {
                    let q = levels(block, j);
                    let s = scales2(sc[2 * j] as i16, sc[2 * j + 1] as i16);
                    for r in 0..R {
                        let xv = load512(x[r].qs.as_ptr().add(QK_K * b + 64 * j));
                        let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, xv), s);
                        sums[r] = _mm512_add_epi32(sums[r], p);
                    }
                }
                for r in 0..R {
                    let s = _mm512_reduce_add_epi32(sums[r]);
                    let m = mins_total(&mn, &x[r].sums32[8 * b..8 * b + 8]);
                    acc[r] = k4_step(acc[r], s, m, d, dmin, x[r].d[b]);
                }
            }
            acc
        }
    }

    /// The interleaved kernel of `dtype` ([`super::interleaved_block`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn interleaved<const R: usize>(
        dtype: GgmlType,
        group: &[u8],
        x: &[Row; R],
    ) -> [[f32; LANES]; R] {
        // SAFETY: forwarded (VNNI enabled, `group` one interleaved group of `dtype`).
        unsafe {
            match dtype {
                GgmlType::Q8_0 => q8_0_interleaved(group, x),
                GgmlType::Q6K => q6_k_interleaved(group, x),
                _ => q4_k_interleaved(group, x),
            }
        }
    }

    /// Q8_0 on weights interleaved by [`super::interleave_q8_0`]: `dpbusd` of the weights plus 128
    /// (unsigned) by the row's 4 activations broadcast, started at `-128` times the block's sum
    /// of activations: the lane's exact sum of [`super::q8_step`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q8_0_interleaved<const R: usize>(group: &[u8], x: &[Row; R]) -> [[f32; LANES]; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        // SAFETY: loads within the group and within the rows; register operations.
        unsafe {
            for (b, block) in group
                .chunks_exact(interleaved_block(GgmlType::Q8_0))
                .enumerate()
            {
                let base = block.as_ptr();
                let d = _mm512_loadu_ps(base as *const f32);
                let quads: [__m512i; 8] = std::array::from_fn(|q| {
                    _mm512_loadu_si512(base.add(64 + 64 * q) as *const __m512i)
                });
                for r in 0..R {
                    let at = x[r].qs.as_ptr().add(32 * b);
                    let mut p = _mm512_set1_epi32(-128 * x[r].sums32[b]);
                    for (q, quad) in quads.iter().enumerate() {
                        let xv = _mm512_set1_epi32((at.add(4 * q) as *const i32).read_unaligned());
                        p = _mm512_dpbusd_epi32(p, *quad, xv);
                    }
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(x[r].d[b]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[r]);
                }
            }
            acc.map(|a| {
                let mut out = [0f32; LANES];
                _mm512_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }

    /// Q6_K on weights interleaved by [`super::interleave_q6_k`]: per 16 values, `dpbusd` of the
    /// 64-byte quads (levels below 64) by the row's 4 activations broadcast, less 32 times their
    /// sum, times the lane's scale: the lane's exact total of [`super::q6_step`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q6_k_interleaved<const R: usize>(group: &[u8], x: &[Row; R]) -> [[f32; LANES]; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        // SAFETY: loads within the group and within the rows; register operations.
        unsafe {
            for (b, block) in group
                .chunks_exact(interleaved_block(GgmlType::Q6K))
                .enumerate()
            {
                let base = block.as_ptr();
                let d = _mm512_loadu_ps(base as *const f32);
                let mut totals = [_mm512_setzero_si512(); R];
                for t in 0..16 {
                    let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                        base.add(64 + 16 * t) as *const __m128i
                    ));
                    let quads: [__m512i; 4] = std::array::from_fn(|q| {
                        _mm512_loadu_si512(base.add(320 + 256 * t + 64 * q) as *const __m512i)
                    });
                    for r in 0..R {
                        let at = x[r].qs.as_ptr().add(QK_K * b + 16 * t);
                        let mut p = _mm512_set1_epi32(-32 * x[r].sums[16 * b + t]);
                        for (q, quad) in quads.iter().enumerate() {
                            let xv =
                                _mm512_set1_epi32((at.add(4 * q) as *const i32).read_unaligned());
                            p = _mm512_dpbusd_epi32(p, *quad, xv);
                        }
                        totals[r] = _mm512_add_epi32(totals[r], _mm512_mullo_epi32(p, sc));
                    }
                }
                for r in 0..R {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(x[r].d[b]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(totals[r]), scale, acc[r]);
                }
            }
            acc.map(|a| {
                let mut out = [0f32; LANES];
                _mm512_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }

    /// Q4_K on weights interleaved by [`super::interleave_q4_k`]: lane `l` is output row `l` of
    /// the group; per sub-block, `dpbusd` of the 64-byte quads (unsigned levels) by the row's 4
    /// activations broadcast, times the lane's scale; minimums likewise. The lane's totals are the
    /// exact `S` and `M` of [`super::k4_step`], and its float steps are the same.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q4_k_interleaved<const R: usize>(group: &[u8], x: &[Row; R]) -> [[f32; LANES]; R] {
        let per_block = interleaved_block(GgmlType::Q4K);
        let low = _mm512_set1_epi8(0x0f);
        let sign = _mm512_set1_epi32(i32::MIN);
        let mut acc = [_mm512_setzero_ps(); R];
        // SAFETY: loads within the group (`per_block` bytes per super-block) and within the
        // rows (whole super-blocks of values, their sums); register operations.
        unsafe {
            for (b, block) in group.chunks_exact(per_block).enumerate() {
                let base = block.as_ptr();
                let d = _mm512_loadu_ps(base as *const f32);
                let dmin = _mm512_loadu_ps(base.add(64) as *const f32);
                let mut totals = [_mm512_setzero_si512(); R];
                let mut mins = [_mm512_setzero_si512(); R];
                for j in 0..8 {
                    let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        base.add(128 + 16 * j) as *const __m128i
                    ));
                    let mn = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        base.add(256 + 16 * j) as *const __m128i
                    ));
                    let mut products = [_mm512_setzero_si512(); R];
                    for q in 0..4 {
                        let v =
                            _mm512_loadu_si512(base.add(384 + 256 * j + 64 * q) as *const __m512i);
                        let lo = _mm512_and_si512(v, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                        for r in 0..R {
                            let at = x[r].qs.as_ptr().add(QK_K * b + 32 * j + 4 * q);
                            let x_lo = _mm512_set1_epi32((at as *const i32).read_unaligned());
                            let x_hi =
                                _mm512_set1_epi32((at.add(16) as *const i32).read_unaligned());
                            products[r] = _mm512_dpbusd_epi32(products[r], lo, x_lo);
                            products[r] = _mm512_dpbusd_epi32(products[r], hi, x_hi);
                        }
                    }
                    for r in 0..R {
                        totals[r] =
                            _mm512_add_epi32(totals[r], _mm512_mullo_epi32(products[r], sc));
                        let sum = _mm512_set1_epi32(x[r].sums32[8 * b + j]);
                        mins[r] = _mm512_add_epi32(mins[r], _mm512_mullo_epi32(mn, sum));
                    }
                }
                for r in 0..R {
                    let dx = _mm512_set1_ps(x[r].d[b]);
                    let scale = _mm512_mul_ps(d, dx);
                    let neg_min = _mm512_castsi512_ps(_mm512_xor_si512(
                        _mm512_castps_si512(_mm512_mul_ps(dmin, dx)),
                        sign,
                    ));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(totals[r]), scale, acc[r]);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins[r]), neg_min, acc[r]);
                }
            }
            acc.map(|a| {
                let mut out = [0f32; LANES];
                _mm512_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn q4_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm512_set1_epi8(0x0f);
        // SAFETY: AVX-512 is enabled; each block holds its 128 value bytes at 16.
        unsafe {
            k4(w, x, 144, |block, j| {
                let q = load256(block.as_ptr().add(16 + 32 * j));
                _mm512_and_si512(join(q, _mm256_srli_epi16(q, 4)), low)
            })
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn q5_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm512_set1_epi8(0x0f);
        let bit = _mm512_set1_epi8(1);
        // SAFETY: AVX-512 is enabled; each block holds 32 high-bit bytes at 16, values at 48.
        unsafe {
            k4(w, x, 176, |block, j| {
                let qh = load256(block.as_ptr().add(16));
                let q = load256(block.as_ptr().add(48 + 32 * j));
                let nibbles = _mm512_and_si512(join(q, _mm256_srli_epi16(q, 4)), low);
                let h = join(
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32)),
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32 + 1)),
                );
                _mm512_or_si512(nibbles, _mm512_slli_epi16(_mm512_and_si512(h, bit), 4))
            })
        }
    }

    /// Groups 0 and 1 (then 2 and 3) of each 128 values side by side: 64 contiguous values, a
    /// scale per 16 (the bounds of [`super::avx2::q6_k`]).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn q6_k<const R: usize>(w: &[u8], x: &[Row; R]) -> [f32; R] {
        let low = _mm512_set1_epi8(0x0f);
        let two = _mm512_set1_epi8(3);
        // SAFETY: loads within each 210-byte block and within the rows; register operations.
        unsafe {
            let mut acc = [0f32; R];
            for (b, block) in w.chunks_exact(210).enumerate() {
                let scales = &block[192..208];
                let d = half(block, 208);
                let scale = |t: usize| _mm_set1_epi16(scales[t] as i8 as i16);
                let sc32 = _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.as_ptr() as *const __m128i));
                let mut sums = [_mm512_setzero_si512(); R];
                for c in 0..2 {
                    let ql_a = load256(block.as_ptr().add(64 * c));
                    let ql_b = load256(block.as_ptr().add(64 * c + 32));
                    let qh = load256(block.as_ptr().add(128 + 32 * c));
                    let ql = join(ql_a, ql_b);
                    let qh2 = join(qh, _mm256_srli_epi16(qh, 2));
                    let first = _mm512_or_si512(
                        _mm512_and_si512(ql, low),
                        _mm512_slli_epi16(_mm512_and_si512(qh2, two), 4),
                    );
                    let second = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), low),
                        _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh2, 4), two), 4),
                    );
                    for (half_, q) in [first, second].into_iter().enumerate() {
                        let t = 8 * c + 4 * half_;
                        let s = _mm512_castsi128_si512(scale(t));
                        let s = _mm512_inserti32x4(s, scale(t + 1), 1);
                        let s = _mm512_inserti32x4(s, scale(t + 2), 2);
                        let s = _mm512_inserti32x4(s, scale(t + 3), 3);
                        for r in 0..R {
                            let at = QK_K * b + 128 * c + 64 * half_;
                            let xv = load512(x[r].qs.as_ptr().add(at));
                            let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, xv), s);
                            sums[r] = _mm512_add_epi32(sums[r], p);
                        }
                    }
                }
                for r in 0..R {
                    let bsums = _mm512_loadu_si512(x[r].sums[16 * b..].as_ptr() as *const __m512i);
                    let offsets = _mm512_reduce_add_epi32(_mm512_mullo_epi32(sc32, bsums));
                    let products = _mm512_reduce_add_epi32(sums[r]);
                    acc[r] = q6_step(acc[r], products - 32 * offsets, d, x[r].d[b]);
                }
            }
            acc
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::quant;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    const TYPES: [GgmlType; 4] = [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

    /// 7 activation rows (a group of 4 and 3 alone), 37 weight rows (two tasks and a part), 512
    /// inputs (two super-blocks) or, for Q8_0, 19 blocks (an odd one after the pairs).
    fn case(dtype: GgmlType, seed: u64) -> (Vec<f32>, usize, PackedMatrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = if dtype == GgmlType::Q8_0 { 608 } else { 512 };
        let (m, n) = (7, 37);
        let mut w = random(n * k, &mut rng);
        // a row of zeros and a row with one large value: the quantizers' edge cases
        w[..k].fill(0.0);
        w[k + 3] = 40.0;
        let mut x = random(m * k, &mut rng);
        x[2 * k..3 * k].fill(0.0);
        x[k + 100] = -25.0;
        let mut q = quant::quantize(dtype, &w).unwrap_or_default();
        if dtype == GgmlType::Q5K || dtype == GgmlType::Q6K {
            // no quantizer here for these: random bytes with valid f16 scales
            q = (0..n * dtype.bytes_of(k as u64).unwrap() as usize)
                .map(|_| rng.random::<u8>())
                .collect();
            let block = dtype.block().1;
            let scale_at: &[usize] = if dtype == GgmlType::Q5K {
                &[0, 2]
            } else {
                &[208]
            };
            for b in q.chunks_mut(block) {
                for &at in scale_at {
                    let v = half::f16::from_f32(rng.random_range(0.001f32..0.01));
                    b[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
        }
        let len = q.len();
        let w = PackedMatrix::new(dtype, n, k, std::sync::Arc::new(q), 0..len).unwrap();
        (x, m, w)
    }

    /// What the integer kernels compute, in f64: the widened weights times the widened quantized
    /// activations.
    fn reference(x: &[f32], m: usize, w: &PackedMatrix) -> Vec<f64> {
        let (n, k) = (w.rows(), w.cols());
        let acts = quantize_for(w.dtype(), x, m, k);
        let wide = w.to_f32();
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            let row = acts.row(i);
            for r in 0..n {
                y[i * n + r] = (0..k)
                    .map(|c| {
                        let xv = row.qs[c] as f64 * row.d[c / acts.block] as f64;
                        wide[r * k + c] as f64 * xv
                    })
                    .sum();
            }
        }
        y
    }

    #[test]
    fn every_path_gives_the_same_bits_and_the_exact_products_value() {
        for (seed, dtype) in TYPES.into_iter().enumerate() {
            let (x, m, w) = case(dtype, seed as u64);
            let portable = matmul_on(Path::Portable, &x, m, &w).unwrap();
            let want = reference(&x, m, &w);
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            for (got, want) in portable.iter().zip(&want) {
                // only the float steps round: a few f32 ulps of the largest product
                assert!(
                    (*got as f64 - want).abs() <= 1e-5 * scale,
                    "{}: {got} against {want}",
                    dtype.name()
                );
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for path in available() {
                let fast = matmul_on(path, &x, m, &w).unwrap();
                assert_eq!(bits(&fast), bits(&portable), "{} {path:?}", dtype.name());
            }
        }
    }

    /// A matrix holding its whole groups in the interleaved copy alone multiplies to the same bits
    /// on every path, keeps only its last rows as stored until something reads the others, and
    /// then gives back exactly its stored bytes.
    #[test]
    fn a_compacted_matrix_gives_the_same_products_and_bytes_from_its_copy_alone() {
        let kinds: [(GgmlType, Fill, Unpack); 3] = [
            (GgmlType::Q8_0, fill_q8_0, deinterleave_q8_0),
            (GgmlType::Q4K, fill_q4_k, deinterleave_q4_k),
            (GgmlType::Q6K, fill_q6_k, deinterleave_q6_k),
        ];
        for (seed, (dtype, fill, unpack)) in kinds.into_iter().enumerate() {
            let (x, m, w) = case(dtype, 20 + seed as u64);
            let (n, k) = (w.rows(), w.cols());
            let stored = w.bytes().to_vec();
            let fresh = || {
                let bytes = std::sync::Arc::new(stored.clone());
                PackedMatrix::new(dtype, n, k, bytes, 0..stored.len()).unwrap()
            };
            let whole = n / LANES * LANES;
            let tail = (n - whole) * w.row_bytes();
            let compacted =
                fresh().compacted(whole, |w| interleave(w, fill), move |p| unpack(p, k));
            assert_eq!(compacted.stored_at(), None);
            assert_eq!(compacted.stored_bytes_held(), tail, "{}", dtype.name());
            // the interleaved path first: the row-by-row ones read the rebuilt rows
            for path in available().into_iter().rev() {
                let want = matmul_on(path, &x, m, &fresh()).unwrap();
                let got = matmul_on(path, &x, m, &compacted).unwrap();
                assert!(
                    want.iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} on {path:?}",
                    dtype.name()
                );
                if path == Path::Avx512Vnni {
                    // the copy and the stored tail serve every row: nothing rebuilt
                    assert_eq!(compacted.stored_bytes_held(), tail);
                }
            }
            assert_eq!(compacted.bytes(), &stored[..], "{} rebuilt", dtype.name());
            assert_eq!(compacted.stored_bytes_held(), tail + n * w.row_bytes());

            // converted on load straight into the copy: the bytes and products of requantizing
            // then compacting, from an f16 source
            // (no quantizer here for Q6_K)
            if dtype != GgmlType::Q6K {
                let src = PackedMatrix::quantize(GgmlType::F16, n, k, &w.to_f32()).unwrap();
                let direct = interleaved_from(&src, dtype, fill, unpack).unwrap();
                let via = src.requantize(dtype).unwrap();
                assert_eq!(direct.stored_bytes_held(), tail);
                for path in available().into_iter().rev() {
                    let want = matmul_on(path, &x, m, &via).unwrap();
                    let got = matmul_on(path, &x, m, &direct).unwrap();
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} converted, on {path:?}",
                        dtype.name()
                    );
                }
                assert_eq!(direct.bytes(), via.bytes(), "{} converted", dtype.name());
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_as_in_a_batch() {
        for (seed, dtype) in TYPES.into_iter().enumerate() {
            let (x, m, w) = case(dtype, 10 + seed as u64);
            let n = w.rows();
            let all = matmul_on(fastest(), &x, m, &w).unwrap();
            for i in 0..m {
                let k = w.cols();
                let alone = matmul_on(fastest(), &x[i * k..(i + 1) * k], 1, &w).unwrap();
                let row = &all[i * n..(i + 1) * n];
                assert!(
                    alone
                        .iter()
                        .zip(row)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} row {i}",
                    dtype.name()
                );
            }
        }
    }

    #[test]
    fn quantized_activations_stay_near_the_f32_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (m, n, k) = (5, 9, 768);
        let x = random(m * k, &mut rng);
        let w = random(n * k, &mut rng);
        for dtype in [GgmlType::Q8_0, GgmlType::Q4K] {
            let packed = PackedMatrix::quantize(dtype, n, k, &w).unwrap();
            let wide = packed.to_f32();
            let got = matmul_on(fastest(), &x, m, &packed).unwrap();
            for i in 0..m {
                for r in 0..n {
                    let exact: f32 = (0..k).map(|c| x[i * k + c] * wide[r * k + c]).sum();
                    // each activation off by at most half a step (max |x| / 254) per block
                    let bound: f32 =
                        (0..k).map(|c| wide[r * k + c].abs()).sum::<f32>() / 254.0 + 1e-4;
                    let err = (got[i * n + r] - exact).abs();
                    assert!(err <= bound, "{} [{i}, {r}]: {err} > {bound}", dtype.name());
                }
            }
        }
    }

    #[test]
    fn q8_k_scales_the_largest_magnitude_to_127() {
        let mut x = vec![0.5f32; 256];
        x[7] = -2.0;
        let q = quantize_q8_k(&x, 1, 256);
        assert_eq!(q.qs[7], -127);
        assert!((q.d[0] * q.qs[7] as f32 + 2.0).abs() < 1e-6);
        assert_eq!(q.sums[0], q.qs[..16].iter().map(|&v| v as i32).sum::<i32>());
        let zero = quantize_q8_k(&[0.0; 256], 1, 256);
        assert!(zero.qs.iter().all(|&v| v == 0) && zero.d[0] == 0.0);
    }
}
