//! Text files → a data folder for `pretrain`: a byte-level BPE (or a given `tokenizer.json`) and
//! packed token shards (lit-gpt / TinyLlama format) split into training and validation.
//!
//! ```text
//! cargo run --release --example prepare -- --input ../shared/data/text/kjv.txt.gz \
//!     --out data/kjv --vocab-size 4096 --split lines
//! ```

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mdm::data::corpus::{prepare_corpus, CorpusOptions};
use mdm::data::text::DocumentSplit;

#[derive(Parser, Debug)]
#[command(about = "Tokenise text files into packed shards (train + validation) for pretrain")]
struct Args {
    /// Text files (plain or .gz).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output folder (shards, tokenizer.json, corpus.json).
    #[arg(long)]
    out: PathBuf,
    /// Use this tokenizer.json instead of training a BPE.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Size of the BPE to train.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// How files are cut into documents: file, lines or paragraphs.
    #[arg(long, default_value = "paragraphs")]
    split: DocumentSplit,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.02)]
    valid_fraction: f64,
    /// Tokens per training shard.
    #[arg(long, default_value_t = 65_536)]
    chunk_size: usize,
    /// Put the tokenizer's BOS before every document.
    #[arg(long)]
    add_bos: bool,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let mut options = CorpusOptions::new(args.input);
    options.tokenizer = args.tokenizer;
    options.vocab_size = args.vocab_size;
    options.split = args.split;
    options.valid_fraction = args.valid_fraction;
    options.chunk_size = args.chunk_size;
    options.add_bos = args.add_bos;
    options.seed = args.seed;
    eprintln!(
        "{} the tokenizer and reading {} file(s)...",
        if options.tokenizer.is_some() {
            "loading"
        } else {
            "training"
        },
        options.inputs.len()
    );
    let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template(
        "encoding {bar:30} {pos}/{len} documents  ETA {eta}",
    )?);
    let report = prepare_corpus(&options, &args.out, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "{}: tokenizer of {} ids (EOS {}); train {} documents, {} tokens in {} shards; validation {} documents, {} tokens in {} shards",
        args.out.display(),
        report.vocab_size,
        report.eos_id,
        report.train_documents,
        report.train_tokens,
        report.train_shards.len(),
        report.valid_documents,
        report.valid_tokens,
        report.valid_shards.len()
    );
    println!(
        "next: cargo run --release --example pretrain -- --data {} --out runs/mdm",
        args.out.display()
    );
    Ok(())
}
