//! The HTTP side: axum routes, the API key check, the body limit, JSON errors for every
//! rejection, and the handlers that turn OpenAI requests into jobs for the [`Engine`] and its
//! events into responses or server-sent events.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use mdm_data::chat::{ChatPrompt, Message};
use mdm_data::Tokenizer;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::*;
use crate::engine::{
    Engine, Estimator, GenEvent, GenerateJob, Job, LoglikelihoodJob, LogprobJob, Revealed,
    StepReport, TokenLogprob,
};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::text::{find_stop, Detokenizer, StreamedText};
use mdm_models::ModelKind;
use mdm_samplers::DecodingOptions;

/// Settings of the HTTP side.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The name clients use in `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Every request but `/health` must carry `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// The largest `max_tokens` a request may ask.
    pub max_tokens: usize,
    /// The largest `n`.
    pub max_choices: usize,
    /// The largest request body, bytes (413 above).
    pub max_body: usize,
    /// A request still running after this long is answered 504 (its generation cancelled).
    pub request_timeout: Duration,
    /// A client must send a request's headers within this long (from its connection's start or
    /// the end of its previous response), else the connection is closed.
    pub header_timeout: Duration,
    /// ... and its body within this long, else it is answered 408.
    pub body_timeout: Duration,
    /// Most connections served at once: more wait, unaccepted, in the system's listen queue
    /// (so that slow or idle clients cannot use up the process's open files; the default, 1,000,
    /// stays under the common limit of 1,024; the `mdm-serve` binary raises the limit and takes
    /// up to 4,096).
    pub max_connections: usize,
    /// After a shutdown signal (every new request is then answered 503 with `Retry-After`): the
    /// longest the running requests may take to finish before they are cancelled.
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_name: "mdm".into(),
            api_key: None,
            max_tokens: 1024,
            max_choices: 8,
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1000,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a handler needs.
pub struct AppState {
    engine: Engine,
    tokenizer: Option<Arc<Tokenizer>>,
    detok: Detokenizer,
    chat: ChatPrompt,
    config: ServerConfig,
    created: u64,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// A shutdown signal came: new requests are refused.
    draining: AtomicBool,
}

impl AppState {
    /// The state of a server over `engine`; `tokenizer` turns text into ids (without one, prompts
    /// must be token ids and texts are ids separated by spaces); `chat` renders chat requests.
    pub fn new(
        engine: Engine,
        tokenizer: Option<Tokenizer>,
        chat: ChatPrompt,
        config: ServerConfig,
    ) -> Arc<Self> {
        let tokenizer = tokenizer.map(Arc::new);
        let engine_metrics = engine.metrics();
        let engine_metrics = &Arc::clone(engine_metrics);
        Arc::new(Self {
            engine,
            detok: Detokenizer::new(tokenizer.clone()),
            tokenizer,
            chat,
            config,
            created: unix_now(),
            next_id: AtomicU64::new(0),
            metrics: Arc::clone(engine_metrics),
            draining: AtomicBool::new(false),
        })
    }

