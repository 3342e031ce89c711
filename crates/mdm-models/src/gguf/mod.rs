//! GGUF files (llama.cpp's format): the header, metadata, tensor directory and tensor data,
//! read with typed errors naming the file, the byte offset and the key or tensor; tensors
//! dequantized to f32 by [`quant`] exactly as llama.cpp does.
//!
//! Layout (version 2 and 3, little-endian): `GGUF`, version u32, tensor count u64, metadata count
//! u64; each metadata entry a string key, a u32 value type and the value (arrays: element type
//! u32, count u64, elements); each tensor a name, a u32 dimension count, u64 dimensions (innermost
//! first), a u32 GGML type and a u64 offset into the data section; the data section starts at the
//! next multiple of `general.alignment` (default 32).
//!
//! Our own parser (about 300 lines) rather than a crate's: the errors must name offsets, every
//! count is checked against the file's size before anything is allocated (a corrupt count is an
//! error, not an out-of-memory kill), and tensor data is read in place from a memory map.

pub use mdm_kernels::quant;
pub mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ModelError;
pub use quant::{GgmlType, QK_K};

/// The file magic, `GGUF` in little-endian byte order.
const MAGIC: [u8; 4] = *b"GGUF";
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// An array of values of one type.
    Array(Vec<Value>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v as u64),
            Self::U16(v) => Some(v as u64),
            Self::U32(v) => Some(v as u64),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions as GGUF stores them, innermost first (`ne[0]` = the row length).
    pub dims: Vec<u64>,
    /// Its type.
    pub dtype: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Bytes of its data.
    pub bytes: u64,
}

