//! Tokenizers: any HF `tokenizer.json`, a folder's `vocab.json` + `merges.txt` (Qwen2's byte-level
//! BPE, as Dream ships it), a byte-level BPE vocabulary as a GGUF file holds it ([`BpeVocab`]), or
//! a byte-level BPE trained here on text files.
//!
//! The model side of a tokenizer (SMDM.md section 1): the model's `vocab_size` is the tokenizer's
//! size including added special tokens; the model pads it to a multiple of 64 and appends the mask
//! token (`mask_id = padded_vocab_size`), so the tokenizer itself never sees a mask id.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::DataError;

/// End-of-text token of the tokenizers trained by [`Tokenizer::train_bpe`] (id 0).
pub const BPE_EOS: &str = "<|endoftext|>";

/// Candidate names of the end-of-sequence token, in the order they are looked up.
const EOS_NAMES: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<eos>",
    "<|eos|>",
    "<|end_of_text|>",
];
/// Candidate names of the beginning-of-sequence token.
const BOS_NAMES: [&str; 4] = ["<s>", "<|bos|>", "<bos>", "<|begin_of_text|>"];

/// Qwen2's pre-tokenizer pattern (`tokenization_qwen2.py`, `tokenization_dream.py`:
/// `PRETOKENIZE_REGEX`): contractions, letters with one leading non-letter, single digits,
/// punctuation runs, newlines, spaces.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's pre-tokenizer patterns by `tokenizer.ggml.pre` name (`src/llama-vocab.cpp`): `None`
/// is GPT-2's, which the byte-level step applies itself.
fn pre_pattern(pre: &str) -> Option<Option<&'static str>> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "gpt-2" | "phi-2" | "default" => Some(None),
        "qwen2" | "deepseek-r1-qwen" => Some(Some(QWEN2_PATTERN)),
        "llama3" | "llama-v3" | "llama-bpe" => Some(Some(LLAMA3)),
        _ => None,
    }
}

/// A byte-level BPE vocabulary as a GGUF file's `tokenizer.ggml.*` keys hold it (llama.cpp's `gpt2`
/// tokenizer model): every token at its id, the merges by rank, each token's type (llama.cpp's
/// `LLAMA_TOKEN_TYPE_*`: 3 control and 4 user-defined are special tokens, matched whole in text as
/// llama.cpp's CLI parses them), the pre-tokenizer's name and the EOS / BOS ids.
#[derive(Debug, Clone, Default)]
pub struct BpeVocab {
    /// `tokenizer.ggml.tokens`: token `i` is id `i`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.pre`: `gpt-2`, `qwen2`, `llama-bpe`, ...
    pub pre: String,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: the BOS id starts every encoded prompt.
    pub add_bos: bool,
}

/// llama.cpp's token types that are special tokens (control, user-defined).
const SPECIAL_TYPES: [i32; 2] = [3, 4];

/// A text tokenizer with its end-of-sequence (separator) and optional beginning-of-sequence ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: u32,
    bos_id: Option<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("bos_id", &self.bos_id)
            .finish()
    }
}

