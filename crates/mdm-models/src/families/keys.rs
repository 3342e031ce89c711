//! Reading a Hugging Face `config.json` key by key, for the families' config readers.

use std::path::PathBuf;

use serde_json::Value;

use crate::ModelError;

/// A `config.json` read key by key: every value this network does not compute is an
/// [`ModelError::Unsupported`] naming the file and the key.
pub struct Keys<'a> {
    /// The parsed `config.json`.
    pub json: &'a Value,
    /// Its path, for messages.
    pub file: PathBuf,
}

impl Keys<'_> {
    pub(crate) fn unsupported(&self, key: &str, reason: &str) -> ModelError {
        ModelError::Unsupported {
            file: self.file.clone(),
            key: key.to_string(),
            value: self.json.get(key).map_or("absent".into(), Value::to_string),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.unsupported(key, "a non-negative integer is required"))
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.unsupported(key, "must be a non-negative integer")),
        }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.unsupported(key, "must be a number")),
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.unsupported(key, "must be true or false")),
        }
    }

    /// The key must be absent, null, or `allowed`.
    pub(crate) fn require(
        &self,
        key: &str,
        allowed: &[Value],
        reason: &str,
    ) -> Result<(), ModelError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(_) => Err(self.unsupported(key, reason)),
        }
    }
}
