//! Scores a checkpoint (MDM or autoregressive baseline, read from its metadata; or a published SMDM
//! safetensors file) on benchmark tasks, lm-evaluation-harness style, and prints a Markdown table.
//!
//! ```text
//! cargo run --release --example evaluate -- --checkpoint runs/kjv-mdm/model --tasks piqa,lambada --limit 200
//! ```
//!
//! Tasks are known names (`hellaswag`, `piqa`, `arc_easy`, `arc_challenge`, `lambada`, `gsm8k`, read
//! from `--data-dir`) or paths to JSONL files of the same shapes, each with optional per-task
//! settings: `lambada:estimator=chain:cfg=0.5`, `piqa:mc=64`, `gsm8k:gen=256:steps=64`.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mdm::eval::harness::{
    evaluate_task, markdown_table, Estimator, TaskResult, TaskSettings, TaskSpec,
};
use mdm::eval::likelihood::McOptions;
use mdm::eval::tasks::{read_task, resolve_task};
use mdm::prelude::*;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EstimatorArg {
    /// Monte Carlo ELBO bound.
    Mc,
    /// Exact chain rule (one pass per continuation token).
    Chain,
}

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark scores of a checkpoint (acc, acc_norm, LAMBADA, GSM8K, exact match, BLEU)"
)]
struct Args {
    /// The model: --checkpoint (masked or causal), --hf, or --smdm with --config; its
    /// --tokenizer, and --dtype / --quant.
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated task specs: `name[:key=value]...` (keys estimator, cfg, mc, gen, steps).
    #[arg(long, value_delimiter = ',', default_value = "piqa,lambada")]
    tasks: Vec<String>,
    /// Folder of the known task files.
    #[arg(long, default_value = "../shared/data/eval")]
    data_dir: PathBuf,
    /// Items per task (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// MDM likelihood estimator (per task: `:estimator=`).
    #[arg(long, value_enum, default_value = "mc")]
    estimator: EstimatorArg,
    /// Monte Carlo samples per continuation (per task: `:mc=`).
    #[arg(long, default_value_t = 128)]
    mc: usize,
    /// Rows per Monte Carlo batch.
    #[arg(long, default_value_t = 32)]
    mc_batch: usize,
    /// Unsupervised CFG scale of an MDM (per task: `:cfg=`).
    #[arg(long, default_value_t = 0.0)]
    cfg: f64,
    /// Tokens to generate in generation tasks (per task: `:gen=`).
    #[arg(long, default_value_t = 64)]
    gen_length: usize,
    /// MDM denoising steps in generation tasks (default: one per token; per task: `:steps=`).
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the Monte Carlo draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the results (metrics, cost, sample generations) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown table here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let source = args.model.source(0)?;
    if let ModelSource::Random { .. } = source {
        bail!("give --checkpoint, --hf or --smdm");
    }
    let format = args.model.weight_format()?;
    let model = mdm::Allocator::purging(|| source.load_any_as::<DefaultBackend>(format, &device))?;
    let tokenizer = args.model.tokenizer(&source)?
        .context("no tokenizer with the model (tokenizer.json, or vocab.json + merges.txt): pass --tokenizer FILE")?;
    let base = TaskSettings {
        estimator: match args.estimator {
            EstimatorArg::Mc => Estimator::MonteCarlo,
            EstimatorArg::Chain => Estimator::ChainRule,
        },
        mc: McOptions::default()
            .with_mc_num(args.mc)
            .with_batch(args.mc_batch),
        cfg_scale: args.cfg,
        gen_length: args.gen_length,
        steps: args.steps,
        limit: args.limit,
        seed: args.seed,
        ..Default::default()
    };
    let mut results: Vec<TaskResult> = Vec::new();
    for spec in &args.tasks {
        let spec: TaskSpec = spec.parse()?;
        let (name, file) = resolve_task(&spec.name, &args.data_dir)?;
        if !file.is_file() {
            bail!(
                "task file {} not found (set --data-dir, or give a JSONL path)",
                file.display()
            );
        }
        let task = read_task(&name, &file)?;
        let settings = spec.settings(&base);
        let total = settings
            .limit
            .map_or(task.items.len(), |l| l.min(task.items.len()));
        let bar = if args.no_progress {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total as u64)
        };
        bar.set_style(ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {bar:30} {pos}/{len}  ETA {eta}",
        )?);
        bar.set_message(name.clone());
        let result = evaluate_task(&*model, &tokenizer, &task, &settings, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        eprintln!(
            "{name}: {} items in {:.1} s, {} forward passes, {} rows, {} token positions{}",
            result.n,
            result.seconds,
            result.forward_passes,
            result.forward_rows,
            result.tokens,
            if result.truncated_contexts > 0 {
                format!(", {} contexts cut to fit", result.truncated_contexts)
            } else {
                String::new()
            }
        );
        results.push(result);
    }
    let table = markdown_table(&results);
    println!("{table}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
