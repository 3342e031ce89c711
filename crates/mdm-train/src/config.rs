//! Training hyper-parameters: one struct, read from TOML or JSON, saved next to the checkpoints.

use std::path::Path;

use mdm_data::shards::BlockOrder;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::TrainError;

/// Which model and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Masked diffusion model: the ELBO loss at masked positions (SMDM.md section 2).
    #[default]
    Mdm,
    /// Autoregressive baseline: next-token cross-entropy.
    Arm,
}

impl std::str::FromStr for Objective {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "mdm" => Ok(Self::Mdm),
            "arm" => Ok(Self::Arm),
            other => Err(TrainError::Config(format!(
                "objective `{other}` (expected mdm or arm)"
            ))),
        }
    }
}

/// The shape of the learning-rate schedule (both: linear warm-up, then cosine decay to `min_lr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Warm-up reaches `lr` at the end of step `warmup_steps - 1` (`lr (s + 1) / warmup`); the
    /// cosine reaches `min_lr` after the last step.
    #[default]
    Cosine,
    /// lit-gpt's `get_lr(it)` as SMDM's `train_mdm.py` uses it: `lr it / warmup` during warm-up
    /// (so step 0 has rate 0), then the cosine over `(it - warmup) / (steps - 1 - warmup)`,
    /// reaching `min_lr` at the last step.
    #[serde(alias = "lit-gpt")]
    Litgpt,
}

impl std::str::FromStr for LrSchedule {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "litgpt" | "lit-gpt" => Ok(Self::Litgpt),
            other => Err(TrainError::Config(format!(
                "learning-rate schedule `{other}` (expected cosine or litgpt)"
            ))),
        }
    }
}

/// Every hyper-parameter of a run. Defaults follow SMDM's recipe (AdamW 0.9 / 0.95, weight decay
/// 0.1, clipping at 1.0, `eps` 1e-3, warm-up then cosine decay to a tenth of the peak rate) at a
/// small-model learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// MDM or autoregressive baseline.
    pub objective: Objective,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Optimizer steps; when absent, derived from `flops_budget`.
    pub steps: Option<usize>,
    /// Training compute `6 N D` (N non-embedding parameters, D tokens) that sets `steps`.
    pub flops_budget: Option<f64>,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Shape of the warm-up and decay.
    pub lr_schedule: LrSchedule,
    /// AdamW beta 1.
    pub beta1: f64,
    /// AdamW beta 2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub adam_eps: f64,
    /// Decoupled weight decay (applied to every parameter, as SMDM does).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Minimum masking probability `eps` in `p_mask = (1 - eps) t + eps` (MDM).
    pub mask_eps: f64,
    /// Draw the `t` of a micro-batch stratified (one row per stratum `[j/b, (j+1)/b)`, MDLM's
    /// low-discrepancy sampler) instead of independently uniform (SMDM). Lowers the variance of
    /// the MDM's loss; the expectation is the same.
    pub stratified_t: bool,
    /// Probability that a batch is cut to a random length (stochastic sequence length; MDM).
    pub ssl_ratio: f64,
    /// Probability that the prompt of a fine-tuning batch is replaced by masks (CFG training; 0 =
    /// unsupervised CFG).
    pub cfg_drop: f64,
    /// Weight of the auxiliary load-balancing loss added to the MDM loss of a Mixture-of-Experts
    /// model ([`mdm_models::moe::load_balancing_loss`]); absent: the model's own
    /// (`router_aux_loss_coef` where its `config.json` sets `output_router_logits`, as LLaDA-MoE's
    /// code computes it; 0 for the others, whose code has none). 0 turns it off.
    pub router_aux_loss: Option<f64>,
    /// Seed of initialisation, data order, masking and times.
    pub seed: u64,
    /// Order of the training blocks: the whole corpus in one shuffle (default), or lit-gpt's
    /// buffers of `n_chunks` shards (`buffered`, SMDM's order; starves small corpora).
    pub data_order: BlockOrder,
    /// Shards per shuffle buffer of the data loader (`data_order = "buffered"` only).
    pub n_chunks: usize,
    /// Log a line every this many steps when no progress bar is shown.
    pub log_every: usize,
    /// Validate every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Validation blocks (at most; from the validation shards or data).
    pub eval_blocks: usize,
    /// Monte Carlo samples per validation block (MDM).
    pub eval_mc: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    pub save_every: usize,
    /// Checkpoints kept (the oldest are deleted).
    pub keep_last: usize,
    /// Data parallel: the devices of this process and whether it is one rank of an MPI job
    /// (`[parallel]` in TOML). Not part of the recipe: the updates do not depend on it, so
    /// a resumed run takes the caller's, not the saved one.
    pub parallel: ParallelConfig,
}

