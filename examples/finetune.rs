//! Fine-tune an MDM or its autoregressive baseline (the kind is read from the checkpoint) on
//! prompt/response JSONL: the prompt is never masked (MDM) or never scored (baseline), rows are
//! padded with EOS, and `--cfg-drop p` replaces the prompt by masks in a fraction `p` of the rows
//! (0, the default, is what the paper recommends for unsupervised CFG; 0.1 is standard CFG).
//!
//! ```text
//! cargo run --release --example finetune -- --init runs/kjv-mdm/model \
//!     --data ../shared/data/reversal_curse/all_prompts_train.jsonl --out runs/rc-mdm --epochs 10
//! ```
//! A published Hugging Face folder (LLaDA or Dream) fine-tunes the same way with `--hf DIR` in place of
//! `--init`; the fine-tuned model is then also written as a folder like the input (`OUT/hf`: the same
//! tensor names, dtypes, shards, config and tokenizer files), which PyTorch and this library load:
//! ```text
//! cargo run --release --example finetune -- --hf tests/data/dream-parity/model \
//!     --data ../shared/data/reversal_curse/all_prompts_train.jsonl --out runs/rc-dream --steps 20 --seq-len 64
//! ```
//! `--whole-text` learns prompt and response alike (facts stated as text) instead of protecting
//! the prompt. Lines hold `{"prompt", "response"}` or `{"prompt", "completion"}`. The rows are as long as the
//! longest example plus one EOS unless `--seq-len` is given. `--resume` continues a stopped run.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mdm::backend::{self, Training};
use mdm::data::corpus::TOKENIZER_FILE;
use mdm::data::sft::{read_jsonl, ChatTemplate, SftDataset};
use mdm::hub::{ModelArgs, ModelSource};
use mdm::models::checkpoint::{read_meta, ModelKind};
use mdm::models::{hf_model_config, MaskedTransformer};
use mdm::train::{train_objective, DataSpec, Objective, RunOptions, TrainConfig};

#[path = "common/parallel.rs"]
mod parallel;

