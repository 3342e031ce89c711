//! The worker that owns the model and the device: jobs come in through a queue, HTTP handlers
//! never run the model themselves. Generation jobs with equal options (but the seed: each row
//! draws from its own job's seed, greedy or sampled) queued together are decoded as one ragged
//! batch of up to `max_batch` rows, and where the batch decodes in blocks a compatible job that
//! arrives meanwhile joins it at its next block (continuous batching); each row is answered as
//! soon as its tokens are final; the rest run in arrival order. A job whose client went away (its
//! event channel closed) is skipped, and a batch whose clients have all gone is stopped at the
//! next step ([`StepControl::Stop`]). A panic inside a job is caught: its clients get a 500 and
//! the worker takes the next job. The worker counts what it does in [`Metrics`].

use mdm_kernels::Kernels;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use mdm_core::rng_from_seed;
use mdm_eval::likelihood::{
    causal_score, chain_rule_cfg, chain_rule_rows, greedy_suffix_matches_cfg, mc_elbo, McOptions,
};
use mdm_models::{CausalTransformer, MaskPredictor, MaskedTransformer, ModelError, ModelKind};
use mdm_samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
use mdm_samplers::proposal::Proposal;
use mdm_samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, StepControl, StepEvent};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ServeError};
use crate::metrics::Metrics;

/// The model the worker serves: a masked diffusion model of any network behind the seam
/// ([`MaskPredictor`]; by default the shared network of the SMDM, LLaDA and Dream families), or
/// the autoregressive baseline.
// one value for the server's lifetime: the variants' sizes do not matter
#[allow(clippy::large_enum_variant)]
pub enum Served<B: Backend, M = MaskedTransformer<B>> {
    /// A masked diffusion model.
    Masked(M),
    /// The autoregressive baseline.
    Causal(CausalTransformer<B>),
}

/// What the handlers know of the model without asking the worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// A masked model or the causal baseline (`masked` / `causal` in JSON).
    pub kind: ModelKind,
    /// The logit width: every token id must be below it.
    pub vocab_size: usize,
    /// Most positions of prompt and generation together.
    pub max_positions: usize,
    /// The mask token (masked models).
    pub mask_id: Option<usize>,
}

impl<B: Kernels, M: MaskPredictor<B>> Served<B, M> {
    fn info(&self) -> ModelInfo {
        match self {
            Self::Masked(m) => ModelInfo {
                kind: ModelKind::Masked,
                vocab_size: m.vocab_size(),
                max_positions: m.max_positions(),
                mask_id: Some(m.mask_id()),
            },
            Self::Causal(m) => ModelInfo {
                kind: ModelKind::Causal,
                vocab_size: m.config().padded_vocab_size(),
                // the last generated token is never fed back
                max_positions: m.config().block_size + 1,
                mask_id: None,
            },
        }
    }
}

/// Whether a job with these options may share a batch and get what it would alone. Every row of
/// the masked sampler draws from its own stream, seeded by its own job
/// ([`MaskedDiffusionSampler::with_row_seeds`]), so sampled decoding (temperature, random or
/// ancestral remasking, `alg_temp`) batches as well as greedy decoding; what must run alone is
/// counting over the whole batch (`joint_counting`, `mean_counting`), which makes a row depend
/// on the others. The baseline draws a batch's tokens from one stream: only its greedy decoding
/// batches.
fn batchable(kind: ModelKind, o: &DecodingOptions) -> bool {
    match kind {
        ModelKind::Masked => !o.joint_counting && !o.mean_counting,
        ModelKind::Causal => o.temperature == 0.0,
    }
}

/// Whether a job with options `b` may join a batch of `a`: the same options but the seed (one
/// decoding loop runs one set of options: its schedule, block length, rule and cache are the
/// batch's).
fn same_batch(a: &DecodingOptions, b: &DecodingOptions) -> bool {
    a == &DecodingOptions {
        seed: a.seed,
        ..b.clone()
    }
}

