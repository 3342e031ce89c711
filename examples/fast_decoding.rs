//! Fast-dLLM's decoding options measured on a trained MDM beside the KV-cache baseline: for each
//! of {no cache, prefix cache, dual cache} x {fixed steps, threshold 0.9 / 0.7 / 0.5, factor}, the
//! forward passes, token positions computed and wall time per generated token, the quality as
//! generative perplexity under the baseline, and the agreement with the exact decode (no cache,
//! one token per step). Prints a Markdown table. Each prompt is decoded alone (both models), or
//! all together in one ragged batch with `--batch`.
//!
//! ```text
//! cargo run --release --example fast_decoding -- --mdm runs/kjv-mdm/model --arm runs/kjv-arm/model \
//!     --gen-length 224 --block-length 32
//! ```

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mdm::data::Tokenizer;
use mdm::eval::likelihood::causal_nll;
use mdm::prelude::*;
use mdm::samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, Schedule};

#[derive(Parser, Debug)]
#[command(
    about = "Measure block caches and parallel decoding against the exact decode and the KV-cache baseline"
)]
struct Args {
    /// The masked model (a checkpoint folder with its tokenizer.json).
    #[arg(long)]
    mdm: PathBuf,
    /// The autoregressive baseline (judge of generative perplexity, and the speed reference).
    #[arg(long)]
    arm: PathBuf,
    /// Prompts, one per line (default: eight verse openings of the King James Bible).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 224)]
    gen_length: usize,
    /// Block length.
    #[arg(long, default_value_t = 32)]
    block_length: usize,
    /// Steps of the fixed schedule (default: one token per step, the exact reference).
    #[arg(long)]
    steps: Option<usize>,
    /// Fast-dLLM's factor for the factor rule.
    #[arg(long, default_value_t = 1.0)]
    factor: f64,
    /// Decode all prompts in one batch (both models) instead of one at a time.
    #[arg(long)]
    batch: bool,
}

const DEFAULT_PROMPTS: [&str; 8] = [
    "In the beginning God created",
    "And the LORD spake unto Moses, saying,",
    "Blessed are the poor in spirit:",
    "The LORD is my shepherd;",
    "And it came to pass in those days,",
    "Then Jesus answered and said unto them,",
    "Hear, O Israel:",
    "And the word of the LORD came unto me, saying,",
];

struct Row {
    label: String,
    passes: usize,
    positions: usize,
    seconds: f64,
    samples: Vec<Vec<usize>>,
}

/// Token-weighted perplexity of the samples after their prompts under the judge, and the ratio
/// estimator's standard error of its log.
fn gen_ppl(
    judge: &CausalTransformer<DefaultBackend>,
    prompts: &[Vec<usize>],
    samples: &[Vec<usize>],
) -> Result<(f64, f64)> {
    let mut per: Vec<(f64, f64)> = Vec::new();
    for (p, s) in prompts.iter().zip(samples) {
        if s.is_empty() {
            continue;
        }
        let est = causal_nll(judge, p, s)?;
        per.push((est.nll, s.len() as f64));
    }
    if per.len() < 2 {
        bail!("fewer than two non-empty samples");
    }
    let (nll, n): (f64, f64) = per.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let r = nll / n;
    let k = per.len() as f64;
    let mean_n = n / k;
    let var = per.iter().map(|(l, m)| (l - r * m).powi(2)).sum::<f64>() / (k - 1.0);
    Ok((r.exp(), (var / k).sqrt() / mean_n))
}

