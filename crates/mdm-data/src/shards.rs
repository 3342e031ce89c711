//! Packed token shards in the lit-gpt / TinyLlama format (SMDM.md section 8), byte-compatible
//! with shards written by TinyLlama's `PackedDatasetBuilder`.
//!
//! A shard `<prefix>_<10-digit counter>.bin` is a 24-byte header (ASCII `LITPKDS`, version `u64`
//! little-endian = 1, dtype code `u8`, chunk size `u64`) followed by exactly `chunk_size` tokens of
//! that dtype. Documents are concatenated across shard boundaries; the tail of the last shard holds
//! the separator (EOS) token.
//!
//! [`BlockLoader`] serves fixed blocks of `block_size` tokens from memory-mapped shards: each
//! shard yields `chunk_size / block_size` blocks (the remainder is not used, as in lit-gpt). The
//! order of an epoch is one of [`BlockOrder`]: by default every block of the corpus in one seeded
//! permutation ([`BlockOrder::Global`]), or lit-gpt's buffered shuffle ([`BlockOrder::Buffered`]:
//! the shards of an epoch are shuffled, taken `n_chunks` at a time into a buffer, and the buffer's
//! blocks are served in a shuffled order), all drawn from the seed. Shards are split across
//! processes by `(rank, world_size)`. [`BlockLoader::position`] / [`BlockLoader::restore`] save and
//! restore the exact place in the stream.
//!
//! Why the default is global: lit-gpt's order suits SlimPajama's thousands of shards, but a small
//! corpus has few shards in document order (the King James Bible of docs/training.md makes 16),
//! and with buffers of 8 every step of the first half-epoch sees only half of the corpus. Measured
//! with the PyTorch twin of SMDM's loop on that data (issue 13 of the project), that order alone
//! cost the MDM 0.4 bits per token of validation bound after 600 steps.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::permutation::IndexPermutation;
use crate::DataError;

/// The magic bytes of a shard.
pub const MAGIC: &[u8; 7] = b"LITPKDS";
/// The header length in bytes.
pub const HEADER_LEN: usize = 24;
/// The only format version.
pub const VERSION: u64 = 1;

/// Token storage type and its code in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDtype {
    /// code 1
    U8,
    /// code 2
    I8,
    /// code 3
    I16,
    /// code 4
    I32,
    /// code 5
    I64,
    /// code 6
    F32,
    /// code 7
    F64,
    /// code 8
    U16,
}

impl TokenDtype {
    /// The header code.
    pub fn code(self) -> u8 {
        match self {
            Self::U8 => 1,
            Self::I8 => 2,
            Self::I16 => 3,
            Self::I32 => 4,
            Self::I64 => 5,
            Self::F32 => 6,
            Self::F64 => 7,
            Self::U16 => 8,
        }
    }

    /// The dtype of a header code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::U8,
            2 => Self::I8,
            3 => Self::I16,
            4 => Self::I32,
            5 => Self::I64,
            6 => Self::F32,
            7 => Self::F64,
            8 => Self::U16,
            _ => return None,
        })
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::F32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }

    /// lit-gpt's choice for a vocabulary: `u16` below 65,500 ids, `i32` above.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size < 65_500 {
            Self::U16
        } else {
            Self::I32
        }
    }

    /// Decodes one little-endian token; `None` if it is not a non-negative integer.
    fn decode(self, b: &[u8]) -> Option<u64> {
        let int = |v: i64| u64::try_from(v).ok();
        let float =
            |v: f64| (v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)).then_some(v as u64);
        match self {
            Self::U8 => Some(b[0] as u64),
            Self::I8 => int(b[0] as i8 as i64),
            Self::I16 => int(i16::from_le_bytes([b[0], b[1]]) as i64),
            Self::U16 => Some(u16::from_le_bytes([b[0], b[1]]) as u64),
            Self::I32 => int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
            Self::I64 => int(i64::from_le_bytes(b[..8].try_into().ok()?)),
            Self::F32 => float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            Self::F64 => float(f64::from_le_bytes(b[..8].try_into().ok()?)),
        }
    }

    /// Encodes one token (the caller checked that it fits).
    fn encode(self, id: u32, out: &mut Vec<u8>) {
        match self {
            Self::U8 => out.push(id as u8),
            Self::I8 => out.push(id as i8 as u8),
            Self::I16 => out.extend_from_slice(&(id as i16).to_le_bytes()),
            Self::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Self::I32 => out.extend_from_slice(&(id as i32).to_le_bytes()),
            Self::I64 => out.extend_from_slice(&(id as i64).to_le_bytes()),
            Self::F32 => out.extend_from_slice(&(id as f32).to_le_bytes()),
            Self::F64 => out.extend_from_slice(&(id as f64).to_le_bytes()),
        }
    }

    /// The largest id this dtype stores exactly.
    fn max_id(self) -> u64 {
        match self {
            Self::U8 => u8::MAX as u64,
            Self::I8 => i8::MAX as u64,
            Self::I16 => i16::MAX as u64,
            Self::U16 => u16::MAX as u64,
            Self::I32 => i32::MAX as u64,
            Self::I64 => i64::MAX as u64,
            Self::F32 => 1 << 24,
            Self::F64 => 1 << 53,
        }
    }
}

