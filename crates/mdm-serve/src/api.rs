//! The wire format: OpenAI's request and response shapes for completions, chat completions and
//! models, the server's extension fields for every sampler option, and the native
//! `/v1/loglikelihood`. Requests are read leniently (fields the server does not know are ignored,
//! as OpenAI's own server does) but every field it knows is checked; [`ApiError`] names the field.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A prompt as OpenAI's completions endpoint takes it: a string, a list of strings, a list of
/// token ids, or a list of token-id lists.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts (one choice set each).
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<i64>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<i64>>),
}

/// `stop`: a string or a list of up to four.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopInput {
    /// The stop strings, checked (at most four, none empty).
    pub fn strings(&self) -> Result<Vec<String>, ApiError> {
        let list = match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        };
        if list.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                format!("at most 4 stop sequences, got {}", list.len()),
            ));
        }
        if list.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "a stop sequence is empty"));
        }
        Ok(list)
    }
}

/// OpenAI's generation fields every generating endpoint takes (`max_tokens`, `stop`, `n`,
/// `stream`, the penalties) and `stream_steps`. The decoding options themselves (`temperature`,
/// `top_p`, `top_k`, `min_p`, `seed`, `steps`, `block_length`, `remasking`, `alg_temp`,
/// `schedule`, `threshold`, `factor`, `cache`, `cfg_scale`, ...) are
/// [`DecodingOptions`](mdm_samplers::DecodingOptions), read from the same object under the same
/// names as the command line's (docs/decoding.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SamplerFields {
    /// Tokens to generate (the MDM's generation length; the baseline's most new tokens).
    pub max_tokens: Option<i64>,
    /// Stop sequences: the text ends before the first one.
    pub stop: Option<StopInput>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Penalties are not supported: only 0 is accepted.
    pub presence_penalty: Option<f64>,
    /// See `presence_penalty`.
    pub frequency_penalty: Option<f64>,
    /// Extension: with `stream`, also send an event after every decoding step (the canvas with
    /// its masks, the positions revealed and their confidences, the step's index and the forward
    /// passes so far; docs/serving.md). `stream_canvas`, its earlier name, is read too.
    #[serde(default, alias = "stream_canvas")]
    pub stream_steps: bool,
}

/// `POST /v1/completions` (the sampler's options, [`SamplerFields`], are read from the same
/// object).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Must name the served model when given.
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Echo the prompt before the completion (with its log-probabilities when `logprobs` is set).
    #[serde(default)]
    pub echo: bool,
    /// Return the log-probabilities of each token and of the `k` most likely tokens there.
    pub logprobs: Option<i64>,
}

/// One message of a chat.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`.
    pub role: String,
    /// The text: a string or OpenAI's list of `{"type": "text", "text": ...}` parts.
    pub content: ChatContent,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    /// Plain text.
    Text(String),
    /// Content parts (only `text` parts are supported).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (other kinds are rejected).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

impl ChatContent {
    /// The text, or an error naming `param` for a part that is not text.
    pub fn text(&self, param: &str) -> Result<String, ApiError> {
        match self {
            Self::Text(s) => Ok(s.clone()),
            Self::Parts(parts) => parts
                .iter()
                .enumerate()
                .map(|(i, p)| match (&p.kind[..], &p.text) {
                    ("text", Some(t)) => Ok(t.clone()),
                    _ => Err(ApiError::invalid(
                        format!("{param}[{i}]"),
                        format!("only text content parts are supported, got `{}`", p.kind),
                    )),
                })
                .collect(),
        }
    }
}

/// `POST /v1/chat/completions` (with [`SamplerFields`] from the same object).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Must name the served model when given.
    pub model: Option<String>,
    /// The conversation, rendered by the model's chat template.
    pub messages: Vec<ChatMessage>,
    /// Log-probabilities are not offered for chat (use completions): only false/absent.
    pub logprobs: Option<bool>,
    /// `max_completion_tokens`, the newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
}

/// A text or token ids (the native endpoints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TextOrIds {
    /// Text, encoded by the server's tokenizer.
    Text(String),
    /// Token ids, used as given.
    Ids(Vec<i64>),
}

