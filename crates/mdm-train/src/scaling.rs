//! IsoFLOP sweeps: a grid of compute budgets x model sizes x {MDM, baseline} read from TOML, each
//! run trained to its budget with the shared trainer, resumable (a finished run is skipped, an
//! interrupted one resumed), one row per run in `results.csv`; then the fits of [`crate::fit`] and
//! their plots.
//!
//! ```toml
//! data = "data/kjv"            # a folder written by `prepare`
//! out = "runs/scaling"
//! budgets = [3e12, 1e13, 3e13] # training FLOPs, 6 N D
//! models = ["mdm", "arm"]
//! warmup_fraction = 0.05       # warm-up steps as a fraction of each run's steps
//!
//! [[sizes]]
//! name = "s1"
//! n_layer = 2
//! n_head = 2
//! n_embd = 48
//! intermediate = 128
//! budgets = [3e12, 1e13]        # optional: only these of the grid's budgets, or per model:
//!                               # budgets = { mdm = [3e12, 1e13], arm = [3e12] }
//!
//! [[sizes]]
//! name = "6M"                   # or a Diff_LLaMA name
//!
//! [train]                       # any TrainConfig key (seq_len, micro_batch, lr, eval_blocks ...)
//! seq_len = 128
//! micro_batch = 8
//! ```

use std::path::{Path, PathBuf};

use mdm_data::shards::find_shards;
use mdm_kernels::AutodiffKernels;
use mdm_models::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::fit::{
    compute_gap, compute_gap_interval, fit_isoflop, fit_power_law, IsoFlopOptimum, PowerLaw,
};
use crate::flops::training_flops_breakdown;
use crate::metrics::{CsvTable, ValidRow};
use crate::{DataSpec, Objective, RunOptions, TrainConfig, TrainError};

/// A model size of the grid: a Diff_LLaMA name alone, or custom dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    /// Label (and, without dimensions, the Diff_LLaMA name).
    pub name: String,
    /// Layers.
    pub n_layer: Option<usize>,
    /// Attention heads.
    pub n_head: Option<usize>,
    /// Width.
    pub n_embd: Option<usize>,
    /// SwiGLU width (default 8/3 of the width rounded up to a multiple of 32).
    pub intermediate: Option<usize>,
    /// The budgets this size is trained at (default every budget of the grid): an IsoFLOP sweep
    /// slides its window of sizes with the budget instead of training a tiny model for hundreds
    /// of epochs or a large one for a few steps. Each must be one of the grid's budgets.
    #[serde(default)]
    pub budgets: Option<SizeBudgets>,
}

/// The budgets of one size: the same for every model, or per model (the two families' optima
/// lie at different sizes, so one may need a size the other does not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeBudgets {
    /// Every model of the grid at these budgets.
    Every(Vec<f64>),
    /// Each model at its own budgets.
    PerModel(ModelBudgets),
}

/// Per-model budgets of a size; a model left out is not trained at this size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBudgets {
    /// The MDM's budgets.
    #[serde(default)]
    pub mdm: Vec<f64>,
    /// The baseline's budgets.
    #[serde(default)]
    pub arm: Vec<f64>,
}

impl SizeBudgets {
    /// The budgets `model` is trained at.
    fn of(&self, model: Objective) -> &[f64] {
        match (self, model) {
            (Self::Every(list), _) => list,
            (Self::PerModel(m), Objective::Mdm) => &m.mdm,
            (Self::PerModel(m), Objective::Arm) => &m.arm,
        }
    }

    /// Every budget listed, for any model.
    fn listed(&self) -> impl Iterator<Item = &f64> {
        let (a, b): (&[f64], &[f64]) = match self {
            Self::Every(list) => (list, &[]),
            Self::PerModel(m) => (&m.mdm, &m.arm),
        };
        a.iter().chain(b)
    }
}

impl SizeSpec {
    /// Whether this size is trained as `model` at `budget`.
    pub fn trains_at(&self, budget: f64, model: Objective) -> bool {
        self.budgets
            .as_ref()
            .is_none_or(|b| b.of(model).contains(&budget))
    }

