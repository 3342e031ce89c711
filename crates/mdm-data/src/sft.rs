//! Fine-tuning data (SMDM.md section 2): `{prompt, response}` (or `{prompt, completion}`) JSONL,
//! tokenised, EOS-padded to the training length with the prompt length of each row kept.
//!
//! The EOS padding is part of the response: the model learns to end an answer by filling the rest
//! with EOS. Examples whose prompt plus response (plus at least one EOS) exceed the length are
//! dropped and counted in [`SftDataset::dropped`], never truncated.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::{DataError, Tokenizer};

/// One prompt and its response, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftRecord {
    /// The prompt (never masked in training).
    pub prompt: String,
    /// The response (`response` or `completion` in the file).
    pub response: String,
}

/// Reads a JSONL file of `{"prompt": ..., "response": ...}` or `{"prompt": ..., "completion": ...}`
/// objects (other keys are ignored; blank lines skipped). Errors name the file and line.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<SftRecord>, DataError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: String| DataError::Jsonl {
            file: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let prompt = field("prompt").ok_or_else(|| err("no string field `prompt`".into()))?;
        let response = field("response")
            .or_else(|| field("completion"))
            .ok_or_else(|| err("no string field `response` or `completion`".into()))?;
        records.push(SftRecord { prompt, response });
    }
    Ok(records)
}

/// An optional chat template: the prompt becomes `user + prompt + assistant`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTemplate {
    /// Text before the prompt (e.g. `"<|user|>\n"`).
    pub user: String,
    /// Text between the prompt and the response (e.g. `"\n<|assistant|>\n"`).
    pub assistant: String,
}

impl ChatTemplate {
    /// The prompt text with the template applied.
    pub fn apply(&self, prompt: &str) -> String {
        format!("{}{prompt}{}", self.user, self.assistant)
    }
}

/// Tokenised fine-tuning rows of exactly `seq_len` ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SftDataset {
    /// Rows: prompt ids, response ids, then EOS up to `seq_len`.
    pub rows: Vec<Vec<u32>>,
    /// Prompt length of each row (these positions are never masked).
    pub prompt_len: Vec<usize>,
    /// The row length.
    pub seq_len: usize,
    /// Examples left out because they did not fit in `seq_len` with at least one EOS.
    pub dropped: usize,
}