    /// The metrics of the server and its worker.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A 504 for a request past its time, counted.
    fn timed_out(&self) -> ApiError {
        self.metrics.timeouts.inc();
        ApiError::timeout(self.config.request_timeout.as_secs_f64())
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::SeqCst))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes, with the API key check, the body limit, panics answered as 500s, every request
/// counted in the metrics, and every request refused (503) once the server drains.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body;
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/loglikelihood", post(loglikelihood))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the request handler panicked").into_response()
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_when_draining,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains: new requests are answered 503 with
/// `Retry-After`, the running ones may finish for up to
/// [`ServerConfig::shutdown_timeout`], and what is still running then is cancelled (its
/// connection dropped, which cancels its generation). Connections are served by hyper with the
/// header timeout and under the connection cap of the [`ServerConfig`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Stopped> {
    let app = router(state.clone());
    let permits = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // serving
    loop {
        tokio::select! {
            conn = accept(&listener, &permits) => {
                let (stream, permit) = conn;
                let conn = connection(&state, app.clone(), stream);
                spawn_connection(&state, graceful.watch(conn), permit);
            }
            () = &mut shutdown => break,
        }
    }
    // draining: the connections open now end after their running requests; new ones are
    // answered 503
    state.draining.store(true, Ordering::SeqCst);
    let drained = tokio::time::timeout(state.config.shutdown_timeout, graceful.shutdown());
    let mut drained = std::pin::pin!(drained);
    loop {
        tokio::select! {
            conn = accept(&listener, &permits) => {
                let (stream, permit) = conn;
                spawn_connection(&state, connection(&state, app.clone(), stream), permit);
            }
            drained = &mut drained => {
                return Ok(match drained {
                    Ok(()) => Stopped::Drained,
                    Err(_) => Stopped::Cancelled {
                        connections: state.metrics.open_connections.get().max(0) as usize,
                    },
                })
            }
        }
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every request running at the shutdown signal finished.
    Drained,
    /// The shutdown timeout passed first: these connections were still open (their requests are
    /// cancelled as the server's runtime ends).
    Cancelled {
        /// Connections open at the end (those accepted while draining included).
        connections: usize,
    },
}

/// The next connection, once the cap lets one more in. Accepting fails only for reasons of the
/// moment (out of open files, a connection reset before it was taken): it is tried again.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            // the semaphore is never closed
            std::future::pending::<()>().await;
            continue;
        };
        match listener.accept().await {
            Ok((stream, _)) => return (stream, permit),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

type Connection =
    hyper::server::conn::http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>>;

/// One HTTP/1 connection, its headers due within the header timeout.
fn connection(state: &AppState, app: Router, stream: TcpStream) -> Connection {
    let _ = stream.set_nodelay(true);
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
}

/// Runs a connection to its end, counted as open meanwhile, its permit held.
fn spawn_connection<F>(state: &AppState, conn: F, permit: OwnedSemaphorePermit)
where
    F: Future + Send + 'static,
{
    let metrics = Arc::clone(&state.metrics);
    metrics.open_connections.inc();
    tokio::spawn(async move {
        let _ = conn.await;
        metrics.open_connections.dec();
        drop(permit);
    });
}

/// Every request's endpoint, status and time into the metrics.
async fn count_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .observe_request(&endpoint, response.status().as_u16(), started.elapsed());
    response
}

/// Once draining, every request but a scrape of `/metrics` is answered 503 with `Retry-After`.
async fn refuse_when_draining(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.draining.load(Ordering::SeqCst) && req.uri().path() != "/metrics" {
        state.metrics.draining_refusals.inc();
        let retry = state.config.shutdown_timeout.as_secs().max(1);
        return ApiError::draining(retry).into_response();
    }
    next.run(req).await
}

/// The playground: a page that sends requests to this server's API and shows the canvas
/// unmasking step by step (no build step, no outside resources: it ships inside the binary).
async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// Prometheus' scrape.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// A JSON body read with errors in OpenAI's shape: 413 over the limit, 400 for text that is not
/// JSON.
pub struct JsonBody(pub serde_json::Value);

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body;
        let read = tokio::time::timeout(state.config.body_timeout, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| ApiError::slow_body(state.config.body_timeout.as_secs_f64()))?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(limit)
                } else {
                    ApiError::bad_body(format!("the request body could not be read: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_body(format!("the request body is not JSON: {e}")))
    }
}

/// The request type `T` read from the body, the field at fault named.
fn fields<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = format!("the request is not valid: {inner}");
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        match (path.as_str(), missing) {
            (".", Some(field)) => ApiError::invalid(field, message),
            (".", None) => ApiError::bad_body(message),
            (_, Some(field)) => ApiError::invalid(format!("{path}.{field}"), message),
            _ => ApiError::invalid(path, message),
        }
    })
}

