//! Pre-train an MDM or its autoregressive baseline on a data folder written by `prepare`.
//!
//! ```text
//! cargo run --release --example pretrain -- --data data/kjv --out runs/kjv-mdm --model mdm \
//!     --n-layer 4 --n-head 4 --n-embd 256 --steps 2000
//! cargo run --release --example pretrain -- --data data/kjv --out runs/kjv-mdm --resume
//! cargo run --release --example pretrain -- --data data/kjv --out runs/x --config-file train.toml
//! ```
//! Every hyper-parameter has a flag; `--config-file` reads them from TOML/JSON and flags given
//! on the command line override it. The effective config is saved as `<out>/train.toml`.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mdm::backend::{self, Training};
use mdm::data::corpus::TOKENIZER_FILE;
use mdm::data::shards::find_shards;
use mdm::data::Tokenizer;
use mdm::models::ModelConfig;
use mdm::train::{train_objective, DataSpec, Objective, RunOptions, TrainConfig};

#[path = "common/parallel.rs"]
mod parallel;

#[derive(Parser, Debug)]
#[command(about = "Pre-train a masked diffusion model or its autoregressive baseline")]
struct Args {
    #[command(flatten)]
    parallel: parallel::ParallelArgs,
    /// Data folder from `prepare` (train_*.bin, valid_*.bin, tokenizer.json).
    #[arg(long)]
    data: PathBuf,
    /// Output folder (checkpoints, metrics, loss.png, final model).
    #[arg(long)]
    out: PathBuf,
    /// mdm (masked diffusion) or arm (autoregressive baseline).
    #[arg(long)]
    model: Option<Objective>,
    /// A Diff_LLaMA name (6M, 170M, ...) or a config JSON; the vocabulary comes from the tokenizer.
    #[arg(long)]
    config: Option<String>,
    /// Custom size: layers (with --n-head, --n-embd; overrides --config).
    #[arg(long)]
    n_layer: Option<usize>,
    /// Custom size: attention heads.
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    /// Custom size: width.
    #[arg(long, default_value_t = 256)]
    n_embd: usize,
    /// Custom size: SwiGLU hidden width (default 4 x width rounded as Diff_LLaMA does: 8/3 x, to 256).
    #[arg(long)]
    intermediate: Option<usize>,
    /// Read hyper-parameters from this TOML/JSON file (flags override it).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar (log lines instead).
    #[arg(long)]
    no_progress: bool,
    /// Stop after this many steps of this invocation (resume later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    /// Training FLOPs budget 6 N D (sets the steps).
    #[arg(long)]
    flops: Option<f64>,
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long)]
    micro_batch: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    ssl_ratio: Option<f64>,
    /// Stratified t per micro-batch (MDLM's low-discrepancy sampler) instead of independent draws.
    #[arg(long)]
    stratified_t: bool,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    beta1: Option<f64>,
    #[arg(long)]
    beta2: Option<f64>,
    #[arg(long)]
    adam_eps: Option<f64>,
    /// Minimum masking probability eps (MDM).
    #[arg(long)]
    mask_eps: Option<f64>,
    /// Prompt dropout probability for CFG training (fine-tuning data only).
    #[arg(long)]
    cfg_drop: Option<f64>,
    /// Weight of the experts' load-balancing loss (a Mixture-of-Experts model; default: the
    /// model's own, 0 for most; 0 turns it off).
    #[arg(long)]
    router_aux_loss: Option<f64>,
    /// Order of the training blocks: `global` (the whole corpus in one shuffle, default) or
    /// `litgpt` (lit-gpt's buffers of --n-chunks shards, as SMDM; starves small corpora).
    #[arg(long)]
    data_order: Option<mdm::data::shards::BlockOrder>,
    /// Shards per shuffle buffer (--data-order litgpt).
    #[arg(long)]
    n_chunks: Option<usize>,
    /// Learning-rate schedule: `cosine` (default) or `litgpt` (SMDM's get_lr: step 0 at rate 0).
    #[arg(long)]
    lr_schedule: Option<mdm::train::LrSchedule>,
    #[arg(long)]
    log_every: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    eval_blocks: Option<usize>,
    #[arg(long)]
    eval_mc: Option<usize>,
    #[arg(long)]
    save_every: Option<usize>,
    #[arg(long)]
    keep_last: Option<usize>,
}