    /// The model config for `vocab` and sequences of `seq_len`.
    pub fn model_config(&self, vocab: usize, seq_len: usize) -> Result<ModelConfig, TrainError> {
        let config = match (self.n_layer, self.n_embd) {
            (Some(n_layer), Some(n_embd)) => {
                let inter = self
                    .intermediate
                    .unwrap_or_else(|| (8 * n_embd / 3).div_ceil(32) * 32);
                let n_head = self.n_head.unwrap_or((n_embd / 64).max(1));
                ModelConfig::custom(vocab, n_layer, n_head, n_embd, inter, seq_len)
            }
            (None, None) => ModelConfig::named(&self.name)
                .map_err(|e| TrainError::Config(format!("size `{}`: {e}", self.name)))?
                .with_vocab_size(vocab),
            _ => {
                return Err(TrainError::Config(format!(
                    "size `{}`: give both n_layer and n_embd, or neither (a Diff_LLaMA name)",
                    self.name
                )))
            }
        };
        let block = config.block_size.max(seq_len);
        Ok(config.with_block_size(block))
    }
}

fn both_models() -> Vec<Objective> {
    vec![Objective::Mdm, Objective::Arm]
}

fn default_warmup() -> f64 {
    0.05
}

/// The sweep: every budget x size x model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingGrid {
    /// Prepared data folder (tokenizer.json, train_*/valid_* shards).
    pub data: PathBuf,
    /// Output folder: `runs/<run>/`, `results.csv`, fits and plots.
    pub out: PathBuf,
    /// Training compute budgets (FLOPs, `6 N D`).
    pub budgets: Vec<f64>,
    /// Model sizes.
    pub sizes: Vec<SizeSpec>,
    /// Which models (default both).
    #[serde(default = "both_models")]
    pub models: Vec<Objective>,
    /// Warm-up steps as a fraction of each run's steps.
    #[serde(default = "default_warmup")]
    pub warmup_fraction: f64,
    /// Training settings shared by every run (objective, steps and budget are set per run).
    #[serde(default)]
    pub train: TrainConfig,
}

impl ScalingGrid {
    /// Reads a grid from TOML; relative `data` / `out` paths are taken from the working directory.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let grid: Self = toml::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        if grid.budgets.is_empty() || grid.sizes.is_empty() || grid.models.is_empty() {
            return Err(TrainError::Config(format!(
                "{}: budgets, sizes and models must not be empty",
                path.display()
            )));
        }
        for size in &grid.sizes {
            if let Some(b) = size
                .budgets
                .iter()
                .flat_map(SizeBudgets::listed)
                .find(|b| !grid.budgets.contains(b))
            {
                return Err(TrainError::Config(format!(
                    "{}: size `{}` lists budget {b:e}, which is not in the grid's budgets",
                    path.display(),
                    size.name
                )));
            }
        }
        Ok(grid)
    }

    /// The grid points: (budget, size, model) in the order the sweep trains them.
    pub fn points(&self) -> impl Iterator<Item = (f64, &SizeSpec, Objective)> + '_ {
        self.budgets.iter().flat_map(move |&budget| {
            self.sizes.iter().flat_map(move |size| {
                self.models
                    .iter()
                    .filter(move |&&m| size.trains_at(budget, m))
                    .map(move |&m| (budget, size, m))
            })
        })
    }

    /// The run name of one grid point, e.g. `mdm-s1-3e12`.
    pub fn run_name(model: Objective, size: &SizeSpec, budget: f64) -> String {
        let m = match model {
            Objective::Mdm => "mdm",
            Objective::Arm => "arm",
        };
        format!("{m}-{}-{budget:e}", size.name)
    }
}

/// One finished run: a row of `results.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Run name.
    pub run: String,
    /// `mdm` or `arm`.
    pub model: String,
    /// Size label.
    pub size: String,
    /// Non-embedding parameters `N`.
    pub params: usize,
    /// The budget `C`.
    pub budget: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Training tokens `D`.
    pub tokens: u64,
    /// `6 N D` of the tokens actually trained (steps are whole, so slightly under the budget).
    pub flops_paper: f64,
    /// The same with attention and head terms.
    pub flops_full: f64,
    /// Validation loss, nats per token (MDM: ELBO bound; baseline: exact NLL).
    pub valid_nats: f64,
    /// Its standard error.
    pub valid_stderr: f64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
}

impl crate::metrics::CsvRow for RunResult {
    const COLUMNS: &'static [&'static str] = &[
        "run",
        "model",
        "size",
        "params",
        "budget",
        "steps",
        "tokens",
        "flops_paper",
        "flops_full",
        "valid_nats",
        "valid_stderr",
        "wall_s",
    ];
}

/// Reads `results.csv` (empty when absent).
pub fn read_results(path: &Path) -> Result<Vec<RunResult>, TrainError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    CsvTable::<RunResult>::read(path)
}

