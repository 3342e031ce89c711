//! The quickstart: train a tiny MDM and its autoregressive baseline on a world of fictitious people
//! whose facts are stated name first ("NAME is DESCRIPTION"), and for half of them also
//! description first, watch the MDM denoise an answer, and compare both models on questions asked
//! in the trained direction and in the reversed one, for the people whose facts were stated one way
//! only (the reverse curse). No download and no data folder needed; a few minutes on a laptop CPU.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --text my_notes.txt another.txt   # your own text
//! ```
//! Everything is written under `--out` (default `runs/quickstart`): the corpus, both training runs
//! (metrics.csv, loss.png, checkpoints) and the final models with their tokenizer.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mdm::backend::{self, Training};
use mdm::data::corpus::{prepare_corpus, CorpusOptions, TOKENIZER_FILE};
use mdm::data::facts::FactWorld;
use mdm::data::text::DocumentSplit;
use mdm::data::Tokenizer;
use mdm::eval::harness::{encode_prompt, evaluate_task, infill_exact_match, TaskSettings};
use mdm::eval::tasks::{GenerationItem, Reference, Task, TaskItems};
use mdm::prelude::*;
use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler};
use mdm::train::{train_objective, DataSpec, Objective, RunOptions, TrainConfig};

#[derive(Parser, Debug)]
#[command(
    about = "Train a tiny MDM and baseline on fictitious facts; compare forward and reversed questions"
)]
struct Args {
    /// Output folder.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Train on these text files (plain or .gz, one paragraph per document) instead of the
    /// built-in world; generations are shown instead of the question table.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// People in the built-in world.
    #[arg(long, default_value_t = 30)]
    people: usize,
    /// How many of them are also stated description first (default: half); the reversed questions
    /// of the others are the test.
    #[arg(long)]
    both_ways: Option<usize>,
    /// Unsupervised CFG scales of the MDM's answers (one table column each; 0 = off).
    #[arg(long, num_args = 1.., default_values_t = [0.0])]
    cfg: Vec<f64>,
    /// Seed of the world, the initialisation and the training draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Optimizer steps of each model.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    n_layer: usize,
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    #[arg(long, default_value_t = 128)]
    n_embd: usize,
    /// Tokens per training block.
    #[arg(long, default_value_t = 32)]
    seq_len: usize,
    #[arg(long, default_value_t = 16)]
    micro_batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Size of the BPE vocabulary trained on the text.
    #[arg(long, default_value_t = 512)]
    vocab_size: usize,
    /// Tokens generated per answer.
    #[arg(long, default_value_t = 12)]
    gen_length: usize,
    /// Prompt of the live generation (default: the first forward question, or the text's start).
    #[arg(long)]
    prompt: Option<String>,
    /// Do not redraw the live generation (logs and CI).
    #[arg(long)]
    no_live: bool,
}

impl Args {
    /// The people of `world` stated both ways: `--both-ways`, or half of them.
    fn both_ways(&self, world: &FactWorld) -> usize {
        self.both_ways
            .unwrap_or(world.people.len() / 2)
            .min(world.people.len())
    }
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    // 1. the corpus: the fact world (one sentence per line) or the user's text
    let world = args
        .text
        .is_empty()
        .then(|| FactWorld::generate(args.people, args.seed));
    let mut corpus = match &world {
        Some(w) => {
            let file = args.out.join("world.txt");
            let both_ways = args.both_ways(w);
            let text = w.training_sentences_both_ways(both_ways);
            std::fs::write(&file, text.join("\n") + "\n")?;
            println!(
                "1. a world of {} fictitious people, each fact stated name-first in {} templates, \
                 the first {} also description-first in {}: {}",
                w.people.len(),
                mdm::data::facts::TEMPLATES.len(),
                both_ways,
                mdm::data::facts::REVERSE_TEMPLATES.len(),
                file.display()
            );
            let mut c = CorpusOptions::new(vec![file]);
            c.split = DocumentSplit::Lines;
            c.valid_fraction = 0.0;
            c
        }
        None => {
            println!("1. your text: {} file(s)", args.text.len());
            let mut c = CorpusOptions::new(args.text.clone());
            c.valid_fraction = 0.05;
            c
        }
    };
    corpus.vocab_size = args.vocab_size;
    corpus.chunk_size = 16 * (args.seq_len + 1);
    corpus.valid_chunk_size = corpus.chunk_size;
    corpus.seed = args.seed;
    let data_dir = args.out.join("data");
    let report = prepare_corpus(&corpus, &data_dir, |_, _| {})?;
    println!(
        "   {} documents, {} training tokens, BPE of {} tokens -> {}",
        report.train_documents,
        report.train_tokens,
        report.vocab_size,
        data_dir.display()
    );