/// The file name of shard `counter`: `<prefix>_<10-digit counter>.bin`.
pub fn shard_name(prefix: &str, counter: usize) -> String {
    format!("{prefix}_{counter:010}.bin")
}

/// The shards `<prefix>_*.bin` in `dir`, sorted by name.
pub fn find_shards(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&format!("{prefix}_")) && name.ends_with(".bin") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Writes documents into shards of `chunk_size` tokens (lit-gpt's `PackedDatasetBuilder`).
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    chunk_size: usize,
    dtype: TokenDtype,
    sep: u32,
    buffer: Vec<u32>,
    files: Vec<PathBuf>,
    tokens: u64,
}

impl ShardWriter {
    /// A writer of `<dir>/<prefix>_NNNNNNNNNN.bin` shards of `chunk_size` tokens, stored as
    /// [`TokenDtype::for_vocab`] of `vocab_size`, tails filled with `sep`.
    pub fn new(
        dir: impl AsRef<Path>,
        prefix: &str,
        chunk_size: usize,
        vocab_size: usize,
        sep: u32,
    ) -> Result<Self, DataError> {
        Self::with_dtype(
            dir,
            prefix,
            chunk_size,
            TokenDtype::for_vocab(vocab_size),
            sep,
        )
    }

    /// As [`Self::new`] with an explicit token dtype.
    pub fn with_dtype(
        dir: impl AsRef<Path>,
        prefix: &str,
        chunk_size: usize,
        dtype: TokenDtype,
        sep: u32,
    ) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        if chunk_size == 0 {
            return Err(DataError::Invalid {
                what: "chunk_size",
                reason: "must be positive".into(),
            });
        }
        if sep as u64 > dtype.max_id() {
            return Err(DataError::Invalid {
                what: "separator",
                reason: format!("{sep} does not fit {dtype:?}"),
            });
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self {
            dir,
            prefix: prefix.to_string(),
            chunk_size,
            dtype,
            sep,
            buffer: Vec::with_capacity(chunk_size),
            files: Vec::new(),
            tokens: 0,
        })
    }

    /// Appends a document's tokens (include the separator yourself where documents should be
    /// separated); full chunks are written as they fill.
    pub fn add_document(&mut self, ids: &[u32]) -> Result<(), DataError> {
        if let Some(&bad) = ids.iter().find(|&&i| i as u64 > self.dtype.max_id()) {
            return Err(DataError::Invalid {
                what: "token id",
                reason: format!("{bad} does not fit the shard dtype {:?}", self.dtype),
            });
        }
        let mut rest = ids;
        while !rest.is_empty() {
            let take = (self.chunk_size - self.buffer.len()).min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == self.chunk_size {
                self.write_chunk()?;
            }
        }
        self.tokens += ids.len() as u64;
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<(), DataError> {
        self.buffer.resize(self.chunk_size, self.sep);
        let path = self.dir.join(shard_name(&self.prefix, self.files.len()));
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.chunk_size * self.dtype.size());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.push(self.dtype.code());
        bytes.extend_from_slice(&(self.chunk_size as u64).to_le_bytes());
        for &id in &self.buffer {
            self.dtype.encode(id, &mut bytes);
        }
        let tmp = path.with_extension("bin.tmp");
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.files.push(path);
        self.buffer.clear();
        Ok(())
    }

    /// Tokens added so far (separators included, tail padding not).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Writes the last partial chunk (tail filled with the separator) and returns every shard.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, DataError> {
        if !self.buffer.is_empty() {
            self.write_chunk()?;
        }
        Ok(self.files)
    }
}