/// What a generation job reports to its handler.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// The generated tokens that are final so far: the revealed prefix up to the first position
    /// still masked (cut at EOS). Sent each time it grows.
    Final(Vec<usize>),
    /// One decoding step of the job's row (when asked: [`GenerateJob::steps`]).
    Step(Box<StepReport>),
    /// The generation is complete: its tokens (EOS excluded) and whether it ended at EOS.
    Done {
        /// The tokens.
        tokens: Vec<usize>,
        /// It stopped at EOS rather than at `max_tokens`.
        hit_eos: bool,
    },
    /// The generation failed.
    Failed(ApiError),
}

/// A position the step decided: where in the generation (0 = its first token), the token, and
/// the confidence the rule ranked it by (by default the token's probability).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Revealed {
    /// Position in the generation region.
    pub position: usize,
    /// The token now there.
    pub token: usize,
    /// Its confidence.
    pub confidence: f64,
}

/// One decoding step as one job's row saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Block index (0 without blocks).
    pub block: usize,
    /// Step within the block.
    pub step: usize,
    /// Steps of the run so far, this one included.
    pub steps_done: usize,
    /// Forward passes of the run so far (a step whose logits were reused costs none).
    pub forward_passes: usize,
    /// The generation region after the step, `mask_id` where still masked.
    pub region: Vec<usize>,
    /// Positions this step revealed.
    pub revealed: Vec<Revealed>,
    /// Decoded positions this step changed (token editing).
    pub edited: Vec<Revealed>,
}

/// A generation request for the worker.
#[derive(Debug)]
pub struct GenerateJob {
    /// Prompt ids (checked against the vocabulary and the positions by the handler).
    pub prompt: Vec<usize>,
    /// Options.
    /// How: `gen_length` the tokens to generate (0: none), `seed` and `eos_id` the job's. The
    /// baseline reads `gen_length`, `temperature`, `seed` and `eos_id` (the server refuses the
    /// others for it: [`DecodingOptions::masked_only_field`]).
    pub options: DecodingOptions,
    /// Send [`GenEvent::Step`] after every step.
    pub steps: bool,
    /// Where the events go; the job is cancelled when the receiver is dropped.
    pub events: mpsc::UnboundedSender<GenEvent>,
}

/// One position's log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// `log p(token)` at this position.
    pub logprob: f64,
    /// The `k` most likely tokens there, most likely first.
    pub top: Vec<(usize, f64)>,
}

/// Log-probabilities of the tokens of a sequence from position `from` on (at least 1), each given
/// the tokens before it (the masked model: everything after it masked, the chain rule; the
/// baseline: its next-token distribution, exact).
#[derive(Debug)]
pub struct LogprobJob {
    /// The sequence.
    pub tokens: Vec<usize>,
    /// The first position scored (positions before it are context only; 0 counts as 1).
    pub from: usize,
    /// Top-`k` alternatives per position.
    pub top: usize,
    /// The answer: one entry per position `from.max(1)..tokens.len()`.
    pub reply: oneshot::Sender<Result<Vec<TokenLogprob>, ApiError>>,
}

/// Which estimator scores a continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// The exact chain rule (one pass per continuation token for the MDM, one pass for the
    /// baseline).
    Chain,
    /// The Monte Carlo ELBO bound of `mc_num` samples from `seed` (MDMs).
    Mc {
        /// Samples.
        mc_num: usize,
        /// Seed of the draws.
        seed: u64,
    },
}

/// The log-likelihood of a continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// `log p(continuation | context)` (nats).
    pub loglikelihood: f64,
    /// Its standard error.
    pub stderr: f64,
    /// Greedy decoding reproduces the continuation.
    pub is_greedy: bool,
}

