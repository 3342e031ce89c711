//! GGML's tensor types as stored in GGUF files, and their dequantization to f32, exactly as
//! llama.cpp defines them (`ggml-quants.c`, `dequantize_row_*`; the reference `gguf` Python
//! package's `quants.py` computes the same values): every product and difference in f32, in the
//! reference's order, so the values are bit for bit the reference's (Rust never fuses a multiply
//! and an add on its own).
//!
//! [`quantize`] goes the other way for the types a model is quantized to on load (`--quant`):
//! F16 and BF16 round to nearest even as the `gguf` package does, Q8_0 is the `gguf` package's
//! (and llama.cpp's `quantize_row_q8_0_ref`), Q4_K follows llama.cpp's `quantize_row_q4_K_ref`
//! (`make_qkx2_quants`: a search over 21 scales for the least weighted squared error per
//! sub-block of 32), each step in f32 in the reference's order.
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
        GgmlType::F16 => f16_values(bytes, out),
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

/// `values` (a whole number of `dtype`'s blocks) in `dtype`'s bytes. Q5_K and Q6_K are read,
/// never written: asking for them is an error.
pub fn quantize(dtype: GgmlType, values: &[f32]) -> Result<Vec<u8>, String> {
    let (per_block, size) = dtype.block();
    if !values.len().is_multiple_of(per_block) {
        return Err(format!(
            "{} values are not whole blocks of {} ({per_block} values each)",
            values.len(),
            dtype.name()
        ));
    }
    let mut out = Vec::with_capacity(values.len() / per_block * size);
    match dtype {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        GgmlType::Bf16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16_bits(*v).to_le_bytes())),
        GgmlType::Q8_0 => values
            .chunks_exact(32)
            .for_each(|block| quantize_q8_0(block, &mut out)),
        GgmlType::Q4K => values
            .chunks_exact(QK_K)
            .for_each(|block| quantize_q4_k(block, &mut out)),
        GgmlType::Q5K | GgmlType::Q6K => {
            return Err(format!(
                "{} is read, not written: quantize to Q8_0 or Q4_K",
                dtype.name()
            ))
        }
    }
    Ok(out)
}

/// bfloat16 of `v` rounded to nearest even, NaN kept quiet (the `gguf` package's rounding).
fn bf16_bits(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n & 0xffff_0000) >> 16) as u16 | 64;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// llama.cpp's `nearest_int`: round half to even through the float's mantissa (`|v| < 2^22`).
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Half away from zero, as the `gguf` package's `np_roundf`.
fn round_away(v: f32) -> f32 {
    let a = v.abs();
    let floor = a.floor();
    (floor + (2.0 * (a - floor)).floor()).copysign(v)
}

/// Q8_0: `d = max |x| / 127` (as f16), `q = round(x / d)`.
fn quantize_q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    out.extend(block.iter().map(|v| round_away(v * id) as i8 as u8));
}

/// llama.cpp's `make_qkx2_quants` for Q4_K (`nmax` 15, `rmin` -1, `rdelta` 0.1, 20 steps, squared
/// error): the levels `l` of `x` and `(scale, -min)` with `x ~ scale l + min`.
fn qkx2(x: &[f32; 32], weights: &[f32; 32], levels: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: f32 = 15.0;
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for i in 1..32 {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let clamp = |v: i32| v.clamp(0, NMAX as i32) as u8;
    let mut iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..32 {
        levels[i] = clamp(nearest_int(iscale * (x[i] - min)));
        let diff = scale * levels[i] as f32 + min - x[i];
        best += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for step in 0..=20 {
        iscale = (-1.0 + 0.1 * step as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            aux[i] = clamp(nearest_int(iscale * (x[i] - min)));
            let (w, l) = (weights[i], aux[i] as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..32 {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best {
                *levels = aux;
                best = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K of one super-block of 256, as llama.cpp's `quantize_row_q4_K_ref`.
fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let mut levels = [[0u8; 32]; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let sub: &[f32; 32] = x[32 * j..32 * j + 32].try_into().expect("32 values");
        let sum_x2 = sub.iter().fold(0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + sub[l].abs());
        (scales[j], mins[j]) = qkx2(sub, &weights, &mut levels[j]);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let mut all = [0u8; QK_K];
    for j in 0..8 {
        let (sc, m) = scale_min(j, &packed);
        let step = d.to_f32() * sc as f32;
        if step == 0.0 {
            all[32 * j..32 * j + 32].copy_from_slice(&levels[j]);
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            all[32 * j + i] = nearest_int((x[32 * j + i] + dm) / step).clamp(0, 15) as u8;
        }
    }
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
    out.extend_from_slice(&packed);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|l| all[j + l] | (all[j + l + 32] << 4)));
    }
}

/// f16 values widened through the `half` crate's slice conversion (F16C, 8 at a time, where the
/// CPU has it: a conversion per value costs a feature check that stops vectorisation).
fn f16_values(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [f16::ZERO; 256];
    for (b, o) in bytes.chunks(512).zip(out.chunks_mut(256)) {
        let n = o.len();
        for (h, pair) in buf[..n].iter_mut().zip(b.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([pair[0], pair[1]]));
        }
        buf[..n].convert_to_f32_slice(o);
    }
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

    #[test]
    fn quantization_round_trips_within_each_types_step() {
        let values: Vec<f32> = (0..2 * QK_K)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 64) as f32))
            .collect();
        for (dtype, tolerance) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::Bf16, 8e-3),
            (GgmlType::Q8_0, 1.0 / 127.0),
            (GgmlType::Q4K, 0.13),
        ] {
            let bytes = quantize(dtype, &values).unwrap();
            assert_eq!(
                bytes.len() as u64,
                dtype.bytes_of(values.len() as u64).unwrap()
            );
            let mut back = vec![0f32; values.len()];
            dequantize(dtype, &bytes, &mut back).unwrap();
            // relative to each 32-value group's largest magnitude
            for (g, (want, got)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (w, o) in want.iter().zip(got) {
                    assert!(
                        (w - o).abs() <= tolerance * scale,
                        "{}: group {g}: {w} came back as {o}",
                        dtype.name()
                    );
                }
            }
        }
        assert!(quantize(GgmlType::Q6K, &values).is_err());
        assert!(quantize(GgmlType::Q8_0, &values[..31]).is_err());
    }

    #[test]
    fn q4_k_of_a_constant_block_and_of_zeros_is_exact() {
        let mut back = vec![0f32; QK_K];
        dequantize(
            GgmlType::Q4K,
            &quantize(GgmlType::Q4K, &[0.0; QK_K]).unwrap(),
            &mut back,
        )
        .unwrap();
        assert!(back.iter().all(|&v| v == 0.0));
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
        assert_eq!(round_away(2.5), 3.0);
        assert_eq!(round_away(-0.5), -1.0);
    }
}
