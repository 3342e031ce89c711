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
    #[error("data-parallel peer {peer} of rank {rank} failed: {reason}")]
    PeerFailed {
        /// The peer's index among its process's devices.
        peer: usize,
        /// Its process's MPI rank (0 without MPI).
        rank: u32,
        /// Its error.
        reason: String,
    },
    /// MPI could not be started or used (feature `mpi`).
    #[error("MPI: {0}")]
    Mpi(String),
    /// This rank waited inside one MPI operation for longer than `parallel.timeout_s`: the ranks
    /// named did not arrive (stopped, hung or unreachable).
    #[error(
        "rank {rank} of {ranks}: the {what} of step {step} waited {waited_s} s for {}; stopped \
         (resume every rank from the last checkpoint)",
        missing_ranks(missing)
    )]
    RankTimeout {
        /// This process's rank.
        rank: u32,
        /// Ranks in the run.
        ranks: u32,
        /// The optimizer step (0-based) being reduced.
        step: usize,
        /// Which operation (`gradient all-reduce`, `loss all-reduce`, ...).
        what: &'static str,
        /// The ranks that did not arrive (empty: every rank arrived and one stopped during the
        /// all-reduce itself).
        missing: Vec<u32>,
        /// Seconds waited.
        waited_s: u64,
    },
    /// Another rank of an MPI run stopped with an error and said so; this rank stopped too.
    #[error("rank {rank} failed at step {step}: {reason}")]
    RankFailed {
        /// The rank that failed.
        rank: u32,
        /// The optimizer step (0-based) this rank was at.
        step: usize,
        /// Its error.
        reason: String,
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

/// `rank 1` / `ranks 1, 3` / `a rank that stopped during the operation`.
fn missing_ranks(missing: &[u32]) -> String {
    match missing {
        [] => "a rank that stopped during the operation".into(),
        [one] => format!("rank {one}"),
        many => format!(
            "ranks {}",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(crate) fn io(file: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        file: file.to_path_buf(),
        source,
    }
}