    // 2. train both models on the same blocks
    let inter = (8 * args.n_embd / 3).div_ceil(64) * 64;
    let model_config = ModelConfig::custom(
        report.vocab_size,
        args.n_layer,
        args.n_head,
        args.n_embd,
        inter,
        args.seq_len,
    );
    let device = backend::device();
    let mut dirs = Vec::new();
    for objective in [Objective::Mdm, Objective::Arm] {
        let config = TrainConfig {
            objective,
            seq_len: args.seq_len,
            micro_batch: args.micro_batch,
            steps: Some(args.steps),
            lr: args.lr,
            min_lr: args.lr / 10.0,
            warmup_steps: (args.steps / 20).max(1),
            weight_decay: 0.0,
            seed: args.seed,
            eval_every: if report.valid_shards.is_empty() {
                0
            } else {
                args.steps
            },
            eval_blocks: 16,
            save_every: args.steps.div_ceil(2),
            keep_last: 1,
            log_every: 100,
            ..TrainConfig::default()
        };
        let run = args.out.join(match objective {
            Objective::Mdm => "mdm",
            Objective::Arm => "arm",
        });
        println!(
            "2. training the {} ({} layers, width {}, {} non-embedding parameters): {} steps of {} x {} tokens",
            match objective {
                Objective::Mdm => "masked diffusion model",
                Objective::Arm => "autoregressive baseline",
            },
            args.n_layer,
            args.n_embd,
            model_config.non_embedding_params(),
            args.steps,
            args.micro_batch,
            args.seq_len
        );
        let data = DataSpec::Shards {
            train: report.train_shards.clone(),
            valid: report.valid_shards.clone(),
        };
        let options = RunOptions {
            resume: false,
            init_from: None,
            progress: !args.no_live,
            stop_after: None,
        };
        let summary = train_objective::<Training>(
            &model_config,
            &config,
            data,
            &run,
            &options,
            std::slice::from_ref(&device),
        )?;
        let dir = summary
            .model_dir
            .context("the run stopped before its last step")?;
        std::fs::copy(data_dir.join(TOKENIZER_FILE), dir.join(TOKENIZER_FILE))?;
        println!(
            "   done in {:.0} s, last training loss {:.3}",
            summary.elapsed_s, summary.last_loss
        );
        dirs.push(dir);
    }
    let tokenizer = Tokenizer::from_file(data_dir.join(TOKENIZER_FILE))?;
    let mdm = MaskedTransformer::<DefaultBackend>::load(&dirs[0], &device)?;
    let arm = CausalTransformer::<DefaultBackend>::load(&dirs[1], &device)?;

    // 3. a live generation from the MDM
    let prompt_text = args.prompt.clone().unwrap_or_else(|| match &world {
        Some(w) => w.forward_questions()[0].0.clone(),
        None => String::new(),
    });
    println!(
        "3. the MDM answers {prompt_text:?}, unmasking {} tokens:",
        args.gen_length
    );
    let prompt = encode_prompt(&tokenizer, &prompt_text)?;
    let config = DecodingOptions::default()
        .with_gen_length(args.gen_length)
        .with_steps(args.gen_length)
        .with_eos(tokenizer.eos_id() as usize);
    let mask_id = mdm.mask_id();
    let mut out = std::io::stdout().lock();
    let generated = MaskedDiffusionSampler::new(&mdm, config).generate(
        std::slice::from_ref(&prompt),
        |event| {
            if args.no_live {
                return;
            }
            let row = &event.tokens[0][prompt.len()..];
            let _ = write!(
                out,
                "\r\x1b[K   {}",
                tokenizer.render_masked(row, mask_id).replace('\n', " ")
            );
            let _ = out.flush();
            std::thread::sleep(std::time::Duration::from_millis(60));
        },
    )?;
    drop(out);
    let ids: Vec<u32> = generated[0].iter().map(|&t| t as u32).collect();
    let clear = if args.no_live { "" } else { "\r\x1b[K" };
    println!("{clear}   {prompt_text}{}", tokenizer.decode(&ids)?);