/// A `/v1/loglikelihood` request for the worker.
#[derive(Debug)]
pub struct LoglikelihoodJob {
    /// Context ids (at least one for the baseline).
    pub context: Vec<usize>,
    /// Continuation ids (at least one).
    pub continuation: Vec<usize>,
    /// The estimator.
    pub estimator: Estimator,
    /// Guidance (MDMs; 0 = off).
    pub cfg_scale: f64,
    /// The answer.
    pub reply: oneshot::Sender<Result<Scored, ApiError>>,
}

/// Work for the model's worker.
#[derive(Debug)]
pub enum Job {
    /// Generate (boxed: its options are large beside the other jobs).
    Generate(Box<GenerateJob>),
    /// Per-token log-probabilities.
    Logprobs(LogprobJob),
    /// Score a continuation.
    Loglikelihood(LoglikelihoodJob),
}

impl Job {
    fn cancelled(&self) -> bool {
        match self {
            Self::Generate(j) => j.events.is_closed(),
            Self::Logprobs(j) => j.reply.is_closed(),
            Self::Loglikelihood(j) => j.reply.is_closed(),
        }
    }

    fn fail(self, error: ApiError) {
        match self {
            Self::Generate(j) => {
                let _ = j.events.send(GenEvent::Failed(error));
            }
            Self::Logprobs(j) => {
                let _ = j.reply.send(Err(error));
            }
            Self::Loglikelihood(j) => {
                let _ = j.reply.send(Err(error));
            }
        }
    }
}

/// Limits of the worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Most rows decoded together.
    pub max_batch: usize,
    /// Most jobs waiting; one more is refused (429).
    pub max_queue: usize,
    /// How long the worker waits for more compatible jobs before it starts a batch that is not
    /// full (0: take what is queued now).
    pub batch_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_queue: 64,
            batch_wait: Duration::from_millis(2),
        }
    }
}

/// The worker's own tallies of batches (`GET /health` shows them; the rest of its counts are in
/// [`Metrics`]).
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicUsize,
    batched_rows: AtomicUsize,
    largest_batch: AtomicUsize,
}

/// A snapshot of the worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Jobs waiting now.
    pub queued: usize,
    /// Jobs taken by the worker.
    pub jobs: usize,
    /// Generation batches run (a job alone is a batch of one).
    pub batches: usize,
    /// Rows of those batches.
    pub batched_rows: usize,
    /// The largest batch so far.
    pub largest_batch: usize,
    /// Jobs dropped or stopped because their client went away.
    pub cancelled: usize,
    /// Jobs that panicked (answered 500).
    pub panics: usize,
}

/// The handle the HTTP side holds: submit jobs, read the model's facts and the counters. Cloning
/// shares the one worker; the worker ends when the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    info: Arc<ModelInfo>,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
}

impl Engine {
    /// Starts the worker thread, which builds the model with `load` (so the model and its device
    /// never leave that thread) and then serves jobs. Returns once the model is loaded.
    pub fn start<B, M, F>(load: F, config: EngineConfig) -> Result<Self, ServeError>
    where
        B: Kernels,
        M: MaskPredictor<B> + 'static,
        F: FnOnce() -> Result<Served<B, M>, ModelError> + Send + 'static,
    {
        if config.max_batch == 0 || config.max_queue == 0 {
            return Err(ServeError::Config(
                "max_batch and max_queue must be at least 1".into(),
            ));
        }
        let (jobs, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker_counters = Arc::clone(&counters);
        let metrics = Arc::new(Metrics::new());
        let worker_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("mdm-serve-worker".into())
            .spawn(move || {
                let model = match load() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServeError::Model(e)));
                        return;
                    }
                };
                if ready_tx.send(Ok(model.info())).is_err() {
                    return;
                }
                Worker {
                    model,
                    rx,
                    pending: VecDeque::new(),
                    config,
                    counters: worker_counters,
                    metrics: worker_metrics,
                }
                .run();
            })
            .map_err(|source| ServeError::Io {
                what: "starting the worker thread".into(),
                source,
            })?;
        let info = ready_rx
            .recv()
            .map_err(|_| ServeError::Worker("the worker thread ended".into()))??;
        Ok(Self {
            jobs,
            info: Arc::new(info),
            counters,
            metrics,
            config,
        })
    }

    /// Queues a job; a full queue is a 429, a stopped worker a 503.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let depth = &self.metrics.queue_depth;
        let queued = depth.inc();
        if queued >= self.config.max_queue as i64 {
            depth.dec();
            return Err(ApiError::queue_full(self.config.max_queue));
        }
        self.jobs.send(job).map_err(|_| {
            depth.dec();
            ApiError::unavailable()
        })
    }

    /// The model's facts.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The worker's limits.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let (c, m) = (&self.counters, &self.metrics);
        let get = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        Stats {
            queued: m.queue_depth.get().max(0) as usize,
            jobs: m.jobs.get() as usize,
            batches: get(&c.batches),
            batched_rows: get(&c.batched_rows),
            largest_batch: get(&c.largest_batch),
            cancelled: m.cancelled.get() as usize,
            panics: m.panics.get() as usize,
        }
    }

    /// The metrics the worker and the routes count (`GET /metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

