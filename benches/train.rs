//! Training throughput of the trainer's step (what `pretrain` runs per optimizer step: loss,
//! backward, gradient collection, global-norm clipping, AdamW) in tokens per second, Diff_LLaMA_6M
//! at 4 x 256, MDM and autoregressive baseline, on each enabled backend.
//!
//! `cargo bench --bench train -- --noplot`

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use mdm_kernels::AutodiffKernels;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mdm::models::{CausalTransformer, MaskedTransformer, ModelConfig};
use mdm::train::objective::{Batch, TrainModel};
use mdm::train::optim::{AdamW, AdamWConfig, GradAccumulator};
use mdm::train::TrainConfig;
use rand::{Rng, SeedableRng};

fn bench_model<B: AutodiffKernels, M: TrainModel<B>>(
    c: &mut Criterion,
    name: &str,
    device: &B::Device,
) {
    let model_config = ModelConfig::named("Diff_LLaMA_6M").expect("6M config");
    let config = TrainConfig {
        seq_len: 256,
        micro_batch: 4,
        ..Default::default()
    };
    let mut rng = mdm::diffusion::rng_from_seed(0);
    let mut data_rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let cols = M::block_len(config.seq_len);
    let batch = Batch {
        ids: (0..config.micro_batch * cols)
            .map(|_| data_rng.random_range(0..model_config.vocab_size as u32))
            .collect(),
        rows: config.micro_batch,
        cols,
        prompt_len: None,
    };
    let mut model = Some(M::init(&model_config, 0, device).expect("init"));
    let mut optim = AdamW::<B::InnerBackend>::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_norm: 1.0,
    });
    let mut group = c.benchmark_group("trainer_step_6M");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(25))
        .throughput(Throughput::Elements(
            (config.micro_batch * config.seq_len) as u64,
        ));
    group.bench_function(name, |b| {
        b.iter(|| {
            let m = model.take().expect("model");
            let loss = m.loss(&batch, &config, &mut rng).expect("loss");
            let mut acc = GradAccumulator::default();
            acc.add(&m, &loss.backward());
            // the step reads the global norm back, which synchronises the device
            let (m, report) = optim.step(m, acc, 1e-3);
            assert!(report.grad_norm.is_finite());
            model = Some(m);
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    type B = mdm::backend::Training;
    let device = mdm::backend::device();
    let backend = mdm::backend::NAME.split(' ').next().unwrap_or("cpu");
    bench_model::<B, MaskedTransformer<B>>(c, &format!("{backend}/mdm_4x256"), &device);
    bench_model::<B, CausalTransformer<B>>(c, &format!("{backend}/arm_4x256"), &device);
}

criterion_group!(train_benches, benches);
criterion_main!(train_benches);
