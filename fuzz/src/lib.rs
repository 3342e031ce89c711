//! Helpers of the fuzz targets. Every reader under test takes a path, so each input is written
//! into one scratch folder per process, emptied before every run. Inputs that stand for several
//! files are the files' bytes joined by [`SEPARATOR`], so a seed corpus is made by concatenating
//! real files (`fuzz/seed.sh`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Joins the files of a multi-file input.
pub const SEPARATOR: &[u8] = b"\n\x00--8<--\x00\n";

/// The process's scratch folder, emptied.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().expect("a scratch folder"))
        .path();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// Writes `bytes` to `name` in `dir` and returns its path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a scratch file");
    path
}

/// The parts of a multi-file input (at least one, possibly empty).
pub fn parts(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// A tiny model config the SMDM-file target loads into (2 layers, width 16, vocab 32, 2 groups).
pub fn tiny_config() -> mdm_models::ModelConfig {
    mdm_models::ModelConfig::custom(32, 2, 4, 16, 32, 16).with_query_groups(2)
}