struct Worker<B: Backend, M> {
    model: Served<B, M>,
    rx: Receiver<Job>,
    /// Jobs received but not yet run (received while gathering a batch).
    pending: VecDeque<Job>,
    config: EngineConfig,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
}

impl<B: Kernels, M: MaskPredictor<B>> Worker<B, M> {
    fn run(mut self) {
        while let Some(job) = self.next_job() {
            if job.cancelled() {
                self.metrics.cancelled.inc();
                continue;
            }
            match job {
                Job::Generate(first) => {
                    let batch = self.gather(*first);
                    self.run_batch(batch);
                }
                other => self.run_score(other),
            }
        }
    }

    /// The oldest job, waiting for one when none is pending; `None` once every handle is gone.
    fn next_job(&mut self) -> Option<Job> {
        if self.pending.is_empty() {
            let job = self.rx.recv().ok()?;
            self.pending.push_back(job);
        }
        while let Ok(job) = self.rx.try_recv() {
            self.pending.push_back(job);
        }
        let job = self.pending.pop_front()?;
        took_job(&self.metrics);
        Some(job)
    }

    /// `first` and the pending jobs that may share its batch (waiting up to `batch_wait` for more).
    fn gather(&mut self, first: GenerateJob) -> Vec<GenerateJob> {
        let mut batch = vec![first];
        if !batchable(self.model.info().kind, &batch[0].options) || self.config.max_batch == 1 {
            return batch;
        }
        let deadline = Instant::now() + self.config.batch_wait;
        loop {
            let room = self.config.max_batch - batch.len();
            let fitting = take_fitting(&mut self.pending, &batch[0].options, room, &self.metrics);
            batch.extend(fitting);
            let now = Instant::now();
            if batch.len() >= self.config.max_batch || now >= deadline {
                return batch;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(job) => self.pending.push_back(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return batch,
            }
        }
    }

    fn run_batch(&mut self, batch: Vec<GenerateJob>) {
        let started = Instant::now();
        let counters = &self.counters;
        counters.batches.fetch_add(1, Ordering::SeqCst);
        // counted as rows join (a row may be answered before the batch ends)
        let mut rows = batch.len();
        counters.batched_rows.fetch_add(rows, Ordering::SeqCst);
        counters.largest_batch.fetch_max(rows, Ordering::SeqCst);
        let batch = RefCell::new(BatchJobs::new(batch));
        let (rx, pending, metrics) = (&self.rx, &mut self.pending, &self.metrics);
        // the jobs waiting now that may join the running batch at its next block: none while a
        // job it cannot take waits (that one runs next, after this batch)
        let mut take = |options: &DecodingOptions, room: usize| -> Vec<GenerateJob> {
            while let Ok(job) = rx.try_recv() {
                pending.push_back(job);
            }
            let fits = |j: &Job| matches!(j, Job::Generate(g) if same_batch(options, &g.options));
            if !pending.iter().all(fits) {
                return Vec::new();
            }
            let taken = take_fitting(pending, options, room, metrics);
            rows += taken.len();
            counters
                .batched_rows
                .fetch_add(taken.len(), Ordering::SeqCst);
            counters.largest_batch.fetch_max(rows, Ordering::SeqCst);
            taken
        };
        let max_batch = self.config.max_batch;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            generate(&self.model, &batch, metrics, max_batch, &mut take)
        }));
        let outcome = match outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                self.metrics.panics.inc();
                Err(ApiError::internal(format!(
                    "the generation panicked: {}",
                    panic_text(&panic)
                )))
            }
        };
        self.metrics
            .generation_seconds
            .observe(started.elapsed().as_secs_f64());
        let batch = batch.into_inner();
        let rows = batch.jobs.len();
        self.metrics.batch_rows.observe(rows as f64);
        let gone = (0..rows)
            .filter(|&i| !batch.answered[i] && batch.jobs[i].events.is_closed())
            .count();
        self.metrics.cancelled.inc_by(gone as u64);
        let waiting = batch.jobs.iter().zip(&batch.answered);
        match outcome {
            Ok(results) => {
                for ((job, &answered), (tokens, hit_eos)) in waiting.zip(results) {
                    if !answered {
                        self.metrics.generated_tokens.inc_by(tokens.len() as u64);
                        let _ = job.events.send(GenEvent::Done { tokens, hit_eos });
                    }
                }
            }
            Err(e) => {
                for (job, &answered) in waiting {
                    if !answered {
                        let _ = job.events.send(GenEvent::Failed(e.clone()));
                    }
                }
            }
        }
    }

    fn run_score(&mut self, job: Job) {
        let model = &self.model;
        let outcome = catch_unwind(AssertUnwindSafe(|| match &job {
            Job::Logprobs(j) => logprobs(model, &j.tokens, j.from, j.top).map(Answer::Logprobs),
            Job::Loglikelihood(j) => score(model, j).map(Answer::Scored),
            Job::Generate(_) => Err(ApiError::internal("a generation job in the scorer")),
        }));
        let outcome = outcome.unwrap_or_else(|panic| {
            self.metrics.panics.inc();
            Err(ApiError::internal(format!(
                "the request panicked: {}",
                panic_text(&panic)
            )))
        });
        match (job, outcome) {
            (Job::Logprobs(j), Ok(Answer::Logprobs(lp))) => {
                let _ = j.reply.send(Ok(lp));
            }
            (Job::Loglikelihood(j), Ok(Answer::Scored(s))) => {
                let _ = j.reply.send(Ok(s));
            }
            (job, Err(e)) => job.fail(e),
            (job, Ok(_)) => job.fail(ApiError::internal("mismatched answer")),
        }
    }
}

