//! The training loop shared by pre-training and fine-tuning, MDM and baseline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use mdm_core::MdmRng;
use mdm_data::sft::{SftDataset, SftLoader};
use mdm_data::shards::{BlockLoader, LoaderOptions};
use mdm_eval::perplexity::PerTokenNll;
use rand::SeedableRng;

use crate::checkpoint::{
    commit_checkpoint, latest_checkpoint, read_state, write_atomic, TrainerState, OPTIMIZER_FILE,
    STATE_FILE,
};
use crate::config::learning_rate;
use crate::error::io;
use crate::metrics::{CsvLog, TRAIN_HEADER, VALID_HEADER};
use crate::objective::{Batch, TrainModel};
use crate::optim::{AdamW, AdamWConfig, GradAccumulator};
use crate::{TrainConfig, TrainError};

/// Where training rows come from.
#[derive(Debug, Clone)]
pub enum DataSpec {
    /// Pre-training on packed shards; validation blocks are read in order from `valid`.
    Shards {
        /// Training shard files.
        train: Vec<PathBuf>,
        /// Validation shard files (may be empty: no validation).
        valid: Vec<PathBuf>,
    },
    /// Fine-tuning rows (prompt never masked); no validation.
    Sft(SftDataset),
}

enum Source {
    Blocks(BlockLoader),
    Sft(SftLoader),
}

impl Source {
    fn next_batch(&mut self, rows: usize) -> Result<Batch, TrainError> {
        Ok(match self {
            Source::Blocks(loader) => Batch {
                ids: loader.next_batch(rows)?,
                rows,
                cols: loader.options().block_size,
                prompt_len: None,
            },
            Source::Sft(loader) => {
                let b = loader.next_batch(rows);
                Batch {
                    ids: b.ids,
                    rows,
                    cols: loader.data().seq_len,
                    prompt_len: Some(b.prompt_len),
                }
            }
        })
    }

    fn position(&self) -> serde_json::Value {
        match self {
            Source::Blocks(l) => serde_json::to_value(l.position()),
            Source::Sft(l) => serde_json::to_value(l.position()),
        }
        .expect("positions serialise")
    }

    fn restore(&mut self, value: &serde_json::Value, dir: &Path) -> Result<(), TrainError> {
        let bad = |e: serde_json::Error| TrainError::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!("data position: {e}"),
        };
        match self {
            Source::Blocks(l) => l.restore(serde_json::from_value(value.clone()).map_err(bad)?)?,
            Source::Sft(l) => l.restore(serde_json::from_value(value.clone()).map_err(bad)?)?,
        }
        Ok(())
    }
}

/// How a run starts and reports.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint in the output folder (its saved `train.toml` wins).
    pub resume: bool,
    /// Start from this model checkpoint folder instead of a fresh initialisation (fine-tuning).
    pub init_from: Option<PathBuf>,
    /// Show a progress bar (otherwise log lines every `log_every` steps).
    pub progress: bool,
    /// Stop after this many steps of this invocation even if the run is not finished (for tests
    /// and for splitting a run across sessions; the learning-rate schedule is unaffected).
    pub stop_after: Option<usize>,
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps completed (in total, across resumptions).
    pub steps: usize,
    /// Steps the run is planned for.
    pub total_steps: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Mean training loss of the last step.
    pub last_loss: f64,
    /// The last validation, if any.
    pub validation: Option<PerTokenNll>,
    /// The final model folder (`<out>/model`), written when the run finished.
    pub model_dir: Option<PathBuf>,
    /// Wall-clock seconds of training (across resumptions).
    pub elapsed_s: f64,
    /// Entropy (bits per token) of the unigram distribution of the validation blocks: the score
    /// of a model that knows only token frequencies, to compare the validation figures with.
    pub valid_unigram_bits: Option<f64>,
}

/// `train.toml` in the output folder.
pub const CONFIG_FILE: &str = "train.toml";

/// [`train`] with the model chosen by `config.objective`: a [`MaskedTransformer`] for
/// [`Objective::Mdm`](crate::Objective::Mdm), a [`CausalTransformer`] for the baseline.
///
/// [`MaskedTransformer`]: mdm_models::MaskedTransformer
/// [`CausalTransformer`]: mdm_models::CausalTransformer
pub fn train_objective<B: AutodiffBackend>(
    model_config: &mdm_models::ModelConfig,
    config: &TrainConfig,
    data: DataSpec,
    out: &Path,
    options: &RunOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    match config.objective {
        crate::Objective::Mdm => train::<B, mdm_models::MaskedTransformer<B>>(
            model_config,
            config,
            data,
            out,
            options,
            device,
        ),
        crate::Objective::Arm => train::<B, mdm_models::CausalTransformer<B>>(
            model_config,
            config,
            data,
            out,
            options,
            device,
        ),
    }
}

