//! Sampling cost on Diff_LLaMA_6M, 256 generated tokens after a 16-token prompt, on every backend
//! compiled in: whole MDM generations with steps = length, length / 4 and length / 16 (the number of
//! forward passes dominates), the autoregressive baseline with the
//! KV cache (256 one-token passes), and the sampler's own work in one step with 256 masked slots
//! (the temperature-0 proposals the loop uses; the f64 host path with the reveal) next to that
//! step's forward pass. `generate --profile` measures the share over whole generations.
//!
//! Blocks of 32 at steps = length / 4 (64 passes) with no cache (the exact loop), and with
//! Fast-dLLM's prefix and dual caches: `block_32_{none,prefix,dual}` (random weights: the passes'
//! cost, not quality; `examples/fast_decoding` measures quality on a trained model).
//!
//! On flex every row runs with our fused kernels (`flex`) and with burn-flex's ops composed
//! (`flex-composed`).
//!
//! `cargo bench --bench sampler -- --noplot`; results in `docs/benchmarks.md`. The steps = length row
//! takes about 30 s per generation on a 2-core CPU, so its 10 samples take minutes; select rows with
//! a filter, e.g. `-- --noplot "mdm_steps"`.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use mdm_kernels::Kernels;
use std::time::Duration;

use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use mdm::burn;
use mdm::diffusion::rng_from_seed;
use mdm::models::ModelConfig;
use mdm::samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
use mdm::samplers::draw::proposals;
use mdm::samplers::options::Sampling;
use mdm::samplers::proposal::{masked_slots, Confidence};
use mdm::samplers::remasking::LowConfidence;
use mdm::samplers::step::Streams;
use mdm::samplers::step::{denoise_step, Counting};
use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler};

const GEN: usize = 256;

fn bench_backend<B: Kernels>(c: &mut Criterion, backend: &str, device: &B::Device) {
    let config = ModelConfig::named("Diff_LLaMA_6M").expect("6M");
    let masked = config.init_masked::<B>(0, device).expect("init");
    let causal = config.init_causal::<B>(0, device).expect("init");
    let prompt = vec![(1..17).collect::<Vec<usize>>()];
    let mut group = c.benchmark_group(format!("sample_6M_{GEN}/{backend}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));
    for steps in [GEN, GEN / 4, GEN / 16] {
        let sampler = MaskedDiffusionSampler::new(
            &masked,
            DecodingOptions::default()
                .with_gen_length(GEN)
                .with_steps(steps),
        );
        group.bench_function(format!("mdm_steps_{steps}"), |b| {
            b.iter(|| sampler.generate(&prompt, |_| {}).expect("generate"))
        });
    }
    for (name, cache) in [
        ("none", CacheMode::None),
        ("prefix", CacheMode::Prefix),
        ("dual", CacheMode::Dual),
    ] {
        let sampler = MaskedDiffusionSampler::new(
            &masked,
            DecodingOptions::default()
                .with_gen_length(GEN)
                .with_block_length(32)
                .with_steps(GEN / 4)
                .with_cache(cache),
        );
        group.bench_function(format!("block_32_{name}"), |b| {
            b.iter(|| sampler.generate(&prompt, |_| {}).expect("generate"))
        });
    }
    let ar = AutoregressiveConfig {
        max_new_tokens: GEN,
        ..Default::default()
    };
    group.bench_function("arm_kv_cache", |b| {
        b.iter(|| generate_autoregressive(&causal, &prompt, &ar).expect("generate"))
    });
    // the sampler's own work in a step with every generated slot masked, logits given (host path)
    let mask_id = config.mask_id();
    let v = config.padded_vocab_size();
    let mut x = prompt.clone();
    x[0].resize(16 + GEN, mask_id);
    let slots = masked_slots(&x, mask_id);
    let logits: Vec<f32> = (0..slots.len() * v)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    group.bench_function("host_step_overhead_256_slots", |b| {
        b.iter(|| {
            let mut y = x.clone();
            denoise_step(
                &mut y,
                &slots,
                &logits,
                v,
                (1.0, 0.75),
                false,
                (0.0, Confidence::Probability),
                &LowConfidence,
                Counting::PerRow,
                &mut rng_from_seed(0),
            )
            .expect("step")
        })
    });
    // the loop's temperature-0 proposals (argmax and probability over 32,000 logits per slot), in
    // place on the host for flex, reduced on the device elsewhere
    let device_logits =
        Tensor::<B, 2>::from_data(TensorData::new(logits.clone(), [slots.len(), v]), device);
    group.bench_function("greedy_proposals_256_slots", |b| {
        b.iter(|| {
            let mut rng = rng_from_seed(0);
            proposals(
                device_logits.clone(),
                &slots,
                None,
                &Sampling::default(),
                Confidence::Probability,
                &mut Streams::Joint(&mut rng),
            )
            .expect("proposals")
        })
    });
    // the forward pass of that step (every generated slot masked), for the ratio
    let ids: Vec<i64> = x[0].iter().map(|&t| t as i64).collect();
    let index: Vec<i64> = slots.iter().map(|s| s.pos as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 16 + GEN]), device);
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [GEN]), device);
    group.bench_function("forward_at_256_slots", |b| {
        b.iter(|| {
            let logits = masked
                .forward_at(ids.clone(), index.clone())
                .expect("forward");
            B::sync(device).expect("sync");
            logits
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    for (fused, name) in [(true, "flex"), (false, "flex-composed")] {
        // our fused kernels (the default), then burn-flex's own ops composed
        mdm::kernels::set_fused(fused);
        bench_backend::<burn::backend::Flex>(c, name, &Default::default());
        mdm::kernels::set_fused(true);
    }
    #[cfg(feature = "ndarray")]
    bench_backend::<burn::backend::NdArray>(c, "ndarray", &Default::default());
    #[cfg(feature = "cuda")]
    bench_backend::<burn::backend::Cuda>(c, "cuda", &Default::default());
    #[cfg(feature = "wgpu")]
    bench_backend::<burn::backend::Wgpu>(c, "wgpu", &Default::default());
}

criterion_group!(sampler_benches, benches);
criterion_main!(sampler_benches);
