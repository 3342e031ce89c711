//! Training checkpoints: `<out>/checkpoints/step-NNNNNNNN/` holding the model (`model.safetensors`,
//! `config.json`), the optimizer state (`optimizer.safetensors`) and the trainer state
//! (`trainer.json`: step, tokens, data position, RNG position). A checkpoint is written into a
//! temporary folder and renamed, so a crash never leaves a half-written one; only the newest
//! `keep_last` are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::TrainError;

/// Model weights file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file.
pub const STATE_FILE: &str = "trainer.json";

/// Everything besides weights and moments that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
    /// The data loader's position.
    pub data_position: serde_json::Value,
    /// Key of the training RNG (32 bytes, hex).
    pub rng_key: String,
    /// Stream of the training RNG.
    pub rng_stream: u64,
    /// Word position of the training RNG (a u128, as a decimal string).
    pub rng_word_pos: String,
    /// The last validation result (bits per token), if any.
    pub last_validation_bits: Option<f64>,
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `<out>/checkpoints`.
pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The folder of the checkpoint after `step` steps.
pub fn step_dir(out: &Path, step: usize) -> PathBuf {
    checkpoints_dir(out).join(format!("step-{step:08}"))
}

/// Complete checkpoints under `out`, oldest first (folders being written are ignored).
pub fn list_checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let dir = checkpoints_dir(out);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) else {
            continue;
        };
        if path.join(STATE_FILE).is_file() {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `out`.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list_checkpoints(out)?.pop().map(|(_, p)| p))
}

/// Writes a checkpoint folder: `fill` writes the files into a temporary folder, which is then
/// renamed to `step-NNNNNNNN`; afterwards only the newest `keep_last` checkpoints remain.
pub fn commit_checkpoint(
    out: &Path,
    step: usize,
    keep_last: usize,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let final_dir = step_dir(out, step);
    let tmp = final_dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    let all = list_checkpoints(out)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(final_dir)
}

/// Reads `trainer.json` of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let file = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&file).map_err(io(&file))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        dir: dir.to_path_buf(),
        reason: format!("{STATE_FILE}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_ignores_partial_folders() {
        let out = tempfile::tempdir().unwrap();
        for step in [10, 20, 30, 40] {
            commit_checkpoint(out.path(), step, 2, |dir| {
                std::fs::write(dir.join(STATE_FILE), "{}").map_err(io(dir))
            })
            .unwrap();
        }
        // a crash while writing step 50 leaves only a partial folder
        std::fs::create_dir_all(step_dir(out.path(), 50).with_extension("partial")).unwrap();
        let steps: Vec<usize> = list_checkpoints(out.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![30, 40]);
        assert_eq!(
            latest_checkpoint(out.path()).unwrap().unwrap(),
            step_dir(out.path(), 40)
        );
        let err = commit_checkpoint(out.path(), 60, 2, |_| {
            Err(TrainError::Config("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            list_checkpoints(out.path()).unwrap().len(),
            2,
            "nothing lost"
        );
    }
}
