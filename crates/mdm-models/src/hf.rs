//! Hugging Face checkpoint folders: `config.json`, and the weights in one `model.safetensors` or
//! in shards listed by `model.safetensors.index.json`.
//!
//! Shards are memory-mapped and each tensor is read when the network asks for it: kept in its stored
//! type in place (f16/bf16 on a backend that packs weights) or converted (to f32, or as
//! `WeightFormat` says), so loading holds the final weights plus one tensor, never a second copy of
//! the checkpoint. The
//! folder is checked when it is opened: a shard the index names must exist and hold the keys the
//! index gives it, no key may be in two shards, and every file must be valid safetensors.
//!
//! Why not burn-store: its `SafetensorsStore` (0.21) remaps keys and, with its PyTorch adapter,
//! transposes linear weights into burn's layout, but it applies one file's tensors to a module one
//! to one. LLaDA's separate `q_proj` / `k_proj` / `v_proj` must be fused into the grouped
//! projection of the shared network, and published folders are sharded behind an index, so the
//! family's name map and [`NamedSource`](crate::params) do the mapping and this module the
//! shards. A single safetensors file (an SMDM file, our checkpoint's weights) opens the same way
//! ([`HfFolder::open_file`]), so every safetensors origin keeps its stored types.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::checkpoint::to_f32;
use crate::gguf::GgmlType;
use crate::ModelError;

/// The config file of a folder.
pub const HF_CONFIG_FILE: &str = "config.json";
/// The index of a sharded folder.
pub const HF_INDEX_FILE: &str = "model.safetensors.index.json";
/// The weights of an unsharded folder.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";

struct MappedShard {
    file: PathBuf,
    map: std::sync::Arc<Mmap>,
}

/// An opened Hugging Face folder: its `config.json` and its weights, memory-mapped.
pub struct HfFolder {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<MappedShard>,
    /// Tensor name -> (shard, shape).
    tensors: BTreeMap<String, (usize, Vec<usize>)>,
}

fn io(file: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        file: file.to_path_buf(),
        source,
    }
}

fn header(shard: &MappedShard) -> Result<SafeTensors<'_>, ModelError> {
    SafeTensors::deserialize(&shard.map).map_err(|e| ModelError::Format {
        file: shard.file.clone(),
        reason: e.to_string(),
    })
}

