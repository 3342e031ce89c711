//! Fill the masks of a partly masked prompt with a masked diffusion model and print its top
//! predictions per masked position: the README's first command until the quickstart lands.
//!
//! ```text
//! cargo run --release --example predict                          # Diff_LLaMA_6M, random init
//! cargo run --release --example predict -- --ids "1 2 ? 4 ? 6"  # `?` is a mask
//! cargo run --release --example predict -- --smdm model.safetensors --config 170M
//! cargo run --release --example predict -- --checkpoint runs/mdm/step-1000
//! cargo run --release --example predict -- --hf ../shared/fixtures/llada-parity/model --ids "5 9 ? 17"
//! ```

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mdm::burn::tensor::{Int, Tensor, TensorData};
use mdm::diffusion::probs::softmax_top_k;
use mdm::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "Predict the masked positions of a prompt with a masked diffusion model")]
struct Args {
    /// The model: --checkpoint, --hf, --smdm with --config, or random weights of --config; and
    /// --dtype / --quant.
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids separated by spaces; `?` marks a masked position.
    #[arg(
        long,
        default_value = "1 450 4996 17354 ? ? 975 278 17366 ? 11203 29889"
    )]
    ids: String,
    /// How many candidates to print per masked position.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Seed of the random initialisation (when no checkpoint is given).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let started = Instant::now();
    let source = args.model.source(args.seed)?;
    let format = args.model.weight_format()?;
    let model =
        mdm::Allocator::purging(|| source.load_masked_as::<DefaultBackend>(format, &device))?;
    let source = source.describe();
    let config = model.config().clone();
    println!(
        "model {} from {source}: {} non-embedding parameters, {} in all, mask_id {}, backend {} ({:.1?} to build)",
        config.name,
        config.non_embedding_params(),
        config.masked_params(),
        config.mask_id(),
        backend::NAME,
        started.elapsed()
    );

    let mut ids = Vec::new();
    for (i, tok) in args.ids.split_whitespace().enumerate() {
        ids.push(match tok {
            "?" => config.mask_id() as i64,
            t => {
                let id: i64 = t
                    .parse()
                    .with_context(|| format!("--ids: token {i} `{t}` is neither an id nor `?`"))?;
                if id < 0 || id as usize >= config.padded_vocab_size() {
                    bail!(
                        "--ids: token {i} = {id} is outside the vocabulary 0..{}",
                        config.padded_vocab_size()
                    );
                }
                id
            }
        });
    }
    if ids.is_empty() {
        bail!("--ids is empty");
    }
    let masked: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i] == config.mask_id() as i64)
        .collect();
    let len = ids.len();
    let input = Tensor::<DefaultBackend, 2, Int>::from_data(
        TensorData::new(ids.clone(), [1, len]).convert::<i32>(),
        &device,
    );
    let started = Instant::now();
    let logits = model.forward(input)?;
    let logits: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!(
        "forward pass over {len} positions: {:.1?}",
        started.elapsed()
    );
    let shown: Vec<String> = ids
        .iter()
        .map(|&i| {
            if i == config.mask_id() as i64 {
                "[MASK]".into()
            } else {
                i.to_string()
            }
        })
        .collect();
    println!("input: {}", shown.join(" "));
    let v = config.padded_vocab_size();
    for &pos in &masked {
        let top = softmax_top_k(&logits[pos * v..(pos + 1) * v], args.top);
        let cands: Vec<String> = top.iter().map(|(id, p)| format!("{id} ({p:.4})")).collect();
        println!("position {pos:>3}: {}", cands.join(", "));
    }
    if masked.is_empty() {
        println!("no `?` in --ids: nothing to predict");
    }
    Ok(())
}