/// `(nats, stderr in nats)` of the validation a run wrote at `step` (its `validation.csv`).
fn final_validation(dir: &Path, step: usize) -> Result<(f64, f64), TrainError> {
    let path = dir.join("validation.csv");
    let missing = || {
        TrainError::Config(format!(
            "{}: no validation at step {step} (does the data folder have validation shards?)",
            path.display()
        ))
    };
    if !path.is_file() {
        return Err(missing());
    }
    let row = CsvTable::<ValidRow>::read(&path)?
        .into_iter()
        .find(|r| r.step == step)
        .ok_or_else(missing)?;
    Ok((row.nats_per_token, row.stderr_bits * std::f64::consts::LN_2))
}

/// What happened to one grid point.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// Already in `results.csv`.
    Skipped(String),
    /// Starting (or resuming, when `true`) a run of this many steps.
    Started {
        /// Run name.
        run: String,
        /// Steps it is planned for.
        steps: usize,
        /// Whether it resumes an interrupted run.
        resumed: bool,
    },
    /// Finished and recorded.
    Finished(RunResult),
}

/// Runs every grid point not yet in `<out>/results.csv`, appending a row after each.
/// `progress` shows each run's progress bar; `on_event` reports skips, starts and results. Each run
/// is data-parallel over `devices` (one peer each; `grid.train.parallel.devices` names them in
/// the runs' train.toml).
pub fn run_sweep<B: AutodiffKernels>(
    grid: &ScalingGrid,
    progress: bool,
    devices: &[B::Device],
    mut on_event: impl FnMut(&RunEvent),
) -> Result<Vec<RunResult>, TrainError> {
    let tokenizer = mdm_data::Tokenizer::from_file(grid.data.join("tokenizer.json"))?;
    let vocab = tokenizer.vocab_size();
    let train_files = find_shards(&grid.data, "train")?;
    let valid_files = find_shards(&grid.data, "valid")?;
    if train_files.is_empty() {
        return Err(TrainError::Config(format!(
            "no train_*.bin shards in {}",
            grid.data.display()
        )));
    }
    std::fs::create_dir_all(&grid.out).map_err(|e| TrainError::Config(e.to_string()))?;
    let results_path = grid.out.join("results.csv");
    let table = CsvTable::<RunResult>::open_keeping(results_path, |_| true)?;
    let mut results = CsvTable::<RunResult>::read(table.path())?;
    for (budget, size, model) in grid.points() {
        let run = ScalingGrid::run_name(model, size, budget);
        if results.iter().any(|r| r.run == run) {
            on_event(&RunEvent::Skipped(run));
            continue;
        }
        let model_config = size.model_config(vocab, grid.train.seq_len)?;
        let n = model_config.non_embedding_params();
        let mut config = grid.train.clone();
        config.objective = model;
        config.steps = None;
        config.flops_budget = Some(budget);
        let steps = config.total_steps(n)?;
        config.steps = Some(steps);
        config.warmup_steps = ((steps as f64 * grid.warmup_fraction) as usize).max(1);
        config.eval_every = 0;
        config.save_every = config.save_every.min(steps.div_ceil(2)).max(1);
        let dir = grid.out.join("runs").join(&run);
        let resumed = dir.join("checkpoints").is_dir();
        on_event(&RunEvent::Started {
            run: run.clone(),
            steps,
            resumed,
        });
        let options = RunOptions {
            resume: resumed,
            init_from: None,
            progress,
            stop_after: None,
        };
        let data = DataSpec::Shards {
            train: train_files.clone(),
            valid: valid_files.clone(),
        };
        let summary =
            crate::train_objective::<B>(&model_config, &config, data, &dir, &options, devices)?;
        // a run finished before its row was written validates no more when resumed: its
        // final validation is read back from its validation.csv
        let (valid_nats, valid_stderr) = match summary.validation {
            Some(v) => (v.nats, v.stderr),
            None => final_validation(&dir, summary.steps)?,
        };
        let flops = training_flops_breakdown(&model_config, config.seq_len, summary.tokens as f64);
        let result = RunResult {
            run,
            model: if model == Objective::Mdm {
                "mdm"
            } else {
                "arm"
            }
            .into(),
            size: size.name.clone(),
            params: n,
            budget,
            steps: summary.steps,
            tokens: summary.tokens,
            flops_paper: flops.paper,
            flops_full: flops.full,
            valid_nats,
            valid_stderr,
            wall_s: summary.elapsed_s,
        };
        table.append(&result)?;
        on_event(&RunEvent::Finished(result.clone()));
        results.push(result);
    }
    Ok(results)
}

/// The fits of one model family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyFit {
    /// `mdm` or `arm`.
    pub model: String,
    /// Per budget: `(C, optimum)`.
    pub optima: Vec<(f64, IsoFlopOptimum)>,
    /// `L*(C) = a C^b` (nats per token).
    pub loss_law: Option<PowerLaw>,
    /// `N*(C) = k C^c`.
    pub params_law: Option<PowerLaw>,
}

