//! Where a run's rows come from: packed shards (pre-training, with validation blocks) or
//! fine-tuning rows, behind one [`Source`] that also saves and restores its position.

use std::path::{Path, PathBuf};

use mdm_data::sft::{SftDataset, SftLoader};
use mdm_data::shards::{BlockLoader, LoaderOptions};

use crate::objective::Batch;
use crate::{TrainConfig, TrainError};

/// Where training rows come from.
#[derive(Debug, Clone)]
pub enum DataSpec {
    /// Pre-training on packed shards; validation blocks are read in order from `valid`.
    Shards {
        /// Training shard files.
        train: Vec<PathBuf>,
        /// Validation shard files (may be empty: no validation).
        valid: Vec<PathBuf>,
    },
    /// Fine-tuning rows (prompt never masked); no validation.
    Sft(SftDataset),
}

/// The training stream of a run.
#[derive(Debug)]
pub enum Source {
    /// Blocks of packed shards in `config.data_order`.
    Blocks(BlockLoader),
    /// Fine-tuning rows.
    Sft(SftLoader),
}

/// The training stream and the validation blocks (empty without validation data).
pub fn open_data(
    data: DataSpec,
    block_len: usize,
    vocab: usize,
    config: &TrainConfig,
) -> Result<(Source, Vec<Vec<u32>>), TrainError> {
    match data {
        DataSpec::Shards { train, valid } => {
            let loader = BlockLoader::open(
                &train,
                LoaderOptions::new(block_len, vocab)
                    .with_seed(config.seed)
                    .with_order(config.data_order)
                    .with_n_chunks(config.n_chunks),
            )?;
            let valid_blocks = if valid.is_empty() || config.eval_blocks == 0 {
                Vec::new()
            } else {
                let mut v = BlockLoader::open(
                    &valid,
                    LoaderOptions::new(block_len, vocab).with_shuffle(false),
                )?;
                let n = (config.eval_blocks as u64).min(v.blocks_per_epoch());
                (0..n).map(|_| v.next_block()).collect::<Result<_, _>>()?
            };
            Ok((Source::Blocks(loader), valid_blocks))
        }
        DataSpec::Sft(dataset) => {
            if dataset.seq_len < 2 {
                return Err(TrainError::Config("fine-tuning rows need 2+ tokens".into()));
            }
            Ok((
                Source::Sft(SftLoader::new(dataset, config.seed)),
                Vec::new(),
            ))
        }
    }
}

impl Source {
    /// The next `rows` rows.
    pub fn next_batch(&mut self, rows: usize) -> Result<Batch, TrainError> {
        Ok(match self {
            Source::Blocks(loader) => Batch {
                ids: loader.next_batch(rows)?,
                rows,
                cols: loader.options().block_size,
                prompt_len: None,
            },
            Source::Sft(loader) => {
                let b = loader.next_batch(rows);
                Batch {
                    ids: b.ids,
                    rows,
                    cols: loader.data().seq_len,
                    prompt_len: Some(b.prompt_len),
                }
            }
        })
    }

    /// The position to save with a checkpoint.
    pub fn position(&self) -> Result<serde_json::Value, TrainError> {
        match self {
            Source::Blocks(l) => serde_json::to_value(l.position()),
            Source::Sft(l) => serde_json::to_value(l.position()),
        }
        .map_err(|e| TrainError::Config(format!("data position: {e}")))
    }

    /// Continues from a saved position (of the checkpoint in `dir`).
    pub fn restore(&mut self, value: &serde_json::Value, dir: &Path) -> Result<(), TrainError> {
        let bad = |e: serde_json::Error| TrainError::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!("data position: {e}"),
        };
        match self {
            Source::Blocks(l) => l.restore(serde_json::from_value(value.clone()).map_err(bad)?)?,
            Source::Sft(l) => l.restore(serde_json::from_value(value.clone()).map_err(bad)?)?,
        }
        Ok(())
    }
}
