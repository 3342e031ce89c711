//! Text files → tokenizer + train/validation shards, in one call ([`prepare_corpus`]).
//!
//! Documents (see [`DocumentSplit`]) are assigned to validation with probability
//! `valid_fraction` from a seeded draw, tokenised (a BPE is trained on the training documents
//! unless a tokenizer is given), each followed by the EOS separator, and packed into
//! `train_*.bin` / `valid_*.bin`. The folder also gets `tokenizer.json` and `corpus.json` (what
//! was done, with token counts).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::shards::ShardWriter;
use crate::text::{read_text, split_documents, DocumentSplit};
use crate::{DataError, Tokenizer};

/// What [`prepare_corpus`] does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpusOptions {
    /// Text files, plain or `.gz`.
    pub inputs: Vec<PathBuf>,
    /// How files are cut into documents.
    pub split: DocumentSplit,
    /// An existing `tokenizer.json`; otherwise a byte-level BPE of `vocab_size` is trained.
    pub tokenizer: Option<PathBuf>,
    /// Size of the BPE to train.
    pub vocab_size: usize,
    /// Fraction of documents held out for validation.
    pub valid_fraction: f64,
    /// Tokens per training shard.
    pub chunk_size: usize,
    /// Tokens per validation shard (smaller, so little of it is tail padding).
    pub valid_chunk_size: usize,
    /// Put the BOS token (if the tokenizer has one) before every document.
    pub add_bos: bool,
    /// Seed of the train/validation assignment.
    pub seed: u64,
}

impl CorpusOptions {
    /// Defaults: paragraphs, a 4,096-token BPE, 2 % validation, shards of 65,536 tokens
    /// (256 blocks of 256, or 255 blocks of 257), validation shards of 8,192, seed 0.
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        Self {
            inputs,
            split: DocumentSplit::Paragraphs,
            tokenizer: None,
            vocab_size: 4096,
            valid_fraction: 0.02,
            chunk_size: 65_536,
            valid_chunk_size: 8_192,
            add_bos: false,
            seed: 0,
        }
    }
}

/// What [`prepare_corpus`] wrote (also saved as `corpus.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpusReport {
    /// The options used.
    pub options: CorpusOptions,
    /// Tokenizer size (the model's `vocab_size`).
    pub vocab_size: usize,
    /// The EOS / separator id.
    pub eos_id: u32,
    /// Documents in each split.
    pub train_documents: usize,
    /// Documents in each split.
    pub valid_documents: usize,
    /// Tokens (separators included) in each split.
    pub train_tokens: u64,
    /// Tokens (separators included) in each split.
    pub valid_tokens: u64,
    /// Shard files.
    pub train_shards: Vec<PathBuf>,
    /// Shard files.
    pub valid_shards: Vec<PathBuf>,
}