/// Where a run's peers are: the devices of this process and, for a run across machines, whether
/// this process is one rank of an MPI job (`mpirun`, Slurm's `srun`; Cargo feature `mpi`). Every
/// rank of a run must use the same number of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// This process's devices as the command line gives them (`cpu:2`, `cuda:0,cuda:1`,
    /// `wgpu:0`); empty: the backend's default device. Programs turn it into devices
    /// (`mdm::backend::devices`); the trainer takes the devices themselves.
    pub devices: String,
    /// Train as one rank of the MPI job this process was started in: the ranks average gradients
    /// and losses with MPI all-reduce ([`crate::mpi`]; needs the `mpi` feature and MPI initialized
    /// by [`crate::mpi::Mpi::init`] when the run starts). Rank 0 writes checkpoints, metrics and
    /// the model.
    pub mpi: bool,
    /// Seconds a rank may wait inside one MPI operation for the other ranks before the run stops
    /// with an error naming the ranks that did not arrive; must exceed the longest validation or
    /// checkpoint of rank 0.
    pub timeout_s: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            devices: String::new(),
            mpi: false,
            timeout_s: 600,
        }
    }
}

impl ParallelConfig {
    /// Checks the settings: a positive timeout, and MPI only in a build with it.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.mpi && !cfg!(feature = "mpi") {
            return Err(TrainError::Config(
                "parallel.mpi: this build has no MPI (build with the `mpi` feature: \
                 cargo build --release --features mpi, with Open MPI or MPICH installed)"
                    .into(),
            ));
        }
        if self.timeout_s == 0 {
            return Err(TrainError::Config(
                "parallel.timeout_s must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: Objective::Mdm,
            seq_len: 256,
            micro_batch: 8,
            grad_accum: 1,
            steps: None,
            flops_budget: None,
            lr: 2e-3,
            min_lr: 2e-4,
            warmup_steps: 100,
            lr_schedule: LrSchedule::Cosine,
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            mask_eps: 1e-3,
            stratified_t: false,
            ssl_ratio: 0.01,
            cfg_drop: 0.0,
            router_aux_loss: None,
            seed: 0,
            data_order: BlockOrder::Global,
            n_chunks: 8,
            log_every: 10,
            eval_every: 200,
            eval_blocks: 64,
            eval_mc: 4,
            save_every: 200,
            keep_last: 3,
            parallel: ParallelConfig::default(),
        }
    }
}

/// Training FLOPs as the paper counts them: `6 N D`, `N` non-embedding parameters, `D` tokens.
pub fn training_flops(non_embedding_params: usize, tokens: f64) -> f64 {
    6.0 * non_embedding_params as f64 * tokens
}

impl TrainConfig {
    /// Reads a `.toml` or `.json` file (by extension); missing keys take their defaults, unknown
    /// keys are an error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let config: Self =
            parsed.map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// The recipe a run saved in its `train.toml` (TOML), without its `[parallel]` section: how
    /// an earlier invocation was spread over devices and ranks is not part of the recipe (a
    /// resumed run takes the caller's), and folders written by versions with other parallel
    /// settings resume.
    pub fn recipe_from_file(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bad = |e: String| TrainError::Config(format!("{}: {e}", path.display()));
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        table.remove("parallel");
        table
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig is always serialisable")
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.seq_len * self.micro_batch * self.grad_accum
    }

    /// The number of optimizer steps: `steps`, or the FLOPs budget divided by
    /// `6 N tokens_per_step`.
    pub fn total_steps(&self, non_embedding_params: usize) -> Result<usize, TrainError> {
        match (self.steps, self.flops_budget) {
            (Some(steps), _) => Ok(steps),
            (None, Some(budget)) => {
                let per_step = training_flops(non_embedding_params, self.tokens_per_step() as f64);
                let steps = (budget / per_step).floor() as usize;
                if steps == 0 {
                    return Err(TrainError::Config(format!(
                        "a budget of {budget:.3e} FLOPs is less than one step ({per_step:.3e})"
                    )));
                }
                Ok(steps)
            }
            (None, None) => Err(TrainError::Config("set `steps` or `flops_budget`".into())),
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.seq_len < 2 || self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("seq_len >= 2, micro_batch >= 1 and grad_accum >= 1 are required".into());
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!("lr {} / min_lr {}", self.lr, self.min_lr));
        }
        for (name, v) in [
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("mask_eps", self.mask_eps),
            ("ssl_ratio", self.ssl_ratio),
            ("cfg_drop", self.cfg_drop),
        ] {
            let allowed = (0.0..1.0).contains(&v) || (name == "ssl_ratio" && v == 1.0);
            if !allowed {
                return bad(format!("{name} = {v} must lie in [0, 1)"));
            }
        }
        if self.adam_eps <= 0.0 || self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return bad("adam_eps > 0, weight_decay >= 0, grad_clip >= 0 required".into());
        }
        if let Some(w) = self.router_aux_loss {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!(
                    "router_aux_loss = {w} must be finite and not negative"
                ));
            }
        }
        if self.keep_last == 0 || self.n_chunks == 0 || self.eval_mc == 0 {
            return bad("keep_last, n_chunks and eval_mc must be positive".into());
        }
        self.parallel.validate()
    }
}