/// A step of one choice as its server-sent event (docs/serving.md, "Every step").
fn step_event(
    state: &AppState,
    id: &str,
    index: usize,
    report: &StepReport,
    mask_id: usize,
) -> serde_json::Value {
    let piece = |t: usize| state.detok.decode(&[t]);
    let positions = |list: &[Revealed]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|r| {
                json!({"position": r.position, "token": r.token, "text": piece(r.token),
                    "confidence": r.confidence})
            })
            .collect()
    };
    let tokens: Vec<Option<usize>> = report
        .region
        .iter()
        .map(|&t| (t != mask_id).then_some(t))
        .collect();
    let pieces: Vec<Option<String>> = tokens.iter().map(|t| t.map(piece)).collect();
    json!({
        "id": id,
        "object": "diffusion.step",
        "index": index,
        "block": report.block,
        "step": report.step,
        "steps_done": report.steps_done,
        "forward_passes": report.forward_passes,
        "masked": tokens.iter().filter(|t| t.is_none()).count(),
        "canvas": state.detok.canvas(&report.region, mask_id),
        "tokens": tokens,
        "pieces": pieces,
        "revealed": positions(&report.revealed),
        "edited": positions(&report.edited),
    })
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "model": state.config.model_name,
        "info": state.engine.info(),
        "stats": state.engine.stats(),
    }))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let info = state.engine.info();
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.config.model_name.clone(),
            object: "model".into(),
            created: state.created,
            owned_by: "mdm-rs".into(),
            kind: match info.kind {
                ModelKind::Masked => "masked".into(),
                ModelKind::Causal => "causal".into(),
            },
            max_positions: info.max_positions,
            vocab_size: info.vocab_size,
        }],
    })
}

fn check_model(state: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if *m != state.config.model_name => {
            Err(ApiError::unknown_model(m, &state.config.model_name))
        }
        _ => Ok(()),
    }
}

/// Text to ids: the document start first (BOS, or our tokenizers' EOS separator), as the models
/// saw every document in training.
fn encode_text(state: &AppState, text: &str, param: &str) -> Result<Vec<usize>, ApiError> {
    let tok = state.tokenizer.as_ref().ok_or_else(|| {
        ApiError::invalid(
            param,
            "this server has no tokenizer: send token ids (start it with --tokenizer)",
        )
    })?;
    let ids = tok
        .encode(text, false)
        .map_err(|e| ApiError::invalid(param, format!("the text could not be encoded: {e}")))?;
    let start = tok.document_start();
    let mut out = Vec::with_capacity(ids.len() + 1);
    if ids.first() != Some(&start) {
        out.push(start as usize);
    }
    out.extend(ids.into_iter().map(|t| t as usize));
    check_ids(state, &out, param)?;
    Ok(out)
}

fn check_ids(state: &AppState, ids: &[usize], param: &str) -> Result<(), ApiError> {
    let vocab = state.engine.info().vocab_size;
    match ids.iter().position(|&t| t >= vocab) {
        Some(i) => Err(ApiError::invalid(
            format!("{param}[{i}]"),
            format!(
                "token id {} is outside the model's vocabulary 0..{vocab} (the tokenizer is larger than the model)",
                ids[i]
            ),
        )),
        None => Ok(()),
    }
}

fn prompts_of(state: &AppState, prompt: &PromptInput) -> Result<Vec<Vec<usize>>, ApiError> {
    let vocab = state.engine.info().vocab_size;
    let prompts = match prompt {
        PromptInput::Text(t) => vec![encode_text(state, t, "prompt")?],
        PromptInput::Texts(ts) => ts
            .iter()
            .enumerate()
            .map(|(i, t)| encode_text(state, t, &format!("prompt[{i}]")))
            .collect::<Result<_, _>>()?,
        PromptInput::Ids(ids) => vec![id_list(ids, "prompt", vocab)?],
        PromptInput::IdLists(lists) => lists
            .iter()
            .enumerate()
            .map(|(i, ids)| id_list(ids, &format!("prompt[{i}]"), vocab))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt list is empty"));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        let param = if prompts.len() == 1 {
            "prompt".to_string()
        } else {
            format!("prompt[{i}]")
        };
        return Err(ApiError::invalid(param, "the prompt has no tokens"));
    }
    Ok(prompts)
}