/// A job left the queue for the worker.
fn took_job(metrics: &Metrics) {
    metrics.queue_depth.dec();
    metrics.jobs.inc();
}

/// Up to `room` pending generation jobs that may share a batch of `options`, taken out of
/// `pending` in arrival order (a job whose client has gone is dropped and counted).
fn take_fitting(
    pending: &mut VecDeque<Job>,
    options: &DecodingOptions,
    room: usize,
    metrics: &Metrics,
) -> Vec<GenerateJob> {
    let mut taken = Vec::new();
    let mut i = 0;
    while i < pending.len() && taken.len() < room {
        let fits = matches!(&pending[i], Job::Generate(j) if same_batch(options, &j.options));
        if !fits {
            i += 1;
            continue;
        }
        if let Some(Job::Generate(j)) = pending.remove(i) {
            took_job(metrics);
            if j.events.is_closed() {
                metrics.cancelled.inc();
            } else {
                taken.push(*j);
            }
        }
    }
    taken
}

enum Answer {
    Logprobs(Vec<TokenLogprob>),
    Scored(Scored),
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into())
}

fn sampler_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("generation failed: {e}"))
}

/// A generation batch while it runs: its jobs (more join at block boundaries) and which of them
/// have had their answer (a row is answered as soon as its tokens are final).
struct BatchJobs {
    jobs: Vec<GenerateJob>,
    answered: Vec<bool>,
}