impl HfFolder {
    /// Opens and checks `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref().to_path_buf();
        let config_file = dir.join(HF_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_file).map_err(io(&config_file))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                reason: format!("{}: {e}", config_file.display()),
            })?;
        Self::with_weights(dir, config)
    }

    /// One safetensors file on its own (an SMDM file, our checkpoint's weights): no
    /// `config.json`, the file its only shard.
    pub fn open_file(file: impl AsRef<Path>) -> Result<Self, ModelError> {
        let file = file.as_ref();
        File::open(file).map_err(io(file))?;
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        Self::with_shards(dir, serde_json::Value::Null, vec![name.into_owned()], None)
    }

    /// The weights of `dir`: its index's shards, else `model.safetensors`.
    fn with_weights(dir: PathBuf, config: serde_json::Value) -> Result<Self, ModelError> {
        let index_file = dir.join(HF_INDEX_FILE);
        let (files, index) = if index_file.is_file() {
            let index = read_index(&index_file)?;
            let mut files: Vec<String> = index.values().cloned().collect();
            files.sort();
            files.dedup();
            (files, Some(index))
        } else {
            (vec![HF_WEIGHTS_FILE.to_string()], None)
        };
        Self::with_shards(dir, config, files, index)
    }

    /// Maps `files` (in `dir`) and checks them against `index` (tensor -> file) when there is one.
    fn with_shards(
        dir: PathBuf,
        config: serde_json::Value,
        files: Vec<String>,
        index: Option<HashMap<String, String>>,
    ) -> Result<Self, ModelError> {
        let index_file = dir.join(HF_INDEX_FILE);
        let mut shards = Vec::with_capacity(files.len());
        for name in &files {
            let file = dir.join(name);
            if !file.is_file() {
                return Err(ModelError::Shards {
                    file: if index.is_some() {
                        index_file.clone()
                    } else {
                        file.clone()
                    },
                    reason: format!("shard `{name}` does not exist in {}", dir.display()),
                });
            }
            let handle = File::open(&file).map_err(io(&file))?;
            // SAFETY: the map is read-only and lives as long as the folder; a checkpoint file
            // changed by another process while it is mapped is outside what we guard against.
            let map = unsafe { Mmap::map(&handle) }.map_err(io(&file))?;
            shards.push(MappedShard {
                file,
                map: std::sync::Arc::new(map),
            });
        }
        let mut tensors: BTreeMap<String, (usize, Vec<usize>)> = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let st = header(shard)?;
            for (name, view) in st.tensors() {
                if let Some((other, _)) = tensors.get(&name) {
                    return Err(ModelError::Shards {
                        file: shard.file.clone(),
                        reason: format!(
                            "tensor `{name}` is also in {}",
                            shards[*other].file.display()
                        ),
                    });
                }
                tensors.insert(name, (i, view.shape().to_vec()));
            }
        }
        if let Some(index) = &index {
            for (key, name) in index {
                let shard = files.iter().position(|f| f == name).unwrap_or(usize::MAX);
                match tensors.get(key) {
                    Some((i, _)) if *i == shard => {}
                    Some((i, _)) => {
                        return Err(ModelError::Shards {
                            file: index_file.clone(),
                            reason: format!(
                                "`{key}` is listed in `{name}` but stored in {}",
                                shards[*i].file.display()
                            ),
                        })
                    }
                    None => {
                        return Err(ModelError::Shards {
                            file: index_file.clone(),
                            reason: format!(
                                "`{key}` is listed in `{name}`, which does not hold it"
                            ),
                        })
                    }
                }
            }
            if let Some(key) = tensors.keys().find(|k| !index.contains_key(*k)) {
                return Err(ModelError::Shards {
                    file: index_file.clone(),
                    reason: format!("`{key}` is in a shard but not in the index"),
                });
            }
        }
        Ok(Self {
            dir,
            config,
            shards,
            tensors,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json`'s path.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join(HF_CONFIG_FILE)
    }

    /// `config.json`, parsed.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(&self) -> Result<&str, ModelError> {
        self.config["model_type"]
            .as_str()
            .ok_or_else(|| ModelError::Unsupported {
                file: self.config_file(),
                key: "model_type".into(),
                value: self.config["model_type"].to_string(),
                reason: "a Hugging Face folder's config.json must name its model_type".into(),
            })
    }

    /// The names of every tensor in the folder, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The weight files, in the order they were opened.
    pub fn shard_files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.file.as_path())
    }

    /// The tensors of the weight file `shard` (one of [`Self::shard_files`]): name, dtype and
    /// shape, as stored.
    pub fn tensors_in(
        &self,
        shard: &Path,
    ) -> Result<Vec<(String, safetensors::Dtype, Vec<usize>)>, ModelError> {
        let Some(shard) = self.shards.iter().find(|s| s.file == shard) else {
            return Err(ModelError::Shards {
                file: shard.to_path_buf(),
                reason: format!("not a weight file of {}", self.dir.display()),
            });
        };
        let st = header(shard)?;
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.dtype(), view.shape().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tensors)
    }

    /// The `__metadata__` of the weight file `shard` (e.g. `{"format": "pt"}`), if it has one.
    pub fn metadata_of(
        &self,
        shard: &Path,
    ) -> Result<Option<std::collections::HashMap<String, String>>, ModelError> {
        let Some(mapped) = self.shards.iter().find(|s| s.file == shard) else {
            return Ok(None);
        };
        let (_, meta) =
            SafeTensors::read_metadata(&mapped.map).map_err(|e| ModelError::Format {
                file: mapped.file.clone(),
                reason: e.to_string(),
            })?;
        Ok(meta.metadata().clone())
    }

    /// The file holding `key`, if any.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.tensors
            .get(key)
            .map(|(i, _)| self.shards[*i].file.as_path())
    }

    /// The GGML type a tensor is stored in (F32, F16 or BF16; `None` for another dtype or a name
    /// the folder does not hold).
    pub fn stored_type(&self, key: &str) -> Option<crate::gguf::GgmlType> {
        use crate::gguf::GgmlType;
        let (i, _) = self.tensors.get(key)?;
        let st = header(&self.shards[*i]).ok()?;
        match st.tensor(key).ok()?.dtype() {
            safetensors::Dtype::F32 => Some(GgmlType::F32),
            safetensors::Dtype::F16 => Some(GgmlType::F16),
            safetensors::Dtype::BF16 => Some(GgmlType::Bf16),
            _ => None,
        }
    }

    /// The type that holds the most values of the folder's tensors (F32 when unknown).
    pub fn stored_type_by_size(&self) -> crate::gguf::GgmlType {
        use crate::gguf::GgmlType;
        let mut by_type: Vec<(GgmlType, usize)> = Vec::new();
        for (name, (_, shape)) in &self.tensors {
            let t = self.stored_type(name).unwrap_or(GgmlType::F32);
            let n = shape.iter().product::<usize>();
            match by_type.iter_mut().find(|(d, _)| *d == t) {
                Some((_, total)) => *total += n,
                None => by_type.push((t, n)),
            }
        }
        by_type
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map_or(GgmlType::F32, |(t, _)| t)
    }

    /// The shard holding `key` and the tensor's view, checked against `shape`.
    fn checked_view(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<(&MappedShard, safetensors::tensor::TensorView<'_>), ModelError> {
        let Some((i, found)) = self.tensors.get(key) else {
            return Err(ModelError::MissingKey {
                file: self.dir.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
            });
        };
        let shard = &self.shards[*i];
        if found.as_slice() != shape {
            return Err(ModelError::ShapeMismatch {
                file: shard.file.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        let view = header(shard)?.tensor(key).map_err(|e| ModelError::Format {
            file: shard.file.clone(),
            reason: e.to_string(),
        })?;
        Ok((shard, view))
    }

    /// Matrix `key` (`shape` `[rows, cols]`) read in place from its shard's memory map, when it
    /// is stored as f16 or bf16 (safetensors' layout is GGML's for these: row-major,
    /// little-endian); `None` for another dtype.
    pub fn packed(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<Option<mdm_kernels::PackedMatrix>, ModelError> {
        let dtype = match self.stored_type(key) {
            Some(t @ (crate::gguf::GgmlType::F16 | crate::gguf::GgmlType::Bf16)) => t,
            _ => return Ok(None),
        };
        let &[rows, cols] = shape else {
            return Ok(None);
        };
        let (shard, view) = self.checked_view(key, shape)?;
        let start = view.data().as_ptr() as usize - shard.map.as_ptr() as usize;
        let bytes: mdm_kernels::packed::SharedBytes = shard.map.clone();
        let map = shard.map.clone();
        // pages consumed by a conversion (requantized a chunk of rows at a time) are freed
        let release: mdm_kernels::packed::Release =
            std::sync::Arc::new(move |range| crate::gguf::drop_pages(&map, range));
        mdm_kernels::PackedMatrix::new(dtype, rows, cols, bytes, start..start + view.data().len())
            .map(|m| Some(m.with_release(release)))
            .map_err(|reason| ModelError::Format {
                file: shard.file.clone(),
                reason: format!("`{key}`: {reason}"),
            })
    }

    /// Drops the pages of tensor `key` from memory (they are read again from the file if touched
    /// again): for a tensor whose values were copied or converted, so that loading holds the
    /// model once, not the file and the model.
    pub fn release(&self, key: &str) {
        let Some((i, _)) = self.tensors.get(key) else {
            return;
        };
        let shard = &self.shards[*i];
        let Ok(st) = header(shard) else { return };
        let Ok(view) = st.tensor(key) else { return };
        let start = view.data().as_ptr() as usize - shard.map.as_ptr() as usize;
        // SAFETY: the map is private and read-only: MADV_DONTNEED only drops clean pages, which
        // the kernel reads back from the unchanged file if they are touched again (a packed
        // weight that shares a dropped page sees the same bytes). Errors only mean the pages
        // stay.
        #[cfg(unix)]
        let _ = unsafe {
            shard.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                view.data().len(),
            )
        };
    }

    /// Tensor `key` as f32 values, checked against `shape`.
    pub fn read(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (shard, view) = self.checked_view(key, shape)?;
        to_f32(&shard.file, key, &view)
    }
}

/// `weight_map` of an index file: tensor name -> shard file name.
fn read_index(file: &Path) -> Result<HashMap<String, String>, ModelError> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Shards {
        file: file.to_path_buf(),
        reason: format!("not JSON: {e}"),
    })?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Shards {
            file: file.to_path_buf(),
            reason: "no `weight_map` object".into(),
        })?;
    map.iter()
        .map(|(k, v)| {
            let name = v.as_str().ok_or_else(|| ModelError::Shards {
                file: file.to_path_buf(),
                reason: format!("`weight_map.{k}` is not a file name"),
            })?;
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(ModelError::Shards {
                    file: file.to_path_buf(),
                    reason: format!("`weight_map.{k}` = `{name}` is not a file of the folder"),
                });
            }
            Ok((k.clone(), name.to_string()))
        })
        .collect()
}

impl crate::params::TensorStore for HfFolder {
    fn location(&self) -> PathBuf {
        match self.shards.as_slice() {
            [one] => one.file.clone(),
            _ => self.dir.clone(),
        }
    }

    fn file_of(&self, name: &str) -> PathBuf {
        HfFolder::file_of(self, name).map_or_else(|| self.location(), Path::to_path_buf)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(_, shape)| shape.clone())
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn values(&self, name: &str) -> Result<(Vec<f32>, GgmlType), ModelError> {
        let shape = self.shape(name).unwrap_or_default();
        let stored = HfFolder::stored_type(self, name).unwrap_or(GgmlType::F32);
        Ok((self.read(name, &shape)?, stored))
    }

    fn stored_type(&self, name: &str) -> GgmlType {
        HfFolder::stored_type(self, name).unwrap_or(GgmlType::F32)
    }

    fn packed(&self, name: &str) -> Result<Option<mdm_kernels::PackedMatrix>, ModelError> {
        let shape = self.shape(name).unwrap_or_default();
        HfFolder::packed(self, name, &shape)
    }

    fn release(&self, name: &str) {
        HfFolder::release(self, name)
    }
}