impl TensorInfo {
    /// The shape in row-major order (outermost first), as burn and safetensors give it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An opened GGUF file: its metadata and tensor directory read, its data memory-mapped.
pub struct Gguf {
    path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Offset of the data section in the file.
    pub data_offset: u64,
    map: std::sync::Arc<memmap2::Mmap>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A byte cursor over the file that knows its offset, for errors.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn error(&self, at: usize, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            file: self.path.to_path_buf(),
            offset: at as u64,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(self.error(
                self.at,
                format!("{what}: needs {n} bytes, the file has {left} left"),
            ));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, ModelError> {
        let at = self.at;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.error(
                at,
                format!("{what} is {n}: more than the {left} bytes left can hold"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.count(1, &format!("{what} (string length)"))?;
        let at = self.at;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error(at, format!("{what}: not UTF-8 ({e})")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value, ModelError> {
        let at = self.at;
        Ok(match kind {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.error(at, format!("`{key}`: bool byte {b}"))),
            },
            8 => Value::String(self.string(&format!("`{key}`"))?),
            9 => {
                if depth > 0 {
                    return Err(self.error(at, format!("`{key}`: an array of arrays")));
                }
                let element = self.u32(key)?;
                let n = self.count(min_size(element), &format!("`{key}` (array length)"))?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(self.value(element, key, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.error(at, format!("`{key}`: unknown value type {other}")));
            }
        })
    }
}

/// The fewest bytes a value of type `kind` takes (for checking array lengths).
fn min_size(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl Gguf {
    /// Opens and checks `path`: header, metadata, tensor directory (names unique, types read by
    /// this library, sizes whole blocks, data inside the file and aligned).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let io = |source| ModelError::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private; a file changed underneath while open is the
        // one case memory maps cannot guard against (as for the safetensors loader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors, alignment, data_offset) = parse(&map, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map: std::sync::Arc::new(map),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The directory entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of `tensor` (checked to lie inside the file when opened).
    pub fn bytes(&self, tensor: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + tensor.offset) as usize;
        &self.map[start..start + tensor.bytes as usize]
    }

    /// Tensor `name` (two dimensions: `[rows, cols]` row-major) in its stored type, read in place
    /// from the file's memory map (no copy).
    pub fn packed(&self, name: &str) -> Result<mdm_kernels::PackedMatrix, ModelError> {
        self.packed_matrix(name, None)
    }

    /// Matrix `index` of the stacked tensor `name` (three dimensions: `[n, rows, cols]`, llama.cpp's
    /// experts, `ffn_gate_exps`), read in place.
    pub fn packed_slice(
        &self,
        name: &str,
        index: usize,
    ) -> Result<mdm_kernels::PackedMatrix, ModelError> {
        self.packed_matrix(name, Some(index))
    }

    fn packed_matrix(
        &self,
        name: &str,
        index: Option<usize>,
    ) -> Result<mdm_kernels::PackedMatrix, ModelError> {
        let tensor = self.tensor(name).ok_or_else(|| ModelError::Gguf {
            file: self.path.clone(),
            offset: 0,
            reason: format!("no tensor `{name}`"),
        })?;
        let at = self.data_offset + tensor.offset;
        let fault = |reason: String| ModelError::Gguf {
            file: self.path.clone(),
            offset: at,
            reason: format!("tensor `{name}`: {reason}"),
        };
        let (cols, rows, count) = match (index, &tensor.dims[..]) {
            (None, &[cols, rows]) => (cols, rows, 1),
            (Some(_), &[cols, rows, count]) => (cols, rows, count),
            (_, dims) => {
                let wanted = if index.is_some() { 3 } else { 2 };
                return Err(fault(format!(
                    "{} dimensions where {wanted} are read",
                    dims.len()
                )));
            }
        };
        let start = at as usize;
        let bytes: mdm_kernels::packed::SharedBytes = self.map.clone();
        let map = self.map.clone();
        let release: mdm_kernels::packed::Release =
            std::sync::Arc::new(move |range| drop_pages(&map, range));
        let (rows, count) = (rows as usize, count as usize);
        let all = mdm_kernels::PackedMatrix::new(
            tensor.dtype,
            rows * count,
            cols as usize,
            bytes,
            start..start + tensor.bytes as usize,
        )
        .map_err(fault)?
        .with_release(release);
        match index {
            None => Ok(all),
            Some(i) if i < count => all.slice_rows(i * rows..(i + 1) * rows).map_err(fault),
            Some(i) => Err(fault(format!("no matrix {i} of {count}"))),
        }
    }

    /// Drops the pages of tensor `name` from memory (read back from the file if touched again):
    /// for a tensor whose values were copied or converted.
    pub fn release(&self, name: &str) {
        let Some(tensor) = self.tensor(name) else {
            return;
        };
        let start = (self.data_offset + tensor.offset) as usize;
        drop_pages(&self.map, start..start + tensor.bytes as usize);
    }

    /// Tensor `name` as f32 values (row-major) and its row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let tensor = self.tensor(name).ok_or_else(|| ModelError::Gguf {
            file: self.path.clone(),
            offset: 0,
            reason: format!("no tensor `{name}`"),
        })?;
        let mut out = vec![0f32; tensor.len() as usize];
        quant::dequantize(tensor.dtype, self.bytes(tensor), &mut out).map_err(|reason| {
            ModelError::Gguf {
                file: self.path.clone(),
                offset: self.data_offset + tensor.offset,
                reason: format!("tensor `{name}`: {reason}"),
            }
        })?;
        Ok((out, tensor.shape()))
    }
}

type Parsed = (u32, BTreeMap<String, Value>, Vec<TensorInfo>, u64, u64);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, ModelError> {
    let mut c = Cursor { bytes, at: 0, path };
    let magic = c.array::<4>("the magic")?;
    if magic != MAGIC {
        return Err(c.error(0, format!("not a GGUF file (magic {magic:02x?})")));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(c.error(
            4,
            format!("GGUF version {version}; this reader reads 2 and 3"),
        ));
    }
    // a tensor entry takes at least 8 + 4 + 8 + 4 + 8 bytes, a metadata entry 8 + 4 + 1
    let n_tensors = c.count(32, "the tensor count")?;
    let n_metadata = c.count(13, "the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_metadata {
        let at = c.at;
        let key = c.string("a metadata key")?;
        let kind = c.u32(&key)?;
        let value = c.value(kind, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.error(at, format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
        Some(other) => {
            return Err(c.error(
                0,
                format!("`general.alignment` = {other:?}: a power of two as u32 expected"),
            ))
        }
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let at = c.at;
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.error(at, format!("tensor `{name}`: {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let type_at = c.at;
        let id = c.u32(&name)?;
        let dtype = GgmlType::from_id(id).ok_or_else(|| {
            c.error(
                type_at,
                format!(
                    "tensor `{name}`: {} is not read by this library (F32, F16, BF16, Q8_0, \
                     Q4_K, Q5_K, Q6_K are)",
                    quant::type_name(id)
                ),
            )
        })?;
        let offset = c.u64(&name)?;
        let len = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| c.error(at, format!("tensor `{name}`: {dims:?} overflows")))?;
        let bytes = if dims[0] % dtype.block().0 as u64 != 0 {
            return Err(c.error(
                at,
                format!(
                    "tensor `{name}`: rows of {} values are not whole {} blocks of {}",
                    dims[0],
                    dtype.name(),
                    dtype.block().0
                ),
            ));
        } else {
            dtype
                .bytes_of(len)
                .map_err(|e| c.error(at, format!("tensor `{name}`: {e}")))?
        };
        if offset % alignment != 0 {
            return Err(c.error(
                at,
                format!("tensor `{name}`: data offset {offset} is not a multiple of {alignment}"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(c.error(at, format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            bytes,
        });
    }
    let data_offset = (c.at as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(c.error(
                c.at,
                format!(
                    "tensor `{}`: {} bytes at data offset {} end past the file's {file_len} bytes \
                     (data section at {data_offset})",
                    t.name, t.bytes, t.offset
                ),
            ));
        }
    }
    Ok((version, metadata, tensors, alignment, data_offset))
}

impl crate::params::TensorStore for Gguf {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn file_of(&self, _name: &str) -> PathBuf {
        self.path.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name).map(TensorInfo::shape)
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn values(&self, name: &str) -> Result<(Vec<f32>, GgmlType), ModelError> {
        let stored = crate::params::TensorStore::stored_type(self, name);
        Ok((self.dequantize(name)?.0, stored))
    }

    fn stored_type(&self, name: &str) -> GgmlType {
        self.tensor(name).map_or(GgmlType::F32, |t| t.dtype)
    }

    fn packed(&self, name: &str) -> Result<Option<mdm_kernels::PackedMatrix>, ModelError> {
        Gguf::packed(self, name).map(Some)
    }

    fn packed_slice(
        &self,
        name: &str,
        index: usize,
    ) -> Result<Option<mdm_kernels::PackedMatrix>, ModelError> {
        Gguf::packed_slice(self, name, index).map(Some)
    }

    fn release(&self, name: &str) {
        Gguf::release(self, name)
    }
}

/// Drops from memory the pages of `map` wholly inside `range` (byte offsets into the map; pages
/// shared with a neighbouring tensor stay). Clean pages of a private read-only map: the kernel
/// reads them back from the unchanged file if they are touched again. An error leaves them.
pub(crate) fn drop_pages(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    // a multiple of every page size in use (4, 16 and 64 KiB); the map starts on a page
    const ALIGN: usize = 1 << 16;
    let start = range.start.div_ceil(ALIGN) * ALIGN;
    let end = range.end / ALIGN * ALIGN;
    if end <= start {
        return;
    }
    // SAFETY: the map is private and read-only: MADV_DONTNEED drops clean pages, which the
    // kernel reads back from the unchanged file when touched again.
    #[cfg(unix)]
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the reference `gguf` package: `scripts/gguf_fixture.py`.
    fn reference() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/reference.gguf")
    }

    #[test]
    fn metadata_of_every_value_type_reads_as_written() {
        let g = Gguf::open(reference()).unwrap();
        assert_eq!(g.version, 3);
        let v = |k: &str| g.get(k).cloned().unwrap_or_else(|| panic!("{k}"));
        assert_eq!(v("general.architecture").as_str(), Some("llama"));
        assert_eq!(v("test.u8"), Value::U8(200));
        assert_eq!(v("test.i8"), Value::I8(-7));
        assert_eq!(v("test.u16"), Value::U16(60000));
        assert_eq!(v("test.i16"), Value::I16(-30000));
        assert_eq!(v("test.u32"), Value::U32(4_000_000_000));
        assert_eq!(v("test.i32"), Value::I32(-2_000_000_000));
        assert_eq!(v("test.f32"), Value::F32(0.125));
        assert_eq!(v("test.bool"), Value::Bool(true));
        assert_eq!(v("test.string").as_str(), Some("diffusion ✓"));
        assert_eq!(v("test.u64"), Value::U64(1 << 40));
        assert_eq!(v("test.i64"), Value::I64(-(1 << 40)));
        assert_eq!(v("test.f64"), Value::F64(-1.5));
        let Value::Array(strings) = v("test.strings") else {
            panic!("an array")
        };
        assert_eq!(
            strings,
            vec![Value::String("a".into()), Value::String("bc".into())]
        );
        let Value::Array(ints) = v("test.array") else {
            panic!("an array")
        };
        assert_eq!(
            ints.iter().filter_map(Value::as_u64).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn q8_0_bf16_and_f16_quantize_to_the_reference_bytes() {
        let g = Gguf::open(reference()).unwrap();
        let (weights, _) = g.dequantize("f32").unwrap();
        for (name, dtype) in [
            ("q8_0.real", GgmlType::Q8_0),
            ("bf16", GgmlType::Bf16),
            ("f16", GgmlType::F16),
        ] {
            let theirs = g.bytes(g.tensor(name).unwrap());
            let ours = quant::quantize(dtype, &weights).unwrap();
            assert!(
                ours == theirs,
                "{name}: our quantization differs from gguf-py's"
            );
        }
        // a packed matrix read in place equals the bytes, rows and values of the tensor
        let packed = g.packed("q8_0.real").unwrap();
        assert_eq!(packed.bytes(), g.bytes(g.tensor("q8_0.real").unwrap()));
        assert_eq!(packed.to_f32(), g.dequantize("q8_0.real").unwrap().0);
        assert!(g.packed("test.missing").is_err());
    }

    #[test]
    fn every_type_dequantizes_to_the_reference_bits() {
        let g = Gguf::open(reference()).unwrap();
        let mut checked = Vec::new();
        for t in &g.tensors {
            let Some(expected) = g.tensor(&format!("{}.dequantized", t.name)) else {
                continue;
            };
            let (ours, shape) = g.dequantize(&t.name).unwrap();
            let (theirs, their_shape) = g.dequantize(&expected.name).unwrap();
            assert_eq!(shape, their_shape, "{}", t.name);
            assert_eq!(shape, t.shape());
            let differ = ours
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "{} ({}): {differ} values differ",
                t.name,
                t.dtype.name()
            );
            checked.push(t.dtype);
        }
        for dtype in [
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Bf16,
            GgmlType::F16,
        ] {
            assert!(checked.contains(&dtype), "{dtype:?} checked");
        }
    }

    #[test]
    fn a_truncated_or_corrupt_file_is_an_error_naming_the_offset() {
        let bytes = std::fs::read(reference()).unwrap();
        let g = Gguf::open(reference()).unwrap();
        let data_end = g
            .tensors
            .iter()
            .map(|t| g.data_offset + t.offset + t.bytes)
            .max()
            .unwrap() as usize;
        let dir = std::env::temp_dir().join(format!("mdm-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cut.gguf");
        for len in (0..bytes.len()).step_by(61).chain([data_end - 1, data_end]) {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let opened = Gguf::open(&path);
            assert_eq!(opened.is_ok(), len >= data_end, "cut at {len}: {opened:?}");
        }
        // a metadata count no file could hold: refused before anything is allocated
        let mut corrupt = bytes.clone();
        corrupt[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &corrupt).unwrap();
        let error = Gguf::open(&path).unwrap_err().to_string();
        assert!(error.contains("byte 16: the metadata count"), "{error}");
        // a tensor type this library does not read is named
        let mut q4_0 = bytes;
        let q8 = g.tensor("q8_0").unwrap();
        let name_at = q4_0.windows(4).position(|w| w == b"q8_0").unwrap();
        // after the name: n_dims u32, 2 dims u64, then the type
        let type_at = name_at + 4 + 4 + 16;
        assert_eq!(
            q8.dtype.id(),
            u32::from_le_bytes(q4_0[type_at..type_at + 4].try_into().unwrap())
        );
        q4_0[type_at..type_at + 4].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &q4_0).unwrap();
        let error = Gguf::open(&path).unwrap_err().to_string();
        assert!(
            error.contains(&format!(
                "byte {type_at}: tensor `q8_0`: Q4_0 (type 2) is not read"
            )),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
