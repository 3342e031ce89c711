//! Training checkpoints: `<out>/checkpoints/step-NNNNNNNN/` holding the model (`model.safetensors`,
//! `config.json`), the optimizer state (`optimizer.safetensors`) and the trainer state
//! (`trainer.json`: step, tokens, data position; the training draws need no state: each
//! micro-batch has its own stream of the seed). A checkpoint is written into a
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
    /// The last validation result (bits per token), if any.
    pub last_validation_bits: Option<f64>,
}

/// Writes a checkpoint when one is due: every `save_every` steps (0 = never on a schedule), at the
/// end of a run or of its invocation; keeps the newest `keep_last`.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    out: PathBuf,
    save_every: usize,
    keep_last: usize,
}

impl Checkpointer {
    /// Checkpoints under `<out>/checkpoints`.
    pub fn new(out: &Path, save_every: usize, keep_last: usize) -> Self {
        Self {
            out: out.to_path_buf(),
            save_every,
            keep_last,
        }
    }

    /// Whether the checkpoint after `step` is due (`last` = the last step of this invocation).
    pub fn due(&self, step: usize, last: bool) -> bool {
        last || (self.save_every > 0 && step.is_multiple_of(self.save_every))
    }

    /// Writes the checkpoint of `state.step`: `write_model` writes the model and optimizer files
    /// into the (temporary) folder, then the trainer state is added and the folder committed.
    pub fn save(
        &self,
        state: &TrainerState,
        write_model: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<PathBuf, TrainError> {
        commit_checkpoint(&self.out, state.step, self.keep_last, |dir| {
            write_model(dir)?;
            let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!("trainer state: {e}"),
            })?;
            write_atomic(&dir.join(STATE_FILE), json.as_bytes())
        })
    }
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
    write_dir_atomic(&final_dir, fill)?;
    let all = list_checkpoints(out)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(final_dir)
}

/// Writes the folder `dir` whole or not at all: `fill` writes into `<dir>.partial`, which then
/// takes the place of `dir` (an older `dir` is moved to `<dir>.old` first and removed after), so
/// a process killed at any point leaves either the old folder or the new one complete under one
/// of those names, never a mixture under `dir`.
pub fn write_dir_atomic(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let tmp = dir.with_extension("partial");
    let old = dir.with_extension("old");
    for stale in [&tmp, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io(stale))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
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
    fn the_trainer_state_round_trips() {
        let state = TrainerState {
            step: 3,
            tokens: 96,
            elapsed_s: 1.25,
            data_position: serde_json::json!({"epoch": 0, "block": 12}),
            last_validation_bits: Some(7.5),
        };
        let out = tempfile::tempdir().unwrap();
        let dir = Checkpointer::new(out.path(), 0, 1)
            .save(&state, |_| Ok(()))
            .unwrap();
        assert_eq!(read_state(&dir).unwrap(), state);
        let c = Checkpointer::new(out.path(), 5, 1);
        assert!(c.due(10, false) && c.due(3, true) && !c.due(3, false));
        assert!(!Checkpointer::new(out.path(), 0, 1).due(10, false));
    }

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

    #[test]
    fn a_folder_is_replaced_whole_or_kept() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("model");
        let write =
            |text: &'static str| move |d: &Path| std::fs::write(d.join("w"), text).map_err(io(d));
        write_dir_atomic(&dir, write("one")).unwrap();
        write_dir_atomic(&dir, write("two")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("w")).unwrap(), "two");
        // a failed write keeps the old folder and the next write clears what it left
        let failed = write_dir_atomic(&dir, |d| {
            std::fs::write(d.join("w"), "half").map_err(io(d))?;
            Err(TrainError::Config("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("w")).unwrap(), "two");
        write_dir_atomic(&dir, write("three")).unwrap();
        let names: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model")]);
        assert_eq!(std::fs::read_to_string(dir.join("w")).unwrap(), "three");
    }
}
