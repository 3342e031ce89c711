//! # mdm-train: one training loop for MDMs and their autoregressive baselines
//!
//! Pre-training on packed shards and fine-tuning on prompt/response rows, with SMDM's recipe:
//! AdamW (0.9, 0.95, weight decay 0.1) with clipping by the global gradient norm, linear warm-up
//! then cosine decay, gradient accumulation, steps from a FLOPs budget (`6 N D`), stochastic
//! sequence length and CFG prompt dropout (MDM).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`TrainConfig`]: every hyper-parameter, TOML/JSON, the learning-rate schedule |
//! | [`objective`] | [`TrainModel`]: the MDM and baseline losses and their validation; [`objective::MaskedTrainBatch`]: a noised batch of any masking scheme |
//! | [`optim`] | AdamW with global-norm clipping and gradient accumulation, saveable state |
//! | [`parallel`] | data parallel on one machine: [`parallel::CollectiveMean`] averages the peers' gradients with burn-collective |
//! | `mpi` | (feature `mpi`) across machines: each process one rank of an MPI job, `mpi::MpiMean` averages the ranks' gradients with MPI all-reduce |
//! | [`step`] | one optimizer step: accumulate, reduce across peers (hook), clip, update |
//! | [`source`] | [`DataSpec`]: shards or fine-tuning rows, and the stream's saved position |
//! | [`checkpoint`] | atomic checkpoint folders, [`checkpoint::Checkpointer`] (keep-last-k), the state needed for exact resumption |
//! | [`validator`] | validation blocks scored during a run |
//! | [`metrics`] | `metrics.csv` / `validation.csv` as serde rows through the `csv` crate |
//! | [`events`] | [`events::TrainEvent`]s and observers: the console reporter, or your own |
//! | [`plot`] | loss curves as PNG |
//! | [`trainer`] | [`train`] / [`train_with`]: the loop over those parts |
//!
//! A run writes into its output folder `train.toml` (the config), `metrics.csv`, `validation.csv`,
//! `loss.png`, `checkpoints/step-NNNNNNNN/` and, when finished, `model/` (a checkpoint folder that
//! `MaskedTransformer::load` / `CausalTransformer::load` read). A run stopped at any point resumes
//! from its newest checkpoint with [`RunOptions::resume`] and ends with the same parameters as a
//! run that never stopped. A NaN or infinite loss stops the run with [`TrainError::NonFinite`].

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod events;
pub mod fit;
pub mod flops;
pub mod metrics;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod scaling;
pub mod source;
pub mod step;
pub mod trainer;
pub mod validator;

pub use config::ParallelConfig;
pub use config::{LrSchedule, Objective, TrainConfig};
pub use error::TrainError;
pub use events::{TrainEvent, TrainObserver};
pub use objective::{Batch, TrainModel};
pub use trainer::{
    train, train_objective, train_on, train_with, DataSpec, RunOptions, TrainSummary,
};
