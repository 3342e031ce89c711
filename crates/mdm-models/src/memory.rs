//! The memory check before a model is loaded: its footprint estimated from the config and the
//! weight format, against the memory the machine has available, so a model that cannot fit is a
//! typed error naming what would ([`ModelError::OutOfMemory`]) rather than an out-of-memory kill
//! halfway through loading.
//!
//! The footprint: every projection weight at the type it is kept in (packed types on a backend
//! that packs, f32 otherwise, f16/bf16 where [`crate::Precision`] casts), the embedding and norms
//! dense (f32 when the projections are, half otherwise), the largest single tensor once more (a loader widens one tensor at a time), and the
//! activations of one pass over [`WORKING_POSITIONS`] positions. Available memory is Linux's
//! `MemAvailable` (lowered to the cgroup's limit when there is one); `MDM_AVAILABLE_MEMORY`
//! (bytes, or with a `KB`/`MB`/`GB` suffix) overrides it, and `MDM_MEMORY_CHECK=off` skips the
//! check. Where neither is known the check passes.

use mdm_kernels::quant::GgmlType;

use crate::linear::WeightFormat;
use crate::slots::{slots, Role};
use crate::{ModelConfig, ModelError};

/// Positions of the pass whose activations the estimate includes.
pub const WORKING_POSITIONS: usize = 512;

/// Estimated bytes of a model in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Weights at the types they are kept in.
    pub weights: u64,
    /// The largest tensor widened to f32 while loading, and one pass's activations.
    pub working: u64,
}

impl Footprint {
    /// The footprint of `config`'s masked network whose projections are stored as `stored` and
    /// kept as `format`, on a backend that packs weights (`packs`) or not.
    pub fn estimate(
        config: &ModelConfig,
        stored: GgmlType,
        format: WeightFormat,
        packs: bool,
    ) -> Self {
        let (c, i, v) = (
            config.n_embd as u64,
            config.intermediate_size as u64,
            config.padded_vocab_size() as u64,
        );
        let layers = config.n_layer as u64;
        let rows = config.masked_embedding_rows();
        // every slot by role: a tied head is the embedding, counted once
        let (mut projections, mut embedding, mut dense, mut largest) = (0u64, 0u64, 0u64, 0u64);
        for slot in slots(config) {
            let n = slot.len(config, rows) as u64;
            largest = largest.max(n);
            match slot.role() {
                Role::Matrix { .. } => projections += n,
                Role::Embedding => embedding += n,
                Role::Norm | Role::Bias => dense += n,
            }
        }
        let target = format.packed_type(stored).unwrap_or(GgmlType::F32);
        let per_value = match target {
            GgmlType::F16 | GgmlType::Bf16 if !packs => 2.0,
            _ if !packs => 4.0,
            t => WeightFormat::bytes_per_value(t),
        };
        // the embedding and norms: half where the projections are not f32 (see `Transformer`)
        let dense_bytes = if target == GgmlType::F32 { 4 } else { 2 };
        let weights = (projections as f64 * per_value) as u64 + (embedding + dense) * dense_bytes;
        let largest = largest * 4;
        let n = WORKING_POSITIONS as u64;
        let activations = n * (8 * c + 3 * i + v) * 4 + 2 * layers * n * c * 4;
        Self {
            weights,
            working: largest + activations,
        }
    }

    /// Weights and working memory together.
    pub fn total(&self) -> u64 {
        self.weights + self.working
    }
}

/// `bytes` as `12.3 GB` (10^9) or `456 MB`.
pub fn human(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{} MB", bytes.div_ceil(1_000_000))
    }
}

