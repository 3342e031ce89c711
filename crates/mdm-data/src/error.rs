//! Typed errors of the data pipeline: each names the file and, where it applies, the offset or line.

use std::path::PathBuf;

/// What went wrong while reading or writing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A shard does not follow the packed-dataset format.
    #[error("{file} at byte {offset}: {reason}")]
    Shard {
        /// The shard file.
        file: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A token id does not fit the vocabulary.
    #[error("{file} at byte {offset}: token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The shard file.
        file: PathBuf,
        /// Byte offset of the token.
        offset: u64,
        /// The token id.
        id: u64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A tokenizer could not be loaded, trained or used.
    #[error("tokenizer {file}: {reason}")]
    Tokenizer {
        /// The tokenizer file (or the text files it was trained on).
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A line of a JSONL file is not what was expected.
    #[error("{file} line {line}: {reason}")]
    Jsonl {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An argument is out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

pub(crate) fn io(file: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        file: file.to_path_buf(),
        source,
    }
}
