//! Errors of model construction, forward passes and checkpoint I/O.

use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong when building, running, saving or loading a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A config name that is not one of the published Diff_LLaMA sizes.
    #[error("unknown model config `{name}`; known: {known}")]
    UnknownConfig {
        /// The requested name.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A model asked for by name could not be fetched from the hub nor found in the cache.
    #[error("model `{repo}`: {reason}")]
    Hub {
        /// The repository (`owner/name`).
        repo: String,
        /// What went wrong, and where the cache was looked for.
        reason: String,
    },
    /// Sizes that do not fit together, or unreadable config JSON.
    #[error("invalid model config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A sequence longer than the RoPE tables (`block_size`).
    #[error("sequence of {len} positions (starting at {start}) exceeds block_size {block_size}")]
    SequenceTooLong {
        /// First position.
        start: usize,
        /// Number of positions.
        len: usize,
        /// The model's block size.
        block_size: usize,
    },
    /// The KV cache belongs to a different batch size.
    #[error("KV cache holds batch {cached}, the input has batch {input}")]
    CacheBatch {
        /// Batch of the cache.
        cached: usize,
        /// Batch of the input.
        input: usize,
    },
    /// A checkpoint tensor the model needs is absent.
    #[error("{file}: missing tensor `{key}` (expected shape {expected:?})")]
    MissingKey {
        /// Checkpoint file.
        file: PathBuf,
        /// Tensor name.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// A checkpoint tensor the model does not know.
    #[error("{file}: unexpected tensor `{key}` with shape {found:?}")]
    UnexpectedKey {
        /// Checkpoint file.
        file: PathBuf,
        /// Tensor name.
        key: String,
        /// Its shape.
        found: Vec<usize>,
    },
    /// A checkpoint tensor of the wrong shape.
    #[error("{file}: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// Checkpoint file.
        file: PathBuf,
        /// Tensor name.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A checkpoint tensor stored in a dtype we cannot read as floats.
    #[error("{file}: tensor `{key}` has dtype {dtype}; supported: F32, BF16, F16, F64")]
    Dtype {
        /// Checkpoint file.
        file: PathBuf,
        /// Tensor name.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// A file that is not valid safetensors.
    #[error("{file}: not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        file: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A GGUF file that is malformed or holds what this library does not read.
    #[error("{file}: byte {offset}: {reason}")]
    Gguf {
        /// The file.
        file: PathBuf,
        /// Byte offset of the fault in the file.
        offset: u64,
        /// What is wrong (naming the key or tensor).
        reason: String,
    },
    /// The model's tokenizer could not be read.
    #[error(transparent)]
    Tokenizer(#[from] mdm_data::DataError),
    /// An I/O failure.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A Hugging Face `config.json` value this library does not support (or a missing one).
    #[error("{file}: `{key}` = {value}: {reason}")]
    Unsupported {
        /// The config file.
        file: PathBuf,
        /// The key.
        key: String,
        /// Its value, as JSON.
        value: String,
        /// What we support instead.
        reason: String,
    },
    /// A checkpoint folder's shards or index are inconsistent.
    #[error("{file}: {reason}")]
    Shards {
        /// The index or shard file.
        file: PathBuf,
        /// What is wrong (a missing shard, a key in two shards...).
        reason: String,
    },
    /// Reading tensor data back from the device failed.
    #[error("reading tensor `{key}` from the device failed: {reason}")]
    ReadBack {
        /// Tensor name.
        key: String,
        /// Why.
        reason: String,
    },
    /// The model would not fit in the memory available: checked before loading.
    #[error("{what} needs {} as {format}, {} available{alternatives}", crate::memory::human(*needs), crate::memory::human(*available))]
    OutOfMemory {
        /// The model (its source).
        what: String,
        /// Estimated footprint in bytes.
        needs: u64,
        /// The weight format asked for (`f32`, `bf16`, `q8_0`...).
        format: String,
        /// Bytes available.
        available: u64,
        /// What would fit, e.g. `: --dtype bf16 needs 16.1 GB, --quant q8_0 needs 8.6 GB`.
        alternatives: String,
    },
}
