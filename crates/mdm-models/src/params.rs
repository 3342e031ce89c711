//! Where weights come from when a network is built: one [`ParamSource`] answering
//! [`Slot`]s, for every origin.
//!
//! - A file of tensors ([`TensorStore`]: a safetensors folder or single file of any dtype,
//!   sharded or not, or a GGUF file) read through a family's name map: [`NamedSource`]. The q/k/v
//!   fusion (with the undoing of a converter's row permutation), the shape checks and the refusal
//!   of a tensor nothing read are written here once, for every store and family.
//! - [`SeededInit`]: SMDM's seeded initialisation, by slot role.
//!
//! A source hands a matrix over in the type it is stored in ([`StoredMatrix`]); the network keeps
//! it as the weight format says (one path for every origin: see `transformer.rs`).

use std::collections::HashSet;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use mdm_kernels::quant::GgmlType;
use mdm_kernels::PackedMatrix;

use crate::slots::{Role, Slot};
use crate::{ModelConfig, ModelError};

/// A projection weight as its source holds it.
#[derive(Clone)]
pub(crate) enum StoredMatrix {
    /// f32 values, row-major `[out, in]`, with the type they were stored in (f16 and bf16 values
    /// widen exactly, so they can be packed back without loss).
    Values(Vec<f32>, GgmlType),
    /// Already in a packed type (a GGUF tensor, an f16/bf16 safetensors tensor: read in place).
    Packed(PackedMatrix),
}

impl StoredMatrix {
    /// The type the matrix was stored in.
    pub(crate) fn stored_type(&self) -> GgmlType {
        match self {
            Self::Values(_, t) => *t,
            Self::Packed(p) => p.dtype(),
        }
    }
}

/// Supplies each weight by its slot and PyTorch-layout shape.
pub(crate) trait ParamSource {
    /// The values of `slot`, row-major, `shape` in PyTorch layout (`[out, in]` for matrices).
    fn take(&mut self, slot: Slot, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// A matrix `[out, in]` in the type it is stored in (by default: f32 values).
    fn take_matrix(&mut self, slot: Slot, shape: &[usize]) -> Result<StoredMatrix, ModelError> {
        Ok(StoredMatrix::Values(self.take(slot, shape)?, GgmlType::F32))
    }
    /// `slot`'s stored bytes are no longer needed (its values were copied or converted): a source
    /// that maps a file may drop those pages from memory.
    fn release(&mut self, _slot: Slot) {}
    /// Called once every weight has been taken (a file reports a tensor nothing read here).
    fn finish(&mut self) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Where a family keeps one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mapped {
    /// One tensor of the slot's layout.
    One(String),
    /// Separate q, k and v tensors (weights `[rows, C]` or biases `[rows]`), fused into the
    /// grouped layout of [`crate::slots::LayerSlot::Qkv`].
    Grouped {
        /// Query tensor, `H D` rows.
        q: String,
        /// Key tensor, `G D` rows.
        k: String,
        /// Value tensor, `G D` rows.
        v: String,
        /// The q and k rows of each head are in llama.cpp's interleaved-RoPE order (its converter
        /// permutes LLaDA's): file row `h D + 2 j + a` holds the original row `h D + a D / 2 + j`.
        interleaved: bool,
    },
    /// One tensor holding q, k and v stacked (`[q; k; v]`: `H D`, then `G D`, then `G D` rows;
    /// LLaDA2's `query_key_value`), regrouped into the layout of
    /// [`crate::slots::LayerSlot::Qkv`].
    Stacked(String),
    /// Matrix `index` of a 3-D tensor `[n, rows, cols]` holding one per expert (llama.cpp's
    /// `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`).
    Expert {
        /// The stacked tensor.
        name: String,
        /// Which matrix (the expert).
        index: usize,
    },
}

/// A family's name map: the tensor(s) of a slot, `None` where the family has none.
pub type NameMap = fn(Slot) -> Option<Mapped>;

/// A file (or folder) of named tensors.
pub(crate) trait TensorStore {
    /// The file or folder, for messages.
    fn location(&self) -> PathBuf;
    /// The file holding `name`, for messages.
    fn file_of(&self, name: &str) -> PathBuf;
    /// The shape of `name` (row-major, PyTorch order), `None` when absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The names of every tensor held.
    fn names(&self) -> Vec<String>;
    /// `name` as f32 values, and the type it was stored in.
    fn values(&self, name: &str) -> Result<(Vec<f32>, GgmlType), ModelError>;
    /// The type `name` is stored in (F32 for a type the kernels do not name).
    fn stored_type(&self, name: &str) -> GgmlType;
    /// Matrix `name` read in place, when it is stored in a type the kernels multiply by.
    fn packed(&self, name: &str) -> Result<Option<PackedMatrix>, ModelError>;
    /// Matrix `index` of the stacked 3-D tensor `name`, read in place, when the store reads it so
    /// (GGUF's experts); otherwise its values are sliced.
    fn packed_slice(&self, _name: &str, _index: usize) -> Result<Option<PackedMatrix>, ModelError> {
        Ok(None)
    }
    /// Drops `name`'s pages from memory.
    fn release(&self, _name: &str) {}
}

/// A [`TensorStore`] read through a family's name map.
pub(crate) struct NamedSource<'a> {
    store: &'a dyn TensorStore,
    names: NameMap,
    /// Query heads, key/value heads, head size (for the grouped layout).
    heads: (usize, usize, usize),
    family: &'static str,
    used: HashSet<String>,
}

impl<'a> NamedSource<'a> {
    pub(crate) fn new(
        store: &'a dyn TensorStore,
        names: NameMap,
        config: &ModelConfig,
        family: &'static str,
    ) -> Self {
        Self {
            store,
            names,
            heads: (config.n_head, config.query_groups(), config.head_size()),
            family,
            used: HashSet::new(),
        }
    }

