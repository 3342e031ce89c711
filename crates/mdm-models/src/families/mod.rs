//! The model families, side by side: each maps its published checkpoint onto the shared network
//! ([`Transformer`](crate::transformer::Transformer)) in its own file, and [`load_hf`] picks one by
//! the `model_type` of a Hugging Face folder's `config.json`.
//!
//! | family | file | `model_type` | what differs from the shared network |
//! |---|---|---|---|
//! | SMDM (Diff_LLaMA) | [`smdm`] | (our names, no HF folder) | nothing: its names are the shared names |
//! | LLaDA, LLaDA-1.5 | [`llada`] | `llada` | names; q/k/v fused on load; mask id inside the vocabulary |
//! | Dream, Dream-Coder, DiffuCoder | [`dream`] | `Dream` | names; q/k/v biases; shifted logits |
//! | LLaDA2.0, LLaDA2.1 | [`llada2`] | `llada2_moe`, `llada21_moe` | stacked q/k/v; q/k norms; partial RoPE; `head_dim`; dense-first layers then sigmoid, group-limited MoE with an expert bias and a shared expert |
//! | LLaDA-MoE | [`lladamoe`] | `lladamoe` | q/k norms; softmax MoE, weights not renormalised |
//! | RND1 | [`rnd1`] | `rnd1` | q/k norms; `head_dim`; softmax MoE, renormalised; shifted logits |
//!
//! A family's file holds all it knows: its config reader (every key it does not compute is an
//! `Unsupported` error naming file and key, through [`keys`]), its name map from the network's
//! slots ([`crate::slots`]) to its tensors, and its GGUF layout. No tensor name is written outside
//! these files ([`smdm`] holds our own checkpoints' names, [`llama_cpp`] llama.cpp's table). A new
//! family: a file here and one arm in [`family_of`] (see `docs/architecture.md`, "A new model
//! family").

use std::path::Path;

use mdm_kernels::Kernels;

use crate::hf::HfFolder;
use crate::linear::WeightFormat;
use crate::params::NamedSource;
pub use crate::params::{Mapped, NameMap};
use crate::transformer::Transformer;
use crate::{MaskedTransformer, ModelConfig, ModelError};

pub mod dream;
mod export;
pub(crate) mod keys;
pub mod llada;
pub mod llada2;
pub mod lladamoe;
pub mod llama_cpp;
pub mod rnd1;
pub mod smdm;

/// The `model_type`s [`load_hf`] reads, for messages.
pub const KNOWN_MODEL_TYPES: &str = "llada, Dream, llada2_moe, llada21_moe, lladamoe, rnd1";

/// Loads a Hugging Face folder of a family we know, chosen by `config.json`'s `model_type`.
pub fn load_hf<B: Kernels>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<MaskedTransformer<B>, ModelError> {
    load_hf_as(dir, WeightFormat::Stored, device)
}

/// As [`load_hf`], the projection weights kept as `format` says (bf16 weights stay bf16 on
/// burn-flex by default; `WeightFormat::As(Q8_0)` quantizes on load).
pub fn load_hf_as<B: Kernels>(
    dir: impl AsRef<Path>,
    format: WeightFormat,
    device: &B::Device,
) -> Result<MaskedTransformer<B>, ModelError> {
    let folder = HfFolder::open(dir)?;
    let family = family_of(&folder)?;
    family.build(&folder, format, device)
}

/// Whether `dir` is a Hugging Face model folder (its `config.json` names a `model_type`), not one
/// of our checkpoint folders.
pub fn is_hf_folder(dir: impl AsRef<Path>) -> bool {
    std::fs::read_to_string(dir.as_ref().join(crate::hf::HF_CONFIG_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|json| json.get("model_type").is_some())
}

/// The shared network's config of a Hugging Face folder of a family we know (its `config.json`
/// read by the family's reader; the weights are not read).
pub fn hf_model_config(dir: impl AsRef<Path>) -> Result<ModelConfig, ModelError> {
    Ok(family_of(&HfFolder::open(dir)?)?.config)
}

/// A family: its name, the shared network's config read from its `config.json`, and its name
/// map. The families here are built by their files' `family()`; a family of one's own is a value
/// of this type (see `docs/families.md` and `tests/suite/families.rs`).
///
/// ```
/// use mdm_models::families::{Family, Mapped};
/// use mdm_models::slots::Slot;
///
/// // every slot under our checkpoints' names: the SMDM family
/// fn names(slot: Slot) -> Option<Mapped> {
///     Some(Mapped::One(mdm_models::smdm::smdm_name(slot)))
/// }
/// let family = Family {
///     name: "mine",
///     config: mdm_models::ModelConfig::named("6M").unwrap(),
///     names,
/// };
/// assert_eq!((family.names)(Slot::Head), Some(Mapped::One("lm_head.weight".into())));
/// ```
pub struct Family {
    /// The family's name, for messages.
    pub name: &'static str,
    /// The shared network's config.
    pub config: ModelConfig,
    /// Slot -> the family's tensor(s).
    pub names: NameMap,
}

impl Family {
    /// The masked network with every weight read from `folder` (any dtype, sharded or not), kept
    /// as `format` says. Every slot's tensor must be there with its shape, and nothing else.
    pub fn build<B: Kernels>(
        &self,
        folder: &HfFolder,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        let config = &self.config;
        let mut source = NamedSource::new(folder, self.names, config, self.name);
        let rows = config.masked_embedding_rows();
        Ok(MaskedTransformer {
            net: Transformer::build_as(config, rows, &mut source, format, device)?,
        })
    }
}

/// How a family's GGUF files are laid out (llama.cpp's converter): its `general.architecture`,
/// its tensor names, and what the architecture adds to the metadata.
pub(crate) struct GgufLayout {
    /// `general.architecture`.
    pub(crate) arch: &'static str,
    /// Slot -> the file's tensor(s).
    pub(crate) names: NameMap,
    /// Whether the blocks have q/k/v biases.
    pub(crate) qkv_bias: bool,
    /// A Mixture-of-Experts arch: how llama.cpp's graph for it routes (its sizes are in the
    /// metadata).
    pub(crate) moe: Option<GgufMoe>,
}

/// What llama.cpp's graph of a Mixture-of-Experts arch fixes: softmax scores, and whether the
/// top-k weights are renormalised (`build_moe_ffn`'s `norm_w`).
pub(crate) struct GgufMoe {
    pub(crate) renormalize: bool,
}

/// The GGUF layouts of the families, by architecture.
pub(crate) const GGUF_LAYOUTS: &[GgufLayout] =
    &[llada::GGUF, dream::GGUF, lladamoe::GGUF, rnd1::GGUF];

/// The family of `folder`, by its `config.json`'s `model_type`.
pub fn family_of(folder: &HfFolder) -> Result<Family, ModelError> {
    match folder.model_type()? {
        "llada" => llada::family(folder),
        "Dream" | "dream" => dream::family(folder),
        "llada2_moe" | "llada21_moe" => llada2::family(folder),
        "lladamoe" => lladamoe::family(folder),
        "rnd1" => rnd1::family(folder),
        other => Err(ModelError::Unsupported {
            file: folder.config_file(),
            key: "model_type".into(),
            value: format!("\"{other}\""),
            reason: format!("known families: {KNOWN_MODEL_TYPES}"),
        }),
    }
}
