//! # mdm-data: from text to training batches
//!
//! | module | what |
//! |---|---|
//! | [`tokenizer`] | load any HF `tokenizer.json`; train a byte-level BPE on text files |
//! | [`text`] | read text files (plain or `.gz`) as documents |
//! | [`shards`] | packed token shards in the lit-gpt / TinyLlama format: writer, reader, shuffled block loader |
//! | [`permutation`] | a seeded permutation of `0..n` evaluated one index at a time (the loader's corpus-wide order) |
//! | [`sft`] | fine-tuning data: `{prompt, response}` JSONL, EOS-padded, prompt lengths kept |
//! | [`chat`] | chat prompts: a folder's Jinja `chat_template` (minijinja) or a plain one |
//! | [`corpus`] | text files → tokenizer + train/validation shards in one call |
//!
//! No tensors here: batches are host vectors of token ids, so this crate is usable without `burn`.
//!
//! ```
//! use mdm_data::shards::{ShardWriter, BlockLoader, LoaderOptions};
//! # fn main() -> Result<(), mdm_data::DataError> {
//! let dir = tempfile::tempdir().unwrap();
//! // pack two documents into shards of 8-token chunks, separator (EOS) = 0
//! let mut writer = ShardWriter::new(dir.path(), "train", 8, 100, 0)?;
//! writer.add_document(&[5, 6, 7, 8, 9])?;
//! writer.add_document(&[10, 11, 12])?;
//! let files = writer.finish()?;
//! assert_eq!(files.len(), 1);
//! // serve shuffled blocks of 4 tokens from them
//! let mut loader = BlockLoader::open(&files, LoaderOptions::new(4, 100).with_seed(7))?;
//! let block = loader.next_block()?;
//! assert_eq!(block.len(), 4);
//! # Ok(()) }
//! ```

pub mod chat;
pub mod corpus;
pub mod error;
pub mod facts;
pub mod permutation;
pub mod sft;
pub mod shards;
pub mod text;
pub mod tokenizer;

pub use error::DataError;
pub use tokenizer::{BpeVocab, Tokenizer};
