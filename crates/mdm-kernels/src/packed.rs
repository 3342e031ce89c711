//! Weight matrices kept in the type they are stored in (f32, f16, bf16, or GGUF's quantized
//! blocks), for inference: [`PackedMatrix`] holds the bytes (owned, or borrowed in place from a
//! memory-mapped file) and [`crate::Kernels::linear_packed`] multiplies activations by it.
//!
//! On the CPU (burn-flex) the product never widens the whole matrix: [`crate::cpu::packed`]
//! widens a fixed panel of rows at a time into f32 and multiplies it with `gemm`, so the memory a
//! model takes is its weights at their stored precision. Other backends widen the matrix on the
//! device for each product (correct, not fast: they are meant to run dense tensors, see
//! [`crate::Kernels::PACKS_WEIGHTS`]).
//!
//! ```
//! use mdm_kernels::packed::PackedMatrix;
//! use mdm_kernels::quant::GgmlType;
//!
//! // [2 rows (outputs), 32 columns (inputs)] as Q8_0
//! let w: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 16.0).collect();
//! let q = PackedMatrix::quantize(GgmlType::Q8_0, 2, 32, &w).unwrap();
//! assert_eq!(q.memory_bytes(), 2 * 34);
//! let back = q.to_f32();
//! assert!(back.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.01));
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::quant::{self, GgmlType};

/// Where a packed matrix's bytes live.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Frees the memory behind a byte range of a matrix's [`SharedBytes`] once nothing reads it
/// (a memory map's `MADV_DONTNEED`: the pages are read back from the file if touched again).
pub type Release = Arc<dyn Fn(Range<usize>) + Send + Sync>;

/// A `[rows, cols]` weight matrix in PyTorch's layout (row `r` holds output feature `r`'s weights
/// over the inputs), each row a whole number of its type's blocks.
#[derive(Clone)]
pub struct PackedMatrix {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    bytes: SharedBytes,
    range: Range<usize>,
    /// The bytes in a kernel's layout, made on first use ([`Self::repacked`]), shared by clones.
    repacked: Arc<OnceLock<Arc<Vec<u8>>>>,
    /// How the stored bytes a repacked copy replaces are freed (mapped files).
    release: Option<Release>,
    /// Where the matrix holds its whole groups in the repacked copy alone ([`Self::compacted`]).
    compact: Option<Arc<Compact>>,
}

/// Rebuilds a matrix's stored rows from a kernel's repacked copy of them.
type Unpack = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// The row-major bytes of a matrix whose first `covered` rows are held only in a kernel's
/// repacked copy ([`PackedMatrix::compacted`]): the rows after them kept as stored, the others
/// rebuilt from the copy (`unpack`, exact: the copy is a rearrangement) on the first read that
/// needs them (export, a kernel that reads the stored layout), once.
struct Compact {
    repacked: Arc<Vec<u8>>,
    covered: usize,
    tail: Vec<u8>,
    unpack: Box<Unpack>,
    whole: OnceLock<Vec<u8>>,
}

impl AsRef<[u8]> for Compact {
    fn as_ref(&self) -> &[u8] {
        self.whole.get_or_init(|| {
            let mut bytes = (self.unpack)(&self.repacked);
            bytes.extend_from_slice(&self.tail);
            bytes
        })
    }
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PackedMatrix({} [{}, {}])",
            self.dtype.name(),
            self.rows,
            self.cols
        )
    }
}