/// All prompts as one batch, or one batch per prompt.
fn groups(prompts: &[Vec<usize>], batch: bool) -> Vec<&[Vec<usize>]> {
    if batch {
        vec![prompts]
    } else {
        prompts.chunks(1).collect()
    }
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let mdm = MaskedTransformer::<DefaultBackend>::load(&args.mdm, &device)?;
    let arm = CausalTransformer::<DefaultBackend>::load(&args.arm, &device)?;
    let tok = Tokenizer::from_file(args.mdm.join("tokenizer.json"))
        .context("the MDM folder needs its tokenizer.json")?;
    let texts: Vec<String> = match &args.prompts {
        Some(f) => std::fs::read_to_string(f)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
        None => DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
    };
    let start = tok.document_start() as usize;
    let prompts: Vec<Vec<usize>> = texts
        .iter()
        .map(|t| {
            let ids = tok.encode(t, false)?;
            Ok(std::iter::once(start)
                .chain(ids.into_iter().map(|i| i as usize))
                .collect())
        })
        .collect::<Result<_>>()?;
    let (gen, block) = (args.gen_length, args.block_length);
    let steps = args.steps.unwrap_or(gen);
    println!(
        "{} prompts x {gen} tokens ({}), blocks of {block}, fixed schedule {steps} steps; {}",
        prompts.len(),
        if args.batch {
            "one batch"
        } else {
            "one at a time"
        },
        backend::NAME
    );
    println!("| decoding | forward passes | token positions computed | ms per generated token | generative perplexity under the baseline | tokens equal to the exact decode |");
    println!("|---|---|---|---|---|---|");
    let generated = (prompts.len() * gen) as f64;
    let mut exact: Option<Vec<Vec<usize>>> = None;
    // each row is printed as soon as it is measured (a long run that is cut keeps its rows)
    let mut report = |r: Row| -> Result<()> {
        let exact = exact.get_or_insert_with(|| r.samples.clone());
        let (ppl, se) = gen_ppl(&arm, &prompts, &r.samples)?;
        let same: usize = r
            .samples
            .iter()
            .zip(exact.iter())
            .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count())
            .sum();
        println!(
            "| {} | {} | {} | {:.1} | {:.1} (log ± {:.3}) | {:.1} % |",
            r.label,
            r.passes,
            r.positions,
            1000.0 * r.seconds / generated,
            ppl,
            se,
            100.0 * same as f64 / generated
        );
        Ok(())
    };
    // Fast-dLLM's settings: LLaDA's schedule, greedy, low confidence
    let base = DecodingOptions::default()
        .with_gen_length(gen)
        .with_block_length(block)
        .with_steps(steps)
        .with_schedule(Schedule::Even);
    let rules = [
        ("fixed steps", base.clone()),
        ("threshold 0.9", base.clone().with_threshold(0.9)),
        ("threshold 0.7", base.clone().with_threshold(0.7)),
        ("threshold 0.5", base.clone().with_threshold(0.5)),
        ("factor", {
            let mut o = base.clone().with_factor(args.factor);
            o.factor_as_stated = true;
            o
        }),
    ];
    for (cache_name, cache) in [
        ("no cache", CacheMode::None),
        ("prefix cache", CacheMode::Prefix),
        ("dual cache", CacheMode::Dual),
    ] {
        for (rule_name, rule) in &rules {
            let sampler = MaskedDiffusionSampler::new(&mdm, rule.clone().with_cache(cache));
            let (mut passes, mut positions, mut samples) = (0, 0, Vec::new());
            let t = Instant::now();
            for group in groups(&prompts, args.batch) {
                let out = sampler.decode(group, |_| {})?;
                passes += out.forward_passes;
                positions += out.positions;
                for (row, p) in out.rows.iter().zip(group) {
                    samples.push(row[p.len()..].to_vec());
                }
            }
            let seconds = t.elapsed().as_secs_f64();
            report(Row {
                label: format!("MDM, {cache_name}, {rule_name}"),
                passes,
                positions,
                seconds,
                samples,
            })?;
        }
    }
    // the baseline with its KV cache, greedy
    let t = Instant::now();
    let config = AutoregressiveConfig {
        max_new_tokens: gen,
        ..AutoregressiveConfig::default()
    };
    let mut arm_samples = Vec::new();
    for group in groups(&prompts, args.batch) {
        arm_samples.extend(generate_autoregressive(&arm, group, &config)?);
    }
    let seconds = t.elapsed().as_secs_f64();
    report(Row {
        label: "baseline, KV cache, greedy".into(),
        passes: prompts.len() * gen,
        positions: prompts.iter().map(|p| p.len() + gen - 1).sum(),
        seconds,
        samples: arm_samples,
    })?;
    Ok(())
}