/// One memory-mapped shard, header checked.
#[derive(Debug)]
pub struct Shard {
    file: PathBuf,
    map: memmap2::Mmap,
    dtype: TokenDtype,
    chunk_size: usize,
}

impl Shard {
    /// Maps `file` and checks its header and length.
    pub fn open(file: impl AsRef<Path>) -> Result<Self, DataError> {
        let file = file.as_ref().to_path_buf();
        let handle = File::open(&file).map_err(io(&file))?;
        // SAFETY: shards are read-only inputs; a shard modified while mapped is a user error that
        // can at worst yield wrong token values, which are range-checked when served.
        let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(io(&file))?;
        let err = |offset: u64, reason: String| DataError::Shard {
            file: file.clone(),
            offset,
            reason,
        };
        if map.len() < HEADER_LEN {
            return Err(err(
                map.len() as u64,
                format!("truncated header ({} of {HEADER_LEN} bytes)", map.len()),
            ));
        }
        if &map[..7] != MAGIC {
            return Err(err(
                0,
                format!("wrong magic {:?}, expected LITPKDS", &map[..7]),
            ));
        }
        let version = u64::from_le_bytes(map[7..15].try_into().expect("8 bytes"));
        if version != VERSION {
            return Err(err(7, format!("unsupported version {version}, expected 1")));
        }
        let dtype = TokenDtype::from_code(map[15])
            .ok_or_else(|| err(15, format!("unknown dtype code {}", map[15])))?;
        let chunk_size = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes"));
        // a header may promise any count: checked arithmetic (found by fuzz/shard_loader)
        let expected = chunk_size
            .checked_mul(dtype.size() as u64)
            .and_then(|n| n.checked_add(HEADER_LEN as u64));
        if Some(map.len() as u64) != expected {
            let expected = expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string());
            return Err(err(
                map.len() as u64,
                format!(
                    "file is {} bytes, the header promises {expected} ({chunk_size} tokens of {dtype:?})",
                    map.len()
                ),
            ));
        }
        Ok(Self {
            file,
            map,
            dtype,
            chunk_size: chunk_size as usize,
        })
    }

    /// Tokens in the shard.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The token dtype.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// The file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Tokens `start..start + len`, each checked against `vocab_size`.
    pub fn read(&self, start: usize, len: usize, vocab_size: usize) -> Result<Vec<u32>, DataError> {
        if start + len > self.chunk_size {
            return Err(DataError::Invalid {
                what: "shard range",
                reason: format!(
                    "{start}..{} beyond {} tokens of {}",
                    start + len,
                    self.chunk_size,
                    self.file.display()
                ),
            });
        }
        let size = self.dtype.size();
        let mut out = Vec::with_capacity(len);
        for i in start..start + len {
            let offset = HEADER_LEN + i * size;
            let id = self.dtype.decode(&self.map[offset..offset + size]);
            match id {
                Some(id) if (id as usize) < vocab_size => out.push(id as u32),
                _ => {
                    return Err(DataError::TokenOutOfRange {
                        file: self.file.clone(),
                        offset: offset as u64,
                        id: id.unwrap_or(u64::MAX),
                        vocab_size,
                    })
                }
            }
        }
        Ok(out)
    }
}

