//! `mdm-serve`: an OpenAI-compatible HTTP server for masked diffusion language models (SMDM,
//! LLaDA: every family of the [`MaskPredictor`](mdm_models::MaskPredictor) seam) and for the
//! autoregressive baseline, on axum and tokio.
//!
//! - [`engine`]: the worker thread that owns the model and its device; requests become jobs in a
//!   bounded queue, compatible generations are decoded together as one ragged batch (joined by
//!   later ones at block boundaries), a client that goes away cancels its job.
//! - [`server`]: the routes (`/`, the playground; `/health`, `/metrics`, `/v1/models`,
//!   `/v1/completions`, `/v1/chat/completions`, `/v1/loglikelihood`), the API key, limits,
//!   streaming with every decoding step, connections (timeouts, a cap, the drain at shutdown).
//! - [`metrics`]: what the worker and the routes count, in Prometheus' format.
//! - [`api`]: the request and response shapes; [`error`]: OpenAI's error object.
//! - [`text`]: ids to text, stop sequences, what a stream may send.
//!
//! Embedding the server in a program (a random model and no tokenizer: prompts are token ids):
//!
//! ```no_run
//! use burn::backend::Flex;
//! use mdm_data::chat::ChatPrompt;
//! use mdm_models::ModelConfig;
//! use mdm_serve::engine::{Engine, EngineConfig};
//! use mdm_serve::Masked;
//! use mdm_serve::server::{serve, shutdown_signal, AppState, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::start::<Flex, _, _>(
//!     || Ok(Masked(ModelConfig::from_name_or_file("6M")?.init_masked(0, &Default::default())?)),
//!     EngineConfig::default(),
//! )?;
//! let state = AppState::new(engine, None, ChatPrompt::plain(), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, state, shutdown_signal()).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod server;
pub mod text;

pub use engine::{Engine, EngineConfig};
pub use error::{ApiError, ServeError};
pub use mdm_eval::{Causal, LanguageModel, Masked};
pub use server::{router, serve, AppState, ServerConfig, Stopped};