impl BatchJobs {
    fn new(jobs: Vec<GenerateJob>) -> Self {
        let answered = vec![false; jobs.len()];
        Self { jobs, answered }
    }

    /// Rows still decoding for a client.
    fn running(&self) -> usize {
        self.answered.iter().filter(|a| !**a).count()
    }
}

/// Whether more requests may join a running batch of these options at its next block (the
/// decoding loop's continuous batching, [`MaskedDiffusionSampler::generate_joined`]): a masked
/// model's batchable decoding without block diffusion (whose canvas counts blocks from position
/// 0) and without the prefix cache (whose passes run from each row's block to its end, one width
/// for the batch). Elsewhere a request that arrives while a batch runs waits for the next one.
fn joinable(o: &DecodingOptions) -> bool {
    batchable(ModelKind::Masked, o) && !o.block_causal && o.cache != CacheMode::Prefix
}

/// Runs one batch (all with the options of the first job, each row with its own job's seed);
/// where the options allow, jobs that `take(options, room)` gives join it at block boundaries,
/// up to `max_batch` rows decoding at once. Returns every job's tokens and whether it ended at
/// EOS, in the order of `batch`'s jobs at the end.
fn generate<B: Kernels, M: MaskPredictor<B>>(
    model: &Served<B, M>,
    batch: &RefCell<BatchJobs>,
    metrics: &Metrics,
    max_batch: usize,
    take: &mut dyn FnMut(&DecodingOptions, usize) -> Vec<GenerateJob>,
) -> Result<Vec<(Vec<usize>, bool)>, ApiError> {
    let (options, prompts, seeds) = {
        let b = batch.borrow();
        let prompts: Vec<Vec<usize>> = b.jobs.iter().map(|j| j.prompt.clone()).collect();
        let seeds: Vec<u64> = b.jobs.iter().map(|j| j.options.seed).collect();
        (b.jobs[0].options.clone(), prompts, seeds)
    };
    if options.gen_length == 0 {
        return Ok(prompts.iter().map(|_| (Vec::new(), false)).collect());
    }
    let ended = |tokens: Vec<usize>| {
        let hit_eos = tokens.len() < options.gen_length;
        (tokens, hit_eos)
    };
    match model {
        Served::Masked(m) => {
            let sampler = MaskedDiffusionSampler::new(m, options.clone()).with_row_seeds(seeds);
            let mut progress = Progress {
                mask_id: m.mask_id(),
                sent: Vec::new(),
                start: Vec::new(),
                steps: 0,
                passes: 0,
                last: Instant::now(),
            };
            let on_step =
                |event: &StepEvent| progress.report(&mut batch.borrow_mut(), event, metrics);
            let rows = if joinable(&options) && max_batch > 1 {
                sampler.generate_joined(&prompts, on_step, |_| {
                    let mut b = batch.borrow_mut();
                    let room = max_batch.saturating_sub(b.running());
                    let joined = if room > 0 {
                        take(&options, room)
                    } else {
                        Vec::new()
                    };
                    let rows = joined
                        .iter()
                        .map(|j| (j.prompt.clone(), j.options.seed))
                        .collect();
                    b.answered.extend(joined.iter().map(|_| false));
                    b.jobs.extend(joined);
                    rows
                })
            } else {
                sampler.generate(&prompts, on_step)
            };
            Ok(rows
                .map_err(sampler_error)?
                .into_iter()
                .map(ended)
                .collect())
        }
        Served::Causal(m) => {
            let config = AutoregressiveConfig {
                max_new_tokens: options.gen_length,
                temperature: options.temperature,
                eos_id: options.eos_id,
                seed: options.seed,
            };
            let rows = generate_autoregressive(m, &prompts, &config).map_err(sampler_error)?;
            Ok(rows.into_iter().map(ended).collect())
        }
    }
}