fn train_config(args: &Args) -> Result<TrainConfig> {
    let mut c = match &args.config_file {
        Some(path) => TrainConfig::from_file(path)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { c.$field = v; } )* };
    }
    set!(
        seq_len,
        micro_batch,
        grad_accum,
        lr,
        min_lr,
        warmup_steps,
        weight_decay,
        grad_clip
    );
    set!(
        ssl_ratio,
        seed,
        eval_every,
        eval_blocks,
        eval_mc,
        save_every,
        keep_last
    );
    set!(beta1, beta2, adam_eps, mask_eps, cfg_drop, n_chunks, log_every);
    set!(data_order, lr_schedule);
    if args.router_aux_loss.is_some() {
        c.router_aux_loss = args.router_aux_loss;
    }
    if args.stratified_t {
        c.stratified_t = true;
    }
    if let Some(o) = args.model {
        c.objective = o;
    }
    if args.steps.is_some() {
        c.steps = args.steps;
    }
    if args.flops.is_some() {
        c.flops_budget = args.flops;
        if args.steps.is_none() {
            c.steps = None;
        }
    }
    if c.steps.is_none() && c.flops_budget.is_none() && !args.resume {
        bail!("give --steps or --flops (or a config file that sets one)");
    }
    Ok(c)
}

fn model_config(args: &Args, vocab: usize, seq_len: usize) -> Result<ModelConfig> {
    let config = match (args.n_layer, &args.config) {
        (Some(n_layer), _) => {
            let inter = args.intermediate.unwrap_or_else(|| {
                // LLaMA's SwiGLU width: 8/3 of the width, rounded up to a multiple of 256
                (8 * args.n_embd / 3).div_ceil(256) * 256
            });
            ModelConfig::custom(vocab, n_layer, args.n_head, args.n_embd, inter, seq_len)
        }
        (None, Some(name)) => ModelConfig::from_name_or_file(name)?.with_vocab_size(vocab),
        (None, None) => ModelConfig::named("6M")?.with_vocab_size(vocab),
    };
    let block = config.block_size.max(seq_len);
    Ok(config.with_block_size(block))
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(main_inner())
}

fn main_inner() -> Result<()> {
    let args = Args::parse();
    let session = args.parallel.session()?;
    let result = run(&args, &session);
    session.finish(result)
}

fn run(args: &Args, session: &parallel::Session) -> Result<()> {
    let config = train_config(args)?;
    let tokenizer_path = args.data.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .with_context(|| format!("{} is not a prepared data folder", args.data.display()))?;
    let model = model_config(args, tokenizer.vocab_size(), config.seq_len)?;
    let train_files = find_shards(&args.data, "train")?;
    if train_files.is_empty() {
        bail!("no train_*.bin shards in {}", args.data.display());
    }
    let data = DataSpec::Shards {
        train: train_files,
        valid: find_shards(&args.data, "valid")?,
    };
    if session.is_leader() {
        std::fs::create_dir_all(&args.out)?;
        std::fs::copy(&tokenizer_path, args.out.join(TOKENIZER_FILE))?;
        println!(
            "{:?} {} ({} layers, width {}, vocab {}) on {}, backend {}",
            config.objective,
            model.name,
            model.n_layer,
            model.n_embd,
            model.vocab_size,
            args.data.display(),
            backend::NAME
        );
    }
    let options = RunOptions {
        resume: args.resume,
        init_from: None,
        progress: !args.no_progress,
        stop_after: args.stop_after,
    };
    let devices = backend::devices(&args.parallel.devices)?;
    let objective = if args.resume {
        // a resumed run keeps the objective it was started with
        let saved = args.out.join(mdm::train::trainer::CONFIG_FILE);
        if saved.is_file() {
            TrainConfig::recipe_from_file(&saved)?.objective
        } else {
            config.objective
        }
    } else {
        config.objective
    };
    let config = TrainConfig {
        objective,
        parallel: args.parallel.config(),
        ..config
    };
    let summary =
        train_objective::<Training>(&model, &config, data, &args.out, &options, &devices)?;
    if !session.is_leader() {
        return Ok(());
    }
    println!(
        "{} of {} steps, {} tokens in {:.0} s; last training loss {:.4}",
        summary.steps, summary.total_steps, summary.tokens, summary.elapsed_s, summary.last_loss
    );
    if let Some(v) = summary.validation {
        println!(
            "validation: {:.4} ± {:.4} bits/token{} ({} tokens)",
            v.bits(),
            v.stderr_bits(),
            if objective == Objective::Mdm {
                " (ELBO bound)"
            } else {
                " (exact NLL)"
            },
            v.tokens
        );
    }
    if let Some(bits) = summary.valid_unigram_bits {
        println!("unigram entropy of the validation blocks: {bits:.4} bits/token");
    }
    match summary.model_dir {
        Some(dir) => {
            std::fs::copy(&tokenizer_path, dir.join(TOKENIZER_FILE))?;
            println!("model: {}  (curves: {})", dir.display(), args.out.join("loss.png").display());
        }
        None => println!(
            "stopped early; continue with: cargo run --release --example pretrain -- --data {} --out {} --resume",
            args.data.display(),
            args.out.display()
        ),
    }
    Ok(())
}
