//! Typed errors of training.

use std::path::PathBuf;

/// What stopped a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Model construction or checkpoint I/O.
    #[error(transparent)]
    Model(#[from] mdm_models::ModelError),
    /// Data loading.
    #[error(transparent)]
    Data(#[from] mdm_data::DataError),
    /// A core operation (noising, loss).
    #[error(transparent)]
    Core(#[from] mdm_core::CoreError),
    /// Validation.
    #[error(transparent)]
    Eval(#[from] mdm_eval::EvalError),
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CSV file of the run (metrics, validation, sweep results) is malformed.
    #[error("{file}{}: {reason}", line.map_or(String::new(), |l| format!(", line {l}")))]
    Csv {
        /// The file.
        file: PathBuf,
        /// The line, when known.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A checkpoint's training state is missing or does not fit the run.
    #[error("checkpoint {dir}: {reason}")]
    Checkpoint {
        /// The checkpoint folder.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A collective operation of a data-parallel run failed (burn-collective's reason).
    #[error("data-parallel peer {peer}: {reason}")]
    Collective {
        /// The peer whose call failed.
        peer: u32,
        /// What burn-collective reported.
        reason: String,
    },
    /// A peer of a data-parallel run returned an error or panicked; the run stopped (its last
    /// checkpoint is intact and resumes).
    #[error("data-parallel peer {peer} of node {node} failed: {reason}")]
    PeerFailed {
        /// The peer's index on its node.
        peer: usize,
        /// The node's rank.
        node: u32,
        /// Its error.
        reason: String,
    },
    /// Every peer of this node waited inside one collective operation for longer than the
    /// timeout: another node died or cannot be reached.
    #[error(
        "node {node} of {nodes}: the {what} of step {step} got no answer from the other nodes \
         within {waited_s} s (a node stopped or cannot be reached; resume every node from the last \
         checkpoint)"
    )]
    CollectiveTimeout {
        /// This node's rank.
        node: u32,
        /// Nodes in the run.
        nodes: u32,
        /// The optimizer step (0-based) being reduced.
        step: usize,
        /// `registration` or `all-reduce`.
        what: &'static str,
        /// Seconds waited.
        waited_s: u64,
    },
    /// The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept.
    #[error("the {what} is {loss} at step {step}: stopped (the last good checkpoint is kept)")]
    NonFinite {
        /// The optimizer step (0-based) whose loss was not finite.
        step: usize,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        loss: f64,
    },
}

pub(crate) fn io(file: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        file: file.to_path_buf(),
        source,
    }
}