/// What a batch's jobs have been told so far.
struct Progress {
    mask_id: usize,
    /// Final tokens sent, per job.
    sent: Vec<usize>,
    /// The run's block, steps and passes before each job's first step (0 but for jobs that
    /// joined the running batch): a job's step events count from its own start.
    start: Vec<(usize, usize, usize)>,
    steps: usize,
    passes: usize,
    /// When the last step ended (the run's start before the first).
    last: Instant,
}

impl Progress {
    /// After a step: the metrics count it; each live job gets its newly final tokens (and the
    /// step when asked), and its answer once its tokens are final (the prefix up to its first
    /// mask is whole or ends at EOS: revealed tokens never change again); the run stops once
    /// every job is answered or its client gone.
    fn report(
        &mut self,
        batch: &mut BatchJobs,
        event: &StepEvent,
        metrics: &Metrics,
    ) -> StepControl {
        let now = Instant::now();
        metrics
            .step_seconds
            .observe((now - self.last).as_secs_f64());
        self.last = now;
        let jobs = batch.jobs.len();
        self.sent.resize(jobs, 0);
        self.start
            .resize(jobs, (event.block, self.steps, self.passes));
        self.steps += 1;
        if event.cost.forward_rows > 0 {
            self.passes += 1;
            metrics.forward_passes.inc();
        }
        let mut live = 0;
        for (i, job) in batch.jobs.iter().enumerate() {
            if batch.answered[i] || job.events.is_closed() {
                continue;
            }
            live += 1;
            let (start, length) = (job.prompt.len(), job.options.gen_length);
            let row = &event.tokens[i];
            // block diffusion's canvas may hold whole blocks past the generation
            let gen = &row[start.min(row.len())..(start + length).min(row.len())];
            let end = gen
                .iter()
                .position(|&t| t == self.mask_id || Some(t) == job.options.eos_id)
                .unwrap_or(gen.len());
            if end > self.sent[i] {
                self.sent[i] = end;
                let _ = job.events.send(GenEvent::Final(gen[..end].to_vec()));
            }
            if job.steps {
                let _ = job.events.send(GenEvent::Step(Box::new(
                    self.step_report(i, event, gen, start),
                )));
            }
            // editing (LLaDA2.1) may still change revealed tokens: answered at the end
            let edits = job.options.edit_threshold.is_some();
            if !edits && (end == gen.len() || Some(gen[end]) == job.options.eos_id) {
                batch.answered[i] = true;
                metrics.generated_tokens.inc_by(end as u64);
                let _ = job.events.send(GenEvent::Done {
                    tokens: gen[..end].to_vec(),
                    hit_eos: end < length,
                });
            }
        }
        if live == 0 {
            StepControl::Stop
        } else {
            StepControl::Continue
        }
    }

    /// Job `i`'s view of a step: its region `gen` starting at `start` in its row.
    fn step_report(&self, i: usize, event: &StepEvent, gen: &[usize], start: usize) -> StepReport {
        let of_row = |list: &[Proposal]| -> Vec<Revealed> {
            list.iter()
                .filter(|p| p.slot.row == i && (start..start + gen.len()).contains(&p.slot.pos))
                .map(|p| Revealed {
                    position: p.slot.pos - start,
                    token: p.token,
                    confidence: p.confidence,
                })
                .collect()
        };
        let (block, steps, passes) = self.start[i];
        StepReport {
            block: event.block - block,
            step: event.step,
            steps_done: self.steps - steps,
            forward_passes: self.passes - passes,
            region: gen.to_vec(),
            revealed: of_row(event.revealed),
            edited: of_row(event.edited),
        }
    }
}

/// Rows of the chain rule per forward pass when scoring a sequence.
const LOGPROB_ROWS: usize = 32;

fn model_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the model failed: {e}"))
}