    fn mapped(&self, slot: Slot) -> Result<Mapped, ModelError> {
        (self.names)(slot).ok_or_else(|| ModelError::Config {
            reason: format!("no {} tensor for {slot:?}", self.family),
        })
    }

    /// Checks `name`'s shape against `shape` and marks it read.
    fn expect(&mut self, name: &str, shape: &[usize]) -> Result<(), ModelError> {
        match self.store.shape(name) {
            None => Err(ModelError::MissingKey {
                file: self.store.location(),
                key: name.to_string(),
                expected: shape.to_vec(),
            }),
            Some(found) if found != shape => Err(ModelError::ShapeMismatch {
                file: self.store.file_of(name),
                key: name.to_string(),
                expected: shape.to_vec(),
                found,
            }),
            Some(_) => {
                self.used.insert(name.to_string());
                Ok(())
            }
        }
    }

    /// Checks that `name` stacks matrices of `shape` with one at `index`, and marks it read.
    fn expect_stacked(
        &mut self,
        name: &str,
        shape: &[usize],
        index: usize,
    ) -> Result<(), ModelError> {
        let found = self
            .store
            .shape(name)
            .ok_or_else(|| ModelError::MissingKey {
                file: self.store.location(),
                key: name.to_string(),
                expected: [&[index + 1], shape].concat(),
            })?;
        match found.split_first() {
            Some((&n, rest)) if rest == shape && index < n => {
                self.used.insert(name.to_string());
                Ok(())
            }
            _ => Err(ModelError::ShapeMismatch {
                file: self.store.file_of(name),
                key: name.to_string(),
                expected: [&[index + 1], shape].concat(),
                found,
            }),
        }
    }

    /// The shapes of q, k and v for a fused slot of `shape` (`[rows, width]` or `[rows]`).
    fn part_shapes(&self, shape: &[usize]) -> [Vec<usize>; 3] {
        let (h, g, d) = self.heads;
        [h * d, g * d, g * d].map(|rows| match shape.get(1) {
            Some(&w) => vec![rows, w],
            None => vec![rows],
        })
    }

    fn grouped_order(&self, interleaved: bool) -> Vec<usize> {
        fused_order(self.heads, interleaved)
    }

