//! The model families, side by side: each maps its published checkpoint onto the shared network
//! ([`Transformer`](crate::transformer::Transformer)) in its own file, and [`load_hf`] picks one by
//! the `model_type` of a Hugging Face folder's `config.json`.
//!
//! | family | file | `model_type` | what differs from the shared network |
//! |---|---|---|---|
//! | SMDM (Diff_LLaMA) | [`smdm`] | (our names, no HF folder) | nothing: its names are the shared names |
//! | LLaDA, LLaDA-1.5 | [`llada`] | `llada` | names; q/k/v fused on load; mask id inside the vocabulary |
//! | Dream, Dream-Coder, DiffuCoder | [`dream`] | `Dream` | names; q/k/v biases; shifted logits |
//!
//! A new family: a file here with its config reader (every key it does not compute is an
//! `Unsupported` error naming file and key, through [`keys`]), its name map, and one arm in
//! [`load_hf`] (see `docs/architecture.md`, "A new model family").

use std::collections::HashSet;
use std::path::Path;

use mdm_kernels::Kernels;

use crate::gguf::GgmlType;
use crate::hf::HfFolder;
use crate::linear::WeightFormat;
use crate::params::{ParamSource, StoredMatrix};
use crate::transformer::Transformer;
use crate::{MaskedTransformer, ModelConfig, ModelError};
use mdm_kernels::PackedMatrix;

pub mod dream;
mod export;
pub(crate) mod keys;
pub mod llada;
pub mod smdm;

/// The `model_type`s [`load_hf`] reads, for messages.
pub const KNOWN_MODEL_TYPES: &str = "llada, Dream";

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

/// A family's name map: shared-network name -> the family's tensor(s).
pub(crate) type NameMap = dyn Fn(&str) -> Option<Mapped>;

/// What a family needs to load or write a folder: the shared network's config, its names and
/// head layout.
pub(crate) struct Family {
    /// The family's name, for messages.
    pub(crate) name: &'static str,
    /// The shared network's config.
    pub(crate) config: ModelConfig,
    /// Query heads, key/value heads and head size.
    pub(crate) heads: (usize, usize, usize),
    /// Shared name -> the family's tensor(s).
    pub(crate) names: Box<NameMap>,
}

impl Family {
    pub(crate) fn new(
        name: &'static str,
        config: ModelConfig,
        names: impl Fn(&str) -> Option<Mapped> + 'static,
    ) -> Self {
        Self {
            name,
            heads: (config.n_head, config.query_groups(), config.head_size()),
            config,
            names: Box::new(names),
        }
    }

    /// The network with every weight read from `folder`.
    pub(crate) fn build<B: Kernels>(
        &self,
        folder: &HfFolder,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<MaskedTransformer<B>, ModelError> {
        let mut source = FolderSource::new(folder, self.name, self.heads, &self.names);
        let config = &self.config;
        let rows = config.masked_embedding_rows();
        Ok(MaskedTransformer {
            net: Transformer::build_as(config, rows, &mut source, format, device)?,
        })
    }
}

/// The family of `folder`, by its `config.json`'s `model_type`.
pub(crate) fn family_of(folder: &HfFolder) -> Result<Family, ModelError> {
    match folder.model_type()? {
        "llada" => llada::family(folder),
        "Dream" | "dream" => dream::family(folder),
        other => Err(ModelError::Unsupported {
            file: folder.config_file(),
            key: "model_type".into(),
            value: format!("\"{other}\""),
            reason: format!("known families: {KNOWN_MODEL_TYPES}"),
        }),
    }
}

/// Where a family keeps the tensor of one shared-network name.
pub(crate) enum Mapped {
    /// One tensor of the same layout.
    One(String),
    /// Separate q, k and v tensors (weights `[rows, d]` or biases `[rows]`), fused into the
    /// grouped layout of the shared network.
    Grouped {
        /// Query tensor, `H D` rows.
        q: String,
        /// Key tensor, `G D` rows.
        k: String,
        /// Value tensor, `G D` rows.
        v: String,
    },
}

/// A family's folder as the shared network's parameter source: `names` maps each shared name to
/// the family's tensor(s); [`ParamSource::finish`] refuses a folder holding a tensor nothing read.
pub(crate) struct FolderSource<'a> {
    folder: &'a HfFolder,
    used: HashSet<String>,
    /// Query heads, key/value heads and head size, for the grouped layout.
    heads: (usize, usize, usize),
    names: &'a NameMap,
    family: &'static str,
}

impl<'a> FolderSource<'a> {
    pub(crate) fn new(
        folder: &'a HfFolder,
        family: &'static str,
        heads: (usize, usize, usize),
        names: &'a NameMap,
    ) -> Self {
        Self {
            folder,
            used: HashSet::new(),
            heads,
            names,
            family,
        }
    }

    fn read(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let values = self.folder.read(key, shape)?;
        self.used.insert(key.to_string());
        Ok(values)
    }