/// Everything [`fit_sweep`] finds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepFit {
    /// One per model family present.
    pub families: Vec<FamilyFit>,
    /// The compute gap at each budget, when both laws exist.
    pub compute_gap: Vec<ComputeGap>,
}

/// How many times the baseline's compute the MDM needs for the baseline's loss at one budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComputeGap {
    /// The baseline's compute `C`.
    pub budget: f64,
    /// `C' / C` with `L*_mdm(C') = L*_arm(C)`.
    pub gap: f64,
    /// Its 95 % interval ([`compute_gap_interval`]).
    pub ci: (f64, f64),
}

/// Fits each family's IsoFLOP optima (budgets with 3+ sizes) and power laws (2+ optima), and the
/// compute gap between them.
pub fn fit_sweep(results: &[RunResult]) -> Result<SweepFit, TrainError> {
    let mut families = Vec::new();
    for model in ["mdm", "arm"] {
        let rows: Vec<&RunResult> = results.iter().filter(|r| r.model == model).collect();
        if rows.is_empty() {
            continue;
        }
        let mut budgets: Vec<f64> = rows.iter().map(|r| r.budget).collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        let mut optima = Vec::new();
        for &c in &budgets {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.budget == c)
                .map(|r| (r.params as f64, r.valid_nats))
                .collect();
            if points.len() >= 3 {
                optima.push((c, fit_isoflop(&points)?));
            }
        }
        let law = |f: &dyn Fn(&IsoFlopOptimum) -> f64| {
            (optima.len() >= 2)
                .then(|| fit_power_law(&optima.iter().map(|(c, o)| (*c, f(o))).collect::<Vec<_>>()))
                .transpose()
        };
        let loss_law = law(&|o| o.loss)?;
        let params_law = law(&|o| o.params)?;
        families.push(FamilyFit {
            model: model.into(),
            optima,
            loss_law,
            params_law,
        });
    }
    let law_of = |m: &str| {
        families
            .iter()
            .find(|f| f.model == m)
            .and_then(|f| f.loss_law)
    };
    let compute_gap = match (law_of("mdm"), law_of("arm")) {
        (Some(mdm), Some(arm)) => {
            let mut budgets: Vec<f64> = results.iter().map(|r| r.budget).collect();
            budgets.sort_by(f64::total_cmp);
            budgets.dedup();
            budgets
                .iter()
                .map(|&c| ComputeGap {
                    budget: c,
                    gap: compute_gap(&mdm, &arm, c),
                    ci: compute_gap_interval(&mdm, &arm, c),
                })
                .collect()
        }
        _ => vec![],
    };
    Ok(SweepFit {
        families,
        compute_gap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_parses_and_names_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "data = \"d\"\nout = \"o\"\nbudgets = [1e12, 3e12]\n\
             [[sizes]]\nname = \"s1\"\nn_layer = 2\nn_embd = 48\nintermediate = 128\n\
             [[sizes]]\nname = \"6M\"\n[train]\nseq_len = 64\n",
        )
        .unwrap();
        let g = ScalingGrid::from_file(&path).unwrap();
        assert_eq!(g.models, both_models());
        assert_eq!(g.train.seq_len, 64);
        assert_eq!(
            ScalingGrid::run_name(Objective::Arm, &g.sizes[0], 3e12),
            "arm-s1-3e12"
        );
        let c = g.sizes[0].model_config(4096, 64).unwrap();
        assert_eq!(
            (c.n_layer, c.n_embd, c.intermediate_size, c.block_size),
            (2, 48, 128, 64)
        );
        assert!(g.sizes[1].model_config(4096, 64).unwrap().n_layer > 0);
        std::fs::write(
            &path,
            "data = \"d\"\nout = \"o\"\nbudgets = []\nsizes = []\n",
        )
        .unwrap();
        assert!(ScalingGrid::from_file(&path).is_err());
        std::fs::write(
            &path,
            "data = \"d\"\nout = \"o\"\nbudgets = [1]\nsizes = []\ntypo = 1\n",
        )
        .unwrap();
        assert!(ScalingGrid::from_file(&path).is_err());
    }

    #[test]
    fn sizes_slide_with_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        let sizes = "[[sizes]]\nname = \"a\"\nn_layer = 1\nn_embd = 32\nbudgets = [1e12]\n\
                     [[sizes]]\nname = \"b\"\nn_layer = 1\nn_embd = 64\n\
                     [[sizes]]\nname = \"c\"\nn_layer = 1\nn_embd = 96\n\
                     budgets = { arm = [1e12], mdm = [3e12] }\n";
        std::fs::write(
            &path,
            format!("data = \"d\"\nout = \"o\"\nbudgets = [1e12, 3e12]\n{sizes}"),
        )
        .unwrap();
        let g = ScalingGrid::from_file(&path).unwrap();
        let names: Vec<String> = g
            .points()
            .map(|(c, s, m)| ScalingGrid::run_name(m, s, c))
            .collect();
        assert_eq!(
            names,
            [
                "mdm-a-1e12",
                "arm-a-1e12",
                "mdm-b-1e12",
                "arm-b-1e12",
                "arm-c-1e12",
                "mdm-b-3e12",
                "arm-b-3e12",
                "mdm-c-3e12"
            ]
        );
        // a budget the grid does not have is refused, naming the size
        std::fs::write(
            &path,
            format!("data = \"d\"\nout = \"o\"\nbudgets = [3e12]\n{sizes}"),
        )
        .unwrap();
        let e = ScalingGrid::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("size `a`") && e.contains("1e12"), "{e}");
        // and per-model budgets with a misspelt model
        std::fs::write(
            &path,
            "data = \"d\"\nout = \"o\"\nbudgets = [1e12]\n[[sizes]]\nname = \"a\"\n\
             budgets = { mdn = [1e12] }\n",
        )
        .unwrap();
        let e = ScalingGrid::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("budgets"), "{e}");
    }

    #[test]
    fn results_round_trip_and_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let table = CsvTable::<RunResult>::open_keeping(path.clone(), |_| true).unwrap();
        // synthetic losses: L = L*(C) + 0.1 (ln N - ln N*(C))^2 with N*(C) = 0.5 C^0.5,
        // L*_arm = 30 C^-0.05 and the MDM needing 8x the compute
        let arm_star = |c: f64| 30.0 * c.powf(-0.05);
        let mut rows = vec![];
        for c in [1e12f64, 1e13, 1e14] {
            let n_star = 0.5 * c.powf(0.5);
            for f in [0.25f64, 0.5, 1.0, 2.0, 4.0] {
                for (model, l_star) in [("arm", arm_star(c)), ("mdm", arm_star(c / 8.0))] {
                    let n = n_star * f;
                    let r = RunResult {
                        run: format!("{model}-{f}-{c:e}"),
                        model: model.into(),
                        size: f.to_string(),
                        params: n as usize,
                        budget: c,
                        steps: 10,
                        tokens: 1000,
                        flops_paper: c,
                        flops_full: c * 1.2,
                        valid_nats: l_star + 0.1 * f64::ln(f).powi(2),
                        valid_stderr: 0.01,
                        wall_s: 1.0,
                    };
                    table.append(&r).unwrap();
                    rows.push(r);
                }
            }
        }
        let back = read_results(&path).unwrap();
        assert_eq!(back.len(), rows.len());
        assert_eq!(back[3].run, rows[3].run);
        assert!((back[3].valid_nats - rows[3].valid_nats).abs() < 1e-6);
        let fit = fit_sweep(&back).unwrap();
        assert_eq!(fit.families.len(), 2);
        let arm = fit.families.iter().find(|f| f.model == "arm").unwrap();
        let law = arm.loss_law.unwrap();
        assert!((law.exponent + 0.05).abs() < 1e-3, "{law:?}");
        let n_law = arm.params_law.unwrap();
        assert!((n_law.exponent - 0.5).abs() < 1e-2, "{n_law:?}");
        for g in &fit.compute_gap {
            assert!((g.gap - 8.0).abs() < 0.2, "{:?}", fit.compute_gap);
            assert!(g.ci.0 < g.gap && g.gap < g.ci.1, "{g:?}");
        }
        let header = <RunResult as crate::metrics::CsvRow>::COLUMNS.join(",");
        std::fs::write(&path, format!("{header}\na,b\n")).unwrap();
        let err = read_results(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        // a finished run's validation is read back from its validation.csv
        std::fs::write(
            dir.path().join("validation.csv"),
            "step,tokens,nats_per_token,bits_per_token,stderr_bits,perplexity\n5,10,2.0,2.885,0.1,7.4\n9,20,1.5,2.164,0.2,4.5\n",
        )
        .unwrap();
        let (nats, se) = final_validation(dir.path(), 9).unwrap();
        assert_eq!(nats, 1.5);
        assert!((se - 0.2 * std::f64::consts::LN_2).abs() < 1e-12);
        assert!(final_validation(dir.path(), 7).is_err());
    }
}
