//! Likelihood of a model on the validation shards of a data folder: the MC ELBO bound of an
//! MDM (any model the flags name) or the exact NLL of the baseline (a checkpoint saved as causal), in bits per token with
//! standard error, beside the unigram entropy of the same blocks; for an MDM also the
//! cross-entropy per masked token at several masking rates.
//!
//! ```text
//! cargo run --release --example perplexity -- --checkpoint runs/kjv-mdm/model --data data/kjv
//! cargo run --release --example perplexity -- --hf GSAI-ML/LLaDA-8B-Base --quant q4_k --data data/kjv
//! ```

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use mdm::data::shards::{find_shards, BlockLoader, LoaderOptions};
use mdm::eval::perplexity::{
    causal_nll_per_token, masked_ce_at_rate, masked_elbo_per_token, unigram_entropy_bits,
};
use mdm::models::checkpoint::ModelKind;
use mdm::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "Bits per token of a model on validation shards")]
struct Args {
    /// The model (`--checkpoint` a `model/` of a pretrain run or `checkpoints/step-*`, `--hf`,
    /// `--smdm`; `--dtype` / `--quant`).
    #[command(flatten)]
    model: ModelArgs,
    /// A data folder from `prepare` (its valid_*.bin shards are read in order).
    #[arg(long)]
    data: PathBuf,
    /// Shard prefix to evaluate.
    #[arg(long, default_value = "valid")]
    split: String,
    /// Tokens per block (the baseline scores block - 1 of them).
    #[arg(long, default_value_t = 256)]
    block: usize,
    /// Blocks to evaluate (at most).
    #[arg(long, default_value_t = 64)]
    blocks: usize,
    /// Monte Carlo samples per block (MDM).
    #[arg(long, default_value_t = 16)]
    mc: usize,
    /// Blocks per forward batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Masking rates for the MDM's cross-entropy profile (empty: none).
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.25,0.5,0.75,0.95")]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

/// The first `count` blocks of `block` tokens of the split's shards, in order.
fn read_blocks(args: &Args, vocab: usize) -> Result<Vec<Vec<u32>>> {
    let files = find_shards(&args.data, &args.split)?;
    if files.is_empty() {
        bail!("no {}_*.bin shards in {}", args.split, args.data.display());
    }
    let mut loader = BlockLoader::open(
        &files,
        LoaderOptions::new(args.block, vocab).with_shuffle(false),
    )?;
    let n = (args.blocks as u64).min(loader.blocks_per_epoch());
    Ok((0..n)
        .map(|_| loader.next_block())
        .collect::<Result<_, _>>()?)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let source = args.model.source(args.seed)?;
    if let ModelSource::Random { .. } = source {
        bail!("give --checkpoint, --hf or --smdm");
    }
    let mut rng = rng_from_seed(args.seed);
    let header = |blocks: &[Vec<u32>], kind: ModelKind| {
        println!(
            "{} ({kind:?}) on {} blocks of {} tokens from {}:",
            source.describe(),
            blocks.len(),
            args.block,
            args.data.display()
        );
    };
    let blocks = match source.kind()? {
        ModelKind::Masked => {
            let format = args.model.weight_format()?;
            let model = mdm::Allocator::purging(|| {
                source.load_masked_as::<DefaultBackend>(format, &device)
            })?;
            let blocks = read_blocks(&args, MaskPredictor::vocab_size(&model))?;
            header(&blocks, ModelKind::Masked);
            let v = masked_elbo_per_token(&model, &blocks, args.batch, args.mc, &mut rng)?;
            println!(
                "  ELBO bound   {:.4} ± {:.4} bits/token (perplexity <= {:.2}; {} MC samples per block)",
                v.bits(),
                v.stderr_bits(),
                v.perplexity(),
                args.mc
            );
            for &t in &args.rates {
                let ce = masked_ce_at_rate(&model, &blocks, t, args.batch, &mut rng)?;
                println!(
                    "  masking rate {t:.2}: {:.4} bits per masked token",
                    ce / std::f64::consts::LN_2
                );
            }
            blocks
        }
        ModelKind::Causal => {
            let model = source.load_causal::<DefaultBackend>(&device)?;
            let blocks = read_blocks(&args, CausalPredictor::vocab_size(&model))?;
            header(&blocks, ModelKind::Causal);
            let v = causal_nll_per_token(&model, &blocks, args.batch)?;
            println!(
                "  exact NLL    {:.4} ± {:.4} bits/token (perplexity {:.2})",
                v.bits(),
                v.stderr_bits(),
                v.perplexity()
            );
            blocks
        }
    };
    let unigram = unigram_entropy_bits(blocks.iter().flatten().copied());
    println!("  unigram entropy of these blocks {unigram:.4} bits/token");
    Ok(())
}