/// The learning rate at optimizer step `step` (0-based): linear warm-up to `lr` over
/// `warmup_steps`, then cosine decay to `min_lr`, in the shape of `config.lr_schedule`.
pub fn learning_rate(config: &TrainConfig, step: usize, total_steps: usize) -> f64 {
    let (warmup_numerator, decay_end) = match config.lr_schedule {
        LrSchedule::Cosine => (step + 1, total_steps),
        LrSchedule::Litgpt => (step, total_steps.saturating_sub(1)),
    };
    if step < config.warmup_steps {
        return config.lr * warmup_numerator as f64 / config.warmup_steps as f64;
    }
    let span = decay_end.saturating_sub(config.warmup_steps).max(1) as f64;
    let progress = ((step - config.warmup_steps) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    config.min_lr + cosine * (config.lr - config.min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_recipe_resumes_whatever_parallel_section_it_holds() {
        let dir = std::env::temp_dir().join(format!("mdm-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train.toml");
        let config = TrainConfig {
            seq_len: 64,
            ..Default::default()
        };
        // a train.toml of an earlier version: burn-collective's node settings
        let old = config.to_toml().replace(
            "[parallel]",
            "[parallel]\nnodes = 1\nnode_rank = 0\ncoordinator = \"ws://10.0.0.1:3000\"",
        );
        std::fs::write(&path, old).unwrap();
        let read = TrainConfig::recipe_from_file(&path).unwrap();
        assert_eq!(read.seq_len, 64);
        assert_eq!(read.parallel, ParallelConfig::default());
        // read as a config file the user wrote, the unknown key is named
        let error = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown field"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mpi_is_refused_in_a_build_without_it_and_a_zero_timeout_always() {
        let mpi = ParallelConfig {
            mpi: true,
            ..Default::default()
        };
        assert_eq!(mpi.validate().is_ok(), cfg!(feature = "mpi"));
        let zero = ParallelConfig {
            timeout_s: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = TrainConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            ..Default::default()
        };
        assert!((learning_rate(&c, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 9, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&c, 60, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&c, 110, 110) - 0.1).abs() < 1e-12);
        // lit-gpt's shape, as the train-parity fixture's `train.json` lists it (6 steps, warm-up 2)
        let lit = TrainConfig {
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            lr_schedule: LrSchedule::Litgpt,
            ..Default::default()
        };
        let expected = [0.0, 0.0015, 0.003, 0.002325, 0.000975, 0.0003];
        for (s, e) in expected.iter().enumerate() {
            assert!((learning_rate(&lit, s, 6) - e).abs() < 1e-15, "step {s}");
        }
        let mut prev = f64::INFINITY;
        for s in 10..110 {
            let lr = learning_rate(&c, s, 110);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn steps_from_a_flops_budget() {
        let c = TrainConfig {
            seq_len: 100,
            micro_batch: 2,
            grad_accum: 5,
            flops_budget: Some(6.0 * 1000.0 * 1000.0 * 10.5),
            ..Default::default()
        };
        // 1000 tokens per step at N = 1000: 6e6 FLOPs per step
        assert_eq!(c.total_steps(1000).unwrap(), 10);
        assert!(TrainConfig::default().total_steps(1000).is_err());
        let tiny = TrainConfig {
            flops_budget: Some(1.0),
            ..c
        };
        assert!(tiny.total_steps(1000).is_err());
    }

    #[test]
    fn toml_and_json_round_trip_and_reject_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = TrainConfig {
            objective: Objective::Arm,
            steps: Some(7),
            ..Default::default()
        };
        let toml_path = dir.path().join("c.toml");
        std::fs::write(&toml_path, c.to_toml()).unwrap();
        assert_eq!(TrainConfig::from_file(&toml_path).unwrap(), c);
        let json_path = dir.path().join("c.json");
        std::fs::write(&json_path, r#"{"objective": "arm", "steps": 7}"#).unwrap();
        assert_eq!(TrainConfig::from_file(&json_path).unwrap(), c);
        std::fs::write(&toml_path, "stepz = 3\n").unwrap();
        let err = TrainConfig::from_file(&toml_path).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("stepz"), "{err}");
        assert!(TrainConfig {
            beta2: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
