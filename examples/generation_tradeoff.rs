//! The generation trade-off (SMDM's comparison of sampling speed and quality): samples of the MDM
//! at several step counts, with Fast-dLLM's dual cache and threshold decoding, and of the KV-cache
//! baseline, each row's quality as
//! generative perplexity under a judge (an autoregressive model, ideally a larger one than either)
//! and its cost as wall time per generated token, beside the samples' mean unigram entropy (a
//! repetitive sampler scores a low perplexity). Prints a Markdown table; `--csv` also writes it.
//!
//! ```text
//! cargo run --release --example generation_tradeoff -- --mdm runs/mdm/model --arm runs/arm/model \
//!     --judge runs/judge/model --gen-length 128 --steps 16 32 64 128 --samples 32
//! ```
//! Every sample starts after one EOS (the separator that starts documents in the shards) and
//! `--prompt`, and runs its whole length (an EOS drawn is kept, as a document boundary); the judge
//! scores it after the same tokens. Both models draw at
//! `--temperature` (1: the models' own distributions, as the paper samples); the MDM reveals with
//! `--rule` (default ancestral, MDLM's sampler) and `--steps` denoising steps for `--gen-length`
//! tokens; the Fast-dLLM rows (`--thresholds`) use low-confidence remasking per block.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use mdm::eval::perplexity::{generative_perplexity, unigram_entropy_bits};
use mdm::prelude::*;
use mdm::samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
use mdm::samplers::remasking::NamedRule;
use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler};