fn tok_err(file: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        file: file.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`. The EOS token is found by name (`</s>`, `<|endoftext|>`,
    /// `<eos>`, ...); a tokenizer without one is an error, since shards need a separator.
    ///
    /// Special-token text inside the input (a literal `<s>`) is encoded as plain text, as
    /// SentencePiece does.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(tok_err(path, "no such file"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| tok_err(path, e))?;
        // tokenizers 0.22 panics (an `expect`) on a JSON syntax error inside the `decoder` object
        // (found by fuzz/tokenizer): check the JSON first, so such a file is a typed error with
        // its line and column, and turn any other panic of the parser into an error too
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| tok_err(path, format!("not JSON: {e}")))?;
        let parsed =
            std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()).map_err(|_| {
                tok_err(
                    path,
                    "the tokenizers crate failed on this file (it panicked)",
                )
            })?;
        let mut inner = parsed.map_err(|e| tok_err(path, e))?;
        inner.set_encode_special_tokens(true);
        Self::wrap(inner, path)
    }

    /// The tokenizer of a model folder: its `tokenizer.json` when it has one
    /// ([`Self::from_file`]), else its `vocab.json` + `merges.txt` with `tokenizer_config.json`
    /// ([`Self::from_vocab_and_merges`]: Dream's folders, which have no `tokenizer.json`).
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(json);
        }
        if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            return Self::from_vocab_and_merges(dir);
        }
        Err(tok_err(
            dir,
            "no tokenizer.json, nor vocab.json + merges.txt, in this folder",
        ))
    }

    /// The tokenizer a program uses with a model: `file` when given, else the model `folder`'s
    /// ([`Self::from_folder`]) when it has one; `None` when neither.
    pub fn for_model(
        file: Option<&Path>,
        folder: Option<&Path>,
    ) -> Result<Option<Self>, DataError> {
        if let Some(file) = file {
            return Self::from_file(file).map(Some);
        }
        match folder {
            Some(dir)
                if dir.join("tokenizer.json").is_file()
                    || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file()) =>
            {
                Self::from_folder(dir).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Qwen2's byte-level BPE as a folder ships it for the slow tokenizer (Dream's
    /// `DreamTokenizer`): `vocab.json` and `merges.txt`, Qwen2's pre-tokenizer pattern, no
    /// normalisation, and from `tokenizer_config.json` (optional) the `added_tokens_decoder`
    /// (each at its declared id, or an error naming it), `split_special_tokens` (default false: a
    /// special token written in the text is one id) and the `eos_token` / `bos_token`.
    pub fn from_vocab_and_merges(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let path_str = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| tok_err(p, "the path is not UTF-8"))
        };
        let bpe = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
            .build()
            .map_err(|e| tok_err(&vocab, format!("vocab.json + merges.txt: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let split = Split::new(
            SplitPattern::Regex(QWEN2_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(dir, format!("Qwen2's pattern: {e}")))?;
        inner
            .with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
            ])))
            .with_decoder(Some(ByteLevel::default()));
        let config_file = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_file.is_file() {
            let text =
                std::fs::read_to_string(&config_file).map_err(crate::error::io(&config_file))?;
            serde_json::from_str(&text)
                .map_err(|e| tok_err(&config_file, format!("not JSON: {e}")))?
        } else {
            serde_json::Value::Null
        };
        let mut added: Vec<(u32, AddedToken)> = Vec::new();
        if let Some(map) = config["added_tokens_decoder"].as_object() {
            for (id, token) in map {
                let at = |what: &str| {
                    tok_err(&config_file, format!("added_tokens_decoder.{id}: {what}"))
                };
                let id: u32 = id.parse().map_err(|_| at("the key is not a token id"))?;
                let content = token["content"]
                    .as_str()
                    .ok_or_else(|| at("no `content` string"))?;
                let flag = |k: &str| token[k].as_bool().unwrap_or(false);
                let t = AddedToken::from(content, flag("special"))
                    .lstrip(flag("lstrip"))
                    .rstrip(flag("rstrip"))
                    .single_word(flag("single_word"))
                    .normalized(token["normalized"].as_bool().unwrap_or(!flag("special")));
                added.push((id, t));
            }
        }
        added.sort_by_key(|(id, _)| *id);
        for (id, token) in &added {
            inner.add_tokens(std::slice::from_ref(token));
            if inner.token_to_id(&token.content) != Some(*id) {
                return Err(tok_err(
                    &config_file,
                    format!(
                        "added token {:?} is declared as id {id} but the vocabulary puts it at {:?}",
                        token.content,
                        inner.token_to_id(&token.content)
                    ),
                ));
            }
        }
        let specials: Vec<AddedToken> = added
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(_, t)| t)
            .collect();
        inner.add_special_tokens(&specials);
        inner.set_encode_special_tokens(config["split_special_tokens"].as_bool().unwrap_or(false));
        let named = |key: &str| {
            let v = &config[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .and_then(|name| inner.token_to_id(name))
        };
        let (eos, bos) = (named("eos_token"), named("bos_token"));
        Self::wrap_named(inner, &vocab, eos, bos)
    }

    /// The tokenizer a GGUF file describes ([`BpeVocab`]); `source` names the file in errors. The
    /// pre-tokenizers read are GPT-2's, Qwen2's and Llama 3's (by llama.cpp's names); another is
    /// an error naming it.
    pub fn from_bpe_vocab(vocab: BpeVocab, source: &Path) -> Result<Self, DataError> {
        let pattern = pre_pattern(&vocab.pre).ok_or_else(|| {
            tok_err(
                source,
                format!(
                    "`tokenizer.ggml.pre` = {:?}: the pre-tokenizers read are gpt-2, qwen2 and \
                     llama-bpe (pass a tokenizer.json instead)",
                    vocab.pre
                ),
            )
        })?;
        if !vocab.token_types.is_empty() && vocab.token_types.len() != vocab.tokens.len() {
            return Err(tok_err(
                source,
                format!(
                    "{} token types for {} tokens",
                    vocab.token_types.len(),
                    vocab.tokens.len()
                ),
            ));
        }
        let mut ids = tokenizers::models::bpe::Vocab::with_capacity(vocab.tokens.len());
        for (id, token) in vocab.tokens.iter().enumerate() {
            if ids.insert(token.clone(), id as u32).is_some() {
                return Err(tok_err(
                    source,
                    format!("token {id} {token:?} appears twice in `tokenizer.ggml.tokens`"),
                ));
            }
        }
        let mut merges = Vec::with_capacity(vocab.merges.len());
        for (rank, merge) in vocab.merges.iter().enumerate() {
            let (left, right) = merge.split_once(' ').ok_or_else(|| {
                tok_err(
                    source,
                    format!("`tokenizer.ggml.merges` {rank}: {merge:?} is not two tokens"),
                )
            })?;
            merges.push((left.to_string(), right.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(ids, merges)
            .build()
            .map_err(|e| tok_err(source, format!("`tokenizer.ggml.merges`: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, false, pattern.is_none());
        let pre_tokenizer = match pattern {
            None => PreTokenizerWrapper::ByteLevel(byte_level),
            Some(pattern) => {
                let split = Split::new(
                    SplitPattern::Regex(pattern.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(source, format!("{}'s pattern: {e}", vocab.pre)))?;
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    PreTokenizerWrapper::ByteLevel(byte_level),
                ]))
            }
        };
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = vocab
            .token_types
            .iter()
            .zip(&vocab.tokens)
            .filter(|(t, _)| SPECIAL_TYPES.contains(t))
            .map(|(_, token)| AddedToken::from(token.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        inner.set_encode_special_tokens(false);
        let known = |id: Option<u32>| id.filter(|&i| (i as usize) < vocab.tokens.len());
        let mut tokenizer =
            Self::wrap_named(inner, source, known(vocab.eos_id), known(vocab.bos_id))?;
        if !vocab.add_bos {
            tokenizer.bos_id = None;
        }
        Ok(tokenizer)
    }

    fn wrap(inner: tokenizers::Tokenizer, source: &Path) -> Result<Self, DataError> {
        Self::wrap_named(inner, source, None, None)
    }

    /// `eos` / `bos`: the ids a config names; absent, they are found by the usual names.
    fn wrap_named(
        inner: tokenizers::Tokenizer,
        source: &Path,
        eos: Option<u32>,
        bos: Option<u32>,
    ) -> Result<Self, DataError> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos_id = eos.or_else(|| find(&EOS_NAMES)).ok_or_else(|| {
            tok_err(
                source,
                format!("no end-of-sequence token (looked for {EOS_NAMES:?})"),
            )
        })?;
        let bos_id = bos.or_else(|| find(&BOS_NAMES));
        Ok(Self {
            inner,
            eos_id,
            bos_id,
            source: source.to_path_buf(),
        })
    }

    /// Trains a byte-level BPE (GPT-2 style: any byte sequence is encodable, no unknown token) of
    /// `vocab_size` ids on `documents`, with [`BPE_EOS`] as id 0. `vocab_size` must leave room for
    /// the 256 byte tokens and the EOS token.
    pub fn train_bpe<I, S>(documents: I, vocab_size: usize) -> Result<Self, DataError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let source = PathBuf::from("<trained byte-level BPE>");
        if vocab_size < 258 {
            return Err(DataError::Invalid {
                what: "vocab_size",
                reason: format!("{vocab_size} < 258 (256 bytes + EOS + one merge)"),
            });
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(BPE_EOS, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_decoder(Some(ByteLevel::default()));
        inner
            .train(&mut trainer, documents)
            .map_err(|e| tok_err(&source, e))?;
        inner.set_encode_special_tokens(true);
        Self::wrap(inner, &source)
    }

    /// Writes the tokenizer as a HF `tokenizer.json` (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let json = self.inner.to_string(true).map_err(|e| tok_err(path, e))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(crate::error::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(crate::error::io(path))
    }

    /// Token ids of `text`, with the BOS id first when `add_bos` (and the tokenizer has one).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(self.with_bos(encoding.get_ids(), add_bos))
    }

    /// Token ids of many texts, encoded in parallel.
    pub fn encode_batch(&self, texts: &[&str], add_bos: bool) -> Result<Vec<Vec<u32>>, DataError> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(encodings
            .iter()
            .map(|e| self.with_bos(e.get_ids(), add_bos))
            .collect())
    }

    /// `ids`, preceded by the BOS id when asked and the tokenizer has one.
    fn with_bos(&self, ids: &[u32], add_bos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_bos {
            out.extend(self.bos_id);
        }
        out.extend_from_slice(ids);
        out
    }

    /// The token that starts a document: the BOS or, for a tokenizer without one (our byte-level
    /// BPE), the EOS, which the packed shards put before every document.
    pub fn document_start(&self) -> u32 {
        self.bos_id.unwrap_or(self.eos_id)
    }

    /// Text of a partly masked sequence for display while it is denoised: each id decoded on its
    /// own, `_` for `mask_id`, `<id>` for an id the tokenizer does not know.
    pub fn render_masked(&self, ids: &[usize], mask_id: usize) -> String {
        ids.iter()
            .map(|&t| {
                if t == mask_id {
                    "_".to_string()
                } else {
                    self.decode(&[t as u32])
                        .unwrap_or_else(|_| format!("<{t}>"))
                }
            })
            .collect()
    }

    /// The text of `ids`; special tokens (BOS, EOS) are left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(&self.source, e))
    }

    /// The text of one token, special tokens included (for showing generations step by step).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added special tokens included: the model's `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-sequence id: separator between documents in shards, padding of fine-tuning
    /// responses, and the stop token of generation.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The beginning-of-sequence id, where the tokenizer has one (Llama-2: 1).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Where the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The wrapped HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "In the beginning God created the heaven and the earth. \
        And the earth was without form, and void; and darkness was upon the face of the deep.";

    fn tiny_vocab() -> BpeVocab {
        BpeVocab {
            tokens: ["a", "b", "ab", "<|endoftext|>", "\u{0120}", "\u{0120}ab"]
                .map(String::from)
                .to_vec(),
            merges: ["a b", "\u{0120} ab"].map(String::from).to_vec(),
            token_types: vec![1, 1, 1, 3, 1, 1],
            pre: "gpt-2".into(),
            eos_id: Some(3),
            bos_id: Some(3),
            add_bos: true,
        }
    }

    #[test]
    fn a_gguf_bpe_vocabulary_encodes_merges_special_tokens_and_bos() {
        let source = Path::new("model.gguf");
        let tok = Tokenizer::from_bpe_vocab(tiny_vocab(), source).unwrap();
        assert_eq!(tok.encode("ab ab", true).unwrap(), vec![3, 2, 5]);
        assert_eq!(tok.encode("ab<|endoftext|>", false).unwrap(), vec![2, 3]);
        assert_eq!(tok.eos_id(), 3);
        let no_bos = BpeVocab {
            add_bos: false,
            ..tiny_vocab()
        };
        let tok = Tokenizer::from_bpe_vocab(no_bos, source).unwrap();
        assert_eq!(tok.encode("ab", true).unwrap(), vec![2]);
    }

    #[test]
    fn a_bad_gguf_bpe_vocabulary_is_named() {
        let source = Path::new("model.gguf");
        let err = |v: BpeVocab| {
            Tokenizer::from_bpe_vocab(v, source)
                .unwrap_err()
                .to_string()
        };
        let e = err(BpeVocab {
            pre: "tekken".into(),
            ..tiny_vocab()
        });
        assert!(
            e.contains("tokenizer.ggml.pre") && e.contains("tekken"),
            "{e}"
        );
        let e = err(BpeVocab {
            merges: vec!["ab".into()],
            ..tiny_vocab()
        });
        assert!(e.contains("merges") && e.contains("\"ab\""), "{e}");
        let mut tokens = tiny_vocab().tokens;
        tokens[2] = "a".into();
        let e = err(BpeVocab {
            tokens,
            ..tiny_vocab()
        });
        assert!(e.contains("appears twice"), "{e}");
        let e = err(BpeVocab {
            token_types: vec![1],
            ..tiny_vocab()
        });
        assert!(e.contains("1 token types for 6 tokens"), "{e}");
    }

    #[test]
    fn trained_bpe_round_trips_any_text() {
        let docs = std::iter::repeat_n(TEXT, 50);
        let tok = Tokenizer::train_bpe(docs, 300).unwrap();
        assert_eq!(tok.vocab_size(), 300);
        assert_eq!(tok.eos_id(), 0);
        assert_eq!(tok.bos_id(), None);
        for text in [TEXT, "unseen wörds ☃ and\nnew lines", ""] {
            let ids = tok.encode(text, true).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        // merges were learnt: the training text takes fewer tokens than bytes
        assert!(tok.encode(TEXT, false).unwrap().len() < TEXT.len() / 2);
        // a literal EOS string in the text is plain text, not the separator
        assert!(!tok.encode(BPE_EOS, false).unwrap().contains(&0));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(
            loaded.encode(TEXT, false).unwrap(),
            tok.encode(TEXT, false).unwrap()
        );
        assert_eq!(loaded.eos_id(), 0);
    }

    #[test]
    fn errors_name_the_file() {
        let err = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
        assert!(Tokenizer::train_bpe(std::iter::once("x"), 10).is_err());
    }

    #[test]
    fn a_syntax_error_inside_the_decoder_is_an_error_not_a_panic() {
        // the shape of fuzz/tokenizer's finding: a NUL byte inside the `decoder` object made
        // tokenizers 0.22 panic while deserialising it
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let tok = Tokenizer::train_bpe(std::iter::repeat_n(TEXT, 5), 300).unwrap();
        tok.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("\"decoder\": {").expect("a decoder") + "\"decoder\": {".len();
        let broken = format!("{}\u{0}{}", &text[..at], &text[at..]);
        std::fs::write(&path, broken).unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("tokenizer.json") && message.contains("line"),
            "{message}"
        );
    }
}