/// The order in which a shuffling [`BlockLoader`] serves the blocks of an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockOrder {
    /// Every block of this rank's shards in one seeded permutation, new each epoch: any step may
    /// see any part of the corpus. Needs no memory per block (see [`crate::permutation`]).
    #[default]
    Global,
    /// lit-gpt's `PackedDataset` order, as SMDM trained: the shards shuffled, then `n_chunks`
    /// shards at a time into a buffer whose blocks are shuffled. For reproducing SMDM on corpora
    /// of many shards; on a corpus of few shards in document order it starves each stretch of
    /// training of most of the corpus.
    #[serde(alias = "litgpt")]
    Buffered,
}

impl std::str::FromStr for BlockOrder {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "global" => Ok(Self::Global),
            "buffered" | "litgpt" => Ok(Self::Buffered),
            other => Err(DataError::Invalid {
                what: "block order",
                reason: format!("`{other}` (expected global, or buffered / litgpt)"),
            }),
        }
    }
}

/// Options of a [`BlockLoader`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoaderOptions {
    /// Tokens per block.
    pub block_size: usize,
    /// Ids must be below this.
    pub vocab_size: usize,
    /// Shards per shuffle buffer (lit-gpt's `n_chunks`; [`BlockOrder::Buffered`] only).
    pub n_chunks: usize,
    /// Shuffle (off: every block in file order, e.g. for validation).
    pub shuffle: bool,
    /// How a shuffled epoch is ordered.
    #[serde(default)]
    pub order: BlockOrder,
    /// Seed of every shuffle.
    pub seed: u64,
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
}

impl LoaderOptions {
    /// Blocks of `block_size` tokens shuffled over the whole corpus ([`BlockOrder::Global`]), seed
    /// 0, one process (buffers of 8 shards if switched to [`BlockOrder::Buffered`]).
    pub fn new(block_size: usize, vocab_size: usize) -> Self {
        Self {
            block_size,
            vocab_size,
            n_chunks: 8,
            shuffle: true,
            order: BlockOrder::Global,
            seed: 0,
            rank: 0,
            world_size: 1,
        }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the shards per shuffle buffer.
    pub fn with_n_chunks(mut self, n_chunks: usize) -> Self {
        self.n_chunks = n_chunks;
        self
    }

    /// Sets the order of shuffled epochs.
    pub fn with_order(mut self, order: BlockOrder) -> Self {
        self.order = order;
        self
    }

    /// Turns shuffling on or off.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Serves only this process's share of the shards.
    pub fn with_rank(mut self, rank: usize, world_size: usize) -> Self {
        self.rank = rank;
        self.world_size = world_size;
        self
    }
}

/// Where a [`BlockLoader`] is in its stream: restore it to continue exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// Completed passes over this rank's shards.
    pub epoch: u64,
    /// Blocks served in the current epoch.
    pub block: u64,
}

/// Serves fixed-size blocks from shards; endless (epochs repeat with new shuffles).
#[derive(Debug)]
pub struct BlockLoader {
    shards: Vec<Shard>,
    options: LoaderOptions,
    position: LoaderPosition,
    /// The current buffer: (shard, block) in serving order, and its first global block index.
    buffer: Vec<(usize, usize)>,
    buffer_start: u64,
    /// Shard order of the current epoch.
    order: Vec<usize>,
    /// The global permutation of the current epoch ([`BlockOrder::Global`]).
    permutation: Option<IndexPermutation>,
    /// First global block index of each shard, and the total at the end.
    shard_starts: Vec<u64>,
    blocks_per_epoch: u64,
}

