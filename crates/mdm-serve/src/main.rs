//! `mdm-serve`: serve a model over OpenAI's HTTP API.
//!
//! ```text
//! cargo run --release -p mdm-serve -- --config 6M --tokenizer ../shared/data/tokenizers/llama2/tokenizer.json
//! cargo run --release -p mdm-serve -- --checkpoint runs/kjv-mdm/model --port 8001
//! cargo run --release -p mdm-serve -- --hf path/to/LLaDA-8B-Instruct --api-key secret --host 0.0.0.0
//! ```
//!
//! Open `http://127.0.0.1:8000/` for the playground; Prometheus scrapes `/metrics`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mdm_hub::{ModelArgs, ModelSource};
use mdm_serve::engine::{Engine, EngineConfig};
use mdm_serve::server::{serve, shutdown_signal, AppState, ServerConfig, Stopped};
use mdm_serve::ServeError;

#[cfg(feature = "cuda")]
type Backend = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Backend = burn::backend::Wgpu;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu"))))]
type Backend = burn::backend::Flex;
#[cfg(all(
    feature = "ndarray",
    not(any(feature = "cuda", feature = "wgpu", feature = "flex"))
))]
type Backend = burn::backend::NdArray;

#[derive(Parser, Debug)]
#[command(
    about = "Serve a masked diffusion model (or its autoregressive baseline) over OpenAI's HTTP API"
)]
struct Args {
    /// The model: --checkpoint (masked or causal), --hf, --smdm with --config, or random weights
    /// of --config; its --tokenizer (without one, prompts must be token ids), and --dtype /
    /// --quant.
    #[command(flatten)]
    model: ModelArgs,
    /// Seed of random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The name clients give as `model` (default: the folder's or file's name, or the config's).
    #[arg(long)]
    model_name: Option<String>,
    /// Address to listen on (loopback by default; set an API key before listening elsewhere).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request but /health.
    #[arg(long, env = "MDM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most rows decoded together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most jobs waiting (a request over it gets 429).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Milliseconds the worker waits for compatible requests to fill a batch (0: no wait).
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// The largest `max_tokens` a request may ask.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// The largest `n`.
    #[arg(long, default_value_t = 8)]
    max_choices: usize,
    /// Seconds before a request is answered 504 and its generation cancelled.
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// The largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a client has to send a request's body before it is answered 408.
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Most connections served at once; more wait, unaccepted, in the listen queue. Default:
    /// 4,096, or what the open-file limit allows (raised to its hard limit first) if less.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds running requests may take to finish after SIGTERM or Ctrl-C (new requests are
    /// answered 503 meanwhile); what still runs then is cancelled.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
}

/// Files the process keeps for itself beside its connections (the model's, the runtime's).
const RESERVED_FILES: u64 = 64;

/// The connection cap: `asked`, or 4,096, within what the open-file limit leaves (the soft limit
/// is raised to the hard one first: a server that runs out of files can accept no one).
fn connection_cap(asked: Option<usize>) -> Result<usize, ServeError> {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let fits = usize::try_from(files.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    match asked {
        Some(0) => Err(ServeError::Config(
            "--max-connections must be at least 1".into(),
        )),
        Some(n) if n > fits => {
            eprintln!(
                "warning: --max-connections {n} is over what the open-file limit of {files} leaves: {fits} connections are served at once"
            );
            Ok(fits)
        }
        Some(n) => Ok(n),
        None => Ok(fits.min(4096)),
    }
}

/// A positive, finite number of seconds from the flag `name`.
fn seconds(value: f64, name: &str) -> Result<Duration, ServeError> {
    if value > 0.0 && value.is_finite() {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ServeError::Config(format!(
            "--{name} must be a positive number of seconds, got {value}"
        )))
    }
}

fn default_name(source: &ModelSource, config: &str) -> String {
    let named = match source {
        ModelSource::Checkpoint(p) | ModelSource::HuggingFace(p) => {
            p.canonicalize().ok().and_then(|p| {
                // `runs/kjv-mdm/model` is better named by its run than by `model`
                let last = p.file_name()?.to_str()?.to_string();
                if last == "model" {
                    Some(p.parent()?.file_name()?.to_str()?.to_string())
                } else {
                    Some(last)
                }
            })
        }
        ModelSource::Smdm { file, .. } | ModelSource::Gguf(file) => {
            file.file_stem().and_then(|s| s.to_str()).map(String::from)
        }
        ModelSource::Random { .. } => None,
    };
    named.unwrap_or_else(|| format!("mdm-{}", config.trim_end_matches(".json")))
}

/// Gives the memory a load freed (conversions on load free as much as they keep) back to the
/// system: glibc's allocator keeps freed chunks of its arenas otherwise.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn run(args: Args) -> Result<(), ServeError> {
    let source = args.model.source(args.seed)?;
    let request_timeout = seconds(args.request_timeout, "request-timeout")?;
    let header_timeout = seconds(args.header_timeout, "header-timeout")?;
    let body_timeout = seconds(args.body_timeout, "body-timeout")?;
    let shutdown_timeout = seconds(args.shutdown_timeout, "shutdown-timeout")?;
    let max_connections = connection_cap(args.max_connections)?;
    let tokenizer = args.model.tokenizer(&source)?;
    let chat = source.chat_prompt()?;
    eprintln!("loading {} ...", source.describe());
    let format = args.model.weight_format()?;
    let load_source = source.clone();
    let engine = Engine::start::<Backend, _, _>(
        move || {
            let model = load_source.load_any_as(format, &Default::default());
            give_back_freed_memory();
            model
        },
        EngineConfig {
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            batch_wait: Duration::from_millis(args.batch_wait_ms),
        },
    )?;
    if let Some(tok) = &tokenizer {
        if tok.vocab_size() > engine.info().vocab_size {
            eprintln!(
                "warning: the tokenizer has {} ids, the model {}: texts with the extra ids are refused",
                tok.vocab_size(),
                engine.info().vocab_size
            );
        }
    }
    let model_name = args
        .model_name
        .clone()
        .unwrap_or_else(|| default_name(&source, &args.model.config));
    let config = ServerConfig {
        model_name: model_name.clone(),
        api_key: args.api_key.clone(),
        max_tokens: args.max_tokens,
        max_choices: args.max_choices,
        max_body: args.max_body,
        request_timeout,
        header_timeout,
        body_timeout,
        max_connections,
        shutdown_timeout,
    };
    let address = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("listening on {address}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: "reading the bound address".into(),
        source,
    })?;
    let info = engine.info().clone();
    if args.api_key.is_none()
        && args.host != "127.0.0.1"
        && args.host != "localhost"
        && args.host != "::1"
    {
        eprintln!("warning: listening on {} without an API key: anyone who can reach it can use the model (set --api-key or MDM_API_KEY)", args.host);
    }
    let state = AppState::new(engine, tokenizer, chat, config);
    eprintln!(
        "serving `{model_name}` ({} model, {} positions, {} ids) on http://{local}/v1, playground at http://{local}/, metrics at /metrics (Ctrl-C to stop)",
        format!("{:?}", info.kind).to_lowercase(),
        info.max_positions,
        info.vocab_size
    );
    let stopped = serve(listener, state, shutdown_signal())
        .await
        .map_err(|source| ServeError::Io {
            what: "serving".into(),
            source,
        })?;
    match stopped {
        Stopped::Drained => eprintln!("stopped: in-flight requests finished"),
        Stopped::Cancelled { connections } => eprintln!(
            "stopped: {connections} connection(s) still running after --shutdown-timeout were cancelled"
        ),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // the message and its causes, never a stack trace
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
