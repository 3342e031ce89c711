//! GGML's tensor types as stored in GGUF files, and their dequantization to f32, exactly as
//! llama.cpp defines them (`ggml-quants.c`, `dequantize_row_*`; the reference `gguf` Python
//! package's `quants.py` computes the same values): every product and difference in f32, in the
//! reference's order, so the values are bit for bit the reference's (Rust never fuses a multiply
//! and an add on its own).
//!
//! Written here rather than taken from a crate because it must be exact and fast and the crates
//! that have it (candle-core's quantized module) bring a second tensor library.

use half::f16;

/// Values per super-block of the k-quants.
pub const QK_K: usize = 256;

/// A GGML tensor type this library reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Super-blocks of 256: f16 scale and minimum, 8 six-bit sub-scales and minimums, 4-bit values.
    Q4K,
    /// As Q4_K with a fifth bit per value.
    Q5K,
    /// Super-blocks of 256: 6-bit values, 16 signed 8-bit sub-scales, an f16 scale.
    Q6K,
}

impl GgmlType {
    /// The type of GGML's numeric id, or `None` for a type this library does not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// GGML's numeric id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Bf16 => 30,
        }
    }

    /// GGML's name (`Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// `(values, bytes)` of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
        }
    }

    /// Bytes of `n` values, or why they cannot be stored (not whole blocks, overflow).
    pub fn bytes_of(self, n: u64) -> Result<u64, String> {
        let (values, bytes) = self.block();
        if !n.is_multiple_of(values as u64) {
            return Err(format!(
                "{n} values are not whole {} blocks of {values}",
                self.name()
            ));
        }
        (n / values as u64)
            .checked_mul(bytes as u64)
            .ok_or_else(|| format!("{n} values of {} overflow the byte count", self.name()))
    }
}

/// All GGML type names by id, for messages about types this library does not read.
pub fn type_name(id: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("type {id}"), |n| format!("{n} (type {id})"))
}

/// Writes the f32 values of `bytes` (whole blocks of `dtype`) into `out`, which must hold exactly
/// their count.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (values, size) = dtype.block();
    if !bytes.len().is_multiple_of(size) || bytes.len() / size * values != out.len() {
        return Err(format!(
            "{} bytes of {} for {} values",
            bytes.len(),
            dtype.name(),
            out.len()
        ));
    }
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(values));
    match dtype {
        GgmlType::F32 => {
            blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = half(b, 0)),
        GgmlType::Bf16 => blocks.for_each(|(b, o)| {
            o[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6K => blocks.for_each(|(b, o)| q6_k(b, o)),
    }
    Ok(())
}

/// The f16 at byte `at` of `b`, as f32.
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q8_0: `d * q`.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// The six-bit scale and minimum `j` (0..8) of a Q4_K / Q5_K super-block's 12 scale bytes.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: value `64 j + l` (`l < 32`) is the low nibble of byte `32 j + l`, value `64 j + 32 + l`
/// its high nibble, with scale/minimum pairs `2 j` and `2 j + 1`: `d * sc * q - dmin * m`.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..4 {
        for half_ in 0..2 {
            let (sc, m) = scale_min(2 * j + half_, scales);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 0..32 {
                let q = (qs[32 * j + l] >> (4 * half_)) & 0x0f;
                out[64 * j + 32 * half_ + l] = d1 * q as f32 - m1;
            }
        }
    }
}

/// Q5_K: Q4_K's layout with a fifth bit, bit `2 j + half` of high byte `l`.
fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..4 {
        for half_ in 0..2 {
            let group = 2 * j + half_;
            let (sc, m) = scale_min(group, scales);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 0..32 {
                let low = (qs[32 * j + l] >> (4 * half_)) & 0x0f;
                let high = ((qh[l] >> group) & 1) << 4;
                out[64 * j + 32 * half_ + l] = d1 * (low | high) as f32 - m1;
            }
        }
    }
}

/// Q6_K: per 128 values `c`, value `32 g + l` (`g < 4`) takes a nibble of `ql` (low of byte `l`,
/// low of `l + 32`, high of `l`, high of `l + 32`) and bits `2 g` of `qh[l]`, minus 32, times
/// `d * scale[value / 16]`.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for c in 0..2 {
        let (ql, qh) = (&ql[64 * c..64 * c + 64], &qh[32 * c..32 * c + 32]);
        for g in 0..4 {
            for l in 0..32 {
                let byte = ql[l + 32 * (g % 2)];
                let low = if g < 2 { byte & 0x0f } else { byte >> 4 };
                let high = (qh[l] >> (2 * g)) & 3;
                let q = ((low | (high << 4)) as i8 - 32) as f32;
                let index = 128 * c + 32 * g + l;
                let scale = scales[index / 16] as i8 as f32;
                out[index] = d * scale * q;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_ggmls() {
        assert_eq!(GgmlType::Q4K.bytes_of(512).unwrap(), 288);
        assert!(GgmlType::Q4K.bytes_of(300).is_err());
        assert_eq!(GgmlType::Q8_0.bytes_of(64).unwrap(), 68);
        for id in [0, 1, 8, 12, 13, 14, 30] {
            assert_eq!(GgmlType::from_id(id).unwrap().id(), id);
        }
        assert_eq!(GgmlType::from_id(2), None);
        assert_eq!(type_name(2), "Q4_0 (type 2)");
    }

    #[test]
    fn q8_0_is_scale_times_value() {
        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = 4;
        block[3] = (-6i8) as u8;
        let mut out = vec![0f32; 32];
        dequantize(GgmlType::Q8_0, &block, &mut out).unwrap();
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
        assert!(dequantize(GgmlType::Q8_0, &block[..33], &mut out).is_err());
    }
}