impl BlockLoader {
    /// Opens every shard of this rank (`files[rank..][::world_size]`, after dropping the
    /// remainder that does not divide evenly, as lit-gpt does) and checks the options.
    pub fn open(files: &[PathBuf], options: LoaderOptions) -> Result<Self, DataError> {
        let invalid = |what: &'static str, reason: String| DataError::Invalid { what, reason };
        if options.block_size == 0 || options.n_chunks == 0 {
            return Err(invalid(
                "loader options",
                "block_size and n_chunks must be positive".into(),
            ));
        }
        if options.world_size == 0 || options.rank >= options.world_size {
            return Err(invalid(
                "rank",
                format!("rank {} of world size {}", options.rank, options.world_size),
            ));
        }
        let usable = files.len() / options.world_size * options.world_size;
        let mine: Vec<&PathBuf> = files[..usable]
            .iter()
            .skip(options.rank)
            .step_by(options.world_size)
            .collect();
        if mine.is_empty() {
            return Err(invalid(
                "shards",
                format!(
                    "{} shard(s) leave none for rank {} of {}",
                    files.len(),
                    options.rank,
                    options.world_size
                ),
            ));
        }
        let shards = mine
            .into_iter()
            .map(Shard::open)
            .collect::<Result<Vec<_>, _>>()?;
        for shard in &shards {
            if shard.chunk_size < options.block_size {
                return Err(DataError::Shard {
                    file: shard.file.clone(),
                    offset: 16,
                    reason: format!(
                        "chunk of {} tokens is shorter than a block of {}",
                        shard.chunk_size, options.block_size
                    ),
                });
            }
        }
        let mut shard_starts = vec![0u64];
        for s in &shards {
            let last = shard_starts[shard_starts.len() - 1];
            shard_starts.push(last + (s.chunk_size / options.block_size) as u64);
        }
        let blocks_per_epoch = shard_starts[shards.len()];
        let mut loader = Self {
            shards,
            options,
            position: LoaderPosition::default(),
            buffer: Vec::new(),
            buffer_start: 0,
            order: Vec::new(),
            permutation: None,
            shard_starts,
            blocks_per_epoch,
        };
        loader.start_epoch(0);
        Ok(loader)
    }

    /// Blocks in one pass over this rank's shards.
    pub fn blocks_per_epoch(&self) -> u64 {
        self.blocks_per_epoch
    }

