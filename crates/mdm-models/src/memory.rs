//! The memory check before a model is loaded: its footprint estimated from the config and the
//! weight format, against the memory the machine has available, so a model that cannot fit is a
//! typed error naming what would ([`ModelError::OutOfMemory`]) rather than an out-of-memory kill
//! halfway through loading.
//!
//! The footprint: every projection weight at the type it is kept in (packed types on a backend
//! that packs, f32 otherwise, f16/bf16 where [`crate::Precision`] casts; quantized ones twice
//! where the integer kernels interleave a copy, [`mdm_kernels::cpu::qdot`]), the embedding and norms
//! dense (f32 when the projections are, half otherwise), the largest single tensor once more (a loader widens one tensor at a time), and the
//! activations of one pass over [`WORKING_POSITIONS`] positions. Available memory is Linux's
//! `MemAvailable` (lowered to the control group's limit when there is one: cgroup v2 or v1, the
//! smallest over the process's group and the groups above it, [`cgroup_limit`]); `MDM_AVAILABLE_MEMORY`
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
        // quantized projections are held as the integer kernels' interleaved copy where this CPU
        // makes one, in place of their stored bytes (dropped, or a mapped file's pages freed)
        let per_value = match packs {
            true => {
                mdm_kernels::cpu::qdot::interleaved_bytes_per_value(target).unwrap_or(per_value)
            }
            false => per_value,
        };
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
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|own| cgroup_limit(std::path::Path::new("/sys/fs/cgroup"), &own));
    Some(cgroup.map_or(available, |limit| limit.min(available)))
}

/// The memory limit of this process's control group: its cgroup (`own`, the text of
/// `/proc/self/cgroup`) and every group above it, under the hierarchy mounted at `root`; the
/// smallest limit set. cgroup v2 (`0::/path`: `root/path/memory.max`, "max" when unlimited) and
/// v1 (`N:...memory...:/path`: `root/memory/path/memory.limit_in_bytes`, a value near `2^63`
/// when unlimited), still what many container hosts run. A container sees its own group as `/`:
/// the limit is then the root's file.
pub fn cgroup_limit(root: &std::path::Path, own: &str) -> Option<u64> {
    let mut limits = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim().trim_start_matches('/'));
        loop {
            if let Some(limit) = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|&l| l < 1 << 60)
            {
                limits.push(limit);
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    limits.into_iter().min()
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
        WeightFormat::Stored | WeightFormat::Inference => "the stored types".into(),
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

    /// A fake cgroup hierarchy under a temporary folder: `files` as (path, contents).
    fn hierarchy(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let file = root.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        root
    }

    #[test]
    fn a_nested_cgroup_v2_takes_the_smallest_limit_above_it() {
        let root = hierarchy(&[
            ("memory.max", "max\n"),
            ("kube/memory.max", "6000000000\n"),
            ("kube/pod/memory.max", "max\n"),
            ("kube/pod/app/memory.max", "max\n"),
        ]);
        assert_eq!(
            cgroup_limit(root.path(), "0::/kube/pod/app\n"),
            Some(6_000_000_000)
        );
        // a container sees its group as the root
        let own = hierarchy(&[("memory.max", "2147483648\n")]);
        assert_eq!(cgroup_limit(own.path(), "0::/\n"), Some(2_147_483_648));
        // unlimited everywhere
        let free = hierarchy(&[("memory.max", "max\n"), ("a/memory.max", "max\n")]);
        assert_eq!(cgroup_limit(free.path(), "0::/a\n"), None);
    }

    #[test]
    fn a_cgroup_v1_memory_controller_is_read() {
        let root = hierarchy(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/docker/abc/memory.limit_in_bytes", "3000000000\n"),
            ("cpu/docker/abc/cpu.shares", "1024\n"),
        ]);
        let own = "12:cpu,cpuacct:/docker/abc\n7:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(cgroup_limit(root.path(), own), Some(3_000_000_000));
        // v1's "unlimited" is a value near 2^63
        let own_root = "7:memory:/\n";
        assert_eq!(cgroup_limit(root.path(), own_root), None);
        // no memory controller listed
        assert_eq!(
            cgroup_limit(root.path(), "12:cpu,cpuacct:/docker/abc\n"),
            None
        );
    }

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
        // 4.5 bits a value, or the integer kernels' interleaved copy in their place where this
        // CPU makes one
        let copy = mdm_kernels::cpu::qdot::interleaved_bytes_per_value(GgmlType::Q4K);
        let share = copy.unwrap_or(0.5625) / 2.0 + 0.1;
        assert!(
            (q4.weights as f64) < bf16.weights as f64 * share,
            "{q4:?} {bf16:?}"
        );
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