impl SftDataset {
    /// Tokenises `records`. With `add_bos` every prompt starts with the tokenizer's BOS or, when it
    /// has none (our byte-level BPE), its EOS: the separator that precedes every document in the
    /// packed shards, so a fine-tuning prompt starts the way pre-training documents did.
    pub fn build(
        records: &[SftRecord],
        tokenizer: &Tokenizer,
        seq_len: usize,
        template: Option<&ChatTemplate>,
        add_bos: bool,
    ) -> Result<Self, DataError> {
        let eos = tokenizer.eos_id();
        let mut rows = Vec::with_capacity(records.len());
        let mut prompt_len = Vec::with_capacity(records.len());
        let mut dropped = 0;
        for record in records {
            let prompt = match template {
                Some(t) => t.apply(&record.prompt),
                None => record.prompt.clone(),
            };
            let mut ids = Vec::new();
            if add_bos {
                ids.push(tokenizer.document_start());
            }
            ids.extend(tokenizer.encode(&prompt, false)?);
            let p = ids.len();
            ids.extend(tokenizer.encode(&record.response, false)?);
            if ids.len() + 1 > seq_len {
                dropped += 1;
                continue;
            }
            ids.resize(seq_len, eos);
            rows.push(ids);
            prompt_len.push(p);
        }
        if rows.is_empty() {
            return Err(DataError::Invalid {
                what: "fine-tuning data",
                reason: format!(
                    "no example fits in {seq_len} tokens ({dropped} dropped): raise the length"
                ),
            });
        }
        Ok(Self {
            rows,
            prompt_len,
            seq_len,
            dropped,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Trains on the whole text: every row's protected prefix shrinks to at most `keep` tokens (1
    /// keeps the start token), so the MDM may mask, and the baseline is scored on, the prompt too.
    /// This is how facts stated as text are learnt (the reverse-curse experiment), as opposed to
    /// instruction tuning, which protects the prompt.
    pub fn train_on_prompts(&mut self, keep: usize) {
        for p in &mut self.prompt_len {
            *p = (*p).min(keep);
        }
    }

    /// Cuts the EOS padding shared by all rows: `seq_len` becomes the longest row's prompt and
    /// response plus `extra_eos` (at least 1) EOS tokens, if that is shorter.
    pub fn shrink_padding(&mut self, eos: u32, extra_eos: usize) {
        let longest = self
            .rows
            .iter()
            .zip(&self.prompt_len)
            .map(|(row, &p)| {
                let content = row.len() - row.iter().rev().take_while(|&&t| t == eos).count();
                content.max(p)
            })
            .max()
            .unwrap_or(0);
        let len = (longest + extra_eos.max(1)).min(self.seq_len);
        for row in &mut self.rows {
            row.truncate(len);
        }
        self.seq_len = len;
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A batch of fine-tuning rows: ids row-major `[rows, seq_len]` and the prompt lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct SftBatch {
    /// Ids, row-major.
    pub ids: Vec<u32>,
    /// Prompt length per row.
    pub prompt_len: Vec<usize>,
}

/// Where an [`SftLoader`] is: restore it to continue exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftPosition {
    /// Completed epochs.
    pub epoch: u64,
    /// Rows served in the current epoch.
    pub row: u64,
}

/// Serves rows of an [`SftDataset`] in a seeded shuffle per epoch; endless.
#[derive(Debug, Clone)]
pub struct SftLoader {
    data: SftDataset,
    seed: u64,
    order: Vec<usize>,
    position: SftPosition,
}

impl SftLoader {
    /// A loader over `data`, shuffled from `seed`.
    pub fn new(data: SftDataset, seed: u64) -> Self {
        let mut loader = Self {
            data,
            seed,
            order: Vec::new(),
            position: SftPosition::default(),
        };
        loader.start_epoch(0);
        loader
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.order = (0..self.data.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        self.order.shuffle(&mut rng);
        self.position = SftPosition { epoch, row: 0 };
    }

    /// The next `rows` rows.
    pub fn next_batch(&mut self, rows: usize) -> SftBatch {
        let mut batch = SftBatch {
            ids: Vec::with_capacity(rows * self.data.seq_len),
            prompt_len: Vec::with_capacity(rows),
        };
        for _ in 0..rows {
            if self.position.row as usize >= self.order.len() {
                self.start_epoch(self.position.epoch + 1);
            }
            let r = self.order[self.position.row as usize];
            batch.ids.extend_from_slice(&self.data.rows[r]);
            batch.prompt_len.push(self.data.prompt_len[r]);
            self.position.row += 1;
        }
        batch
    }

    /// The dataset.
    pub fn data(&self) -> &SftDataset {
        &self.data
    }

    /// The current position.
    pub fn position(&self) -> SftPosition {
        self.position
    }

    /// Continues from a saved position.
    pub fn restore(&mut self, position: SftPosition) -> Result<(), DataError> {
        if position.row as usize > self.data.len() {
            return Err(DataError::Invalid {
                what: "fine-tuning position",
                reason: format!(
                    "row {} beyond {} rows (was the data changed?)",
                    position.row,
                    self.data.len()
                ),
            });
        }
        self.start_epoch(position.epoch);
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let text = "The capital of France is Paris. Who wrote Hamlet? Shakespeare did.";
        Tokenizer::train_bpe(std::iter::repeat_n(text, 20), 300).unwrap()
    }

    #[test]
    fn reads_both_key_spellings_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"c\", \"completion\": \"d\", \"x\": 1}\n",
        )
        .unwrap();
        let r = read_jsonl(&path).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].response, "d");
        std::fs::write(
            &path,
            "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\"}\n",
        )
        .unwrap();
        match read_jsonl(&path) {
            Err(DataError::Jsonl { line, reason, .. }) => {
                assert_eq!(line, 2);
                assert!(reason.contains("response"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "not json\n").unwrap();
        assert!(matches!(
            read_jsonl(&path),
            Err(DataError::Jsonl { line: 1, .. })
        ));
    }

    #[test]
    fn rows_are_eos_padded_and_long_examples_dropped() {
        let tok = tokenizer();
        let records = vec![
            SftRecord {
                prompt: "Who wrote Hamlet?".into(),
                response: " Shakespeare did.".into(),
            },
            SftRecord {
                prompt: "The capital of France is".into(),
                response: " Paris. ".repeat(30),
            },
        ];
        let data = SftDataset::build(&records, &tok, 24, None, false).unwrap();
        assert_eq!((data.len(), data.dropped), (1, 1));
        let prompt = tok.encode("Who wrote Hamlet?", false).unwrap();
        let response = tok.encode(" Shakespeare did.", false).unwrap();
        assert_eq!(data.prompt_len[0], prompt.len());
        assert_eq!(data.rows[0].len(), 24);
        assert_eq!(&data.rows[0][..prompt.len()], &prompt[..]);
        let end = prompt.len() + response.len();
        assert_eq!(&data.rows[0][prompt.len()..end], &response[..]);
        assert!(data.rows[0][end..].iter().all(|&t| t == tok.eos_id()));

        let template = ChatTemplate {
            user: "Q: ".into(),
            assistant: "\nA:".into(),
        };
        let data = SftDataset::build(&records[..1], &tok, 40, Some(&template), false).unwrap();
        let templated = tok.encode("Q: Who wrote Hamlet?\nA:", false).unwrap();
        assert_eq!(data.prompt_len[0], templated.len());
        assert!(SftDataset::build(&records[1..], &tok, 24, None, false).is_err());

        // add_bos without a BOS in the vocabulary: the EOS (document separator) starts the prompt
        assert_eq!(tok.bos_id(), None);
        let mut data = SftDataset::build(&records[..1], &tok, 40, None, true).unwrap();
        assert_eq!(data.rows[0][0], tok.eos_id());
        assert_eq!(data.prompt_len[0], prompt.len() + 1);
        assert_eq!(&data.rows[0][1..=prompt.len()], &prompt[..]);
        // padding shrinks to the longest row plus the EOS tokens asked for
        data.shrink_padding(tok.eos_id(), 2);
        assert_eq!(data.seq_len, 1 + end + 2);
        data.train_on_prompts(1);
        assert_eq!(data.prompt_len, [1]);
        assert!(data.rows.iter().all(|r| r.len() == data.seq_len));
        assert_eq!(data.rows[0][end], response[response.len() - 1]);
    }

    #[test]
    fn loader_shuffles_per_epoch_and_restores() {
        let data = SftDataset {
            rows: (0..7).map(|r| vec![r as u32; 3]).collect(),
            prompt_len: (0..7).collect(),
            seq_len: 3,
            dropped: 0,
        };
        let mut a = SftLoader::new(data.clone(), 3);
        let first: Vec<u32> = a.next_batch(7).ids.chunks(3).map(|r| r[0]).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        let reference: Vec<SftBatch> = (0..5).map(|_| a.next_batch(3)).collect();
        let mut b = SftLoader::new(data.clone(), 3);
        b.next_batch(7);
        b.next_batch(3);
        let pos = b.position();
        let mut c = SftLoader::new(data, 3);
        c.restore(pos).unwrap();
        assert_eq!(c.next_batch(3), reference[1]);
        assert_eq!(c.next_batch(3).prompt_len, reference[2].prompt_len);
    }
}
