//! Generate from a masked diffusion model, redrawing the sequence in the terminal as it unmasks.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "1 450 4996" --gen-length 32 --steps 16
//! cargo run --release --example generate -- --checkpoint runs/mdm --prompt "1 2 3" --cfg-scale 0.5
//! cargo run --release --example generate -- --batch-file prompts.txt --no-live
//! cargo run --release --example generate -- --gen-length 256 --steps 64 --no-live --profile
//! cargo run --release --example generate -- --checkpoint runs/kjv-mdm/model --prompt "And God said"
//! ```
//! With a tokenizer (`--tokenizer FILE`, or `tokenizer.json` inside the checkpoint folder, as
//! `pretrain` leaves it) prompts are text and the output is decoded; otherwise prompts are token
//! ids separated by spaces. Without `--checkpoint`/`--smdm` the model is Diff_LLaMA_6M with random
//! weights.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mdm::data::chat::Message;
use mdm::data::Tokenizer;
use mdm::prelude::*;
use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler, StepTiming};

#[derive(Parser, Debug)]
#[command(about = "Generate with a masked diffusion model")]
struct Args {
    /// The model: --checkpoint, --hf, --smdm with --config, or random weights of --config; its
    /// --tokenizer, and --dtype / --quant.
    #[command(flatten)]
    model: ModelArgs,
    /// Wrap each prompt as a user message in the model folder's chat template
    /// (`tokenizer_config.json`'s `chat_template`), or a plain `user: ... assistant:` one.
    #[arg(long)]
    chat: bool,
    /// The prompt: text with a tokenizer, else token ids separated by spaces.
    #[arg(long, default_value = "1 450 4996 17354")]
    prompt: String,
    /// A file of prompts, one per line, text or ids as `--prompt` (a batch; rows may differ in length).
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// Every decoding option (docs/decoding.md): --gen-length, --steps, --block-length,
    /// --temperature, --top-p, --top-k, --min-p, --remasking, --alg-temp, --schedule,
    /// --threshold, --factor, --cache, --cfg-scale, --joint-counting, --eos, --seed, --profile.
    #[command(flatten)]
    decoding: DecodingOptions,
    /// Print only the result, not the live denoising.
    #[arg(long)]
    no_live: bool,
    /// Also print the prompt's and the output's token ids (`prompt ids:` / `output ids:` lines).
    #[arg(long)]
    show_ids: bool,
}

fn parse_ids(line: &str, what: &str) -> Result<Vec<usize>> {
    line.split_whitespace()
        .enumerate()
        .map(|(i, t)| {
            t.parse()
                .with_context(|| format!("{what}: token {i} `{t}` is not an id"))
        })
        .collect()
}

