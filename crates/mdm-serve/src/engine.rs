//! The worker that owns the model and the device: jobs come in through a queue, HTTP handlers
//! never run the model themselves. Generation jobs with equal options (but the seed: each row
//! draws from its own job's seed, greedy or sampled) queued together are decoded as one ragged
//! batch of up to `max_batch` rows, and where the batch decodes in blocks a compatible job that
//! arrives meanwhile joins it at its next block (continuous batching); each row is answered as
//! soon as its tokens are final; the rest run in arrival order. A job whose client went away (its
//! event channel closed) is skipped, and a batch whose clients have all gone is stopped at the
//! next step ([`StepControl::Stop`]). A panic inside a job is caught: its clients get a 500 and
//! the worker takes the next job. The worker counts what it does in [`Metrics`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Tensor};
use mdm_eval::likelihood::McOptions;
use mdm_eval::{LanguageModel, Run, Scoring};
use mdm_models::{ModelError, ModelKind};
use mdm_samplers::proposal::Proposal;
use mdm_samplers::{DecodingOptions, StepControl, StepEvent};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ServeError};
use crate::metrics::Metrics;

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

impl ModelInfo {
    fn of<B: Backend, L: LanguageModel<B> + ?Sized>(model: &L) -> Self {
        Self {
            kind: model.kind(),
            vocab_size: model.vocab_size(),
            max_positions: model.max_sequence(),
            mask_id: model.mask_id(),
        }
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
    pub fn start<B, L, F>(load: F, config: EngineConfig) -> Result<Self, ServeError>
    where
        B: Backend,
        L: LanguageModel<B> + 'static,
        F: FnOnce() -> Result<L, ModelError> + Send + 'static,
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
                if ready_tx.send(Ok(ModelInfo::of(&model))).is_err() {
                    return;
                }
                Worker {
                    model,
                    backend: PhantomData,
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

struct Worker<B: Backend, L> {
    model: L,
    backend: PhantomData<B>,
    rx: Receiver<Job>,
    /// Jobs received but not yet run (received while gathering a batch).
    pending: VecDeque<Job>,
    config: EngineConfig,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
}

impl<B: Backend, L: LanguageModel<B>> Worker<B, L> {
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
        if !self.model.batchable(&batch[0].options) || self.config.max_batch == 1 {
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

/// Runs one batch (all with the options of the first job, each row with its own job's seed);
/// where the options allow, jobs that `take(options, room)` gives join it at block boundaries,
/// up to `max_batch` rows decoding at once. Returns every job's tokens and whether it ended at
/// EOS, in the order of `batch`'s jobs at the end.
fn generate<B: Backend, L: LanguageModel<B>>(
    model: &L,
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
    let mut progress = Progress {
        mask_id: model.mask_id(),
        sent: Vec::new(),
        start: Vec::new(),
        steps: 0,
        passes: 0,
        last: Instant::now(),
    };
    let mut on_step = |event: &StepEvent| progress.report(&mut batch.borrow_mut(), event, metrics);
    // more requests join a running batch at its next block where the model's decoding allows
    // (continuous batching); elsewhere a request that arrives while a batch runs waits
    let mut join = |_block: usize| {
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
    };
    let joins = model.joinable(&options) && max_batch > 1;
    let run = Run {
        seeds: Some(seeds),
        on_step: Some(&mut on_step),
        join: if joins { Some(&mut join) } else { None },
    };
    let out = model
        .generate(&prompts, &options, run)
        .map_err(sampler_error)?;
    Ok(out
        .rows
        .into_iter()
        .map(|tokens| {
            let hit_eos = tokens.len() < options.gen_length;
            (tokens, hit_eos)
        })
        .collect())
}

/// What a batch's jobs have been told so far.
struct Progress {
    /// The mask token (masked models; the baseline reports no steps).
    mask_id: Option<usize>,
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
                .position(|&t| Some(t) == self.mask_id || Some(t) == job.options.eos_id)
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

fn model_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the model failed: {e}"))
}

/// See [`LogprobJob`].
fn logprobs<B: Backend, L: LanguageModel<B>>(
    model: &L,
    tokens: &[usize],
    from: usize,
    top: usize,
) -> Result<Vec<TokenLogprob>, ApiError> {
    let from = from.max(1);
    let mut out = Vec::new();
    for logits in model.predictions(tokens, from).map_err(model_error)? {
        let first = from + out.len();
        let rows = logits.dims()[0];
        out.extend(read_logprobs(logits, &tokens[first..first + rows], top)?);
    }
    Ok(out)
}

/// Log-softmax of `logits` `[rows, V]`, read back: each row's target and its top `k`.
fn read_logprobs<B: Backend>(
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
fn score<B: Backend, L: LanguageModel<B>>(
    model: &L,
    job: &LoglikelihoodJob,
) -> Result<Scored, ApiError> {
    let eval = |e: mdm_eval::EvalError| ApiError::invalid("continuation", e.to_string());
    let scoring = match job.estimator {
        Estimator::Chain => Scoring::ChainRule,
        Estimator::Mc { mc_num, seed } => Scoring::MonteCarlo {
            options: McOptions::default().with_mc_num(mc_num),
            seed,
        },
    };
    let score = model
        .score(
            &job.context,
            &job.continuation,
            &scoring,
            job.cfg_scale,
            true,
        )
        .map_err(eval)?;
    Ok(Scored {
        loglikelihood: -score.nll,
        stderr: score.stderr,
        is_greedy: score.is_greedy.unwrap_or(false),
    })
}