/// Trains model type `M` (a [`MaskedTransformer`](mdm_models::MaskedTransformer) or a
/// [`CausalTransformer`](mdm_models::CausalTransformer) on an autodiff backend) with `config` on
/// `data`, writing into `out`: `train.toml`, `metrics.csv`, `validation.csv`, `loss.png`,
/// `checkpoints/step-*/` and, when done, `model/`.
pub fn train<B, M>(
    model_config: &mdm_models::ModelConfig,
    config: &TrainConfig,
    data: DataSpec,
    out: &Path,
    options: &RunOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    M: TrainModel<B>,
{
    std::fs::create_dir_all(out).map_err(io(out))?;
    let resume_dir = if options.resume {
        latest_checkpoint(out)?
    } else {
        None
    };
    let config_path = out.join(CONFIG_FILE);
    let config = match &resume_dir {
        Some(_) if config_path.is_file() => TrainConfig::from_file(&config_path)?,
        _ => config.clone(),
    };
    config.validate()?;
    if resume_dir.is_none() {
        write_atomic(&config_path, config.to_toml().as_bytes())?;
    }

    // the model and optimizer
    let adam = AdamWConfig {
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.adam_eps,
        weight_decay: config.weight_decay,
        max_norm: config.grad_clip,
    };
    let (mut model, mut optim, state) = match &resume_dir {
        Some(dir) => {
            let model = M::load(dir, device)?;
            let optim = AdamW::load(adam, &dir.join(OPTIMIZER_FILE), &model, device)?;
            (model, optim, Some(read_state(dir)?))
        }
        None => {
            let model = match &options.init_from {
                Some(dir) => M::load(dir, device)?,
                None => M::init(model_config, config.seed, device)?,
            };
            (model, AdamW::new(adam), None)
        }
    };
    let model_config = model.model_config().clone();
    let vocab = model_config.vocab_size;
    let n_params = model_config.non_embedding_params();
    let total_steps = config.total_steps(n_params)?;

    // data
    let block_len = M::block_len(config.seq_len);
    let (mut source, valid_blocks) = match data {
        DataSpec::Shards { train, valid } => {
            let loader = BlockLoader::open(
                &train,
                LoaderOptions::new(block_len, vocab)
                    .with_seed(config.seed)
                    .with_n_chunks(config.n_chunks),
            )?;
            let valid_blocks = if valid.is_empty() || config.eval_blocks == 0 {
                Vec::new()
            } else {
                let mut v = BlockLoader::open(
                    &valid,
                    LoaderOptions::new(block_len, vocab).with_shuffle(false),
                )?;
                let n = (config.eval_blocks as u64).min(v.blocks_per_epoch());
                (0..n).map(|_| v.next_block()).collect::<Result<_, _>>()?
            };
            (Source::Blocks(loader), valid_blocks)
        }
        DataSpec::Sft(dataset) => {
            if dataset.seq_len < 2 {
                return Err(TrainError::Config("fine-tuning rows need 2+ tokens".into()));
            }
            (
                Source::Sft(SftLoader::new(dataset, config.seed)),
                Vec::new(),
            )
        }
    };

    // RNG and counters
    let mut rng = MdmRng::seed_from_u64(config.seed);
    rng.set_stream(1);
    let (mut step, mut tokens, mut elapsed_before) = (0usize, 0u64, 0.0f64);
    let mut last_validation_bits = None;
    if let (Some(state), Some(dir)) = (&state, &resume_dir) {
        source.restore(&state.data_position, dir)?;
        let word_pos: u128 = state
            .rng_word_pos
            .parse()
            .map_err(|_| TrainError::Checkpoint {
                dir: dir.clone(),
                reason: "rng_word_pos is not a number".into(),
            })?;
        rng =
            MdmRng::from_seed(
                parse_key(&state.rng_key).ok_or_else(|| TrainError::Checkpoint {
                    dir: dir.clone(),
                    reason: "rng_key is not 64 hex digits".into(),
                })?,
            );
        rng.set_stream(state.rng_stream);
        rng.set_word_pos(word_pos);
        step = state.step;
        tokens = state.tokens;
        elapsed_before = state.elapsed_s;
        last_validation_bits = state.last_validation_bits;
        if optim.steps() != step {
            return Err(TrainError::Checkpoint {
                dir: dir.clone(),
                reason: format!(
                    "optimizer state has {} steps, trainer state {step}",
                    optim.steps()
                ),
            });
        }
    }
    let valid_unigram_bits = (!valid_blocks.is_empty()).then(|| {
        mdm_eval::perplexity::unigram_entropy_bits(valid_blocks.iter().flatten().copied())
    });
    let train_log = CsvLog::open(out.join("metrics.csv"), TRAIN_HEADER, step)?;
    let valid_log = CsvLog::open(out.join("validation.csv"), VALID_HEADER, step)?;

    let bar = if options.progress {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(step as u64);
    let say = |bar: &ProgressBar, line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    if let Some(bits) = valid_unigram_bits {
        say(
            &bar,
            format!(
                "validation set: {} blocks of {block_len} tokens, unigram entropy {bits:.4} bits/token",
                valid_blocks.len()
            ),
        );
    }
    match &resume_dir {
        Some(dir) => say(
            &bar,
            format!("resumed from {} at step {step}", dir.display()),
        ),
        None => say(
            &bar,
            format!(
                "training {:?} ({} non-embedding parameters) for {total_steps} steps of {} tokens",
                M::KIND,
                n_params,
                config.tokens_per_step()
            ),
        ),
    }

    let started = Instant::now();
    let steps_this_run = options.stop_after.unwrap_or(usize::MAX);
    let first_step = step;
    let mut last_loss = f64::NAN;
    let mut validation = None;
    let mut window = (Instant::now(), 0u64);
    while step < total_steps && step - first_step < steps_this_run {
        let lr = learning_rate(&config, step, total_steps);
        let mut acc = GradAccumulator::default();
        let mut loss_sum = 0.0;
        for _ in 0..config.grad_accum {
            let batch = source.next_batch(config.micro_batch)?;
            let loss = model.loss(&batch, &config, &mut rng)?;
            let value = loss
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .map(|v| v[0])
                .unwrap_or(f64::NAN);
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite { step, loss: value });
            }
            loss_sum += value;
            let grads = loss.backward();
            acc.add(&model, &grads);
        }
        let (next, report) = optim.step(model, acc, lr);
        model = next;
        last_loss = loss_sum / config.grad_accum as f64;
        if !report.grad_norm.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite {
                step,
                loss: report.grad_norm,
            });
        }
        step += 1;
        tokens += config.tokens_per_step() as u64;
        window.1 += config.tokens_per_step() as u64;
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let tokens_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
        train_log.append(&[
            step.to_string(),
            tokens.to_string(),
            format!("{lr:.6e}"),
            format!("{last_loss:.6}"),
            format!("{:.4}", report.grad_norm),
            format!("{tokens_per_s:.1}"),
            format!("{elapsed:.2}"),
        ])?;
        bar.set_position(step as u64);
        bar.set_message(format!(
            "loss {last_loss:.4}  {tokens_per_s:.0} tok/s{}",
            last_validation_bits.map_or(String::new(), |b| format!("  val {b:.3} bits/tok"))
        ));
        if bar.is_hidden() && config.log_every > 0 && step % config.log_every == 0 {
            eprintln!(
                "step {step}/{total_steps}  loss {last_loss:.4}  lr {lr:.2e}  grad norm {:.3}  {tokens_per_s:.0} tok/s",
                report.grad_norm
            );
        }
        if step % 20 == 0 {
            window = (Instant::now(), 0);
        }

        let finished = step == total_steps;
        let validate_now = !valid_blocks.is_empty()
            && (finished || (config.eval_every > 0 && step % config.eval_every == 0));
        if validate_now {
            // its own RNG, so validation never changes the training stream
            let mut vrng = MdmRng::seed_from_u64(config.seed);
            vrng.set_stream(2);
            let v = M::validate(&model.valid(), &valid_blocks, &config, &mut vrng)?;
            valid_log.append(&[
                step.to_string(),
                tokens.to_string(),
                format!("{:.6}", v.nats),
                format!("{:.6}", v.bits()),
                format!("{:.6}", v.stderr_bits()),
                format!("{:.4}", v.perplexity()),
            ])?;
            say(
                &bar,
                format!(
                    "step {step}: validation {:.4} ± {:.4} bits/token (perplexity {}{:.2}) on {} tokens",
                    v.bits(),
                    v.stderr_bits(),
                    if M::KIND == mdm_models::checkpoint::ModelKind::Masked { "≤ " } else { "" },
                    v.perplexity(),
                    v.tokens
                ),
            );
            last_validation_bits = Some(v.bits());
            validation = Some(v);
            plot(out, &bar);
        }
        let save_now = finished
            || step - first_step == steps_this_run
            || (config.save_every > 0 && step % config.save_every == 0);
        if save_now {
            let state = TrainerState {
                step,
                tokens,
                elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
                data_position: source.position(),
                rng_key: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
                rng_stream: rng.get_stream(),
                rng_word_pos: rng.get_word_pos().to_string(),
                last_validation_bits,
            };
            commit_checkpoint(out, step, config.keep_last, |dir| {
                model.save(dir)?;
                optim.save(&dir.join(OPTIMIZER_FILE))?;
                let json = serde_json::to_string_pretty(&state).expect("state serialises");
                write_atomic(&dir.join(STATE_FILE), json.as_bytes())
            })?;
        }
    }
    let model_dir = if step == total_steps {
        let dir = out.join("model");
        model.save(&dir)?;
        if valid_blocks.is_empty() {
            plot(out, &bar);
        }
        Some(dir)
    } else {
        None
    };
    bar.finish_and_clear();
    Ok(TrainSummary {
        steps: step,
        total_steps,
        tokens,
        last_loss,
        validation,
        model_dir,
        elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
        valid_unigram_bits,
    })
}

/// Redraws `loss.png`; a missing font is reported once and does not stop training.
fn plot(out: &Path, bar: &ProgressBar) {
    let result = crate::plot::run_curves(out, "run")
        .and_then(|c| crate::plot::plot_curves(&[c], "loss", &out.join("loss.png")));
    if let Err(e) = result {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| bar.println(format!("loss.png not written: {e}")));
    }
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}
