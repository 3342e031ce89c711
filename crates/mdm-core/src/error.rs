//! Errors of the diffusion core.

use thiserror::Error;

/// What can go wrong when calling the diffusion core with bad input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// Two inputs that must agree in shape do not.
    #[error("shape mismatch for `{what}`: expected {expected:?}, found {found:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The shape it should have.
        expected: Vec<usize>,
        /// The shape it has.
        found: Vec<usize>,
    },
    /// A value outside its allowed range (a time outside `[0, 1]`, a negative temperature...).
    #[error("invalid value for `{what}`: {value} ({reason})")]
    Value {
        /// Which argument.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// What the allowed range is.
        reason: &'static str,
    },
    /// A prompt length longer than its row.
    #[error("prompt length {prompt_len} of row {row} exceeds the sequence length {seq_len}")]
    PromptTooLong {
        /// The row.
        row: usize,
        /// Its prompt length.
        prompt_len: usize,
        /// The sequence length.
        seq_len: usize,
    },
    /// Reading a tensor back from the device failed.
    #[error("reading {0} back from the device failed")]
    ReadBack(String),
    /// A loss normaliser of zero (for instance a fine-tuning batch made only of prompt).
    #[error("nothing to average over: {0}")]
    Empty(&'static str),
}

pub(crate) fn check_shape(
    what: &'static str,
    expected: &[usize],
    found: &[usize],
) -> Result<(), CoreError> {
    if expected != found {
        return Err(CoreError::Shape {
            what,
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn check_unit_interval(what: &'static str, value: f64) -> Result<(), CoreError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(CoreError::Value {
            what,
            value,
            reason: "must lie in [0, 1]",
        });
    }
    Ok(())
}