/// See [`LogprobJob`].
fn logprobs<B: Kernels, M: MaskPredictor<B>>(
    model: &Served<B, M>,
    tokens: &[usize],
    from: usize,
    top: usize,
) -> Result<Vec<TokenLogprob>, ApiError> {
    let n = tokens.len();
    let from = from.max(1);
    if from >= n {
        return Ok(Vec::new());
    }
    match model {
        Served::Masked(m) => {
            let device = m.device();
            // row k: tokens[..from + k], masks after it, scored at position from + k
            let rows = chain_rule_rows(&tokens[..from], &tokens[from..], m.mask_id());
            let mut out = Vec::with_capacity(n - from);
            for (c, chunk) in rows.chunks(LOGPROB_ROWS).enumerate() {
                let first = from + c * LOGPROB_ROWS;
                let index: Vec<i64> = (0..chunk.len())
                    .map(|r| (r * n + first + r) as i64)
                    .collect();
                let index =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(index, [chunk.len()]), &device);
                let ids = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(chunk.concat(), [chunk.len(), n]),
                    &device,
                );
                let logits = m.logits_at(ids, None, index).map_err(model_error)?;
                out.extend(read_logprobs(
                    logits,
                    &tokens[first..first + chunk.len()],
                    top,
                )?);
            }
            Ok(out)
        }
        Served::Causal(m) => {
            let device = m.net.device();
            let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
            let logits = m.forward(ids).map_err(model_error)?;
            let v = logits.dims()[2];
            // position i - 1 predicts token i
            let logits = logits.narrow(1, from - 1, n - from).reshape([n - from, v]);
            read_logprobs(logits, &tokens[from..], top)
        }
    }
}

/// Log-softmax of `logits` `[rows, V]`, read back: each row's target and its top `k`.
fn read_logprobs<B: Kernels>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    top: usize,
) -> Result<Vec<TokenLogprob>, ApiError> {
    let v = logits.dims()[1];
    let values = log_softmax(logits, 1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| model_error(format!("{e:?}")))?;
    Ok(values
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| {
            let mut best: Vec<usize> = (0..v).collect();
            let k = top.min(v);
            if k > 0 {
                best.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            }
            best.truncate(k);
            best.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            TokenLogprob {
                logprob: f64::from(row[t]),
                top: best.into_iter().map(|i| (i, f64::from(row[i]))).collect(),
            }
        })
        .collect())
}

/// See [`LoglikelihoodJob`].
fn score<B: Kernels, M: MaskPredictor<B>>(
    model: &Served<B, M>,
    job: &LoglikelihoodJob,
) -> Result<Scored, ApiError> {
    let eval = |e: mdm_eval::EvalError| ApiError::invalid("continuation", e.to_string());
    match model {
        Served::Masked(m) => {
            let (nll, stderr) = match job.estimator {
                Estimator::Chain => {
                    let est = chain_rule_cfg(m, &job.context, &job.continuation, job.cfg_scale)
                        .map_err(eval)?;
                    (est.nll, est.stderr)
                }
                Estimator::Mc { mc_num, seed } => {
                    let mut options = McOptions::default().with_mc_num(mc_num);
                    if job.cfg_scale != 0.0 {
                        options = options.with_cfg_scale(job.cfg_scale);
                    }
                    let mut rng = rng_from_seed(seed);
                    let est = mc_elbo(m, &job.context, &job.continuation, options, &mut rng)
                        .map_err(eval)?;
                    (est.nll, est.stderr)
                }
            };
            let is_greedy =
                greedy_suffix_matches_cfg(m, &job.context, &job.continuation, job.cfg_scale)
                    .map_err(eval)?;
            Ok(Scored {
                loglikelihood: -nll,
                stderr,
                is_greedy,
            })
        }
        Served::Causal(m) => {
            let (est, is_greedy) =
                causal_score(m, &job.context, &job.continuation).map_err(eval)?;
            Ok(Scored {
                loglikelihood: -est.nll,
                stderr: 0.0,
                is_greedy,
            })
        }
    }
}
