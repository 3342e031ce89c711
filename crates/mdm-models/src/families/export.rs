//! Writing a model back as the Hugging Face folder it was loaded from: the same tensor names,
//! dtypes and shards, its `config.json`, index and every other file (tokenizer, generation
//! config, code) copied. Fine-tuning a published folder ends here, so the result loads wherever
//! the original did (PyTorch, llama.cpp's converter, this library).
//!
//! Written by hand over `safetensors` because the layout is the input's: the family's name map
//! ([`super::Mapped`]) read backwards (q/k/v split out of the grouped projection, biases too), each
//! tensor rounded to its stored dtype (bf16 / f16 round to nearest even, as PyTorch's `.to()`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mdm_kernels::Kernels;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::family_of;
use crate::hf::{HfFolder, HF_INDEX_FILE};
use crate::params::{fused_order, Mapped};
use crate::{MaskedTransformer, ModelError};

fn io(file: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        file: file.to_path_buf(),
        source,
    }
}

/// `[(H + 2G) D, width]` in the grouped layout split back into q `[H D, width]`, k and v
/// `[G D, width]`, as the file holds them (`interleaved`: llama.cpp's q/k row order).
fn ungroup(
    fused: &[f32],
    heads: (usize, usize, usize),
    interleaved: bool,
    width: usize,
) -> [Vec<f32>; 3] {
    let (h, g, d) = heads;
    let mut stacked = vec![0.0; fused.len()];
    for (i, row) in fused_order(heads, interleaved).into_iter().enumerate() {
        stacked[row * width..(row + 1) * width].copy_from_slice(&fused[i * width..(i + 1) * width]);
    }
    let k = stacked.split_off(h * d * width);
    let mut k = k;
    let v = k.split_off(g * d * width);
    [stacked, k, v]
}

/// `values` stored as `dtype`, little-endian.
fn encode(values: &[f32], dtype: Dtype, file: &Path, key: &str) -> Result<Vec<u8>, ModelError> {
    Ok(match dtype {
        Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|&x| f64::from(x).to_le_bytes())
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

impl<B: Kernels> MaskedTransformer<B> {
    /// Writes this model to `out` as a Hugging Face folder laid out like `like` (the folder it was
    /// loaded from, or one of the same family and shape): the same tensor names, dtypes and
    /// shards, and every other file of `like` copied. The folder is written beside `out` under a
    /// temporary name and renamed (an `out` that exists is replaced).
    ///
    /// A folder whose head is tied to the embedding keeps one matrix, which the model (tied too:
    /// [`crate::ModelConfig::tie_embeddings`]) holds once and trains as one.
    pub fn save_hf_like(
        &self,
        like: impl AsRef<Path>,
        out: impl AsRef<Path>,
    ) -> Result<(), ModelError> {
        let folder = HfFolder::open(like.as_ref())?;
        let family = family_of(&folder)?;
        let ours = self.config();
        // the same slots with the same shapes (a tie, experts, norms and sizes alike)
        let layout = |c: &crate::ModelConfig| {
            crate::slots::slots(c)
                .map(|s| (s, s.shape(c, c.masked_embedding_rows())))
                .collect::<Vec<_>>()
        };
        if layout(&family.config) != layout(ours) {
            return Err(ModelError::Config {
                reason: format!(
                    "the model's shape differs from the folder {}'s: it cannot be written like it",
                    folder.dir().display()
                ),
            });
        }
        // every tensor under the family's names
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        let heads = (ours.n_head, ours.query_groups(), ours.head_size());
        for (slot, shape, data) in self.net.state()? {
            match (family.names)(slot) {
                Some(Mapped::One(name)) => {
                    if values.insert(name.clone(), data).is_some() {
                        return Err(ModelError::Config {
                            reason: format!("two tensors of the model are written as `{name}`"),
                        });
                    }
                }
                Some(Mapped::Grouped {
                    q,
                    k,
                    v,
                    interleaved,
                }) => {
                    let width = shape.get(1).copied().unwrap_or(1);
                    let [qv, kv, vv] = ungroup(&data, heads, interleaved, width);
                    values.insert(q, qv);
                    values.insert(k, kv);
                    values.insert(v, vv);
                }
                Some(Mapped::Stacked(name)) => {
                    let width = shape.get(1).copied().unwrap_or(1);
                    values.insert(name, ungroup(&data, heads, false, width).concat());
                }
                Some(Mapped::Expert { name, .. }) => {
                    let reason = format!(
                        "`{name}` stacks the experts: {} folders hold one tensor per expert",
                        family.name
                    );
                    return Err(ModelError::Config { reason });
                }
                None => {
                    return Err(ModelError::Config {
                        reason: format!("no {} tensor for {slot:?}", family.name),
                    })
                }
            }
        }
        let out = out.as_ref();
        let tmp = PathBuf::from(format!("{}.tmp-{}", out.display(), std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for shard in folder.shard_files() {
            let name = shard.file_name().unwrap_or_default();
            let target = tmp.join(name);
            let tensors = folder.tensors_in(shard)?;
            let mut bytes = Vec::with_capacity(tensors.len());
            for (key, dtype, shape) in &tensors {
                let data = values.get(key).ok_or_else(|| ModelError::MissingKey {
                    file: shard.to_path_buf(),
                    key: key.clone(),
                    expected: shape.clone(),
                })?;
                if data.len() != shape.iter().product::<usize>() {
                    return Err(ModelError::ShapeMismatch {
                        file: shard.to_path_buf(),
                        key: key.clone(),
                        expected: shape.clone(),
                        found: vec![data.len()],
                    });
                }
                bytes.push(encode(data, *dtype, shard, key)?);
            }
            let views = tensors
                .iter()
                .zip(&bytes)
                .map(|((key, dtype, shape), b)| {
                    TensorView::new(*dtype, shape.clone(), b)
                        .map(|v| (key.clone(), v))
                        .map_err(|e| ModelError::Format {
                            file: target.clone(),
                            reason: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let serialized =
                safetensors::serialize(views, &folder.metadata_of(shard)?).map_err(|e| {
                    ModelError::Format {
                        file: target.clone(),
                        reason: e.to_string(),
                    }
                })?;
            std::fs::write(&target, serialized).map_err(io(&target))?;
        }
        // config.json, the index (same names, shapes and dtypes: the same sizes), tokenizer ...
        let shards: Vec<&Path> = folder.shard_files().collect();
        for entry in std::fs::read_dir(folder.dir()).map_err(io(folder.dir()))? {
            let path = entry.map_err(io(folder.dir()))?.path();
            if path.is_file() && !shards.contains(&path.as_path()) {
                let name = path.file_name().unwrap_or_default();
                std::fs::copy(&path, tmp.join(name)).map_err(io(&path))?;
            }
        }
        debug_assert!(shards.len() == 1 || tmp.join(HF_INDEX_FILE).is_file());
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io(out))
    }
}