    fn fault(&self, names: &[&String], reason: String) -> ModelError {
        ModelError::Format {
            file: self.store.location(),
            reason: format!(
                "{}: {reason}",
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl ParamSource for NamedSource<'_> {
    fn take(&mut self, slot: Slot, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        match self.mapped(slot)? {
            Mapped::One(name) => {
                self.expect(&name, shape)?;
                Ok(self.store.values(&name)?.0)
            }
            Mapped::Expert { name, index } => {
                self.expect_stacked(&name, shape, index)?;
                let n: usize = shape.iter().product();
                let all = self.store.values(&name)?.0;
                Ok(all[index * n..(index + 1) * n].to_vec())
            }
            Mapped::Stacked(name) => {
                self.expect(&name, shape)?;
                let stacked = self.store.values(&name)?.0;
                let width = shape.get(1).copied().unwrap_or(1);
                let mut fused = Vec::with_capacity(stacked.len());
                for row in self.grouped_order(false) {
                    fused.extend_from_slice(&stacked[row * width..(row + 1) * width]);
                }
                Ok(fused)
            }
            Mapped::Grouped {
                q,
                k,
                v,
                interleaved,
            } => {
                let mut stacked = Vec::new();
                for (name, part) in [&q, &k, &v].into_iter().zip(self.part_shapes(shape)) {
                    self.expect(name, &part)?;
                    stacked.extend(self.store.values(name)?.0);
                }
                let width = shape.get(1).copied().unwrap_or(1);
                let mut fused = Vec::with_capacity(stacked.len());
                for row in self.grouped_order(interleaved) {
                    fused.extend_from_slice(&stacked[row * width..(row + 1) * width]);
                }
                Ok(fused)
            }
        }
    }

    fn take_matrix(&mut self, slot: Slot, shape: &[usize]) -> Result<StoredMatrix, ModelError> {
        let (parts, interleaved) = match self.mapped(slot)? {
            Mapped::One(name) => {
                self.expect(&name, shape)?;
                return Ok(match self.store.packed(&name)? {
                    Some(packed) => StoredMatrix::Packed(packed),
                    None => {
                        let (values, stored) = self.store.values(&name)?;
                        StoredMatrix::Values(values, stored)
                    }
                });
            }
            Mapped::Expert { name, index } => {
                self.expect_stacked(&name, shape, index)?;
                return Ok(match self.store.packed_slice(&name, index)? {
                    Some(packed) => StoredMatrix::Packed(packed),
                    None => {
                        let stored = self.store.stored_type(&name);
                        StoredMatrix::Values(self.take(slot, shape)?, stored)
                    }
                });
            }
            Mapped::Stacked(name) => {
                self.expect(&name, shape)?;
                let order = self.grouped_order(false);
                return Ok(match self.store.packed(&name)? {
                    Some(packed) => StoredMatrix::Packed(
                        packed
                            .permute_rows(&order)
                            .map_err(|reason| self.fault(&[&name], reason))?,
                    ),
                    None => {
                        let stored = self.store.stored_type(&name);
                        StoredMatrix::Values(self.take(slot, shape)?, stored)
                    }
                });
            }
            Mapped::Grouped {
                q,
                k,
                v,
                interleaved,
            } => ([q, k, v], interleaved),
        };
        let names: Vec<&String> = parts.iter().collect();
        let mut packed = Vec::with_capacity(3);
        for (name, part) in names.iter().zip(self.part_shapes(shape)) {
            self.expect(name, &part)?;
            packed.push(self.store.packed(name)?);
        }
        let order = self.grouped_order(interleaved);
        if let Some(packed) = packed.into_iter().collect::<Option<Vec<_>>>() {
            let fused = same_type(packed)
                .and_then(|p| PackedMatrix::stack(&p.iter().collect::<Vec<_>>()))
                .and_then(|m| m.permute_rows(&order))
                .map_err(|reason| self.fault(&names, reason))?;
            return Ok(StoredMatrix::Packed(fused));
        }
        let stored = self.store.stored_type(names[0]);
        Ok(StoredMatrix::Values(self.take(slot, shape)?, stored))
    }

    fn release(&mut self, slot: Slot) {
        match (self.names)(slot) {
            Some(Mapped::One(name) | Mapped::Stacked(name)) => self.store.release(&name),
            Some(Mapped::Grouped { q, k, v, .. }) => {
                for name in [q, k, v] {
                    self.store.release(&name);
                }
            }
            // the stacked tensor holds the other experts too: its pages stay
            Some(Mapped::Expert { .. }) | None => {}
        }
    }

    fn finish(&mut self) -> Result<(), ModelError> {
        let mut names = self.store.names();
        names.sort();
        match names.into_iter().find(|n| !self.used.contains(n)) {
            Some(name) => Err(ModelError::UnexpectedKey {
                file: self.store.file_of(&name),
                found: self.store.shape(&name).unwrap_or_default(),
                key: name,
            }),
            None => Ok(()),
        }
    }
}

/// The rows of the fused grouped q/k/v matrix in the stack `[q; k; v]` (`H D`, `G D`, `G D` rows):
/// for each key/value group its `H / G` query heads, its key, its value. `qk_row` maps a q or k
/// row (within its part) to the row the stack holds it at (the identity, or the undoing of a
/// permutation a converter applied).
fn grouped_rows((h, g, d): (usize, usize, usize), qk_row: impl Fn(usize) -> usize) -> Vec<usize> {
    let p = h / g;
    let mut order = Vec::with_capacity((h + 2 * g) * d);
    for group in 0..g {
        order.extend((group * p * d..(group + 1) * p * d).map(&qk_row));
        order.extend((group * d..(group + 1) * d).map(|r| h * d + qk_row(r)));
        order.extend((group * d..(group + 1) * d).map(|r| (h + g) * d + r));
    }
    order
}

/// The rows of the fused q/k/v matrix in the stack `[q; k; v]` as a file holds them (see
/// [`Mapped::Grouped`] for `interleaved`): fused row `i` is stacked row `order[i]`.
pub(crate) fn fused_order((h, g, d): (usize, usize, usize), interleaved: bool) -> Vec<usize> {
    grouped_rows((h, g, d), move |row| {
        if !interleaved {
            return row;
        }
        let (head, within) = (row / d, row % d);
        let (a, j) = (within / (d / 2), within % (d / 2));
        head * d + 2 * j + a
    })
}

/// q, k and v in one type, to be fused: as they are when they agree; otherwise (llama.cpp's mixes:
/// Q4_K_M keeps `attn_v` in Q6_K) each widened and quantized to Q8_0, which holds every type read
/// here but f32 and f16 within its own rounding (f32 and f16 parts go to f16).
fn same_type(parts: Vec<PackedMatrix>) -> Result<Vec<PackedMatrix>, String> {
    let first = parts.first().map(PackedMatrix::dtype);
    if parts.iter().all(|p| Some(p.dtype()) == first) {
        return Ok(parts);
    }
    let wide = parts
        .iter()
        .any(|p| matches!(p.dtype(), GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16));
    let target = if wide { GgmlType::F16 } else { GgmlType::Q8_0 };
    parts.iter().map(|p| p.requantize(target)).collect()
}

/// SMDM's initialisation (SMDM.md section 6): every matrix `N(0, sqrt(2 / (5 C)))`, except those
/// that end a residual branch (the attention output projection and SwiGLU `w3`),
/// `N(0, 1 / sqrt(C) / n_layer)`; norm gains 1, biases 0. Draws come from a ChaCha8 stream seeded
/// with `seed`, in the slots' order ([`crate::slots::slots`]).
pub(crate) struct SeededInit {
    rng: rand_chacha::ChaCha8Rng,
    std_default: f64,
    std_residual: f64,
}

impl SeededInit {
    pub(crate) fn new(config: &ModelConfig, seed: u64) -> Self {
        let c = config.n_embd as f64;
        Self {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            std_default: (2.0 / (5.0 * c)).sqrt(),
            std_residual: 1.0 / c.sqrt() / config.n_layer.max(1) as f64,
        }
    }
}

impl ParamSource for SeededInit {
    fn take(&mut self, slot: Slot, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let n: usize = shape.iter().product();
        let std = match slot.role() {
            Role::Norm => return Ok(vec![1.0; n]),
            Role::Bias => return Ok(vec![0.0; n]),
            Role::Matrix { residual: true } => self.std_residual,
            Role::Matrix { residual: false } | Role::Embedding => self.std_default,
        };
        let normal = Normal::new(0.0f32, std as f32).map_err(|e| ModelError::Config {
            reason: format!("initialisation std {std}: {e}"),
        })?;
        Ok((0..n).map(|_| normal.sample(&mut self.rng)).collect())
    }
}