    // 4. forward and reversed questions, greedy, both models
    if let Some(w) = &world {
        ask_questions(&args, w, &mdm, &arm, &tokenizer)?;
    }
    println!(
        "\nfinished in {:.0} s on {}. Models: {} and {}",
        started.elapsed().as_secs_f64(),
        backend::NAME,
        dirs[0].display(),
        dirs[1].display()
    );
    println!("next:");
    println!(
        "  cargo run --release --example generate -- --checkpoint {} --prompt \"{}\" --gen-length 16",
        dirs[0].display(),
        prompt_text
    );
    println!(
        "  ... add --block-length 8 --cache dual --threshold 0.9   # Fast-dLLM's parallel decoding"
    );
    println!(
        "  cargo run --release --example quickstart -- --text YOUR.txt --steps 3000   # your own text"
    );
    println!("  docs/quickstart.md, docs/training.md, docs/evaluation.md");
    Ok(())
}

/// Step 4: the forward questions of everyone, the reversed ones of the people stated both ways
/// (a word order they were trained on) and of those stated one way (the test), greedy, as a
/// Markdown table of exact match with its standard error; then the one-way people's reversed
/// questions as infilling, which only the MDM can be asked.
fn ask_questions(
    args: &Args,
    world: &FactWorld,
    mdm: &MaskedTransformer<DefaultBackend>,
    arm: &CausalTransformer<DefaultBackend>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let task = |name: &str, questions: Vec<(String, String)>| Task {
        name: name.into(),
        file: args.out.join("world.txt"),
        items: TaskItems::Generation(
            Reference::Text,
            questions
                .into_iter()
                .enumerate()
                .map(|(i, (prompt, reference))| GenerationItem {
                    id: i.to_string(),
                    prompt,
                    reference,
                })
                .collect(),
        ),
    };
    let (both, one_way) = world.split_at(args.both_ways(world));
    let tasks = [
        task(
            "forward (name -> description), everyone",
            world.forward_questions(),
        ),
        task(
            "reversed, people stated both ways",
            both.reverse_questions(),
        ),
        task(
            "**reversed, people stated one way**",
            one_way.reverse_questions(),
        ),
    ];
    println!(
        "4. exact match (the answer contained in the greedy generation, ± its standard error):"
    );
    let mdm_columns: Vec<String> = args
        .cfg
        .iter()
        .map(|&w| {
            if w == 0.0 {
                "MDM".to_string()
            } else {
                format!("MDM, CFG w = {w}")
            }
        })
        .collect();
    println!(
        "   | question | n | {} | baseline |\n   |---|---:|{}---:|",
        mdm_columns.join(" | "),
        "---:|".repeat(mdm_columns.len())
    );
    let percent = |m: &mdm::eval::harness::Metric| {
        format!("{:.0} % ± {:.0}", 100.0 * m.value, 100.0 * m.stderr)
    };
    let settings = TaskSettings {
        gen_length: args.gen_length,
        keep_samples: 1,
        ..Default::default()
    };
    for t in tasks.iter().filter(|t| !t.items.is_empty()) {
        let mut cells = Vec::new();
        let mut example = None;
        for &w in &args.cfg {
            let guided = TaskSettings {
                cfg_scale: w,
                ..settings.clone()
            };
            let m = evaluate_task(&Masked(mdm), tokenizer, t, &guided, |_, _| {})?;
            cells.push(percent(&m.metrics[0]));
            example.get_or_insert(m.samples[0].clone());
        }
        let a = evaluate_task(&Causal(arm), tokenizer, t, &settings, |_, _| {})?;
        let n = a.metrics[0].n;
        println!(
            "   | {} | {n} | {} | {} |",
            t.name,
            cells.join(" | "),
            percent(&a.metrics[0])
        );
        if let Some(m) = example {
            println!(
                "     e.g. {:?} -> MDM {:?}, baseline {:?}",
                m.prompt, m.generation, a.samples[0].generation
            );
        }
    }
    if !one_way.people.is_empty() {
        let (infill, samples) = infill_exact_match(mdm, tokenizer, &one_way.infill_questions(), 1)?;
        println!(
            "   | reversed, one way, as infilling (name masked) | {} | {} |{} cannot infill |",
            infill.n,
            percent(&infill),
            " |".repeat(args.cfg.len() - 1)
        );
        println!(
            "     e.g. {:?} -> MDM {:?}",
            samples[0].prompt, samples[0].generation
        );
    }
    Ok(())
}
