//! The training loop shared by pre-training and fine-tuning, MDM and baseline, assembled from
//! small parts: the run's configuration and state (fresh or resumed, [`RunState`]), the data
//! ([`crate::source`]), the optimizer step ([`crate::step`]), the checkpointer
//! ([`crate::checkpoint::Checkpointer`]), the validator ([`crate::validator`]), the metrics files
//! ([`crate::metrics`]) and the events that report progress ([`crate::events`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use mdm_core::MdmRng;
use mdm_eval::perplexity::PerTokenNll;
use rand::SeedableRng;

use crate::checkpoint::{
    latest_checkpoint, read_state, write_atomic, write_dir_atomic, Checkpointer, TrainerState,
    OPTIMIZER_FILE,
};
use crate::config::learning_rate;
use crate::error::io;
use crate::events::{ConsoleReporter, TrainEvent, TrainObserver};
use crate::metrics::{CsvTable, TrainRow, ValidRow};
use crate::objective::TrainModel;
use crate::optim::{AdamW, AdamWConfig};
use crate::source::{open_data, Source};
use crate::step::{optimizer_step, SingleDevice};
use crate::validator::Validator;
use crate::{TrainConfig, TrainError};

pub use crate::source::DataSpec;

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
/// `checkpoints/step-*/` and, when done, `model/`. Progress goes to a [`ConsoleReporter`]
/// (`options.progress`: a bar, else log lines); [`train_with`] takes any observer.
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
    let mut reporter = ConsoleReporter::new(options.progress, config.log_every);
    let summary = train_with::<B, M>(
        model_config,
        config,
        data,
        out,
        options,
        device,
        &mut reporter,
    );
    reporter.finish();
    summary
}

/// The optimizer state and counters of a run: fresh, or read back from a checkpoint.
pub struct RunState<B: AutodiffBackend> {
    /// AdamW's moments and step count.
    pub optim: AdamW<B::InnerBackend>,
    /// Optimizer steps done.
    pub step: usize,
    /// Tokens consumed.
    pub tokens: u64,
    /// Training seconds of earlier invocations.
    pub elapsed_before: f64,
    /// The last validation, bits per token.
    pub last_validation_bits: Option<f64>,
    /// The training RNG (masking, times, lengths).
    pub rng: MdmRng,
}

impl<B: AutodiffBackend> RunState<B> {
    /// A fresh run: its RNG is `seed` on stream 1 (stream 2 is validation's).
    pub fn fresh(adam: AdamWConfig, seed: u64) -> Self {
        let mut rng = MdmRng::seed_from_u64(seed);
        rng.set_stream(1);
        Self {
            optim: AdamW::new(adam),
            step: 0,
            tokens: 0,
            elapsed_before: 0.0,
            last_validation_bits: None,
            rng,
        }
    }

    /// The state saved in checkpoint `dir` for `model`; the data source is moved to its saved
    /// position.
    pub fn resume<M: TrainModel<B>>(
        adam: AdamWConfig,
        dir: &Path,
        model: &M,
        source: &mut Source,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let optim = AdamW::load(adam, &dir.join(OPTIMIZER_FILE), model, device)?;
        let saved = read_state(dir)?;
        if optim.steps() != saved.step {
            return Err(TrainError::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!(
                    "optimizer state has {} steps, trainer state {}",
                    optim.steps(),
                    saved.step
                ),
            });
        }
        source.restore(&saved.data_position, dir)?;
        Ok(Self {
            optim,
            step: saved.step,
            tokens: saved.tokens,
            elapsed_before: saved.elapsed_s,
            last_validation_bits: saved.last_validation_bits,
            rng: saved.rng,
        })
    }
}

/// The configuration a run uses: the saved `train.toml` when resuming, else `config` (then
/// written to `train.toml`).
fn resolve_config(
    config: &TrainConfig,
    out: &Path,
    resuming: bool,
) -> Result<TrainConfig, TrainError> {
    let path = out.join(CONFIG_FILE);
    let config = if resuming && path.is_file() {
        TrainConfig::from_file(&path)?
    } else {
        config.clone()
    };
    config.validate()?;
    if !resuming {
        write_atomic(&path, config.to_toml().as_bytes())?;
    }
    Ok(config)
}

fn adam_config(config: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.adam_eps,
        weight_decay: config.weight_decay,
        max_norm: config.grad_clip,
    }
}

/// Throughput over a window of recent steps (restarted every 20 steps).
struct Throughput {
    since: Instant,
    tokens: u64,
}

impl Throughput {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            tokens: 0,
        }
    }

    fn add(&mut self, step: usize, tokens: u64) -> f64 {
        self.tokens += tokens;
        let rate = self.tokens as f64 / self.since.elapsed().as_secs_f64().max(1e-9);
        if step.is_multiple_of(20) {
            *self = Self::new();
        }
        rate
    }
}

