//! Where a masked model comes from, as the command-line tools name it: one of our checkpoint
//! folders, a published SMDM file with its config, a Hugging Face folder (family from its
//! `model_type`), or a seeded random initialisation. One way for every program to turn its flags
//! into a model.

use mdm_data::chat::ChatPrompt;
use mdm_data::Tokenizer;
use mdm_kernels::Kernels;
use std::path::{Path, PathBuf};

use mdm_eval::{Causal, LanguageModel, Masked};
use mdm_models::gguf::GgmlType;
use mdm_models::{
    CausalTransformer, MaskedTransformer, ModelConfig, ModelError, ModelKind, Precision,
    WeightFormat,
};

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
    /// A GGUF file of llama.cpp's converter (`--hf FILE.gguf`): LLaDA or Dream, weights read in
    /// place in their stored types ([`mdm_models::gguf::model`]).
    Gguf(PathBuf),
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
            (None, Some(file), _) if file.extension().is_some_and(|e| e == "gguf") => {
                Self::Gguf(file.to_path_buf())
            }
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

    /// What the source holds: the autoregressive baseline only as one of our checkpoints saved
    /// as causal; every other source is a masked model.
    pub fn kind(&self) -> Result<ModelKind, ModelError> {
        Ok(match self {
            Self::Checkpoint(dir) => mdm_models::checkpoint::read_meta(dir)?.kind,
            _ => ModelKind::Masked,
        })
    }

    /// Loads the model whatever its kind ([`Self::kind`]), for the programs that take both (the
    /// server, the evaluator): a masked model as [`Self::load_masked_as`], the baseline after
    /// the same memory check.
    pub fn load_any_as<B: Kernels>(
        &self,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<Box<dyn LanguageModel<B>>, ModelError> {
        Ok(match self.kind()? {
            ModelKind::Causal => Box::new(Causal(self.load_causal(device)?)),
            ModelKind::Masked => Box::new(Masked(self.load_masked_as(format, device)?)),
        })
    }

    /// Loads the autoregressive baseline (one of our checkpoints saved as causal, weights as
    /// stored) after the memory check; any other source is refused naming what it holds.
    pub fn load_causal<B: Kernels>(
        &self,
        device: &B::Device,
    ) -> Result<CausalTransformer<B>, ModelError> {
        let dir = match self {
            Self::Checkpoint(dir) if self.kind()? == ModelKind::Causal => dir,
            other => {
                return Err(ModelError::Config {
                    reason: format!(
                        "{} holds a masked model, not the autoregressive baseline",
                        other.describe()
                    ),
                })
            }
        };
        let meta = mdm_models::checkpoint::read_meta(dir)?;
        let weights =
            mdm_models::hf::HfFolder::open_file(dir.join(mdm_models::checkpoint::WEIGHTS_FILE))?;
        mdm_models::memory::check(
            &self.describe(),
            &meta.config,
            weights.stored_type_by_size(),
            WeightFormat::Stored,
            B::PACKS_WEIGHTS,
        )?;
        CausalTransformer::load(dir, device)
    }

    /// Loads (or initialises) the model, weights as stored.
    pub fn load_masked<B: Kernels>(
        &self,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        self.load_masked_as(WeightFormat::Stored, device)
    }

    /// Loads (or initialises) the model with its projection weights kept as `format` says, after
    /// checking that it fits in the memory available ([`mdm_models::memory`]: a typed error naming the
    /// formats that would fit, before anything is read). On a backend that does not pack weights,
    /// f16 and bf16 become burn half tensors ([`mdm_models::Precision`]) and quantized types are
    /// widened into f32 tensors.
    pub fn load_masked_as<B: Kernels>(
        &self,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        let packs = B::PACKS_WEIGHTS;
        let check = |config: &ModelConfig, stored: GgmlType| {
            mdm_models::memory::check(&self.describe(), config, stored, format, packs)
        };
        let model = match self {
            Self::Checkpoint(dir) => {
                let meta = mdm_models::checkpoint::read_meta(dir)?;
                let weights = mdm_models::hf::HfFolder::open_file(
                    dir.join(mdm_models::checkpoint::WEIGHTS_FILE),
                )?;
                check(&meta.config, weights.stored_type_by_size())?;
                MaskedTransformer::load_as(dir, format, device)?
            }
            Self::Smdm { file, config } => {
                let weights = mdm_models::hf::HfFolder::open_file(file)?;
                check(config, weights.stored_type_by_size())?;
                MaskedTransformer::load_smdm_as(file, config, format, device)?
            }
            Self::HuggingFace(dir) => {
                let folder = mdm_models::hf::HfFolder::open(dir)?;
                check(
                    &mdm_models::families::hf_model_config(dir)?,
                    folder.stored_type_by_size(),
                )?;
                mdm_models::families::load_hf_as(dir, format, device)?
            }
            Self::Gguf(file) => {
                let model = mdm_models::gguf::model::GgufModel::open(file)?;
                check(model.config(), model.stored_type())?;
                model.load(format, device)?
            }
            Self::Random { config, seed } => {
                check(config, GgmlType::F32)?;
                config.init_masked_as(*seed, format, device)?
            }
        };
        Ok(match (packs, format) {
            (false, WeightFormat::As(GgmlType::F16)) => model.with_precision(Precision::F16),
            (false, WeightFormat::As(GgmlType::Bf16)) => model.with_precision(Precision::Bf16),
            _ => model,
        })
    }

    /// The tokenizer to use with this model: `file` (a `tokenizer.json`) when given, else the
    /// model folder's ([`Tokenizer::from_folder`]) or the GGUF file's own vocabulary
    /// ([`mdm_models::gguf::model::GgufModel::bpe_vocab`]) when it has one; `None` when none of these.
    pub fn tokenizer(&self, file: Option<&Path>) -> Result<Option<Tokenizer>, ModelError> {
        if file.is_some() {
            return Ok(Tokenizer::for_model(file, None)?);
        }
        match self {
            Self::Gguf(path) => {
                let model = mdm_models::gguf::model::GgufModel::open(path)?;
                match model.bpe_vocab()? {
                    Some(vocab) => Ok(Some(Tokenizer::from_bpe_vocab(vocab, path)?)),
                    None => Ok(None),
                }
            }
            _ => Ok(Tokenizer::for_model(None, self.folder())?),
        }
    }

    /// The chat template of this model: its folder's `tokenizer_config.json`
    /// ([`ChatPrompt::for_folder`]), a GGUF file's `tokenizer.chat_template` (with the tokens its
    /// `tokenizer.ggml.bos_token_id` / `eos_token_id` name), else the plain template.
    pub fn chat_prompt(&self) -> Result<ChatPrompt, ModelError> {
        match self {
            Self::Gguf(path) => {
                let model = mdm_models::gguf::model::GgufModel::open(path)?;
                Ok(model.chat_prompt().unwrap_or_else(ChatPrompt::plain))
            }
            _ => match self.folder() {
                Some(dir) => Ok(ChatPrompt::for_folder(dir)?),
                None => Ok(ChatPrompt::plain()),
            },
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
            Self::Gguf(file) => format!("GGUF file {}", file.display()),
            Self::Random { seed, .. } => format!("random initialisation (seed {seed})"),
        }
    }
}