#[derive(Parser, Debug)]
#[command(about = "Fine-tune an MDM or the autoregressive baseline on prompt/response pairs")]
struct Args {
    #[command(flatten)]
    parallel: parallel::ParallelArgs,
    /// The model to start from: `--checkpoint` (or `--init`) one of our checkpoint folders (its
    /// kind decides MDM or baseline), or `--hf` a Hugging Face folder of any family (by its
    /// `model_type`) or repository name (`owner/name`, fetched into the Hugging Face cache), the
    /// result then also written as a folder like it (OUT/hf); `--tokenizer` (default: the
    /// folder's).
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt/response JSONL files.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Output folder (train.toml, metrics.csv, loss.png, checkpoints/, model/).
    #[arg(long)]
    out: PathBuf,
    /// Row length (default: the longest example plus one EOS).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Text put before each prompt (a chat template's user turn).
    #[arg(long)]
    template_user: Option<String>,
    /// Text put after each prompt (a chat template's assistant turn).
    #[arg(long)]
    template_assistant: Option<String>,
    /// Learn the whole text (prompt included: the MDM may mask it, the baseline is scored on it), as
    /// for facts stated as text (the reverse-curse experiment); default: the prompt is protected.
    #[arg(long)]
    whole_text: bool,
    /// Optimizer steps.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    /// Passes over the data (converted to steps).
    #[arg(long)]
    epochs: Option<f64>,
    /// Fraction of rows whose prompt is masked (CFG training; 0 = unsupervised CFG).
    #[arg(long, default_value_t = 0.0)]
    cfg_drop: f64,
    /// Weight of the experts' load-balancing loss (a Mixture-of-Experts model; default: the
    /// folder's `router_aux_loss_coef` where its config sets `output_router_logits` and its
    /// reference computes the loss, else 0; 0 turns it off).
    #[arg(long)]
    router_aux_loss: Option<f64>,
    #[arg(long, default_value_t = 16)]
    micro_batch: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f64,
    #[arg(long, default_value_t = 20)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Continue the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this invocation (resume later).
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long)]
    no_progress: bool,
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
    if args.model.dtype.is_some() || args.model.quant.is_some() {
        bail!("fine-tuning trains f32 weights: --dtype and --quant are for inference");
    }
    let source = args.model.source(args.seed)?;
    let (init, kind, model_config) = match &source {
        ModelSource::HuggingFace(dir) => (dir.clone(), ModelKind::Masked, hf_model_config(dir)?),
        ModelSource::Checkpoint(dir) => {
            let meta = read_meta(dir)?;
            (dir.clone(), meta.kind, meta.config)
        }
        other => bail!(
            "fine-tuning starts from a checkpoint folder (--checkpoint / --init) or a Hugging Face folder (--hf), not a {}",
            other.describe()
        ),
    };
    let tokenizer = args
        .model
        .tokenizer(&source)?
        .context("a tokenizer is needed: pass --tokenizer FILE")?;
    let mut records = Vec::new();
    for file in &args.data {
        records.extend(read_jsonl(file)?);
    }
    let template = match (&args.template_user, &args.template_assistant) {
        (None, None) => None,
        (user, assistant) => Some(ChatTemplate {
            user: user.clone().unwrap_or_default(),
            assistant: assistant.clone().unwrap_or_default(),
        }),
    };
    let block = model_config.block_size;
    let seq_len = args.seq_len.unwrap_or(block);
    if seq_len > block {
        bail!("--seq-len {seq_len} exceeds the model's block size {block}");
    }
    let mut dataset = SftDataset::build(&records, &tokenizer, seq_len, template.as_ref(), true)?;
    if args.seq_len.is_none() {
        dataset.shrink_padding(tokenizer.eos_id(), 1);
    }
    if args.whole_text {
        dataset.train_on_prompts(1);
    }
    let rows = dataset.len();
    let objective = match kind {
        ModelKind::Masked => Objective::Mdm,
        ModelKind::Causal => Objective::Arm,
    };
    let batch = args.micro_batch * args.grad_accum;
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * rows as f64) / batch as f64).ceil().max(1.0) as usize,
        (None, None) if args.resume => 0,
        (None, None) => bail!("give --steps or --epochs"),
    };
    let config = TrainConfig {
        objective,
        seq_len: dataset.seq_len,
        micro_batch: args.micro_batch,
        grad_accum: args.grad_accum,
        steps: Some(steps),
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_steps: args.warmup_steps,
        weight_decay: args.weight_decay,
        cfg_drop: args.cfg_drop,
        router_aux_loss: args.router_aux_loss,
        seed: args.seed,
        save_every: args.save_every,
        log_every: args.log_every,
        eval_every: 0,
        parallel: args.parallel.config(),
        ..TrainConfig::default()
    };
    println!(
        "fine-tuning {:?} {} on {} rows of {} tokens ({} examples too long, left out), {} steps of {} rows, cfg_drop {}, backend {}",
        objective,
        init.display(),
        rows,
        dataset.seq_len,
        dataset.dropped,
        steps,
        batch,
        args.cfg_drop,
        backend::NAME
    );
    std::fs::create_dir_all(&args.out)?;
    let options = RunOptions {
        resume: args.resume,
        init_from: Some(init.clone()),
        progress: !args.no_progress,
        stop_after: args.stop_after,
    };
    let devices = backend::devices(&args.parallel.devices)?;
    let data = DataSpec::Sft(dataset);
    let summary =
        train_objective::<Training>(&model_config, &config, data, &args.out, &options, &devices)?;
    if !session.is_leader() {
        return Ok(());
    }
    println!(
        "{} of {} steps, {} tokens in {:.0} s; last training loss {:.4}",
        summary.steps, summary.total_steps, summary.tokens, summary.elapsed_s, summary.last_loss
    );
    match summary.model_dir {
        Some(dir) => {
            tokenizer.save(dir.join(TOKENIZER_FILE))?;
            println!("model: {}", dir.display());
            if let ModelSource::HuggingFace(_) = source {
                let out = args.out.join("hf");
                let model = MaskedTransformer::<backend::Default>::load(&dir, &backend::device())?;
                model.save_hf_like(&init, &out)?;
                println!("as {}: {}", init.display(), out.display());
            }
        }
        None => println!(
            "stopped early; continue with the same command and --resume (out: {})",
            args.out.display()
        ),
    }
    Ok(())
}