/// Name of the report file.
pub const REPORT_FILE: &str = "corpus.json";
/// Name of the tokenizer file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Prepares `out` from `options`; `on_progress(done, total)` is called as documents are encoded.
pub fn prepare_corpus(
    options: &CorpusOptions,
    out: &Path,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<CorpusReport, DataError> {
    if options.inputs.is_empty() {
        return Err(DataError::Invalid {
            what: "inputs",
            reason: "no text files given".into(),
        });
    }
    if !(0.0..1.0).contains(&options.valid_fraction) {
        return Err(DataError::Invalid {
            what: "valid_fraction",
            reason: format!("{} is not in [0, 1)", options.valid_fraction),
        });
    }
    let texts = options
        .inputs
        .iter()
        .map(|p| read_text(p))
        .collect::<Result<Vec<_>, _>>()?;
    let docs: Vec<&str> = texts
        .iter()
        .flat_map(|t| split_documents(t, options.split))
        .collect();
    if docs.is_empty() {
        return Err(DataError::Invalid {
            what: "inputs",
            reason: "the files hold no text".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
    let is_valid: Vec<bool> = docs
        .iter()
        .map(|_| rng.random::<f64>() < options.valid_fraction)
        .collect();

    std::fs::create_dir_all(out).map_err(crate::error::io(out))?;
    let tokenizer = match &options.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None => {
            let train_docs = docs
                .iter()
                .zip(&is_valid)
                .filter(|(_, &v)| !v)
                .map(|(d, _)| *d);
            Tokenizer::train_bpe(train_docs, options.vocab_size)?
        }
    };
    tokenizer.save(out.join(TOKENIZER_FILE))?;
    let vocab = tokenizer.vocab_size();
    let eos = tokenizer.eos_id();
    // remove shards of an earlier preparation so a smaller corpus does not leave stale files
    for prefix in ["train", "valid"] {
        for old in crate::shards::find_shards(out, prefix)? {
            std::fs::remove_file(&old).map_err(crate::error::io(&old))?;
        }
    }
    let mut train = ShardWriter::new(out, "train", options.chunk_size, vocab, eos)?;
    let mut valid = ShardWriter::new(out, "valid", options.valid_chunk_size, vocab, eos)?;
    let (mut n_train, mut n_valid) = (0, 0);
    const BATCH: usize = 2048;
    for (start, chunk) in docs.chunks(BATCH).enumerate() {
        let ids = tokenizer.encode_batch(chunk, options.add_bos)?;
        for (i, mut doc) in ids.into_iter().enumerate() {
            doc.push(eos);
            if is_valid[start * BATCH + i] {
                valid.add_document(&doc)?;
                n_valid += 1;
            } else {
                train.add_document(&doc)?;
                n_train += 1;
            }
        }
        on_progress((start * BATCH + chunk.len()).min(docs.len()), docs.len());
    }
    let (train_tokens, valid_tokens) = (train.tokens(), valid.tokens());
    let report = CorpusReport {
        options: options.clone(),
        vocab_size: vocab,
        eos_id: eos,
        train_documents: n_train,
        valid_documents: n_valid,
        train_tokens,
        valid_tokens,
        train_shards: train.finish()?,
        valid_shards: valid.finish()?,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| DataError::Invalid {
        what: "report",
        reason: e.to_string(),
    })?;
    let path = out.join(REPORT_FILE);
    std::fs::write(&path, json).map_err(crate::error::io(&path))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{find_shards, Shard};

    #[test]
    fn text_to_shards_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.txt");
        let lines: Vec<String> = (0..200)
            .map(|i| format!("Verse {i}: and the light was good, said the {i}th line."))
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let out = dir.path().join("data");
        let mut options = CorpusOptions::new(vec![input]);
        options.split = DocumentSplit::Lines;
        options.vocab_size = 320;
        options.valid_fraction = 0.1;
        options.chunk_size = 256;
        options.valid_chunk_size = 64;
        let mut calls = 0;
        let report = prepare_corpus(&options, &out, |_, _| calls += 1).unwrap();
        assert!(calls >= 1);
        assert_eq!(report.train_documents + report.valid_documents, 200);
        assert!(report.valid_documents > 5 && report.valid_documents < 40);
        assert_eq!(find_shards(&out, "train").unwrap(), report.train_shards);
        let tok = Tokenizer::from_file(out.join(TOKENIZER_FILE)).unwrap();
        assert_eq!(tok.vocab_size(), report.vocab_size);
        // the training shards decode back to the training lines, separated by EOS
        let mut ids = Vec::new();
        for f in &report.train_shards {
            let s = Shard::open(f).unwrap();
            ids.extend(s.read(0, s.chunk_size(), report.vocab_size).unwrap());
        }
        ids.truncate(report.train_tokens as usize);
        let docs: Vec<String> = ids
            .split(|&t| t == report.eos_id)
            .filter(|d| !d.is_empty())
            .map(|d| tok.decode(d).unwrap())
            .collect();
        assert_eq!(docs.len(), report.train_documents);
        assert!(docs.iter().all(|d| lines.contains(d)));
        assert!(out.join(REPORT_FILE).is_file());
    }
}