/// `MDM_AVAILABLE_MEMORY`'s value in bytes (`17179869184`, `512MB`, `23.4 GB`).
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let (number, scale) = [("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("B", 1.0)]
        .iter()
        .find_map(|(suffix, scale)| {
            t.strip_suffix(suffix)
                .map(|n| (n.trim().to_string(), *scale))
        })
        .unwrap_or((t.clone(), 1.0));
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then_some((value * scale) as u64)
}

/// The memory available to this process: `MDM_AVAILABLE_MEMORY` if set, else `MemAvailable`
/// from `/proc/meminfo` lowered to the cgroup's `memory.max`, else `None` (not known).
pub fn available() -> Option<u64> {
    if let Ok(text) = std::env::var("MDM_AVAILABLE_MEMORY") {
        return parse_bytes(&text);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    Some(cgroup.map_or(available, |limit| limit.min(available)))
}

/// Whether the check is on (`MDM_MEMORY_CHECK=off` turns it off).
fn enabled() -> bool {
    std::env::var("MDM_MEMORY_CHECK").map_or(true, |v| v.trim() != "off")
}

/// The flag that asks for `format` on the command line.
fn flag(format: WeightFormat) -> String {
    match format {
        WeightFormat::As(GgmlType::Q8_0 | GgmlType::Q4K) => format!("--quant {format}"),
        WeightFormat::As(_) => format!("--dtype {format}"),
        WeightFormat::Stored => "the stored types".into(),
    }
}

/// Checks that `config`'s network, stored as `stored` and kept as `format`, fits in `available`
/// bytes; the error lists the formats that would.
pub fn check_fits(
    what: &str,
    config: &ModelConfig,
    stored: GgmlType,
    format: WeightFormat,
    packs: bool,
    available: u64,
) -> Result<Footprint, ModelError> {
    let footprint = Footprint::estimate(config, stored, format, packs);
    if footprint.total() <= available {
        return Ok(footprint);
    }
    let smaller: Vec<String> = [GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4K]
        .into_iter()
        .map(WeightFormat::As)
        .filter(|f| *f != format)
        .map(|f| (f, Footprint::estimate(config, stored, f, packs).total()))
        .filter(|(_, bytes)| *bytes < footprint.total())
        .map(|(f, bytes)| {
            let fits = if bytes <= available {
                ""
            } else {
                " (does not fit either)"
            };
            format!("{} needs {}{fits}", flag(f), human(bytes))
        })
        .collect();
    let format_name = match format.packed_type(stored) {
        Some(t) => t.name().to_ascii_lowercase(),
        None => "f32".into(),
    };
    Err(ModelError::OutOfMemory {
        what: what.to_string(),
        needs: footprint.total(),
        format: format_name,
        available,
        alternatives: if smaller.is_empty() {
            String::new()
        } else {
            format!(": {}", smaller.join(", "))
        },
    })
}

/// [`check_fits`] against [`available`] memory, when the check is on and the memory is known.
pub fn check(
    what: &str,
    config: &ModelConfig,
    stored: GgmlType,
    format: WeightFormat,
    packs: bool,
) -> Result<(), ModelError> {
    match available() {
        Some(bytes) if enabled() => {
            check_fits(what, config, stored, format, packs, bytes).map(|_| ())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaDA-8B's shape: 4096 wide, 32 layers, 32 heads, SwiGLU 12288, 126,464 tokens.
    fn llada_8b() -> ModelConfig {
        ModelConfig::custom(126_464, 32, 32, 4096, 12_288, 4096)
    }

    #[test]
    fn an_8b_model_needs_32_gb_as_f32_and_says_what_fits() {
        let config = llada_8b();
        let f32 = Footprint::estimate(&config, GgmlType::F32, WeightFormat::Stored, true);
        assert!((31e9..36e9).contains(&(f32.total() as f64)), "{f32:?}");
        let bf16 = Footprint::estimate(&config, GgmlType::Bf16, WeightFormat::Stored, true);
        let q4 = Footprint::estimate(
            &config,
            GgmlType::Bf16,
            WeightFormat::As(GgmlType::Q4K),
            true,
        );
        assert!(bf16.weights < f32.weights / 2 + 3_000_000_000, "{bf16:?}");
        assert!(q4.weights * 5 / 2 < bf16.weights, "{q4:?} {bf16:?}");
        let err = check_fits(
            "LLaDA-8B",
            &config,
            GgmlType::F32,
            WeightFormat::Stored,
            true,
            23_400_000_000,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("LLaDA-8B needs 3"), "{err}");
        assert!(
            err.contains("as f32, 23.4 GB available: --dtype bf16 needs 1"),
            "{err}"
        );
        assert!(
            err.contains("--quant q8_0 needs") && err.contains("--quant q4_k needs"),
            "{err}"
        );
        assert!(check_fits(
            "LLaDA-8B",
            &config,
            GgmlType::F32,
            WeightFormat::As(GgmlType::Q8_0),
            true,
            23_400_000_000
        )
        .is_ok());
        // a backend that does not pack holds quantized weights widened
        let dense = Footprint::estimate(
            &config,
            GgmlType::F32,
            WeightFormat::As(GgmlType::Q8_0),
            false,
        );
        assert!(dense.weights > bf16.weights, "{dense:?}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("512MB"), Some(512_000_000));
        assert_eq!(parse_bytes(" 23.4 gb"), Some(23_400_000_000));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(human(16_100_000_000), "16.1 GB");
        assert_eq!(human(860_000_000), "860 MB");
    }
}
