//! Where a masked model comes from, as the command-line tools name it: one of our checkpoint
//! folders, a published SMDM file with its config, a Hugging Face folder (family from its
//! `model_type`), or a seeded random initialisation. One way for every program to turn its flags
//! into a model.

use mdm_kernels::Kernels;
use std::path::{Path, PathBuf};

use crate::{MaskedTransformer, ModelConfig, ModelError};

/// A masked model to load.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A checkpoint folder written by this library (`--checkpoint DIR`).
    Checkpoint(PathBuf),
    /// An SMDM safetensors file and the config it was trained with (`--smdm FILE --config NAME`).
    Smdm {
        /// The file.
        file: PathBuf,
        /// Its config.
        config: ModelConfig,
    },
    /// A Hugging Face folder (`--hf DIR`, or `--hf owner/name`: the repository's snapshot,
    /// fetched into the Hugging Face cache, see [`crate::hub`]).
    HuggingFace(PathBuf),
    /// Random weights (`--config NAME` alone).
    Random {
        /// The config.
        config: ModelConfig,
        /// The initialisation seed.
        seed: u64,
    },
}

impl ModelSource {
    /// The source the usual flags describe: `checkpoint`, else `hf` (a folder, or a repository
    /// name fetched into the Hugging Face cache unless already there), else `smdm` with `config`,
    /// else random weights of `config` (a Diff_LLaMA name or a JSON file) from `seed`.
    pub fn from_flags(
        checkpoint: Option<&Path>,
        hf: Option<&Path>,
        smdm: Option<&Path>,
        config: &str,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Ok(match (checkpoint, hf, smdm) {
            (Some(dir), _, _) => Self::Checkpoint(dir.to_path_buf()),
            (None, Some(dir), _) => Self::HuggingFace(crate::hub::resolve(dir)?),
            (None, None, Some(file)) => Self::Smdm {
                file: file.to_path_buf(),
                config: ModelConfig::from_name_or_file(config)?,
            },
            (None, None, None) => Self::Random {
                config: ModelConfig::from_name_or_file(config)?,
                seed,
            },
        })
    }

    /// Loads (or initialises) the model.
    pub fn load_masked<B: Kernels>(
        &self,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        match self {
            Self::Checkpoint(dir) => MaskedTransformer::load(dir, device),
            Self::Smdm { file, config } => MaskedTransformer::load_smdm(file, config, device),
            Self::HuggingFace(dir) => MaskedTransformer::load_hf(dir, device),
            Self::Random { config, seed } => config.init_masked(*seed, device),
        }
    }

    /// The model's folder, for a checkpoint or Hugging Face folder.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            Self::Checkpoint(dir) | Self::HuggingFace(dir) => Some(dir),
            _ => None,
        }
    }

    /// A few words for logs: `checkpoint DIR`, `SMDM file FILE`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::Checkpoint(dir) => format!("checkpoint {}", dir.display()),
            Self::Smdm { file, .. } => format!("SMDM file {}", file.display()),
            Self::HuggingFace(dir) => format!("Hugging Face folder {}", dir.display()),
            Self::Random { seed, .. } => format!("random initialisation (seed {seed})"),
        }
    }
}