/// The model flags every program takes (`#[command(flatten)]`, feature `clap`): where the model
/// comes from, its tokenizer and the precision its weights are kept at.
///
/// ```
/// use clap::Parser;
/// use mdm_hub::{ModelArgs, ModelSource};
///
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     model: ModelArgs,
/// }
/// let args = Args::parse_from(["prog", "--config", "6M", "--quant", "q8_0"]);
/// assert!(matches!(args.model.source(0)?, ModelSource::Random { .. }));
/// assert_eq!(args.model.weight_format()?.to_string(), "q8_0");
/// # Ok::<(), mdm_models::ModelError>(())
/// ```
#[cfg(feature = "clap")]
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// A checkpoint folder written by this library (`model.safetensors` + `config.json`).
    #[arg(long, visible_alias = "init", conflicts_with_all = ["smdm", "hf"])]
    pub checkpoint: Option<PathBuf>,
    /// A Hugging Face folder or repository name (`owner/name`, fetched into the Hugging Face
    /// cache): LLaDA or Dream by its `model_type`, with its tokenizer (tokenizer.json, or
    /// vocab.json + merges.txt) unless `--tokenizer`; or a llama.cpp GGUF file (`.gguf`), with
    /// the byte-level BPE vocabulary and chat template it holds.
    #[arg(long, conflicts_with = "smdm")]
    pub hf: Option<PathBuf>,
    /// An SMDM safetensors file (with `--config`).
    #[arg(long)]
    pub smdm: Option<PathBuf>,
    /// A Diff_LLaMA name (`6M`, `Diff_LLaMA_170M`, ...) or a config JSON file (for `--smdm`, or
    /// random weights alone).
    #[arg(long, default_value = "6M")]
    pub config: String,
    /// A HF tokenizer.json: prompts are then text (default: the model folder's, or a GGUF
    /// file's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Weights converted to f32, f16 or bf16 on load (default: as stored). On the CPU they stay
    /// in that type and the activations in f32; on wgpu/CUDA the network runs in it
    /// (`mdm_models::precision`).
    #[arg(long, conflicts_with = "quant")]
    pub dtype: Option<String>,
    /// Weights quantized on load: q8_0 or q4_k (GGUF's formats; on the CPU multiplied in place).
    #[arg(long)]
    pub quant: Option<String>,
}

#[cfg(feature = "clap")]
impl ModelArgs {
    /// The model the flags name (random weights drawn from `seed` when none is given).
    pub fn source(&self, seed: u64) -> Result<ModelSource, ModelError> {
        ModelSource::from_flags(
            self.checkpoint.as_deref(),
            self.hf.as_deref(),
            self.smdm.as_deref(),
            &self.config,
            seed,
        )
    }

    /// The format `--dtype` / `--quant` ask for.
    pub fn weight_format(&self) -> Result<WeightFormat, ModelError> {
        WeightFormat::from_flags(self.dtype.as_deref(), self.quant.as_deref())
    }

    /// The model's tokenizer: `--tokenizer`, else the one `source` carries.
    pub fn tokenizer(&self, source: &ModelSource) -> Result<Option<Tokenizer>, ModelError> {
        source.tokenizer(self.tokenizer.as_deref())
    }
}
