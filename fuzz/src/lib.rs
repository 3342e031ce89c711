//! Helpers of the fuzz targets: every reader under test takes a path, so each input is written
//! into one scratch folder per process (files replaced on every run).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process's scratch folder (kept for the process's life).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch folder"))
        .path()
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("write a scratch file");
    path
}

/// Removes `name` from the scratch folder (a file another input left there).
pub fn remove(name: &str) {
    let _ = std::fs::remove_file(scratch().join(name));
}

/// A tiny model config every model target loads into (2 layers, width 16, vocab 32, 2 groups).
pub fn tiny_config() -> mdm_models::ModelConfig {
    mdm_models::ModelConfig::custom(32, 2, 4, 16, 32, 16).with_query_groups(2)
}