    /// `[(H + 2G) D, width]` in the grouped layout: for each kv group, the q rows of its `H / G`
    /// query heads, then its k rows, then its v rows (`width` 1 for a bias).
    fn grouped(
        &mut self,
        (q, k, v): (&str, &str, &str),
        width: Option<usize>,
    ) -> Result<Vec<f32>, ModelError> {
        let (h, g, hd) = self.heads;
        let shape = |rows: usize| match width {
            Some(w) => vec![rows, w],
            None => vec![rows],
        };
        let w = width.unwrap_or(1);
        let q = self.read(q, &shape(h * hd))?;
        let k = self.read(k, &shape(g * hd))?;
        let v = self.read(v, &shape(g * hd))?;
        let p = h / g;
        let rows = |m: &[f32], from: usize, n: usize| m[from * w..(from + n) * w].to_vec();
        let mut fused = Vec::with_capacity((h + 2 * g) * hd * w);
        for group in 0..g {
            fused.extend(rows(&q, group * p * hd, p * hd));
            fused.extend(rows(&k, group * hd, hd));
            fused.extend(rows(&v, group * hd, hd));
        }
        Ok(fused)
    }
}

impl ParamSource for FolderSource<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        match (self.names)(key) {
            Some(Mapped::One(name)) => self.read(&name, shape),
            Some(Mapped::Grouped { q, k, v }) => self.grouped((&q, &k, &v), shape.get(1).copied()),
            None => Err(ModelError::Config {
                reason: format!("no {} tensor for `{key}`", self.family),
            }),
        }
    }

    fn take_matrix(&mut self, key: &str, shape: &[usize]) -> Result<StoredMatrix, ModelError> {
        // f16 / bf16 matrices are read in place (no copy); others as f32 values
        match (self.names)(key) {
            Some(Mapped::One(name)) => {
                if let Some(packed) = self.folder.packed(&name, shape)? {
                    self.used.insert(name);
                    return Ok(StoredMatrix::Packed(packed));
                }
            }
            Some(Mapped::Grouped { q, k, v }) => {
                let (h, g, d) = self.heads;
                let width = shape.get(1).copied().unwrap_or(0);
                let parts = [(&q, h * d), (&k, g * d), (&v, g * d)]
                    .map(|(name, rows)| self.folder.packed(name, &[rows, width]));
                if let [Ok(Some(q_part)), Ok(Some(k_part)), Ok(Some(v_part))] = parts {
                    let fused = PackedMatrix::stack(&[&q_part, &k_part, &v_part])
                        .and_then(|m| m.permute_rows(&grouped_rows(self.heads, |r| r)))
                        .map_err(|reason| ModelError::Format {
                            file: self.folder.dir().to_path_buf(),
                            reason: format!("{q}, {k}, {v}: {reason}"),
                        })?;
                    self.used.extend([q, k, v]);
                    return Ok(StoredMatrix::Packed(fused));
                }
            }
            None => {}
        }
        let stored = match (self.names)(key) {
            Some(Mapped::One(name)) => self.folder.stored_type(&name),
            Some(Mapped::Grouped { q, .. }) => self.folder.stored_type(&q),
            None => None,
        };
        Ok(StoredMatrix::Values(
            self.take(key, shape)?,
            stored.unwrap_or(GgmlType::F32),
        ))
    }

    fn release(&mut self, key: &str) {
        match (self.names)(key) {
            Some(Mapped::One(name)) => self.folder.release(&name),
            Some(Mapped::Grouped { q, k, v }) => {
                for name in [q, k, v] {
                    self.folder.release(&name);
                }
            }
            None => {}
        }
    }

    fn finish(&mut self) -> Result<(), ModelError> {
        if let Some(name) = self.folder.tensor_names().find(|n| !self.used.contains(*n)) {
            return Err(ModelError::UnexpectedKey {
                file: self
                    .folder
                    .file_of(name)
                    .unwrap_or(self.folder.dir())
                    .to_path_buf(),
                key: name.to_string(),
                found: Vec::new(),
            });
        }
        Ok(())
    }
}

/// The rows of the fused grouped q/k/v matrix in the stack `[q; k; v]` (`H D`, `G D`, `G D` rows):
/// for each key/value group its `H / G` query heads, its key, its value. `qk_row` maps a q or k
/// row (within its part) to the row the stack holds it at (the identity, or the undoing of a
/// permutation a converter applied).
pub(crate) fn grouped_rows(
    (h, g, d): (usize, usize, usize),
    qk_row: impl Fn(usize) -> usize,
) -> Vec<usize> {
    let p = h / g;
    let mut order = Vec::with_capacity((h + 2 * g) * d);
    for group in 0..g {
        order.extend((group * p * d..(group + 1) * p * d).map(&qk_row));
        order.extend((group * d..(group + 1) * d).map(|r| h * d + qk_row(r)));
        order.extend((group * d..(group + 1) * d).map(|r| (h + g) * d + r));
    }
    order
}

/// The layer and the rest of a shared name `transformer.h.{layer}.{rest}`.
pub(crate) fn layer_part(shared: &str) -> Option<(&str, &str)> {
    shared.strip_prefix("transformer.h.")?.split_once('.')
}