/// [`train`] reporting to `observer` instead of the console.
pub fn train_with<B, M>(
    model_config: &mdm_models::ModelConfig,
    config: &TrainConfig,
    data: DataSpec,
    out: &Path,
    options: &RunOptions,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
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
    let config = resolve_config(config, out, resume_dir.is_some())?;
    let mut model = match (&resume_dir, &options.init_from) {
        (Some(dir), _) | (None, Some(dir)) => M::load(dir, device)?,
        (None, None) => M::init(model_config, config.seed, device)?,
    };
    let model_config = model.model_config().clone();
    let n_params = model_config.non_embedding_params();
    let total_steps = config.total_steps(n_params)?;
    let block_len = M::block_len(config.seq_len);
    let (mut source, valid_blocks) = open_data(data, block_len, model_config.vocab_size, &config)?;
    let mut state = match &resume_dir {
        Some(dir) => RunState::resume(adam_config(&config), dir, &model, &mut source, device)?,
        None => RunState::fresh(adam_config(&config), config.seed),
    };
    let validator = Validator::new(valid_blocks, &config);
    let checkpointer = Checkpointer::new(out, config.save_every, config.keep_last);
    let train_log =
        CsvTable::<TrainRow>::open_keeping(out.join("metrics.csv"), |r| r.step <= state.step)?;
    let valid_log =
        CsvTable::<ValidRow>::open_keeping(out.join("validation.csv"), |r| r.step <= state.step)?;

    if let Some(unigram_bits) = validator.unigram_bits() {
        observer.on_event(&TrainEvent::ValidationSet {
            blocks: validator.blocks().len(),
            block_len,
            unigram_bits,
        });
    }
    observer.on_event(&match &resume_dir {
        Some(dir) => TrainEvent::Resumed {
            checkpoint: dir.clone(),
            step: state.step,
            total_steps,
        },
        None => TrainEvent::Started {
            kind: M::KIND,
            params: n_params,
            total_steps,
            tokens_per_step: config.tokens_per_step(),
        },
    });

    let started = Instant::now();
    let last_step = options
        .stop_after
        .map_or(total_steps, |n| total_steps.min(state.step + n));
    let mut last_loss = f64::NAN;
    let mut validation = None;
    let mut throughput = Throughput::new();
    let mut plot_warned = false;
    while state.step < last_step {
        let lr = learning_rate(&config, state.step, total_steps);
        let (rng, src) = (&mut state.rng, &mut source);
        let (next, outcome) = optimizer_step(
            model,
            &mut state.optim,
            lr,
            config.grad_accum,
            state.step,
            &mut SingleDevice,
            |model: &M, _| model.loss(&src.next_batch(config.micro_batch)?, &config, rng),
        )?;
        model = next;
        last_loss = outcome.loss;
        state.step += 1;
        state.tokens += config.tokens_per_step() as u64;
        let step = state.step;
        let tokens_per_s = throughput.add(step, config.tokens_per_step() as u64);
        let elapsed_s = state.elapsed_before + started.elapsed().as_secs_f64();
        train_log.append(&TrainRow {
            step,
            tokens: state.tokens,
            lr,
            loss: outcome.loss,
            grad_norm: outcome.grad_norm,
            tokens_per_s,
            elapsed_s,
        })?;
        observer.on_event(&TrainEvent::Step {
            step,
            total_steps,
            lr,
            outcome,
            tokens_per_s,
        });

        let finished = step == total_steps;
        if validator.due(step, finished) {
            let nll = validator.run::<B, M>(&model.valid(), &config)?;
            valid_log.append(&ValidRow {
                step,
                tokens: state.tokens,
                nats_per_token: nll.nats,
                bits_per_token: nll.bits(),
                stderr_bits: nll.stderr_bits(),
                perplexity: nll.perplexity(),
            })?;
            state.last_validation_bits = Some(nll.bits());
            observer.on_event(&TrainEvent::Validated {
                step,
                kind: M::KIND,
                nll,
            });
            validation = Some(nll);
            plot(out, observer, &mut plot_warned);
        }
        if checkpointer.due(step, step == last_step) {
            let saved = TrainerState {
                step,
                tokens: state.tokens,
                elapsed_s: state.elapsed_before + started.elapsed().as_secs_f64(),
                data_position: source.position()?,
                rng: state.rng.clone(),
                last_validation_bits: state.last_validation_bits,
            };
            let dir = checkpointer.save(&saved, |dir| {
                model.save(dir)?;
                state.optim.save(&dir.join(OPTIMIZER_FILE))
            })?;
            observer.on_event(&TrainEvent::Checkpointed { dir });
        }
    }
    let model_dir = if state.step == total_steps {
        let dir = out.join("model");
        write_dir_atomic(&dir, |tmp| Ok(model.save(tmp)?))?;
        if validator.blocks().is_empty() {
            plot(out, observer, &mut plot_warned);
        }
        Some(dir)
    } else {
        None
    };
    Ok(TrainSummary {
        steps: state.step,
        total_steps,
        tokens: state.tokens,
        last_loss,
        validation,
        model_dir,
        elapsed_s: state.elapsed_before + started.elapsed().as_secs_f64(),
        valid_unigram_bits: validator.unigram_bits(),
    })
}

/// Redraws `loss.png`; a failure (e.g. a missing font) is a warning, given once, not the end of
/// the run.
fn plot(out: &Path, observer: &mut dyn TrainObserver, warned: &mut bool) {
    let result = crate::plot::run_curves(out, "run")
        .and_then(|c| crate::plot::plot_curves(&[c], "loss", &out.join("loss.png")));
    if let Err(e) = result {
        if !*warned {
            observer.on_event(&TrainEvent::Warning(format!("loss.png not written: {e}")));
            *warned = true;
        }
    }
}