impl PackedMatrix {
    /// The matrix whose bytes are `bytes.as_ref()[range]`, rows of `cols` values of `dtype`.
    /// Errors name what does not fit: a row that is not whole blocks, a range of the wrong length
    /// or outside the bytes.
    pub fn new(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: SharedBytes,
        range: Range<usize>,
    ) -> Result<Self, String> {
        let row = dtype.bytes_of(cols as u64)? as usize;
        let expected = row
            .checked_mul(rows)
            .ok_or_else(|| format!("[{rows}, {cols}] of {} overflows", dtype.name()))?;
        if range.len() != expected || range.end > (*bytes).as_ref().len() {
            return Err(format!(
                "[{rows}, {cols}] of {} needs {expected} bytes, given bytes {}..{} of {}",
                dtype.name(),
                range.start,
                range.end,
                (*bytes).as_ref().len()
            ));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            bytes,
            range,
            repacked: Arc::default(),
            release: None,
            compact: None,
        })
    }

    /// The matrix whose stored bytes, once a repacked copy holds their rows
    /// ([`Self::repacked`]), are freed by `release` (called with the range in the shared bytes).
    /// The bytes stay readable: a memory map reads freed pages back from its file.
    pub fn with_release(mut self, release: Release) -> Self {
        self.release = Some(release);
        self
    }

    /// `values` (`[rows, cols]` row-major) quantized to `dtype` ([`quant::quantize`]).
    pub fn quantize(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, String> {
        if values.len() != rows * cols {
            return Err(format!("{} values for [{rows}, {cols}]", values.len()));
        }
        Self::quantized_by_chunks(dtype, rows, cols, |range, wide| {
            wide.copy_from_slice(&values[range.start * cols..range.end * cols]);
        })
    }

    /// `rows x cols` values quantized to `dtype` in parallel chunks of rows fixed by the sizes
    /// (each row's bytes depend on that row alone, so the split changes nothing in the result);
    /// `widen(rows, out)` writes a chunk's f32 values.
    fn quantized_by_chunks(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        widen: impl Fn(Range<usize>, &mut [f32]) + Sync,
    ) -> Result<Self, String> {
        let row_bytes = dtype.bytes_of(cols as u64)? as usize;
        let chunk = (1 << 16) / cols.max(1) + 1;
        // each chunk quantized straight into its place: the matrix is held once
        let mut bytes = vec![0u8; rows * row_bytes];
        bytes
            .par_chunks_mut((chunk * row_bytes).max(1))
            .enumerate()
            .try_for_each(|(i, out)| {
                let start = i * chunk;
                let end = (start + chunk).min(rows);
                let mut wide = vec![0.0; (end - start) * cols];
                widen(start..end, &mut wide);
                let part = quant::quantize(dtype, &wide)?;
                out.copy_from_slice(&part);
                Ok::<_, String>(())
            })?;
        let len = bytes.len();
        Self::new(dtype, rows, cols, Arc::new(bytes), 0..len)
    }

    /// This matrix in `dtype`: rows widened to f32 and quantized a chunk at a time (chunks fixed
    /// by the sizes, in parallel), so no f32 copy of the whole matrix is ever held; the bytes
    /// equal [`Self::quantize`] of [`Self::to_f32`]. A matrix with a [`Release`] (read in place
    /// from a mapped file) frees the stored pages of each chunk once it is read: a conversion on
    /// load holds the source's pages of a few chunks, not of the whole matrix.
    pub fn requantize(&self, dtype: GgmlType) -> Result<Self, String> {
        Self::quantized_by_chunks(dtype, self.rows, self.cols, |rows, wide| {
            self.rows_f32(rows.clone(), wide);
            self.release_rows(rows);
        })
    }

    /// Rows `rows` widened and quantized to `dtype`: their bytes as a `dtype` matrix would store
    /// them (each row's bytes depend on that row alone).
    pub fn quantized_rows(&self, dtype: GgmlType, rows: Range<usize>) -> Result<Vec<u8>, String> {
        let mut wide = vec![0.0; rows.len() * self.cols];
        self.rows_f32(rows, &mut wide);
        quant::quantize(dtype, &wide)
    }

    /// Frees the stored pages of rows `rows` where the matrix has a [`Release`] (read in place from
    /// a mapped file; read back from it if touched again): a conversion that has read them.
    pub fn release_rows(&self, rows: Range<usize>) {
        if let Some(release) = &self.release {
            let (row, start) = (self.row_bytes(), self.range.start);
            release(start + rows.start * row..start + rows.end * row);
        }
    }

    /// A `[rows, cols]` matrix of `dtype` held as a kernel's repacked copy of its first `covered`
    /// rows (`repacked`) and the stored bytes of the others (`tail`), as [`Self::compacted`] leaves
    /// one: made straight in the kernel's layout (a conversion on load), never stored whole.
    /// `unpack` rebuilds the `covered` rows' stored bytes from the copy exactly.
    pub fn from_repacked(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        repacked: Vec<u8>,
        covered: usize,
        tail: Vec<u8>,
        unpack: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let row = dtype.bytes_of(cols as u64)? as usize;
        if covered > rows || tail.len() != (rows - covered) * row {
            return Err(format!(
                "{} stored bytes for rows {covered}..{rows} of {} ({row} a row)",
                tail.len(),
                dtype.name()
            ));
        }
        let repacked = Arc::new(repacked);
        let compact = Arc::new(Compact {
            repacked: repacked.clone(),
            covered,
            tail,
            unpack: Box::new(unpack),
            whole: OnceLock::new(),
        });
        Ok(Self {
            dtype,
            rows,
            cols,
            bytes: compact.clone(),
            range: 0..rows * row,
            repacked: Arc::new(OnceLock::from(repacked)),
            release: None,
            compact: Some(compact),
        })
    }

    /// The stored type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.range.len() / self.rows.max(1)
    }

    /// Bytes the matrix holds.
    pub fn memory_bytes(&self) -> usize {
        self.range.len()
    }

    /// The stored bytes (of a [compacted](Self::compacted) matrix: rebuilt from its repacked copy
    /// on the first call, and kept).
    pub fn bytes(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.range.clone()]
    }

    /// The stored bytes of rows `rows` (of a [compacted](Self::compacted) matrix, rows after the
    /// repacked ones without rebuilding the others).
    pub fn stored_rows(&self, rows: Range<usize>) -> &[u8] {
        let row = self.row_bytes();
        if let Some(c) = self.compact.as_ref().filter(|c| rows.start >= c.covered) {
            let start = (rows.start - c.covered) * row;
            return &c.tail[start..start + rows.len() * row];
        }
        &self.bytes()[rows.start * row..rows.end * row]
    }

    /// Where the stored bytes are held as stored (a compacted matrix's are its own, rebuilt on
    /// demand: `None`): a loader compares it with its source's to tell a matrix read in place.
    pub fn stored_at(&self) -> Option<*const u8> {
        match self.compact {
            Some(_) => None,
            None => Some(self.bytes().as_ptr()),
        }
    }

    /// Bytes held besides a repacked copy: all the stored bytes, or for a
    /// [compacted](Self::compacted) matrix its rows outside the copy (plus the rebuilt rows once
    /// something read them).
    pub fn stored_bytes_held(&self) -> usize {
        match &self.compact {
            Some(c) => c.tail.len() + c.whole.get().map_or(0, Vec::len),
            None => self.range.len(),
        }
    }

    /// Rows `rows` widened to f32 into `out` (`rows.len() * cols` values).
    pub fn rows_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        let bytes = self.stored_rows(rows);
        // whole rows of a matrix checked at construction: cannot fail
        let _ = quant::dequantize(self.dtype, bytes, out);
    }

    /// The matrix's bytes in the layout a kernel reads (one layout per matrix: the integer
    /// kernels' interleaved rows, [`crate::cpu::qdot`]), made by `make` on first use and kept
    /// with the matrix and its clones. The copy holds the first `covered` rows, which the
    /// kernel reads from it alone from then on: where the matrix has a [`Release`] (a mapped
    /// file) their stored bytes are freed, so the weights are held once; elsewhere the copy is a
    /// second one for as long as the matrix lives.
    pub fn repacked(&self, covered: usize, make: impl FnOnce(&Self) -> Vec<u8>) -> Arc<Vec<u8>> {
        self.repacked
            .get_or_init(|| {
                let copy = Arc::new(make(self));
                if let Some(release) = &self.release {
                    let start = self.range.start;
                    release(start..start + covered.min(self.rows) * self.row_bytes());
                }
                copy
            })
            .clone()
    }

    /// The matrix holding its first `covered` rows in the repacked copy alone: the copy is made
    /// now by `make` (as [`Self::repacked`] would on the first product) and the stored bytes of
    /// those rows dropped; `unpack` rebuilds them from the copy exactly (`covered` rows, row-major)
    /// if something reads them later ([`Self::bytes`]). For matrices whose bytes are their own
    /// (quantized on load, stacked, reordered): a matrix with a [`Release`] (read in place from a
    /// mapped file) frees its pages on the first product instead and is returned as it is, as is
    /// one already compacted or whose copy would cover no row. The products, the bytes and the
    /// values are unchanged; the memory is the copy's and the other rows'.
    pub fn compacted(
        self,
        covered: usize,
        make: impl FnOnce(&Self) -> Vec<u8>,
        unpack: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        if self.release.is_some() || self.compact.is_some() || covered == 0 || covered > self.rows {
            return self;
        }
        let repacked = self.repacked(covered, make);
        let tail = self.bytes()[covered * self.row_bytes()..].to_vec();
        let compact = Arc::new(Compact {
            repacked,
            covered,
            tail,
            unpack: Box::new(unpack),
            whole: OnceLock::new(),
        });
        let len = self.range.len();
        Self {
            bytes: compact.clone(),
            range: 0..len,
            compact: Some(compact),
            ..self
        }
    }

    /// The whole matrix widened to f32, `[rows, cols]` row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.rows_f32(0..self.rows, &mut out);
        out
    }

    /// The matrix with its rows in the order `order` (row `i` of the result is row `order[i]`),
    /// copied into memory of its own.
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self, String> {
        if order.len() != self.rows || order.iter().any(|&r| r >= self.rows) {
            return Err(format!(
                "a row order of {} for {} rows",
                order.len(),
                self.rows
            ));
        }
        let (row, src) = (self.row_bytes(), self.bytes());
        let mut bytes = Vec::with_capacity(self.range.len());
        for &r in order {
            bytes.extend_from_slice(&src[r * row..(r + 1) * row]);
        }
        let len = bytes.len();
        Self::new(self.dtype, self.rows, self.cols, Arc::new(bytes), 0..len)
    }

    /// Rows `rows` of the matrix, a view of the same bytes (one expert of a stacked expert
    /// tensor).
    pub fn slice_rows(&self, rows: Range<usize>) -> Result<Self, String> {
        if rows.start > rows.end || rows.end > self.rows {
            return Err(format!(
                "rows {}..{} of {} rows",
                rows.start, rows.end, self.rows
            ));
        }
        let row = self.row_bytes();
        let start = self.range.start + rows.start * row;
        let range = start..start + rows.len() * row;
        let mut view = Self::new(self.dtype, rows.len(), self.cols, self.bytes.clone(), range)?;
        view.release = self.release.clone();
        Ok(view)
    }

    /// Several matrices of one type and width stacked row-wise into one (q, k and v fused).
    pub fn stack(parts: &[&PackedMatrix]) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to stack")?;
        if let Some(odd) = parts
            .iter()
            .find(|p| p.dtype != first.dtype || p.cols != first.cols)
        {
            return Err(format!(
                "stacking {} [.., {}] onto {} [.., {}]",
                odd.dtype.name(),
                odd.cols,
                first.dtype.name(),
                first.cols
            ));
        }
        let bytes: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.bytes().iter().copied())
            .collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        let len = bytes.len();
        Self::new(first.dtype, rows, first.cols, Arc::new(bytes), 0..len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// `stored`'s bytes at `offset` of a larger buffer, as a mapped file holds them, with a
    /// release that logs the ranges it is called with.
    fn mapped(
        stored: &PackedMatrix,
        offset: usize,
    ) -> (PackedMatrix, Arc<Mutex<Vec<Range<usize>>>>) {
        let mut buffer = vec![0u8; offset];
        buffer.extend_from_slice(stored.bytes());
        let len = stored.bytes().len();
        let released = Arc::new(Mutex::new(Vec::new()));
        let log = released.clone();
        let release: Release = Arc::new(move |r| log.lock().unwrap().push(r));
        let (dtype, rows, cols) = (stored.dtype(), stored.rows(), stored.cols());
        let w = PackedMatrix::new(dtype, rows, cols, Arc::new(buffer), offset..offset + len)
            .unwrap()
            .with_release(release);
        (w, released)
    }

    #[test]
    fn a_repacked_copy_releases_the_stored_rows_it_covers_once() {
        // [40 rows, 32 columns] of Q8_0 (34 bytes a row) at offset 100 of a larger buffer
        let (rows, cols, offset) = (40, 32, 100);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let q = PackedMatrix::quantize(GgmlType::Q8_0, rows, cols, &values).unwrap();
        let (w, released) = mapped(&q, offset);
        let clone = w.clone();
        let copy = w.repacked(32, |m| m.bytes()[..32 * 34].to_vec());
        assert_eq!(copy.len(), 32 * 34);
        // made once: the clone shares it and releases nothing again
        let again = clone.repacked(32, |_| unreachable!("made twice"));
        assert!(Arc::ptr_eq(&copy, &again));
        assert_eq!(*released.lock().unwrap(), vec![offset..offset + 32 * 34]);
        // a view of some rows carries the release, with its own range
        let view = w.slice_rows(8..24).unwrap();
        view.repacked(16, |m| m.bytes().to_vec());
        assert_eq!(
            released.lock().unwrap()[1],
            offset + 8 * 34..offset + 24 * 34
        );
        // the stored bytes stay readable (here owned: nothing is freed)
        assert_eq!(w.to_f32(), q.to_f32());
    }

    #[test]
    fn a_conversion_frees_each_chunk_of_a_mapped_matrix_once_read_and_gives_the_same_bytes() {
        // [300, 256] of f16 at offset 64: two chunks of rows (257 and 43)
        let (rows, cols, offset) = (300, 256, 64);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let f16 = PackedMatrix::quantize(GgmlType::F16, rows, cols, &values).unwrap();
        let (w, released) = mapped(&f16, offset);
        let len = f16.bytes().len();
        let q = w.requantize(GgmlType::Q8_0).unwrap();
        let whole = PackedMatrix::quantize(GgmlType::Q8_0, rows, cols, &f16.to_f32()).unwrap();
        assert_eq!(q.bytes(), whole.bytes());
        // every stored byte freed once, chunk by chunk
        let mut ranges = released.lock().unwrap().clone();
        ranges.sort_by_key(|r| r.start);
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!(ranges[0].start, offset);
        assert_eq!(ranges[0].end, ranges[1].start);
        assert_eq!(ranges[1].end, offset + len);
    }
}
