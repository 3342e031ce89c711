//! Data parallel on one machine: two peers (threads on the CPU backend, burn-collective's
//! all-reduce), each on half of every batch, make the same updates as one device on the whole
//! batch: the optimizer step alone, and whole training runs (MDM, with validation, checkpoints
//! and a resume on another number of devices).

use std::path::Path;
use std::thread;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use mdm_core::rng_from_seed;
use mdm_kernels::AutodiffKernels;
use mdm_models::{CausalTransformer, MaskedTransformer, ModelConfig};
use mdm_train::optim::{AdamW, AdamWConfig};
use mdm_train::parallel::CollectiveMean;
use mdm_train::step::{optimizer_step, GradientReduce, SingleDevice};
use mdm_train::{
    train_on, Batch, DataSpec, Objective, RunOptions, TrainConfig, TrainError, TrainEvent,
    TrainModel, TrainSummary,
};

mod common;

type Ad = Autodiff<Flex>;

/// burn-collective has one local server per backend and process: the tests take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const STEPS: usize = 3;
const ROWS: usize = 4;
const COLS: usize = 17;

fn config() -> ModelConfig {
    ModelConfig::custom(64, 2, 2, 32, 64, COLS)
}

/// Rows `rows` of step `step`'s global batch (a fixed pattern over the vocabulary).
fn batch(step: usize, rows: std::ops::Range<usize>) -> Batch {
    let ids = rows
        .clone()
        .flat_map(|r| (0..COLS).map(move |c| ((r * 7 + c * 3 + step * 5) % 64) as u32))
        .collect();
    Batch {
        ids,
        rows: rows.len(),
        cols: COLS,
        prompt_len: None,
    }
}

struct Flatten(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = param.val().into_data().convert::<f32>();
        self.0
            .extend(values.to_vec::<f32>().expect("f32 parameters"));
    }
}

/// Trains the baseline (no random draws in its loss) for `STEPS` steps on `rows` of every batch,
/// reducing with `reduce`; returns its parameters, flattened.
fn train(rows: std::ops::Range<usize>, reduce: &mut dyn GradientReduce<Flex>) -> Vec<f32> {
    let device = Default::default();
    let mut model: CausalTransformer<Ad> = config().init_causal(3, &device).unwrap();
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_norm: 1.0,
    });
    let train_config = TrainConfig {
        ssl_ratio: 0.0,
        ..TrainConfig::default()
    };
    let mut rng = rng_from_seed(0);
    for step in 0..STEPS {
        let b = batch(step, rows.clone());
        let (next, _) = optimizer_step(model, &mut optim, 1e-2, 1, step, reduce, |m, _| {
            m.loss(&b, &train_config, &mut rng)
        })
        .unwrap();
        model = next;
    }
    let mut flat = Flatten(Vec::new());
    model.visit(&mut flat);
    flat.0
}

