//! The training loop shared by pre-training and fine-tuning, MDM and baseline, assembled from
//! small parts: the run's configuration and state (fresh or resumed, [`RunState`]), the data
//! ([`crate::source`]), the optimizer step ([`crate::step`]), the checkpointer
//! ([`crate::checkpoint::Checkpointer`]), the validator ([`crate::validator`]), the metrics files
//! ([`crate::metrics`]) and the events that report progress ([`crate::events`]).

use mdm_kernels::AutodiffKernels;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
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
use crate::parallel::{run_peers, CollectiveMean, PeerPlace};
use crate::source::{open_data, Source};
use crate::step::{optimizer_step, GradientReduce, SingleDevice};
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

/// [`train`] with the model chosen by `config.objective` (a [`MaskedTransformer`] for
/// [`Objective::Mdm`](crate::Objective::Mdm), a [`CausalTransformer`] for the baseline), one peer
/// per device of `devices` (one device: the calling thread; more: data parallel, see
/// [`train_on`]).
///
/// [`MaskedTransformer`]: mdm_models::MaskedTransformer
/// [`CausalTransformer`]: mdm_models::CausalTransformer
pub fn train_objective<B: AutodiffKernels>(
    model_config: &mdm_models::ModelConfig,
    config: &TrainConfig,
    data: DataSpec,
    out: &Path,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<TrainSummary, TrainError> {
    let run = Run {
        model_config,
        config,
        data,
        out,
        options,
    };
    on_console(options, config, |reporter| match config.objective {
        crate::Objective::Mdm => run.on::<B, mdm_models::MaskedTransformer<B>>(devices, reporter),
        crate::Objective::Arm => run.on::<B, mdm_models::CausalTransformer<B>>(devices, reporter),
    })
}

/// Runs `train` reporting to a [`ConsoleReporter`] (a bar, or log lines), closed at the end.
fn on_console(
    options: &RunOptions,
    config: &TrainConfig,
    train: impl FnOnce(&mut dyn TrainObserver) -> Result<TrainSummary, TrainError>,
) -> Result<TrainSummary, TrainError> {
    let mut reporter = ConsoleReporter::new(options.progress, config.log_every);
    let summary = train(&mut reporter);
    reporter.finish();
    summary
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
    on_console(options, config, |reporter| {
        train_with::<B, M>(model_config, config, data, out, options, device, reporter)
    })
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
    train_on::<B, M>(
        model_config,
        config,
        data,
        out,
        options,
        std::slice::from_ref(device),
        observer,
    )
}

/// [`train_with`] data parallel: one peer per device of `devices` in this process (threads,
/// [`crate::parallel`]) and, with `config.parallel.mpi`, the peers of the other ranks of the MPI
/// job this process belongs to (`crate::mpi`, feature `mpi`).
/// The global batch stays `micro_batch x grad_accum` rows: each of the `world` peers computes
/// `grad_accum / world` of its micro-batches (so `grad_accum` must be a multiple of `world`), the
/// gradients are averaged before clipping and AdamW, and the run makes the updates one device
/// makes (the same rows, and the same draws: each micro-batch has its own RNG stream). Global
/// peer 0 (rank 0) writes every file and reports; every peer resumes from the same checkpoint and
/// the peers check they start from the same state. One device per process runs on the calling
/// thread.
pub fn train_on<B, M>(
    model_config: &mdm_models::ModelConfig,
    config: &TrainConfig,
    data: DataSpec,
    out: &Path,
    options: &RunOptions,
    devices: &[B::Device],
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    M: TrainModel<B>,
{
    Run {
        model_config,
        config,
        data,
        out,
        options,
    }
    .on::<B, M>(devices, observer)
}

/// The arguments of a run, before it is split into peers.
struct Run<'a> {
    model_config: &'a mdm_models::ModelConfig,
    config: &'a TrainConfig,
    data: DataSpec,
    out: &'a Path,
    options: &'a RunOptions,
}

impl Run<'_> {
    fn on<B, M>(
        self,
        devices: &[B::Device],
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainSummary, TrainError>
    where
        B: AutodiffBackend,
        M: TrainModel<B>,
    {
        self.config.parallel.validate()?;
        let rank = rank_place(&self.config.parallel)?;
        let parallel = self.config.parallel.clone();
        let result = self.on_rank::<B, M>(rank, devices, observer);
        if rank.ranks > 1 {
            return announced(result, &parallel);
        }
        result
    }

    /// The run of this process, at `rank` among the ranks.
    fn on_rank<B, M>(
        self,
        rank: PeerPlace,
        devices: &[B::Device],
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainSummary, TrainError>
    where
        B: AutodiffBackend,
        M: TrainModel<B>,
    {
        std::fs::create_dir_all(self.out).map_err(io(self.out))?;
        let resume_dir = if self.options.resume {
            latest_checkpoint(self.out)?
        } else {
            None
        };
        let config = resolve_config(self.config, self.out, resume_dir.is_some(), rank.rank == 0)?;
        if devices.is_empty() {
            return Err(TrainError::Config("a run needs at least one device".into()));
        }
        let world = devices.len() * rank.ranks as usize;
        if !config.grad_accum.is_multiple_of(world) {
            return Err(TrainError::Config(format!(
                "grad_accum {} must be a multiple of the {world} peers ({} devices x {} ranks): \
                 each peer computes grad_accum / peers micro-batches of every step (for the same \
                 global batch, divide micro_batch and multiply grad_accum)",
                config.grad_accum,
                devices.len(),
                rank.ranks
            )));
        }
        let job = Job {
            model_config: self.model_config.clone(),
            config,
            data: self.data,
            out: self.out.to_path_buf(),
            options: self.options.clone(),
            resume_dir,
        };
        if devices.len() == 1 {
            let place = PeerPlace {
                local_peers: 1,
                ..rank
            };
            let mut emit = |e: TrainEvent| {
                if place.is_leader() {
                    observer.on_event(&e)
                }
            };
            return match ranks_reduce(&job.config.parallel, place)? {
                None => job.run::<B, M>(place, &mut SingleDevice, &devices[0], &mut emit),
                Some(mut reduce) => job.run::<B, M>(place, reduce.as_mut(), &devices[0], &mut emit),
            };
        }
        let job = std::sync::Arc::new(job);
        run_peers::<B::InnerBackend, _, _, _, _>(
            devices,
            rank,
            move |peer, device: B::Device| {
                let local = CollectiveMean::<B::InnerBackend>::join(
                    peer.place,
                    &device,
                    peer.watch.clone(),
                )?;
                let leader = peer.place.is_leader();
                let mut emit = |e: TrainEvent| {
                    if leader {
                        peer.reporter.report(e);
                    }
                };
                let mut reduce = peers_reduce(local, &job.config.parallel, peer.place)?;
                job.run::<B, M>(peer.place, reduce.as_mut(), &device, &mut emit)
            },
            |e| observer.on_event(&e),
        )
    }
}

/// This process's place among the ranks: `(rank, ranks)` of the MPI job with `parallel.mpi`, else
/// the only rank.
fn rank_place(parallel: &crate::ParallelConfig) -> Result<PeerPlace, TrainError> {
    #[cfg(feature = "mpi")]
    if parallel.mpi {
        let (rank, ranks) = crate::mpi::place()?;
        return Ok(PeerPlace {
            rank,
            ranks,
            ..PeerPlace::SINGLE
        });
    }
    let _ = parallel;
    Ok(PeerPlace::SINGLE)
}

/// The reduction of a one-device rank of an MPI job with several ranks (none otherwise).
fn ranks_reduce<B: Backend>(
    parallel: &crate::ParallelConfig,
    place: PeerPlace,
) -> Result<Option<Box<dyn GradientReduce<B>>>, TrainError> {
    if place.ranks <= 1 {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let timeout = std::time::Duration::from_secs(parallel.timeout_s);
        Ok(Some(Box::new(crate::mpi::MpiMean::new(timeout)?)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = parallel;
        Err(TrainError::Mpi("this build has no MPI".into()))
    }
}

/// The reduction of a peer of a process with several devices: burn-collective's mean, and with
/// several ranks the first peer's MPI mean over them.
fn peers_reduce<B: Backend>(
    local: CollectiveMean<B>,
    parallel: &crate::ParallelConfig,
    place: PeerPlace,
) -> Result<Box<dyn GradientReduce<B>>, TrainError> {
    if place.ranks <= 1 {
        return Ok(Box::new(local));
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = match place.local {
            0 => Some(crate::mpi::MpiMean::new(std::time::Duration::from_secs(
                parallel.timeout_s,
            ))?),
            _ => None,
        };
        Ok(Box::new(crate::mpi::RankMean::new(local, mpi)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = parallel;
        Err(TrainError::Mpi("this build has no MPI".into()))
    }
}

/// `result`, after telling the other ranks when it is a failure of this rank's own (not one they
/// told it of, nor a wait for them).
fn announced<T>(
    result: Result<T, TrainError>,
    parallel: &crate::ParallelConfig,
) -> Result<T, TrainError> {
    #[cfg(feature = "mpi")]
    if let Err(error) = &result {
        let theirs = matches!(
            error,
            TrainError::RankFailed { .. } | TrainError::RankTimeout { .. }
        );
        if !theirs {
            if let Ok(mut mpi) =
                crate::mpi::MpiMean::new(std::time::Duration::from_secs(parallel.timeout_s))
            {
                mpi.announce_failure(&error.to_string());
            }
        }
    }
    let _ = parallel;
    result
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
}

impl<B: AutodiffBackend> RunState<B> {
    /// A fresh run.
    pub fn fresh(adam: AdamWConfig) -> Self {
        Self {
            optim: AdamW::new(adam),
            step: 0,
            tokens: 0,
            elapsed_before: 0.0,
            last_validation_bits: None,
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
        })
    }
}

/// Streams of the training draws: micro-batch `i` of the run draws from stream
/// `MICRO_BATCH_STREAMS + i` of the seed (stream 2 is validation's).
pub const MICRO_BATCH_STREAMS: u64 = 1 << 32;

/// The RNG of micro-batch `index` (counted over the whole run, `step x grad_accum + i`): its own
/// ChaCha stream of `seed`, so a micro-batch draws the same masks and times whichever peer
/// computes it and a resumed run needs no RNG state.
pub fn micro_batch_rng(seed: u64, index: u64) -> MdmRng {
    let mut rng = MdmRng::seed_from_u64(seed);
    rng.set_stream(MICRO_BATCH_STREAMS + index);
    rng
}

/// The configuration a run uses: the saved `train.toml` when resuming (with the caller's
/// `parallel` section: the devices may change between invocations, the updates do not depend on
/// them), else `config` (then written to `train.toml` when this process is the `writer`, rank 0).
fn resolve_config(
    config: &TrainConfig,
    out: &Path,
    resuming: bool,
    writer: bool,
) -> Result<TrainConfig, TrainError> {
    let path = out.join(CONFIG_FILE);
    let config = if resuming && path.is_file() {
        TrainConfig {
            parallel: config.parallel.clone(),
            ..TrainConfig::recipe_from_file(&path)?
        }
    } else {
        config.clone()
    };
    config.validate()?;
    if !resuming && writer {
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

/// What every peer of a run shares: the resolved configuration and where to start.
struct Job {
    model_config: mdm_models::ModelConfig,
    config: TrainConfig,
    data: DataSpec,
    out: PathBuf,
    options: RunOptions,
    resume_dir: Option<PathBuf>,
}

/// The leader's files: metrics, validation and checkpoints.
struct Files {
    checkpointer: Checkpointer,
    train_log: CsvTable<TrainRow>,
    valid_log: CsvTable<ValidRow>,
    plot_warned: bool,
}

/// What an optimizer step ended with, for the leader's files.
struct StepDone {
    step: usize,
    total_steps: usize,
    last_step: usize,
    lr: f64,
    outcome: crate::step::StepOutcome,
    tokens_per_s: f64,
    /// When this invocation started training, and the seconds of earlier invocations.
    started: Instant,
    elapsed_before: f64,
}

impl StepDone {
    /// Training seconds so far (across invocations).
    fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }
}

/// What the leader's files read from the run.
struct RunParts<'a, M> {
    model: &'a M,
    source: &'a Source,
    validator: &'a Validator,
    config: &'a TrainConfig,
    out: &'a Path,
}

impl Files {
    /// After a step: its metrics row and event, a validation when due (returned), a checkpoint
    /// when due.
    fn record<B: AutodiffBackend, M: TrainModel<B>>(
        &mut self,
        done: &StepDone,
        run: RunParts<'_, M>,
        state: &mut RunState<B>,
        emit: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<PerTokenNll>, TrainError> {
        let step = done.step;
        self.train_log.append(&TrainRow {
            step,
            tokens: state.tokens,
            lr: done.lr,
            loss: done.outcome.loss,
            grad_norm: done.outcome.grad_norm,
            tokens_per_s: done.tokens_per_s,
            elapsed_s: done.elapsed_s(),
        })?;
        emit(TrainEvent::Step {
            step,
            total_steps: done.total_steps,
            lr: done.lr,
            outcome: done.outcome,
            tokens_per_s: done.tokens_per_s,
        });
        let mut validation = None;
        if run.validator.due(step, step == done.total_steps) {
            let nll = run.validator.run::<B, M>(&run.model.valid(), run.config)?;
            self.valid_log.append(&ValidRow {
                step,
                tokens: state.tokens,
                nats_per_token: nll.nats,
                bits_per_token: nll.bits(),
                stderr_bits: nll.stderr_bits(),
                perplexity: nll.perplexity(),
            })?;
            state.last_validation_bits = Some(nll.bits());
            emit(TrainEvent::Validated {
                step,
                kind: M::KIND,
                nll,
            });
            validation = Some(nll);
            plot(run.out, emit, &mut self.plot_warned);
        }
        if self.checkpointer.due(step, step == done.last_step) {
            let saved = TrainerState {
                step,
                tokens: state.tokens,
                elapsed_s: done.elapsed_s(),
                data_position: run.source.position()?,
                last_validation_bits: state.last_validation_bits,
            };
            let dir = self.checkpointer.save(&saved, |dir| {
                run.model.save(dir)?;
                state.optim.save(&dir.join(OPTIMIZER_FILE))
            })?;
            emit(TrainEvent::Checkpointed { dir });
        }
        Ok(validation)
    }
}

impl Job {
    /// The model of this peer: the checkpoint's, the initial folder's, or a fresh one (the same
    /// on every peer: same seed).
    fn model<B: AutodiffBackend, M: TrainModel<B>>(
        &self,
        device: &B::Device,
    ) -> Result<M, TrainError> {
        Ok(match (&self.resume_dir, &self.options.init_from) {
            (Some(dir), _) | (None, Some(dir)) => M::load(dir, device)?,
            (None, None) => M::init(&self.model_config, self.config.seed, device)?,
        })
    }

    /// Trains as the peer at `place` (all of the run on one device), reducing gradients with
    /// `reduce`; `emit` gets the events (only the leader's are shown).
    fn run<B, M>(
        &self,
        place: PeerPlace,
        reduce: &mut dyn GradientReduce<B::InnerBackend>,
        device: &B::Device,
        emit: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary, TrainError>
    where
        B: AutodiffBackend,
        M: TrainModel<B>,
    {
        let config = &self.config;
        let mut model = self.model::<B, M>(device)?;
        let model_config = model.model_config().clone();
        let n_params = model_config.active_non_embedding_params();
        let total_steps = config.total_steps(n_params)?;
        let block_len = M::block_len(config.seq_len);
        let (mut source, valid_blocks) = open_data(
            self.data.clone(),
            block_len,
            model_config.vocab_size,
            config,
        )?;
        let mut state = match &self.resume_dir {
            Some(dir) => RunState::resume(adam_config(config), dir, &model, &mut source, device)?,
            None => RunState::fresh(adam_config(config)),
        };
        if place.world() > 1 {
            agree(reduce, place, state.step, &model)?;
        }
        let leader = place.is_leader();
        let validator = Validator::new(if leader { valid_blocks } else { Vec::new() }, config);
        let mut files = if leader {
            let step = state.step;
            Some(Files {
                checkpointer: Checkpointer::new(&self.out, config.save_every, config.keep_last),
                train_log: CsvTable::open_keeping(self.out.join("metrics.csv"), |r: &TrainRow| {
                    r.step <= step
                })?,
                valid_log: CsvTable::open_keeping(
                    self.out.join("validation.csv"),
                    |r: &ValidRow| r.step <= step,
                )?,
                plot_warned: false,
            })
        } else {
            None
        };

        if let Some(unigram_bits) = validator.unigram_bits() {
            emit(TrainEvent::ValidationSet {
                blocks: validator.blocks().len(),
                block_len,
                unigram_bits,
            });
        }
        emit(match &self.resume_dir {
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
        let last_step = self
            .options
            .stop_after
            .map_or(total_steps, |n| total_steps.min(state.step + n));
        let share = config.grad_accum / place.world();
        let first = place.global() * share;
        let mut last_loss = f64::NAN;
        let mut validation = None;
        let mut throughput = Throughput::new();
        while state.step < last_step {
            let lr = learning_rate(config, state.step, total_steps);
            // every peer reads the whole global batch (the same rows in the same order as one
            // device) and computes its share
            let batches = (0..config.grad_accum)
                .map(|_| source.next_batch(config.micro_batch))
                .collect::<Result<Vec<_>, _>>()?;
            let first_index = (state.step * config.grad_accum + first) as u64;
            reduce.at_step(state.step);
            let (next, outcome) = optimizer_step(
                model,
                &mut state.optim,
                lr,
                share,
                state.step,
                reduce,
                |model: &M, i| {
                    let mut rng = micro_batch_rng(config.seed, first_index + i as u64);
                    model.loss(&batches[first + i], config, &mut rng)
                },
            )?;
            model = next;
            last_loss = outcome.loss;
            state.step += 1;
            state.tokens += config.tokens_per_step() as u64;
            let step = state.step;
            let tokens_per_s = throughput.add(step, config.tokens_per_step() as u64);
            if let Some(files) = files.as_mut() {
                let done = StepDone {
                    step,
                    total_steps,
                    last_step,
                    lr,
                    outcome,
                    tokens_per_s,
                    started,
                    elapsed_before: state.elapsed_before,
                };
                let parts = RunParts {
                    model: &model,
                    source: &source,
                    validator: &validator,
                    config,
                    out: &self.out,
                };
                if let Some(nll) = files.record::<B, M>(&done, parts, &mut state, emit)? {
                    validation = Some(nll);
                }
            }
        }
        let model_dir = match files.as_mut() {
            Some(files) if state.step == total_steps => {
                let dir = self.out.join("model");
                write_dir_atomic(&dir, |tmp| Ok(model.save(tmp)?))?;
                if validator.blocks().is_empty() {
                    plot(&self.out, emit, &mut files.plot_warned);
                }
                Some(dir)
            }
            _ => None,
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
}

/// Checks that every peer starts from the same step and the same weights (on several machines,
/// each reads the checkpoints of its own `out` folder: a shared or copied folder).
fn agree<B: AutodiffBackend, M: TrainModel<B>>(
    reduce: &mut dyn GradientReduce<B::InnerBackend>,
    place: PeerPlace,
    step: usize,
    model: &M,
) -> Result<(), TrainError> {
    let checksum = weight_sum(model);
    let mean = reduce.mean_of(&[step as f64, checksum])?;
    let (mean_step, mean_sum) = (mean.first().copied(), mean.get(1).copied());
    let same_step = mean_step.is_some_and(|m| (m - step as f64).abs() < 0.5);
    let same_weights =
        mean_sum.is_some_and(|m| (m - checksum).abs() <= 1e-5 * checksum.abs().max(1.0));
    if same_step && same_weights {
        return Ok(());
    }
    Err(TrainError::PeerFailed {
        peer: place.local,
        rank: place.rank,
        reason: format!(
            "the peers do not start from the same state: this one is at step {step} with weight \
             sum {checksum:.6e}, the mean over peers is step {:.2} and sum {:.6e} (every rank must \
             read the same checkpoints: share --out or copy it to every machine)",
            mean_step.unwrap_or(f64::NAN),
            mean_sum.unwrap_or(f64::NAN)
        ),
    })
}

/// The sum of every parameter value (a checksum of the replica).
fn weight_sum<B: AutodiffBackend, M: TrainModel<B>>(model: &M) -> f64 {
    struct Sum(f64);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Sum {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            self.0 += crate::step::scalar(param.val().sum());
        }
    }
    let mut sum = Sum(0.0);
    model.visit(&mut sum);
    sum.0
}

/// Redraws `loss.png`; a failure (e.g. a missing font) is a warning, given once, not the end of
/// the run.
fn plot(out: &Path, emit: &mut dyn FnMut(TrainEvent), warned: &mut bool) {
    let result = crate::plot::run_curves(out, "run")
        .and_then(|c| crate::plot::plot_curves(&[c], "loss", &out.join("loss.png")));
    if let Err(e) = result {
        if !*warned {
            emit(TrainEvent::Warning(format!("loss.png not written: {e}")));
            *warned = true;
        }
    }
}