    /// The options.
    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    fn rng(&self, stream: u64) -> rand_chacha::ChaCha8Rng {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.options.seed);
        rng.set_stream(stream);
        rng
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.position = LoaderPosition { epoch, block: 0 };
        if self.options.shuffle && self.options.order == BlockOrder::Global {
            let key = rand::Rng::random::<u64>(&mut self.rng(epoch.wrapping_mul(1 << 20)));
            self.permutation = Some(IndexPermutation::new(self.blocks_per_epoch, key));
            return;
        }
        self.permutation = None;
        self.order = (0..self.shards.len()).collect();
        if self.options.shuffle {
            let mut rng = self.rng(epoch.wrapping_mul(1 << 20));
            self.order.shuffle(&mut rng);
        }
        self.fill_buffer(0, 0);
    }

    /// Loads buffer `index` of the current epoch, whose first block is `start`.
    fn fill_buffer(&mut self, index: usize, start: u64) {
        let n = self.options.n_chunks;
        let shards = &self.order[(index * n).min(self.order.len())..];
        let shards = &shards[..n.min(shards.len())];
        self.buffer = shards
            .iter()
            .flat_map(|&s| {
                (0..self.shards[s].chunk_size / self.options.block_size).map(move |b| (s, b))
            })
            .collect();
        if self.options.shuffle {
            let stream = self.position.epoch.wrapping_mul(1 << 20) + 1 + index as u64;
            let mut rng = self.rng(stream);
            self.buffer.shuffle(&mut rng);
        }
        self.buffer_start = start;
    }

    /// The next block of `block_size` token ids.
    pub fn next_block(&mut self) -> Result<Vec<u32>, DataError> {
        if self.position.block >= self.blocks_per_epoch {
            self.start_epoch(self.position.epoch + 1);
        }
        let (shard, block) = match self.permutation {
            Some(p) => self.locate(p.apply(self.position.block)),
            None => self.next_buffered(),
        };
        let size = self.options.block_size;
        let ids = self.shards[shard].read(block * size, size, self.options.vocab_size)?;
        self.position.block += 1;
        Ok(ids)
    }

    /// `(shard, block within the shard)` of global block `index`.
    fn locate(&self, index: u64) -> (usize, usize) {
        let shard = self.shard_starts.partition_point(|&s| s <= index) - 1;
        (shard, (index - self.shard_starts[shard]) as usize)
    }

    /// The buffered order's next `(shard, block)`, loading the buffer that holds it.
    fn next_buffered(&mut self) -> (usize, usize) {
        let mut within = (self.position.block - self.buffer_start) as usize;
        while within >= self.buffer.len() {
            let next_start = self.buffer_start + self.buffer.len() as u64;
            let index = self.buffer_index_of(next_start);
            self.fill_buffer(index, next_start);
            within = (self.position.block - self.buffer_start) as usize;
        }
        self.buffer[within]
    }

    /// Which buffer of the current epoch starts at global block `start`.
    fn buffer_index_of(&self, start: u64) -> usize {
        let mut first = 0u64;
        for (index, group) in self.order.chunks(self.options.n_chunks).enumerate() {
            if first >= start {
                return index;
            }
            first += group
                .iter()
                .map(|&s| (self.shards[s].chunk_size / self.options.block_size) as u64)
                .sum::<u64>();
        }
        self.order.len().div_ceil(self.options.n_chunks)
    }

    /// `rows` blocks, row-major.
    pub fn next_batch(&mut self, rows: usize) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::with_capacity(rows * self.options.block_size);
        for _ in 0..rows {
            out.extend(self.next_block()?);
        }
        Ok(out)
    }

    /// The current position (save it with a checkpoint).
    pub fn position(&self) -> LoaderPosition {
        self.position
    }

    /// Continues from a saved position: the next block is the one that followed it.
    pub fn restore(&mut self, position: LoaderPosition) -> Result<(), DataError> {
        if position.block > self.blocks_per_epoch {
            return Err(DataError::Invalid {
                what: "loader position",
                reason: format!(
                    "block {} beyond the {} blocks of an epoch (were the shards changed?)",
                    position.block, self.blocks_per_epoch
                ),
            });
        }
        // `next_block` loads the buffer holding the position (or starts the next epoch)
        self.start_epoch(position.epoch);
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_header_promising_an_overflowing_count_is_an_error() {
        // found by fuzz/shard_loader: 2^64 / 2 tokens of u16 overflowed the size check
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_0.bin");
        let mut bytes = b"LITPKDS".to_vec();
        bytes.extend(1u64.to_le_bytes());
        bytes.push(8);
        // for 2-byte tokens, 2 x (2^63 + 4) wraps to the 8 bytes that follow: without checked
        // arithmetic that shard would open and promise 2^63 tokens
        bytes.extend(((1u64 << 63) + 4).to_le_bytes());
        bytes.extend([0u8; 8]);
        std::fs::write(&path, &bytes).unwrap();
        for code in 1..=9 {
            bytes[15] = code;
            std::fs::write(&path, &bytes).unwrap();
            assert!(Shard::open(&path).is_err());
        }
    }

    use super::*;

    fn write(dir: &Path, docs: &[&[u32]], chunk: usize) -> Vec<PathBuf> {
        let mut w = ShardWriter::new(dir, "train", chunk, 1000, 999).unwrap();
        for d in docs {
            w.add_document(d).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn header_bytes_follow_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), &[&[1, 2, 3]], 4);
        assert_eq!(files[0].file_name().unwrap(), "train_0000000000.bin");
        let bytes = std::fs::read(&files[0]).unwrap();
        let mut expected = b"LITPKDS".to_vec();
        expected.extend([1, 0, 0, 0, 0, 0, 0, 0]); // version 1
        expected.push(8); // uint16
        expected.extend([4, 0, 0, 0, 0, 0, 0, 0]); // chunk size
        expected.extend([1, 0, 2, 0, 3, 0, 0xe7, 0x03]); // 1 2 3 then the separator 999
        assert_eq!(bytes, expected);
    }

    #[test]
    fn documents_span_shards_and_tails_hold_the_separator() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Vec<u32>> = (0..7)
            .map(|d| (0..d + 3).map(|i| d * 10 + i).collect())
            .collect();
        let refs: Vec<&[u32]> = docs.iter().map(|d| d.as_slice()).collect();
        let files = write(dir.path(), &refs, 16);
        let all: Vec<u32> = docs.concat();
        assert_eq!(files.len(), all.len().div_ceil(16));
        let mut read = Vec::new();
        for f in &files {
            let s = Shard::open(f).unwrap();
            read.extend(s.read(0, s.chunk_size(), 1000).unwrap());
        }
        assert_eq!(&read[..all.len()], &all[..]);
        assert!(read[all.len()..].iter().all(|&t| t == 999));
        assert_eq!(find_shards(dir.path(), "train").unwrap(), files);
    }

    #[test]
    fn malformed_shards_are_typed_errors_with_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), &[&[1, 2, 3, 4]], 4);
        let good = std::fs::read(&files[0]).unwrap();
        let check = |bytes: &[u8], needle: &str, offset: u64| {
            let path = dir.path().join("bad.bin");
            std::fs::write(&path, bytes).unwrap();
            match Shard::open(&path) {
                Err(DataError::Shard {
                    file,
                    offset: o,
                    reason,
                }) => {
                    assert_eq!(file, path);
                    assert_eq!(o, offset, "{reason}");
                    assert!(reason.contains(needle), "{reason}");
                }
                other => panic!("expected a shard error, got {other:?}"),
            }
        };
        let mut bad = good.clone();
        bad[0] = b'X';
        check(&bad, "magic", 0);
        let mut bad = good.clone();
        bad[7] = 2;
        check(&bad, "version 2", 7);
        let mut bad = good.clone();
        bad[15] = 9;
        check(&bad, "dtype code 9", 15);
        check(&good[..good.len() - 1], "promises", good.len() as u64 - 1);
        check(&good[..10], "truncated header", 10);

        // token 4 at token index 3 (byte 24 + 6) is outside a vocabulary of 4
        let s = Shard::open(&files[0]).unwrap();
        match s.read(0, 4, 4) {
            Err(DataError::TokenOutOfRange { offset, id, .. }) => {
                assert_eq!((offset, id), (30, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_dtype_round_trips() {
        for code in 1..=8 {
            let dtype = TokenDtype::from_code(code).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut w = ShardWriter::with_dtype(dir.path(), "x", 3, dtype, 0).unwrap();
            w.add_document(&[5, 100, 7]).unwrap();
            let files = w.finish().unwrap();
            let s = Shard::open(&files[0]).unwrap();
            assert_eq!(s.dtype().code(), code);
            assert_eq!(s.read(0, 3, 1000).unwrap(), vec![5, 100, 7]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::with_dtype(dir.path(), "x", 3, TokenDtype::U8, 0).unwrap();
        assert!(w.add_document(&[300]).is_err(), "300 does not fit u8");
    }

    fn loader_fixture(dir: &Path) -> Vec<PathBuf> {
        // 5 shards of 12 tokens, token = global index: blocks of 4 are identified by their first id
        let mut w = ShardWriter::new(dir, "train", 12, 1000, 0).unwrap();
        w.add_document(&(0..60).collect::<Vec<u32>>()).unwrap();
        w.finish().unwrap()
    }

    fn firsts(loader: &mut BlockLoader, n: usize) -> Vec<u32> {
        (0..n).map(|_| loader.next_block().unwrap()[0]).collect()
    }

    const ORDERS: [BlockOrder; 2] = [BlockOrder::Global, BlockOrder::Buffered];

    #[test]
    fn an_epoch_serves_every_block_once_shuffled_by_seed() {
        for order in ORDERS {
            epoch_serves_every_block_once(order);
        }
    }

    fn epoch_serves_every_block_once(order: BlockOrder) {
        let dir = tempfile::tempdir().unwrap();
        let files = loader_fixture(dir.path());
        let options = LoaderOptions::new(4, 1000)
            .with_n_chunks(2)
            .with_order(order);
        let mut a = BlockLoader::open(&files, options.clone().with_seed(1)).unwrap();
        assert_eq!(a.blocks_per_epoch(), 15);
        let epoch0 = firsts(&mut a, 15);
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..15).map(|b| b * 4).collect::<Vec<_>>());
        assert_ne!(epoch0, sorted, "shuffled");
        let epoch1 = firsts(&mut a, 15);
        assert_ne!(epoch0, epoch1, "a new epoch reshuffles");
        let mut b = BlockLoader::open(&files, options.clone().with_seed(1)).unwrap();
        assert_eq!(firsts(&mut b, 15), epoch0, "same seed, same order");
        let mut c = BlockLoader::open(&files, options.clone().with_seed(2)).unwrap();
        assert_ne!(firsts(&mut c, 15), epoch0);
        let mut plain = BlockLoader::open(&files, options.with_shuffle(false)).unwrap();
        assert_eq!(firsts(&mut plain, 15), sorted);
    }

    #[test]
    fn restore_continues_exactly() {
        for order in ORDERS {
            restore_continues_exactly_in(order);
        }
    }

    fn restore_continues_exactly_in(order: BlockOrder) {
        let dir = tempfile::tempdir().unwrap();
        let files = loader_fixture(dir.path());
        let options = LoaderOptions::new(4, 1000)
            .with_n_chunks(2)
            .with_seed(9)
            .with_order(order);
        let mut full = BlockLoader::open(&files, options.clone()).unwrap();
        let reference = firsts(&mut full, 40);
        for stop in [0, 1, 5, 6, 14, 15, 16, 29, 33] {
            let mut a = BlockLoader::open(&files, options.clone()).unwrap();
            let head = firsts(&mut a, stop);
            let pos = a.position();
            let mut b = BlockLoader::open(&files, options.clone()).unwrap();
            b.restore(pos).unwrap();
            let tail = firsts(&mut b, 40 - stop);
            assert_eq!([head, tail].concat(), reference, "stopped after {stop}");
        }
        let mut a = BlockLoader::open(&files, options).unwrap();
        let bad = LoaderPosition {
            epoch: 0,
            block: 99,
        };
        assert!(a.restore(bad).is_err());
    }

    #[test]
    fn the_global_order_reaches_the_whole_corpus_at_once_the_buffered_one_does_not() {
        // 16 shards of 64 blocks, as a small corpus in document order: block id = its first token
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), "train", 256, 70_000, 0).unwrap();
        w.add_document(&(0..16 * 256).collect::<Vec<u32>>())
            .unwrap();
        let files = w.finish().unwrap();
        assert_eq!(files.len(), 16);
        let shards_seen = |order: BlockOrder| {
            let options = LoaderOptions::new(4, 70_000).with_seed(3).with_order(order);
            let mut l = BlockLoader::open(&files, options).unwrap();
            // the first eighth of the epoch: 128 of 1,024 blocks
            let mut seen: Vec<u32> = firsts(&mut l, 128).iter().map(|&t| t / 256).collect();
            seen.sort();
            seen.dedup();
            seen.len()
        };
        assert_eq!(shards_seen(BlockOrder::Global), 16);
        assert_eq!(
            shards_seen(BlockOrder::Buffered),
            8,
            "lit-gpt: one buffer of 8 shards"
        );
        assert_eq!(
            "litgpt".parse::<BlockOrder>().unwrap(),
            BlockOrder::Buffered
        );
        assert!("random".parse::<BlockOrder>().is_err());
    }

    #[test]
    fn ranks_split_the_shards() {
        let dir = tempfile::tempdir().unwrap();
        let files = loader_fixture(dir.path());
        let mut seen = Vec::new();
        for rank in 0..2 {
            let options = LoaderOptions::new(4, 1000).with_rank(rank, 2);
            let mut l = BlockLoader::open(&files, options).unwrap();
            // 5 shards over 2 ranks: the fifth is dropped, each rank gets 2 shards = 6 blocks
            assert_eq!(l.blocks_per_epoch(), 6);
            seen.extend(firsts(&mut l, 6));
        }
        seen.sort();
        assert_eq!(seen, (0..12).map(|b| b * 4).collect::<Vec<_>>());
        assert!(BlockLoader::open(&files, LoaderOptions::new(4, 1000).with_rank(2, 2)).is_err());
        assert!(BlockLoader::open(&files, LoaderOptions::new(13, 1000)).is_err());
    }
}