/// `POST /v1/loglikelihood`: the log-likelihood of `continuation` after `context`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoglikelihoodRequest {
    /// Must name the served model when given.
    pub model: Option<String>,
    /// The conditioning text (or ids).
    pub context: TextOrIds,
    /// The scored text (or ids).
    pub continuation: TextOrIds,
    /// `chain` (exact chain rule, the default) or `mc` (Monte Carlo ELBO bound, MDMs only).
    pub estimator: Option<String>,
    /// Monte Carlo samples (default 128).
    pub mc_num: Option<i64>,
    /// Unsupervised classifier-free guidance scale (MDMs only).
    pub cfg_scale: Option<f64>,
    /// Seed of the Monte Carlo draws.
    pub seed: Option<i64>,
}

/// Answer of `/v1/loglikelihood`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoglikelihoodResponse {
    /// The model.
    pub model: String,
    /// `log p(continuation | context)` in nats (for `mc`, minus the ELBO bound).
    pub loglikelihood: f64,
    /// Its standard error (0 for the exact chain rule).
    pub stderr: f64,
    /// Whether greedy decoding reproduces the continuation (lm-evaluation-harness's `is_greedy`).
    pub is_greedy: bool,
    /// The estimator used.
    pub estimator: String,
    /// Token counts of the context and the continuation.
    pub context_tokens: usize,
    /// See `context_tokens`.
    pub continuation_tokens: usize,
}

/// OpenAI's `logprobs` object of a completion choice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Logprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's log-probability (`null` for the first token of an echoed prompt).
    pub token_logprobs: Vec<Option<f64>>,
    /// The most likely tokens at each position with their log-probabilities.
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// One choice of a completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionChoice {
    /// The text.
    pub text: String,
    /// Prompt index x n + choice index.
    pub index: usize,
    /// Log-probabilities when asked.
    pub logprobs: Option<Logprobs>,
    /// `stop` (EOS or a stop sequence), `length`, or `null` while streaming.
    pub finish_reason: Option<String>,
    /// Extension: the token ids of the text (the completion's, or the prompt's and the
    /// completion's with `echo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<usize>>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Usage {
    /// Prompt tokens (each prompt once).
    pub prompt_tokens: usize,
    /// Generated tokens of every choice.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// Answer of `/v1/completions` (and each chunk of its stream, with `usage` absent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (absent from stream chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// An assistant message (or a stream's delta of one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AssistantMessage {
    /// `assistant` (in a stream, only in the first delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The text (in a stream, the new text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatChoice {
    /// Choice index.
    pub index: usize,
    /// The reply (absent from stream chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// The new text (stream chunks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<AssistantMessage>,
    /// `stop`, `length`, or `null` while streaming.
    pub finish_reason: Option<String>,
}

/// Answer of `/v1/chat/completions` (`chat.completion`, or `chat.completion.chunk` per event).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion` or `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts (absent from stream chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One entry of `/v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    /// The name requests use.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds when the server started.
    pub created: u64,
    /// `mdm-rs`.
    pub owned_by: String,
    /// Extension: `masked` (an MDM) or `causal` (the autoregressive baseline).
    pub kind: String,
    /// Extension: the model's positions.
    pub max_positions: usize,
    /// Extension: the logit width.
    pub vocab_size: usize,
}

/// `/v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// A non-negative integer field, checked against `max` (inclusive).
pub fn count_field(value: i64, param: &str, max: usize) -> Result<usize, ApiError> {
    if value < 0 {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not be negative, got {value}"),
        ));
    }
    let v = value as u64;
    if v > max as u64 {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` is {value}, over this server's limit of {max}"),
        ));
    }
    Ok(v as usize)
}

/// A finite float field within `[lo, hi]`.
pub fn float_field(value: f64, param: &str, lo: f64, hi: f64) -> Result<f64, ApiError> {
    if !value.is_finite() || value < lo || value > hi {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must lie in [{lo}, {hi}], got {value}"),
        ));
    }
    Ok(value)
}

/// Token ids of a request field, each within the vocabulary.
pub fn id_list(ids: &[i64], param: &str, vocab: usize) -> Result<Vec<usize>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            if t < 0 || t as u64 >= vocab as u64 {
                Err(ApiError::invalid(
                    format!("{param}[{i}]"),
                    format!("token id {t} is outside the vocabulary 0..{vocab}"),
                ))
            } else {
                Ok(t as usize)
            }
        })
        .collect()
}
