//! Errors: [`ApiError`] is what a request gets back (an HTTP status and OpenAI's error object,
//! `{"error": {"message", "type", "param", "code"}}`), [`ServeError`] what stops the server from
//! starting.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use thiserror::Error;

/// An error answered to a client: the status and OpenAI's error object. The `param` names the
/// request field that was wrong, where there is one.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status (4xx for the client's mistakes, 5xx for ours).
    pub status: StatusCode,
    /// What was wrong, in words.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `not_found_error`, `timeout_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault (`max_tokens`, `prompt`, `messages[2].content`...).
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `model_not_found`...).
    pub code: Option<&'static str>,
    /// Seconds a client should wait before trying again (the `Retry-After` header).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request field `param` is wrong.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        )
        .with_param(param)
    }

    /// 400: the body is not the JSON the endpoint takes (no field to name).
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401: no or a wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "a valid API key is required: send `Authorization: Bearer KEY`",
        )
        .with_code("invalid_api_key")
    }

    /// 404: a model this server does not serve.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("the model `{asked}` does not exist here: this server serves `{served}`"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404: no such endpoint.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no endpoint at `{path}`"),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    /// 429: the queue is full.
    pub fn queue_full(capacity: usize) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the server's queue of {capacity} requests is full: retry later"),
            )
            .with_code("queue_full")
        }
    }

    /// 504: the request ran past the server's time limit.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            format!("the request ran past the server's limit of {seconds} s"),
        )
        .with_code("timeout")
    }

    /// 500: something failed on our side (the message says what).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 503: the model's worker has stopped.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model's worker is not running (the server is shutting down)",
        )
    }

    /// 503: the server is shutting down and takes no new requests (`Retry-After` says when to try
    /// again, at another instance or after the restart).
    pub fn draining(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down and takes no new requests",
            )
            .with_code("shutting_down")
        }
    }

    /// 408: the client sent its request body too slowly.
    pub fn slow_body(seconds: f64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            format!("the request body did not arrive within {seconds} s"),
        )
        .with_code("request_timeout")
    }

    /// The same error naming `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error with a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON text of the error object (also what a stream sends before it ends on an error).
    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_else(|_| String::from(r#"{"error":{"message":"unprintable error"}}"#))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body: serde_json::Value = serde_json::from_str(&self.body()).unwrap_or_default();
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The model did not load.
    #[error("loading the model: {0}")]
    Model(#[from] mdm_models::ModelError),
    /// The tokenizer or chat template did not load.
    #[error("loading the tokenizer: {0}")]
    Data(#[from] mdm_data::DataError),
    /// The address could not be bound, or the server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Options that do not fit together.
    #[error("{0}")]
    Config(String),
    /// The model's worker stopped before it was ready.
    #[error("the model's worker stopped while loading: {0}")]
    Worker(String),
}