#[derive(Parser, Debug)]
#[command(
    about = "Generative perplexity against time per token: the MDM at several step counts \
                   and the KV-cache baseline"
)]
struct Args {
    /// The masked model (`--checkpoint` one of our folders, `--hf`, `--smdm`; `--dtype` /
    /// `--quant`; `--tokenizer` for the printed samples and its EOS, default: the model's).
    #[command(flatten)]
    model: ModelArgs,
    /// The autoregressive baselines timed beside it (checkpoint folders), one row each.
    #[arg(long, num_args = 1.., required = true)]
    arm: Vec<PathBuf>,
    /// The autoregressive judge of generative perplexity (default: the first --arm, which favours
    /// its own samples).
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Tokens per sample.
    #[arg(long, default_value_t = 128)]
    gen_length: usize,
    /// The MDM's step counts, one row each.
    #[arg(long, num_args = 1.., default_values_t = [16, 32, 64, 128])]
    steps: Vec<usize>,
    /// Fast-dLLM rows: the dual cache with parallel decoding at each of these confidence
    /// thresholds (low-confidence remasking, blocks of `--block-length`); none: no such rows.
    #[arg(long, num_args = 0.., default_values_t = [0.9, 0.7])]
    thresholds: Vec<f64>,
    /// Block length of the Fast-dLLM rows.
    #[arg(long, default_value_t = 32)]
    block_length: usize,
    /// Samples per row.
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// Samples generated together (one batch).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sampling temperature of both models.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// The MDM's remasking rule: ancestral, low-confidence, random, margin or entropy.
    #[arg(long, default_value = "ancestral")]
    rule: NamedRule,
    /// Text every sample continues (after one EOS); empty: unconditional. The default, the most
    /// common first word of a KJV verse, keeps clear of the EOS runs a model learns from the
    /// padding of the last shard (docs/reproduction.md).
    #[arg(long, default_value = "And")]
    prompt: String,
    /// Seed of every draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the table as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// One row of the table.
struct Row {
    label: String,
    samples: Vec<Vec<usize>>,
    seconds: f64,
}

/// `--samples` samples drawn `--batch` at a time by `draw(batch index, prompts)`, timed.
fn sample_in_batches(
    label: String,
    args: &Args,
    context: &[usize],
    mut draw: impl FnMut(u64, &[Vec<usize>]) -> Result<Vec<Vec<usize>>>,
) -> Result<Row> {
    let began = Instant::now();
    let mut samples = Vec::with_capacity(args.samples);
    let mut batch = 0u64;
    while samples.len() < args.samples {
        let n = args.batch.min(args.samples - samples.len());
        samples.extend(draw(batch, &vec![context.to_vec(); n])?);
        batch += 1;
    }
    Ok(Row {
        label,
        samples,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The MDM's samples with `config` (its seed set per batch) and remasking `rule`.
fn sample_mdm(
    mdm: &MaskedTransformer<DefaultBackend>,
    label: String,
    args: &Args,
    context: &[usize],
    config: &DecodingOptions,
    rule: NamedRule,
) -> Result<Row> {
    sample_in_batches(label, args, context, |b, prompts| {
        let config = config
            .clone()
            .with_remasking(rule)
            .with_seed(args.seed.wrapping_add(b));
        let sampler = MaskedDiffusionSampler::new(mdm, config);
        Ok(sampler.generate(prompts, |_| {})?)
    })
}

/// The baseline's samples, one token per pass with its KV cache.
fn sample_arm(
    arm: &CausalTransformer<DefaultBackend>,
    label: String,
    args: &Args,
    context: &[usize],
) -> Result<Row> {
    sample_in_batches(label, args, context, |b, prompts| {
        let config = AutoregressiveConfig {
            max_new_tokens: args.gen_length,
            temperature: args.temperature,
            eos_id: None,
            seed: args.seed.wrapping_add(b),
        };
        Ok(generate_autoregressive(arm, prompts, &config)?)
    })
}

/// The mean over samples of each sample's unigram entropy: low values flag repetitive text, which
/// generative perplexity alone rewards.
fn mean_sample_entropy(samples: &[Vec<usize>]) -> f64 {
    let total: f64 = samples
        .iter()
        .map(|s| unigram_entropy_bits(s.iter().map(|&t| t as u32)))
        .sum();
    total / samples.len().max(1) as f64
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.samples >= 2 && args.batch >= 1 && args.gen_length >= 1,
        "--samples must be at least 2 (for a standard error), --batch and --gen-length at least 1"
    );
    let device = backend::device();
    let source = args.model.source(args.seed)?;
    if let ModelSource::Random { .. } = source {
        anyhow::bail!("give the masked model: --checkpoint, --hf or --smdm");
    }
    let format = args.model.weight_format()?;
    let mdm = mdm::Allocator::purging(|| source.load_masked_as::<DefaultBackend>(format, &device))?;
    let judge_dir = args.judge.clone().unwrap_or_else(|| args.arm[0].clone());
    let judge = CausalTransformer::<DefaultBackend>::load(&judge_dir, &device)?;
    let tok = args
        .model
        .tokenizer(&source)?
        .context("no tokenizer with the model: pass --tokenizer FILE")?;
    let mut context = vec![tok.eos_id() as usize];
    context.extend(
        tok.encode(&args.prompt, false)?
            .into_iter()
            .map(|t| t as usize),
    );

    let mut rows = Vec::new();
    let base = DecodingOptions::default()
        .with_gen_length(args.gen_length)
        .with_temperature(args.temperature);
    for &steps in &args.steps {
        let label = format!("MDM, {steps} steps");
        eprintln!("{label} ...");
        let config = base.clone().with_steps(steps);
        rows.push(sample_mdm(
            &mdm, label, &args, &context, &config, args.rule,
        )?);
    }
    // Fast-dLLM: the dual cache, every slot at least `threshold` confident (and always the most
    // confident one) revealed per step, ranked by low-confidence remasking
    for &threshold in &args.thresholds {
        let label = format!(
            "MDM, dual cache, threshold {threshold}, blocks of {}",
            args.block_length
        );
        eprintln!("{label} ...");
        let config = base
            .clone()
            .with_steps(args.gen_length)
            .with_block_length(args.block_length)
            .with_cache(CacheMode::Dual)
            .with_threshold(threshold);
        let rule = NamedRule::LowConfidence;
        rows.push(sample_mdm(&mdm, label, &args, &context, &config, rule)?);
    }
    let first_baseline = rows.len();
    for dir in &args.arm {
        eprintln!("baseline {} ...", dir.display());
        let label = format!("baseline {}, KV cache", dir.display());
        let row = if *dir == judge_dir {
            sample_arm(&judge, label, &args, &context)?
        } else {
            let arm = CausalTransformer::<DefaultBackend>::load(dir, &device)?;
            sample_arm(&arm, label, &args, &context)?
        };
        rows.push(row);
    }

    println!(
        "{} samples of {} tokens each after {:?}, temperature {}, judge {}, {}",
        args.samples,
        args.gen_length,
        args.prompt,
        args.temperature,
        judge_dir.display(),
        backend::NAME
    );
    println!(
        "\n| sampler | ms per generated token | generative perplexity (± s.e. of its log) | \
         sample entropy, bits |"
    );
    println!("|---|---:|---:|---:|");
    let mut table = vec![[
        "sampler",
        "ms_per_token",
        "gen_ppl",
        "log_stderr",
        "entropy_bits",
    ]
    .map(String::from)];
    for row in &rows {
        let g = generative_perplexity(&judge, &row.samples, &context)?;
        let ms = 1e3 * row.seconds / (args.samples * args.gen_length) as f64;
        let entropy = mean_sample_entropy(&row.samples);
        println!(
            "| {} | {ms:.2} | {:.2} (± {:.3}) | {entropy:.2} |",
            row.label,
            g.perplexity(),
            g.stderr
        );
        table.push([
            row.label.clone(),
            ms.to_string(),
            g.perplexity().to_string(),
            g.stderr.to_string(),
            entropy.to_string(),
        ]);
    }
    println!();
    for (what, row) in [("MDM", 0), ("baseline", first_baseline)] {
        if let Some(sample) = rows.get(row).and_then(|r| r.samples.first()) {
            let ids: Vec<u32> = sample.iter().map(|&t| t as u32).collect();
            println!("first {what} sample: {:?}", tok.decode(&ids)?);
        }
    }
    if let Some(path) = &args.csv {
        let tmp = path.with_extension("csv.tmp");
        let mut out =
            csv::Writer::from_path(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for record in &table {
            out.write_record(record)?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