/// Shows a row: decoded text with `_` per mask when there is a tokenizer, ids otherwise.
fn show(row: &[usize], mask_id: usize, tokenizer: Option<&Tokenizer>) -> String {
    match tokenizer {
        Some(tok) => tok.render_masked(row, mask_id),
        None => row
            .iter()
            .map(|&t| {
                if t == mask_id {
                    "_".to_string()
                } else {
                    t.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn parse_prompt(line: &str, what: &str, tokenizer: Option<&Tokenizer>) -> Result<Vec<usize>> {
    match tokenizer {
        Some(tok) => Ok(tok
            .encode(line, true)?
            .into_iter()
            .map(|t| t as usize)
            .collect()),
        None => parse_ids(line, what),
    }
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let source = args.model.source(args.decoding.seed)?;
    let format = args.model.weight_format()?;
    let loading = std::time::Instant::now();
    let model: MaskedTransformer<DefaultBackend> =
        mdm::Allocator::purging(|| source.load_masked_as(format, &device))?;
    let loaded_in = loading.elapsed();
    let tokenizer = args.model.tokenizer(&source)?;
    let tok = tokenizer.as_ref();
    let chat = match args.chat {
        false => None,
        true => Some(source.chat_prompt()?),
    };
    let parse_prompt = |line: &str, what: &str, tok: Option<&Tokenizer>| -> Result<Vec<usize>> {
        match &chat {
            None => parse_prompt(line, what, tok),
            Some(chat) => {
                let tok = tok.context("--chat needs a tokenizer (--tokenizer or the folder's)")?;
                let text = chat.render(&[Message::new("user", line)], true)?;
                // the template writes its own special tokens
                Ok(tok
                    .encode(&text, false)?
                    .into_iter()
                    .map(|t| t as usize)
                    .collect())
            }
        }
    };
    let prompts: Vec<Vec<usize>> = match &args.batch_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| parse_prompt(l, &format!("{}:{}", f.display(), n + 1), tok))
            .collect::<Result<_>>()?,
        None => vec![parse_prompt(&args.prompt, "--prompt", tok)?],
    };
    if prompts.is_empty() {
        bail!("no prompt given");
    }
    let mut config = args.decoding.clone();
    if config.eos_id.is_none() {
        config.eos_id = tok.map(|t| t.eos_id() as usize);
    }
    let sampler = MaskedDiffusionSampler::new(&model, config);
    let mask_id = model.mask_id();
    let prompt_tokens: Vec<String> = prompts.iter().map(|p| p.len().to_string()).collect();
    println!(
        "loaded in {:.1?}: weights {:.1} MB, prompt tokens: {}",
        loaded_in,
        model.weight_bytes() as f64 / 1e6,
        prompt_tokens.join(" ")
    );
    let started = std::time::Instant::now();
    let mut drawn_lines = 0;
    let (mut timing, mut shares) = (StepTiming::default(), Vec::new());
    let (mut passes, mut reused, mut positions) = (0, 0, 0);
    let outputs = sampler.generate(&prompts, |event| {
        if event.cost.reused {
            reused += 1;
        } else {
            passes += 1;
            positions += event.cost.positions;
        }
        if let Some(t) = event.timing {
            timing += t;
            shares.push(t.sampler_share());
        }
        if args.no_live {
            return;
        }
        let mut out = std::io::stdout().lock();
        if drawn_lines > 0 {
            // move the cursor back over the previous frame and clear it
            let _ = write!(out, "\x1b[{drawn_lines}A\x1b[J");
        }
        let _ = writeln!(
            out,
            "block {} step {} (+{} revealed)",
            event.block,
            event.step,
            event.revealed.len()
        );
        // terminal width, for counting wrapped lines when redrawing
        let cols: usize = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(80);
        drawn_lines = 1;
        for row in event.tokens {
            let line = show(row, mask_id, tok).replace('\n', "⏎");
            drawn_lines += line.chars().count().div_ceil(cols).max(1);
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    })?;
    println!(
        "generated in {:.1?} on {}: {passes} forward passes ({reused} steps reused the last \
         logits), {positions} token positions computed:",
        started.elapsed(),
        backend::NAME
    );
    if !shares.is_empty() {
        shares.sort_by(f64::total_cmp);
        println!(
            "profile: {} steps, forward passes {:.3?}, sampler {:.3?} = {:.1} % of the steps' time \
             (per step: median {:.1} %, largest {:.1} %)",
            shares.len(),
            timing.forward,
            timing.sampler,
            100.0 * timing.sampler_share(),
            100.0 * shares[shares.len() / 2],
            100.0 * shares[shares.len() - 1],
        );
    }
    print_outputs(&prompts, &outputs, mask_id, tok, args.show_ids)
}

/// Each prompt and its output: text with a tokenizer, ids otherwise.
fn print_outputs(
    prompts: &[Vec<usize>],
    outputs: &[Vec<usize>],
    mask_id: usize,
    tok: Option<&Tokenizer>,
    show_ids: bool,
) -> Result<()> {
    for (p, o) in prompts.iter().zip(outputs) {
        if show_ids && tok.is_some() {
            let ids = |r: &[usize]| show(r, mask_id, None);
            println!("prompt ids: {}\noutput ids: {}", ids(p), ids(o));
        }
        match tok {
            Some(t) => {
                let text =
                    |ids: &[usize]| t.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>());
                println!("prompt: {}\noutput: {}", text(p)?, text(o)?);
            }
            None => println!(
                "prompt: {}\noutput: {}",
                show(p, mask_id, None),
                show(o, mask_id, None)
            ),
        }
    }
    Ok(())
}
