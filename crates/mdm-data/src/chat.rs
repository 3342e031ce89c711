//! Chat prompts: a model folder's Jinja chat template (`tokenizer_config.json`'s
//! `chat_template`, as Hugging Face's tokenizers and text-generation-inference render it), or a
//! plain one for our own models.
//!
//! Rendered with `minijinja`, the engine text-generation-inference uses for the same templates;
//! `raise_exception(message)` is provided, as there.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::DataError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template and the special tokens it may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    source: String,
    bos_token: String,
    eos_token: String,
    /// Where the template came from (errors name it).
    origin: PathBuf,
}

/// The template of models without one: `role: content` lines, then `assistant:`.
const PLAIN: &str = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n\
                     {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

fn token_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatPrompt {
    /// The plain template (`user: ...` / `assistant:` lines).
    pub fn plain() -> Self {
        Self {
            source: PLAIN.to_string(),
            bos_token: String::new(),
            eos_token: String::new(),
            origin: PathBuf::from("<plain template>"),
        }
    }

    /// A template given as Jinja source, with its special tokens.
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Self {
        Self {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            origin: PathBuf::from("<template>"),
        }
    }

    /// The `chat_template` of a `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is taken), with its `bos_token` / `eos_token`.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bad = |reason: String| DataError::Invalid {
            what: "tokenizer_config.json",
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let source = match &json["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .ok_or_else(|| bad("`chat_template` has no `default` template".into()))?
                .to_string(),
            _ => return Err(bad("no `chat_template` string".into())),
        };
        let prompt = Self {
            source,
            bos_token: token_text(&json["bos_token"]),
            eos_token: token_text(&json["eos_token"]),
            origin: path.to_path_buf(),
        };
        // a template that does not parse is an error now, not at the first request
        prompt.render(&[Message::new("user", "")], true)?;
        Ok(prompt)
    }

    /// `dir/tokenizer_config.json`'s template when the folder has one, else the plain template
    /// (no such file, or a file without a `chat_template` key: a base model's; a template that is
    /// there but does not parse is an error).
    pub fn for_folder(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let file = dir.as_ref().join("tokenizer_config.json");
        if !file.is_file() || !has_template(&file) {
            return Ok(Self::plain());
        }
        Self::from_tokenizer_config(file)
    }

    /// The prompt text of `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        let failed = |e: Error| DataError::Invalid {
            what: "chat template",
            reason: format!("{}: {e}", self.origin.display()),
        };
        env.add_template("chat", &self.source).map_err(failed)?;
        env.get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
            .map_err(failed)
    }
}

/// Whether the JSON object in `file` has a non-null `chat_template` key (an unreadable file
/// answers yes: reading it again reports the error).
fn has_template(file: &Path) -> bool {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_none_or(|json| !json["chat_template"].is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaDA-8B-Instruct's template (its tokenizer_config.json), as published.
    const LLADA: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
        {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ \
        message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = \
        bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn a_folder_whose_config_has_no_template_is_plain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        let prompt = ChatPrompt::for_folder(dir.path()).unwrap();
        assert_eq!(prompt.origin, ChatPrompt::plain().origin);
        // a template that is there but does not parse is still an error
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "{% for m in messages %}"}"#,
        )
        .unwrap();
        assert!(ChatPrompt::for_folder(dir.path()).is_err());
    }

    #[test]
    fn llada_instruct_template_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        let config = serde_json::json!({
            "chat_template": LLADA,
            "bos_token": "<|startoftext|>",
            "eos_token": {"content": "<|eot_id|>"},
        });
        std::fs::write(&path, config.to_string()).unwrap();
        let prompt = ChatPrompt::for_folder(dir.path()).unwrap();
        let text = prompt
            .render(&[Message::new("user", " What is 2 + 2? ")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let plain = ChatPrompt::for_folder(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(
            plain.render(&[Message::new("user", "hi")], true).unwrap(),
            "user: hi\nassistant:"
        );
    }

    #[test]
    fn broken_templates_and_raised_exceptions_are_errors() {
        let bad = ChatPrompt::from_source("{% for m in messages %}", "", "");
        assert!(bad.render(&[], false).is_err());
        let raising = ChatPrompt::from_source(
            "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}",
            "",
            "",
        );
        let err = raising
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("user first"), "{err}");
    }
}
