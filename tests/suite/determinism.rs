//! The same seed gives the same bits, run after run, whatever else the machine is doing: two short
//! trainings of the MDM and of the baseline, one after the other in this process while another
//! thread pool keeps every core busy, end with byte-identical weights; a generation from the
//! trained MDM gives the same tokens twice under the same load. The size is chosen so that every
//! fused kernel splits its work over several tasks: attention over 8 x 2 (batch, group) tasks, the
//! norms over 1,024 rows (16 blocks of the gain gradient's partial sums), the loss over more rows
//! than one task takes. With RMSNorm's gain gradient reduced by rayon's `fold` + `reduce` (its
//! tree follows the stealing), the MDM's weights differed in about 5 % of their bytes, every run. `crates/mdm-kernels/tests/deterministic.rs` checks each kernel alone
//! under pools of several sizes.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::shards;
use mdm::backend::{self, Training};
use mdm::models::{CausalTransformer, MaskedTransformer, ModelConfig};
use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler};
use mdm::train::{train, DataSpec, Objective, RunOptions, TrainConfig, TrainModel};

const VOCAB: usize = 40;
const SEQ_LEN: usize = 128;

/// 2 layers, 4 heads in 2 key/value groups, width 128.
fn config() -> ModelConfig {
    ModelConfig::custom(VOCAB, 2, 4, 128, 256, SEQ_LEN).with_query_groups(2)
}

fn train_config(objective: Objective) -> TrainConfig {
    TrainConfig {
        objective,
        seq_len: SEQ_LEN,
        micro_batch: 8,
        grad_accum: 1,
        steps: Some(4),
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 1,
        eval_every: 0,
        eval_blocks: 2,
        eval_mc: 1,
        save_every: 0,
        seed: 17,
        ..Default::default()
    }
}

/// A rayon pool of its own, one thread per core, that keeps every core busy until dropped: bursts
/// of work on all its threads with pauses of varying length between them, so the pool the kernels
/// run on loses and regains its threads at moments that differ from run to run.
struct Load {
    stop: Arc<AtomicBool>,
    driver: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("the load's pool");
        let driver = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut state = 0x9e37_79b9_7f4a_7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    pool.broadcast(|_| {
                        let mut x = 1.0f64;
                        for _ in 0..20_000 {
                            x = (x * 1.000_001).sqrt() + 0.5;
                        }
                        std::hint::black_box(x);
                    });
                    // xorshift: pauses of 0-300 us
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    std::thread::sleep(std::time::Duration::from_micros(state % 300));
                }
            })
        };
        Self {
            stop,
            driver: Some(driver),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// Trains `M` into a new folder and returns it with the final weights' bytes.
fn trained<M: TrainModel<Training>>(
    data: &DataSpec,
    objective: Objective,
) -> (tempfile::TempDir, Vec<u8>) {
    let out = tempfile::tempdir().unwrap();
    train::<Training, M>(
        &config(),
        &train_config(objective),
        data.clone(),
        out.path(),
        &RunOptions::default(),
        &backend::device(),
    )
    .unwrap();
    let bytes = std::fs::read(out.path().join("model/model.safetensors")).unwrap();
    (out, bytes)
}

fn twice_under_load<M: TrainModel<Training>>(
    data: &DataSpec,
    objective: Objective,
) -> tempfile::TempDir {
    let _load = Load::start();
    let (first, a) = trained::<M>(data, objective);
    let (_second, b) = trained::<M>(data, objective);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        a.len() == b.len() && differ == 0,
        "{objective:?}: two trainings from the same seed differ in {differ} of {} weight bytes",
        a.len()
    );
    first
}

fn generate(model_dir: &Path) -> Vec<Vec<usize>> {
    let model = MaskedTransformer::<backend::Default>::load(model_dir, &backend::device()).unwrap();
    let prompts: Vec<Vec<usize>> = (0..4).map(|r| vec![r + 1, r + 2, r + 3]).collect();
    let config = DecodingOptions::default()
        .with_gen_length(32)
        .with_steps(8)
        .with_temperature(0.7)
        .with_seed(3);
    MaskedDiffusionSampler::new(&model, config)
        .generate(&prompts, |_| {})
        .unwrap()
}

#[test]
fn a_seed_gives_the_same_weights_and_tokens_under_load() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = shards(data_dir.path(), VOCAB);
    let mdm = twice_under_load::<MaskedTransformer<Training>>(&data, Objective::Mdm);
    twice_under_load::<CausalTransformer<Training>>(&data, Objective::Arm);

    let model_dir = mdm.path().join("model");
    let _load = Load::start();
    let a = generate(&model_dir);
    let b = generate(&model_dir);
    assert_eq!(a, b, "two generations from the same seed");
}