#[test]
fn two_peers_on_half_batches_update_as_one_device_on_the_whole_batch() {
    let _turn = turn();
    let whole = train(0..ROWS, &mut SingleDevice);
    let halves: Vec<Vec<f32>> = thread::scope(|s| {
        let peers: Vec<_> = (0..2)
            .map(|peer| {
                s.spawn(move || {
                    let mut reduce =
                        CollectiveMean::<Flex>::register(peer, 2, &Default::default()).unwrap();
                    let half = ROWS / 2;
                    train(peer * half..(peer + 1) * half, &mut reduce)
                })
            })
            .collect();
        peers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert_eq!(halves[0], halves[1], "the replicas stay identical");
    let diff = whole
        .iter()
        .zip(&halves[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // the mean of two half-batch means against one whole-batch mean: float summation order only
    // (measured 1.7e-7 after three steps)
    assert!(diff < 1e-6, "two peers differ from one device by {diff}");
    // and the peers did reduce: one peer alone on its half goes elsewhere
    let alone = train(0..ROWS / 2, &mut SingleDevice);
    let apart = whole
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        apart > 1e-3,
        "half a batch alone moved the weights by only {apart}"
    );
    eprintln!(
        "two peers against one device: max |diff| {diff:.2e}; half a batch alone: {apart:.2e}"
    );
}

fn run_config() -> TrainConfig {
    TrainConfig {
        objective: Objective::Mdm,
        seq_len: 16,
        micro_batch: 2,
        grad_accum: 2,
        steps: Some(6),
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 2,
        ssl_ratio: 0.2,
        eval_every: 3,
        eval_blocks: 8,
        eval_mc: 2,
        save_every: 2,
        keep_last: 2,
        seed: 5,
        ..Default::default()
    }
}

/// Trains the MDM on `devices` CPU peers into `out`; returns the summary and the events seen.
fn run_on(
    peers: usize,
    data: &DataSpec,
    out: &Path,
    options: RunOptions,
) -> Result<(TrainSummary, Vec<TrainEvent>), TrainError> {
    let mut events = Vec::new();
    let mut observer = |e: &TrainEvent| events.push(e.clone());
    let devices = vec![Default::default(); peers];
    let summary = train_on::<Ad, MaskedTransformer<Ad>>(
        &ModelConfig::custom(common::VOCAB, 2, 2, 32, 64, 32),
        &run_config(),
        data.clone(),
        out,
        &options,
        &devices,
        &mut observer,
    )?;
    Ok((summary, events))
}

#[test]
fn a_two_peer_run_equals_a_one_device_run_and_resumes_on_one_device() {
    let _turn = turn();
    let data_dir = tempfile::tempdir().unwrap();
    let (train, valid) = common::shards(data_dir.path());
    let data = DataSpec::Shards { train, valid };

    let one = tempfile::tempdir().unwrap();
    let (single, _) = run_on(1, &data, one.path(), RunOptions::default()).unwrap();
    let two = tempfile::tempdir().unwrap();
    let (pair, events) = run_on(2, &data, two.path(), RunOptions::default()).unwrap();

    // the MDM's masks and times are drawn per micro-batch, so the peers draw what one device
    // draws: the same updates up to the summation order of the mean (measured: see stderr)
    let diff = common::max_weight_diff(&one.path().join("model"), &two.path().join("model"));
    eprintln!("two peers against one device after 6 MDM steps: max |diff| {diff:.2e}");
    assert!(diff < 1e-6, "two peers differ from one device by {diff:e}");
    assert!((single.last_loss - pair.last_loss).abs() < 1e-6);
    let (v1, v2) = (single.validation.unwrap(), pair.validation.unwrap());
    assert!((v1.nats - v2.nats).abs() < 1e-6, "{v1:?} vs {v2:?}");
    // the leader alone reports and writes: one row per step, one Step event per step
    let steps = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Step { .. }))
        .count();
    assert_eq!(steps, 6);
    let metrics = std::fs::read_to_string(two.path().join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 6, "{metrics}");

    // stopped after 3 steps on two peers, resumed on one device: the same run
    let split = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    let (partial, _) = run_on(2, &data, split.path(), stop).unwrap();
    assert_eq!((partial.steps, partial.model_dir.is_none()), (3, true));
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    run_on(1, &data, split.path(), resume).unwrap();
    let resumed = common::max_weight_diff(&one.path().join("model"), &split.path().join("model"));
    assert!(resumed < 1e-6, "the resumed run differs by {resumed:e}");

    // grad_accum must split over the peers
    let three = tempfile::tempdir().unwrap();
    match run_on(3, &data, three.path(), RunOptions::default()) {
        Err(TrainError::Config(m)) => assert!(m.contains("multiple of the 3 peers"), "{m}"),
        other => panic!(
            "expected a configuration error, got {:?}",
            other.map(|r| r.0)
        ),
    }
}

/// The MDM whose second peer fails at its fourth micro-batch (a device that dies mid-run).
#[derive(Module, Debug)]
struct Flaky<B: Backend> {
    inner: MaskedTransformer<B>,
}

static PEER_1_LOSSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl<B: AutodiffKernels> TrainModel<B> for Flaky<B> {
    const KIND: mdm_models::checkpoint::ModelKind = mdm_models::checkpoint::ModelKind::Masked;

    fn init(
        config: &ModelConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, mdm_models::ModelError> {
        Ok(Self {
            inner: config.init_masked(seed, device)?,
        })
    }
    fn load(dir: &Path, device: &B::Device) -> Result<Self, mdm_models::ModelError> {
        Ok(Self {
            inner: MaskedTransformer::load(dir, device)?,
        })
    }
    fn save(&self, dir: &Path) -> Result<(), mdm_models::ModelError> {
        self.inner.save(dir)
    }
    fn model_config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn block_len(seq_len: usize) -> usize {
        seq_len
    }
    fn loss(
        &self,
        batch: &Batch,
        config: &TrainConfig,
        rng: &mut mdm_core::MdmRng,
    ) -> Result<Tensor<B, 1>, TrainError> {
        if thread::current().name() == Some("mdm-peer-1")
            && PEER_1_LOSSES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 3
        {
            return Err(TrainError::Config("peer 1's device went away".into()));
        }
        self.inner.loss(batch, config, rng)
    }
    fn validate(
        model: &Self::InnerModule,
        blocks: &[Vec<u32>],
        config: &TrainConfig,
        rng: &mut mdm_core::MdmRng,
    ) -> Result<mdm_eval::perplexity::PerTokenNll, TrainError> {
        <MaskedTransformer<B> as TrainModel<B>>::validate(&model.inner, blocks, config, rng)
    }
}

#[test]
fn a_peer_that_fails_stops_the_run_naming_it_and_the_last_checkpoint_resumes() {
    let _turn = turn();
    let data_dir = tempfile::tempdir().unwrap();
    let (train, valid) = common::shards(data_dir.path());
    let data = DataSpec::Shards { train, valid };
    let whole = tempfile::tempdir().unwrap();
    run_on(1, &data, whole.path(), RunOptions::default()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let devices = vec![Default::default(); 2];
    let started = std::time::Instant::now();
    let failed = train_on::<Ad, Flaky<Ad>>(
        &ModelConfig::custom(common::VOCAB, 2, 2, 32, 64, 32),
        &run_config(),
        data.clone(),
        out.path(),
        &RunOptions::default(),
        &devices,
        &mut |_: &TrainEvent| {},
    );
    match failed {
        Err(TrainError::PeerFailed { peer, reason, .. }) => {
            assert_eq!(peer, 1);
            assert!(reason.contains("went away"), "{reason}");
        }
        other => panic!(
            "expected peer 1's failure, got {:?}",
            other.map(|s| s.steps)
        ),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // peer 1 failed in step 4 (one micro-batch per step): steps 2 is the last checkpoint
    let kept: Vec<usize> = mdm_train::checkpoint::list_checkpoints(out.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![2]);
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    run_on(2, &data, out.path(), resume).unwrap();
    let diff = common::max_weight_diff(&whole.path().join("model"), &out.path().join("model"));
    assert!(diff < 1e-6, "the resumed run differs by {diff:e}");
}