/// What a generating request asks, checked.
struct Plan {
    options: DecodingOptions,
    n: usize,
    stops: Vec<String>,
    stream: bool,
    steps: bool,
}

fn plan(
    state: &AppState,
    f: &SamplerFields,
    mut decoding: DecodingOptions,
    body: &serde_json::Value,
    max_tokens: Option<i64>,
    default_max_tokens: usize,
) -> Result<Plan, ApiError> {
    let info = state.engine.info();
    let limit = state.config.max_tokens;
    let max_tokens = match max_tokens {
        Some(v) => count_field(v, "max_tokens", limit)?,
        None => default_max_tokens.min(limit),
    };
    if body.get("gen_length").is_some() {
        return Err(ApiError::invalid(
            "gen_length",
            "the number of tokens to generate is `max_tokens` here",
        ));
    }
    for (name, v) in [
        ("presence_penalty", f.presence_penalty),
        ("frequency_penalty", f.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported: only 0"),
            ));
        }
    }
    let n = match f.n {
        Some(v) => count_field(v, "n", state.config.max_choices)?,
        None => 1,
    };
    if n == 0 {
        return Err(ApiError::invalid("n", "`n` must be at least 1"));
    }
    let stops = match &f.stop {
        Some(s) => s.strings()?,
        None => Vec::new(),
    };
    decoding.gen_length = max_tokens.max(1);
    if decoding.eos_id.is_none() {
        decoding.eos_id = state.tokenizer.as_ref().map(|t| t.eos_id() as usize);
    }
    // the one check of the options, its error naming the field
    decoding
        .validate_for(info.vocab_size)
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    if info.kind == ModelKind::Causal {
        // the baseline takes the temperature, the seed and EOS: any other option is refused
        if let Some(field) = decoding.masked_only_field() {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` is an option of masked diffusion models; this server serves the autoregressive baseline"),
            ));
        }
        if f.stream_steps {
            return Err(ApiError::invalid(
                "stream_steps",
                "`stream_steps` shows a masked model's decoding steps; this server serves the autoregressive baseline",
            ));
        }
    }
    // validated as one token at least; `max_tokens: 0` then generates nothing
    decoding.gen_length = max_tokens;
    Ok(Plan {
        options: decoding,
        n,
        stops,
        stream: f.stream,
        steps: f.stream_steps,
    })
}

fn check_length(
    state: &AppState,
    prompt: &[usize],
    max_tokens: usize,
    param: &str,
) -> Result<(), ApiError> {
    let max = state.engine.info().max_positions;
    if prompt.len() + max_tokens > max {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the model's {max} positions",
                prompt.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// One running generation: its events, and the request's deadline.
struct Running {
    prompt: Vec<usize>,
    events: mpsc::UnboundedReceiver<GenEvent>,
}

fn start_choice(
    state: &AppState,
    prompt: &[usize],
    options: &DecodingOptions,
    choice: usize,
    steps: bool,
) -> Result<Running, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut options = options.clone();
    options.seed = options.seed.wrapping_add(choice as u64);
    state.engine.submit(Job::Generate(Box::new(GenerateJob {
        prompt: prompt.to_vec(),
        options,
        steps,
        events: tx,
    })))?;
    Ok(Running {
        prompt: prompt.to_vec(),
        events: rx,
    })
}

/// Waits for every generation's end, in order: each prompt and its text and tokens cut at a
/// stop sequence.
async fn finish_all(
    state: &AppState,
    runs: Vec<Running>,
    stops: &[String],
    deadline: Instant,
) -> Result<Vec<(Vec<usize>, Finished)>, ApiError> {
    let mut out = Vec::with_capacity(runs.len());
    for mut run in runs {
        let (tokens, hit_eos) = loop {
            match timeout_at(deadline, run.events.recv()).await {
                Err(_) => return Err(state.timed_out()),
                Ok(None) => return Err(ApiError::unavailable()),
                Ok(Some(GenEvent::Done { tokens, hit_eos })) => break (tokens, hit_eos),
                Ok(Some(GenEvent::Failed(e))) => return Err(e),
                Ok(Some(_)) => {}
            }
        };
        let done = cut_at_stop(state, &run.prompt, tokens, hit_eos, stops);
        out.push((run.prompt, done));
    }
    Ok(out)
}

/// Log-probabilities of `tokens[from..]`, each given the tokens before it.
async fn token_logprobs(
    state: &AppState,
    tokens: Vec<usize>,
    from: usize,
    top: usize,
    deadline: Instant,
) -> Result<Vec<TokenLogprob>, ApiError> {
    let (reply, rx) = oneshot::channel();
    state.engine.submit(Job::Logprobs(LogprobJob {
        tokens,
        from,
        top,
        reply,
    }))?;
    match timeout_at(deadline, rx).await {
        Err(_) => Err(state.timed_out()),
        Ok(Err(_)) => Err(ApiError::unavailable()),
        Ok(Ok(r)) => r,
    }
}

/// A finished choice, cut at a stop sequence.
struct Finished {
    text: String,
    tokens: Vec<usize>,
    reason: &'static str,
}

fn cut_at_stop(
    state: &AppState,
    prompt: &[usize],
    tokens: Vec<usize>,
    hit_eos: bool,
    stops: &[String],
) -> Finished {
    let text = state.detok.completion_text(prompt, &tokens);
    match find_stop(&text, stops) {
        Some(cut) => {
            // keep the tokens whose text starts before the cut
            let chars = text[..cut].chars().count();
            let keep = (0..=tokens.len())
                .find(|&k| {
                    state
                        .detok
                        .completion_text(prompt, &tokens[..k])
                        .chars()
                        .count()
                        >= chars
                })
                .unwrap_or(tokens.len());
            Finished {
                text: text[..cut].to_string(),
                tokens: tokens[..keep].to_vec(),
                reason: "stop",
            }
        }
        None => Finished {
            text,
            tokens,
            reason: if hit_eos { "stop" } else { "length" },
        },
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = fields(&body)?;
    let sampling: SamplerFields = fields(&body)?;
    let decoding: DecodingOptions = fields(&body)?;
    check_model(&state, &req.model)?;
    let prompts = prompts_of(&state, &req.prompt)?;
    let plan = plan(&state, &sampling, decoding, &body, sampling.max_tokens, 16)?;
    let top = match req.logprobs {
        Some(k) => Some(count_field(k, "logprobs", 20)?),
        None => None,
    };
    if plan.stream && (top.is_some() || req.echo) {
        return Err(ApiError::invalid(
            if req.echo { "echo" } else { "logprobs" },
            "`echo` and `logprobs` are not offered with `stream`",
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        let param = if prompts.len() == 1 {
            "prompt".into()
        } else {
            format!("prompt[{i}]")
        };
        check_length(&state, p, plan.options.gen_length, &param)?;
    }
    let deadline = Instant::now() + state.config.request_timeout;
    let id = state.id("cmpl");
    let mut runs = Vec::new();
    for p in &prompts {
        for j in 0..plan.n {
            runs.push(start_choice(&state, p, &plan.options, j, plan.steps)?);
        }
    }
    if plan.stream {
        return Ok(stream_choices(
            state,
            runs,
            plan.stops,
            id,
            Flavor::Completion,
            deadline,
        ));
    }
    let mut choices = Vec::new();
    let mut usage = Usage {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..Usage::default()
    };
    let finished = finish_all(&state, runs, &plan.stops, deadline).await?;
    for (index, (prompt, done)) in finished.into_iter().enumerate() {
        usage.completion_tokens += done.tokens.len();
        let (mut text, mut ids) = (done.text, done.tokens.clone());
        if req.echo {
            text = format!("{}{text}", state.detok.decode(&prompt));
            ids = prompt.iter().chain(&done.tokens).copied().collect();
        }
        let logprobs = match top {
            Some(k) => {
                Some(choice_logprobs(&state, &prompt, &done.tokens, req.echo, k, deadline).await?)
            }
            None => None,
        };
        choices.push(CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason: Some(done.reason.into()),
            token_ids: Some(ids),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion".into(),
        created: unix_now(),
        model: state.config.model_name.clone(),
        choices,
        usage: Some(usage),
    })
    .into_response())
}

/// OpenAI's `logprobs` object: the completion's tokens (and with `echo` the prompt's first, the
/// very first with `null`), each scored given the tokens before it. The prompt's tokens are scored
/// over the prompt alone and the completion's over prompt and completion, so that the sum over a
/// continuation inside an echoed prompt (what lm-evaluation-harness reads) is exactly the chain
/// rule of `/v1/loglikelihood`; for the masked model each position sees the tokens before it with
/// everything after it masked.
async fn choice_logprobs(
    state: &AppState,
    prompt: &[usize],
    completion: &[usize],
    echo: bool,
    top: usize,
    deadline: Instant,
) -> Result<Logprobs, ApiError> {
    let all: Vec<usize> = prompt.iter().chain(completion).copied().collect();
    // scores[i] is the entry of all[i + 1]
    let mut scores = Vec::with_capacity(all.len());
    if echo {
        scores.extend(token_logprobs(state, prompt.to_vec(), 1, top, deadline).await?);
    }
    if !completion.is_empty() {
        // only the completion's positions: the prompt's were scored over the prompt alone
        scores.extend(token_logprobs(state, all.clone(), prompt.len(), top, deadline).await?);
    }
    let first = if echo { 0 } else { prompt.len() };
    let shown = &all[first..];
    let offsets = if echo {
        state.detok.offsets(shown)
    } else {
        (0..completion.len())
            .map(|k| {
                state
                    .detok
                    .completion_text(prompt, &completion[..k])
                    .chars()
                    .count()
            })
            .collect()
    };
    let skipped = if echo { 1 } else { 0 };
    let mut out = Logprobs::default();
    for (k, &t) in shown.iter().enumerate() {
        out.tokens.push(state.detok.token_name(t));
        out.text_offset.push(offsets[k]);
        if first + k == 0 {
            out.token_logprobs.push(None);
            out.top_logprobs.push(None);
            continue;
        }
        let lp = &scores[k - skipped];
        out.token_logprobs.push(Some(lp.logprob));
        let map = lp
            .top
            .iter()
            .map(|&(id, v)| (state.detok.token_name(id), json!(v)))
            .collect();
        out.top_logprobs.push(Some(map));
    }
    Ok(out)
}

/// The two streaming shapes.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Completion,
    Chat,
}

fn chunk(
    state: &AppState,
    id: &str,
    flavor: Flavor,
    index: usize,
    text: Option<String>,
    reason: Option<&str>,
    first: bool,
) -> String {
    let created = unix_now();
    let model = state.config.model_name.clone();
    let body = match flavor {
        Flavor::Completion => serde_json::to_value(CompletionResponse {
            id: id.into(),
            object: "text_completion".into(),
            created,
            model,
            choices: vec![CompletionChoice {
                text: text.unwrap_or_default(),
                index,
                logprobs: None,
                finish_reason: reason.map(Into::into),
                token_ids: None,
            }],
            usage: None,
        }),
        Flavor::Chat => serde_json::to_value(ChatResponse {
            id: id.into(),
            object: "chat.completion.chunk".into(),
            created,
            model,
            choices: vec![ChatChoice {
                index,
                message: None,
                delta: Some(AssistantMessage {
                    role: first.then(|| "assistant".into()),
                    content: text,
                }),
                finish_reason: reason.map(Into::into),
            }],
            usage: None,
        }),
    };
    body.map(|b| b.to_string()).unwrap_or_default()
}

/// Server-sent events of every choice, `data: [DONE]` after the last. Text is sent as soon as it
/// is final; a client that goes away drops the stream, which drops each choice's event receiver,
/// which cancels its generation.
fn stream_choices(
    state: Arc<AppState>,
    runs: Vec<Running>,
    stops: Vec<String>,
    id: String,
    flavor: Flavor,
    deadline: Instant,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let mask_id = state.engine.info().mask_id.unwrap_or(usize::MAX);
    let mut tasks = Vec::new();
    for (index, mut run) in runs.into_iter().enumerate() {
        let (tx, state, stops, id) = (tx.clone(), state.clone(), stops.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut streamed = StreamedText::new(stops);
            let mut first = true;
            let send = |data: String| Event::default().data(data);
            if flavor == Flavor::Chat {
                let _ = tx
                    .send(send(chunk(
                        &state,
                        &id,
                        flavor,
                        index,
                        Some(String::new()),
                        None,
                        true,
                    )))
                    .await;
                first = false;
            }
            loop {
                let event = match timeout_at(deadline, run.events.recv()).await {
                    Err(_) => Err(state.timed_out()),
                    Ok(None) => Err(ApiError::unavailable()),
                    Ok(Some(e)) => Ok(e),
                };
                let (text, done, hit_eos) = match event {
                    Ok(GenEvent::Final(tokens)) => (
                        state.detok.completion_text(&run.prompt, &tokens),
                        false,
                        false,
                    ),
                    Ok(GenEvent::Done { tokens, hit_eos }) => (
                        state.detok.completion_text(&run.prompt, &tokens),
                        true,
                        hit_eos,
                    ),
                    Ok(GenEvent::Step(report)) => {
                        let event = step_event(&state, &id, index, &report, mask_id);
                        if tx.send(send(event.to_string())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(GenEvent::Failed(e)) | Err(e) => {
                        let _ = tx.send(send(e.body())).await;
                        return;
                    }
                };
                let (delta, stopped) = streamed.advance(&text, done);
                if !delta.is_empty() {
                    let c = chunk(&state, &id, flavor, index, Some(delta), None, first);
                    first = false;
                    if tx.send(send(c)).await.is_err() {
                        return;
                    }
                }
                if stopped || done {
                    let reason = if stopped || hit_eos { "stop" } else { "length" };
                    let _ = tx
                        .send(send(chunk(
                            &state,
                            &id,
                            flavor,
                            index,
                            None,
                            Some(reason),
                            first,
                        )))
                        .await;
                    // dropping `run` cancels a generation cut by a stop sequence
                    return;
                }
            }
        }));
    }
    tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req: ChatRequest = fields(&body)?;
    let sampling: SamplerFields = fields(&body)?;
    let decoding: DecodingOptions = fields(&body)?;
    check_model(&state, &req.model)?;
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid(
            "logprobs",
            "log-probabilities are offered by /v1/completions, not chat",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "there are no messages"));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(Message::new(
                m.role.clone(),
                m.content.text(&format!("messages[{i}].content"))?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = state
        .chat
        .render(&messages, true)
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    let prompt = encode_text(&state, &text, "messages")?;
    let max_tokens = req.max_completion_tokens.or(sampling.max_tokens);
    let plan = plan(&state, &sampling, decoding, &body, max_tokens, 128)?;
    check_length(&state, &prompt, plan.options.gen_length, "messages")?;
    let deadline = Instant::now() + state.config.request_timeout;
    let id = state.id("chatcmpl");
    let runs = (0..plan.n)
        .map(|j| start_choice(&state, &prompt, &plan.options, j, plan.steps))
        .collect::<Result<Vec<_>, _>>()?;
    if plan.stream {
        return Ok(stream_choices(
            state,
            runs,
            plan.stops,
            id,
            Flavor::Chat,
            deadline,
        ));
    }
    let mut choices = Vec::new();
    let mut usage = Usage {
        prompt_tokens: prompt.len(),
        ..Usage::default()
    };
    let finished = finish_all(&state, runs, &plan.stops, deadline).await?;
    for (index, (_, done)) in finished.into_iter().enumerate() {
        usage.completion_tokens += done.tokens.len();
        choices.push(ChatChoice {
            index,
            message: Some(AssistantMessage {
                role: Some("assistant".into()),
                content: Some(done.text),
            }),
            delta: None,
            finish_reason: Some(done.reason.into()),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: state.config.model_name.clone(),
        choices,
        usage: Some(usage),
    })
    .into_response())
}

async fn loglikelihood(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<LoglikelihoodResponse>, ApiError> {
    let req: LoglikelihoodRequest = fields(&body)?;
    check_model(&state, &req.model)?;
    let info = state.engine.info();
    let vocab = info.vocab_size;
    let (context, continuation) = match (&req.context, &req.continuation) {
        (TextOrIds::Text(c), TextOrIds::Text(x)) => {
            let tok = state.tokenizer.as_ref().ok_or_else(|| {
                ApiError::invalid("context", "this server has no tokenizer: send token ids")
            })?;
            let pair = mdm_eval::harness::encode_pair(tok, c, x)
                .map_err(|e| ApiError::invalid("continuation", e.to_string()))?;
            check_ids(&state, &pair.0, "context")?;
            check_ids(&state, &pair.1, "continuation")?;
            pair
        }
        (TextOrIds::Ids(c), TextOrIds::Ids(x)) => (
            id_list(c, "context", vocab)?,
            id_list(x, "continuation", vocab)?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "continuation",
                "`context` and `continuation` must both be text or both token ids",
            ))
        }
    };
    if continuation.is_empty() {
        return Err(ApiError::invalid(
            "continuation",
            "the continuation has no tokens",
        ));
    }
    if info.kind == ModelKind::Causal && context.is_empty() {
        return Err(ApiError::invalid(
            "context",
            "the baseline needs at least one context token",
        ));
    }
    check_length(&state, &context, continuation.len(), "context")?;
    let cfg_scale = match req.cfg_scale {
        Some(w) => float_field(w, "cfg_scale", 0.0, 100.0)?,
        None => 0.0,
    };
    let estimator = match req.estimator.as_deref().unwrap_or("chain") {
        "chain" => Estimator::Chain,
        "mc" => Estimator::Mc {
            mc_num: match req.mc_num {
                Some(k) => count_field(k, "mc_num", 1 << 16)?.max(1),
                None => 128,
            },
            seed: match req.seed {
                Some(s) if s < 0 => {
                    return Err(ApiError::invalid("seed", "`seed` must not be negative"))
                }
                Some(s) => s as u64,
                None => 0,
            },
        },
        other => {
            return Err(ApiError::invalid(
                "estimator",
                format!("unknown estimator `{other}`: chain or mc"),
            ))
        }
    };
    if info.kind == ModelKind::Causal && (estimator != Estimator::Chain || cfg_scale != 0.0) {
        return Err(ApiError::invalid(
            if cfg_scale != 0.0 {
                "cfg_scale"
            } else {
                "estimator"
            },
            "the baseline is scored exactly: only `estimator: chain` without guidance",
        ));
    }
    let (reply, rx) = oneshot::channel();
    let (context_tokens, continuation_tokens) = (context.len(), continuation.len());
    state.engine.submit(Job::Loglikelihood(LoglikelihoodJob {
        context,
        continuation,
        estimator,
        cfg_scale,
        reply,
    }))?;
    let deadline = Instant::now() + state.config.request_timeout;
    let scored = match timeout_at(deadline, rx).await {
        Err(_) => return Err(state.timed_out()),
        Ok(Err(_)) => return Err(ApiError::unavailable()),
        Ok(Ok(r)) => r?,
    };
    Ok(Json(LoglikelihoodResponse {
        model: state.config.model_name.clone(),
        loglikelihood: scored.loglikelihood,
        stderr: scored.stderr,
        is_greedy: scored.is_greedy,
        estimator: match estimator {
            Estimator::Chain => "chain".into(),
            Estimator::Mc { .. } => "mc".into(),
        },
        context_tokens,
        continuation_tokens,
    }))
}
