//! Checkpoint I/O: SMDM safetensors files and our own checkpoint folders.
//!
//! Both use SMDM's tensor names and PyTorch layouts (see the crate docs), so our checkpoints are
//! also readable by SMDM's PyTorch code. Our folder format is `model.safetensors` plus a
//! `config.json` holding [`CheckpointMeta`]; each file is written to a temporary name and renamed, so
//! a crash never leaves a half-written checkpoint.

use mdm_kernels::Kernels;
use std::fs;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype};
use serde::{Deserialize, Serialize};

use crate::families::smdm::{smdm_name, smdm_names};
use crate::hf::HfFolder;
use crate::params::NamedSource;
use crate::transformer::Transformer;
use crate::{CausalTransformer, MaskedTransformer, ModelConfig, ModelError, WeightFormat};

/// Which network a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// [`MaskedTransformer`] (embedding of `V + 1` rows).
    Masked,
    /// [`CausalTransformer`] (embedding of `V` rows).
    Causal,
}

/// Contents of `config.json` in a checkpoint folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format tag, `mdm-rs/1`.
    pub format: String,
    /// Which network.
    pub kind: ModelKind,
    /// Its hyper-parameters.
    pub config: ModelConfig,
}

const FORMAT: &str = "mdm-rs/1";
/// Weights file inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config file inside a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";

fn io(file: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        file: file.to_path_buf(),
        source,
    }
}

pub(crate) fn to_f32(
    file: &Path,
    key: &str,
    view: &TensorView<'_>,
) -> Result<Vec<f32>, ModelError> {
    let bytes = view.data();
    let pairs = |n: usize| bytes.chunks_exact(n);
    Ok(match view.dtype() {
        Dtype::F32 => pairs(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => pairs(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => pairs(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => pairs(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        other => {
            return Err(ModelError::Dtype {
                file: file.to_path_buf(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// The network of the SMDM-named safetensors file `path` (an SMDM file, our checkpoint's
/// weights), each tensor in its stored type, kept as `format` says.
pub(crate) fn load_net<B: Kernels>(
    path: &Path,
    config: &ModelConfig,
    embedding_rows: usize,
    format: WeightFormat,
    device: &B::Device,
) -> Result<Transformer<B>, ModelError> {
    let store = HfFolder::open_file(path)?;
    let mut src = NamedSource::new(&store, smdm_names, config, "SMDM");
    Transformer::build_as(config, embedding_rows, &mut src, format, device)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn save_net<B: Kernels>(
    net: &Transformer<B>,
    kind: ModelKind,
    dir: &Path,
) -> Result<(), ModelError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let weights = dir.join(WEIGHTS_FILE);
    let state = net.state()?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = state
        .into_iter()
        .map(|(slot, s, v)| {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (smdm_name(slot), s, bytes)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ModelError::Format {
                    file: weights.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // one key only: safetensors takes the metadata as a HashMap, whose order differs from one
    // process to the next, and the same weights must give the same bytes (the kind is in
    // config.json)
    let metadata = Some([("format".to_string(), FORMAT.to_string())].into());
    let serialized = safetensors::serialize(views, &metadata).map_err(|e| ModelError::Format {
        file: weights.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&weights, &serialized)?;
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        kind,
        config: net.config.clone(),
    };
    let json = serde_json::to_string_pretty(&meta).map_err(|e| ModelError::Config {
        reason: e.to_string(),
    })?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Reads `config.json` of a checkpoint folder.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, ModelError> {
    let file = dir.join(CONFIG_FILE);
    let json = fs::read_to_string(&file).map_err(io(&file))?;
    let meta: CheckpointMeta = serde_json::from_str(&json).map_err(|e| ModelError::Config {
        reason: format!("{}: {e}", file.display()),
    })?;
    meta.config.validate()?;
    Ok(meta)
}

fn load_folder<B: Kernels>(
    dir: &Path,
    kind: ModelKind,
    format: WeightFormat,
    device: &B::Device,
) -> Result<Transformer<B>, ModelError> {
    let meta = read_meta(dir)?;
    if meta.kind != kind {
        return Err(ModelError::Config {
            reason: format!(
                "{} holds a {:?} model, not a {kind:?} one",
                dir.display(),
                meta.kind
            ),
        });
    }
    let rows = match kind {
        ModelKind::Masked => meta.config.masked_embedding_rows(),
        ModelKind::Causal => meta.config.padded_vocab_size(),
    };
    load_net(&dir.join(WEIGHTS_FILE), &meta.config, rows, format, device)
}

impl<B: Kernels> MaskedTransformer<B> {
    /// Saves to a checkpoint folder (`model.safetensors` + `config.json`).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        save_net(&self.net, ModelKind::Masked, dir.as_ref())
    }

    /// Loads a checkpoint folder written by [`Self::save`].
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_as(dir, WeightFormat::Stored, device)
    }

    /// As [`Self::load`], the projection weights kept as `format` says.
    pub fn load_as(
        dir: impl AsRef<Path>,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            net: load_folder(dir.as_ref(), ModelKind::Masked, format, device)?,
        })
    }
}

impl<B: Kernels> CausalTransformer<B> {
    /// Saves to a checkpoint folder (`model.safetensors` + `config.json`).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        save_net(&self.net, ModelKind::Causal, dir.as_ref())
    }

    /// Loads a checkpoint folder written by [`Self::save`].
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            net: load_folder(
                dir.as_ref(),
                ModelKind::Causal,
                WeightFormat::Stored,
                device,
            )?,
        })
    }
}
