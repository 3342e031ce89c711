//! Diff_LLaMA_6M forward (1 x 1024, 8 x 256), a training step (forward, loss, backward, AdamW) at
//! 4 x 256 and RMSNorm forward + backward at that step's shape, on every backend compiled in (`flex` by default; add `--features ndarray`, `cuda`, `wgpu`).
//!
//! `cargo bench --bench model` (add `--features ndarray` to compare the CPU backends). On flex it
//! runs every case twice: with our fused kernels (`flex`, the default) and with burn-flex's own
//! ops composed (`flex-composed`, `mdm::kernels::set_fused(false)`). Each case's throughput is its
//! FLOPs per iteration (the forward: `2N + 4 L T d + 2 d V` per token), printed as elements/s:
//! Gelem/s reads as GFLOP/s. The PyTorch
//! counterpart is `benches/pytorch_reference.py`; results are in `docs/benchmarks.md`.

use mdm_kernels::{AutodiffKernels, Kernels};
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mdm::burn;
use mdm::diffusion::loss::{pretrain_loss, sparse_masked_loss};
use mdm::diffusion::{forward_process::ForwardProcess, rng_from_seed, time};
use mdm::models::{MaskedTransformer, ModelConfig};
use rand::Rng;

#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

fn random_ids<B: Kernels>(
    batch: usize,
    len: usize,
    config: &ModelConfig,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let mut rng = rng_from_seed(seed);
    let data: Vec<i32> = (0..batch * len)
        .map(|_| rng.random_range(0..config.vocab_size as i32))
        .collect();
    Tensor::from_data(TensorData::new(data, [batch, len]), device)
}

fn sync<B: Kernels, const D: usize>(t: Tensor<B, D>) {
    // reading one value back waits for asynchronous backends (cuda, wgpu) to finish
    let _ = t.sum().into_data();
}

/// Forward FLOPs of `batch` sequences of `len` tokens: the blocks' matmuls (`2N`), attention
/// (`4 L T d`) and the output head (`2 d V`), per token.
fn forward_flops(config: &ModelConfig, batch: usize, len: usize) -> f64 {
    let n = config.non_embedding_params() as f64;
    let per_token = 2.0 * n
        + 4.0 * (config.n_layer * len * config.n_embd) as f64
        + 2.0 * (config.n_embd * config.padded_vocab_size()) as f64;
    per_token * (batch * len) as f64
}

fn bench_forward<B: Kernels>(c: &mut Criterion, backend: &str, device: &B::Device) {
    let config = ModelConfig::named("Diff_LLaMA_6M").expect("6M config");
    let model: MaskedTransformer<B> = config.init_masked(0, device).expect("init");
    let process = ForwardProcess::new(config.mask_id());
    let mut group = c.benchmark_group(format!("forward_6M/{backend}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    for (batch, len) in [(1usize, 1024usize), (8, 256)] {
        let x0 = random_ids::<B>(batch, len, &config, 1, device);
        let noisy = process
            .noise(x0, &vec![0.5; batch], None, &mut rng_from_seed(2))
            .expect("noise")
            .noisy;
        group.throughput(Throughput::Elements(
            forward_flops(&config, batch, len) as u64
        ));
        group.bench_function(format!("{batch}x{len}"), |b| {
            b.iter(|| sync(model.forward(noisy.clone()).expect("forward")))
        });
    }
    group.finish();
}

fn bench_train_step<B: AutodiffKernels>(c: &mut Criterion, backend: &str, device: &B::Device)
where
    MaskedTransformer<B>: AutodiffModule<B>,
{
    let config = ModelConfig::named("Diff_LLaMA_6M").expect("6M config");
    let mut model: Option<MaskedTransformer<B>> =
        Some(config.init_masked(0, device).expect("init"));
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.95)
        .with_epsilon(1e-8)
        .with_weight_decay(0.1)
        .init::<B, MaskedTransformer<B>>();
    let process = ForwardProcess::new(config.mask_id());
    let (batch, len) = (4usize, 256usize);
    let x0 = random_ids::<B>(batch, len, &config, 3, device);
    let mut rng = rng_from_seed(4);
    let mut group = c.benchmark_group(format!("train_step_6M/{backend}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20));
    // `dense`: logits everywhere, as the reference code; `sparse`: the head only at masked positions
    for sparse in [false, true] {
        let name = format!("{batch}x{len}/{}", if sparse { "sparse" } else { "dense" });
        group.bench_function(name, |b| {
            b.iter(|| {
                let m = model.take().expect("model");
                let t = time::uniform_times(batch, &mut rng);
                let noised = process
                    .noise(x0.clone(), &t, None, &mut rng)
                    .expect("noise");
                let loss = if sparse {
                    let targets = noised.masked_targets(x0.clone()).expect("targets");
                    let logits = m
                        .forward_at(noised.noisy, targets.index.clone())
                        .expect("forward");
                    sparse_masked_loss(logits, &targets, (batch * len) as f64).expect("loss")
                } else {
                    let logits = m.forward(noised.noisy).expect("forward");
                    pretrain_loss(logits, x0.clone(), noised.mask, noised.p_mask)
                        .expect("loss")
                        .loss
                };
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                let m = optim.step(2e-4, m, grads);
                sync(m.net.ln_f.gain.val());
                model = Some(m);
            })
        });
    }
    group.finish();
}

/// RMSNorm forward and backward at the 6M model's training shape (4 x 256 rows of its width):
/// the kernel whose gain gradient is the one reduction across tasks (docs/benchmarks.md measures
/// what its fixed summation order costs).
fn bench_rms_norm<B: AutodiffKernels>(c: &mut Criterion, backend: &str, device: &B::Device) {
    let config = ModelConfig::named("Diff_LLaMA_6M").expect("6M config");
    let (rows, width) = (4 * 256, config.n_embd);
    let mut rng = rng_from_seed(5);
    let mut values =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let x = Tensor::<B, 2>::from_data(TensorData::new(values(rows * width), [rows, width]), device);
    let gain = Tensor::<B, 1>::from_data(TensorData::new(values(width), [width]), device);
    let dy =
        Tensor::<B, 2>::from_data(TensorData::new(values(rows * width), [rows, width]), device);
    let mut group = c.benchmark_group(format!("rms_norm_6M/{backend}"));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function(format!("{rows}x{width}/forward+backward"), |b| {
        b.iter(|| {
            let (x, gain) = (x.clone().require_grad(), gain.clone().require_grad());
            let y = B::rms_norm(x.clone(), gain.clone(), 1e-5);
            let grads = (y * dy.clone()).sum().backward();
            sync(gain.grad(&grads).expect("the gain's gradient"));
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    {
        // our fused kernels (the default), then burn-flex's own ops composed, in one run
        let device = Default::default();
        for (fused, name) in [(true, "flex"), (false, "flex-composed")] {
            mdm::kernels::set_fused(fused);
            bench_forward::<burn::backend::Flex>(c, name, &device);
            bench_train_step::<burn::backend::Autodiff<burn::backend::Flex>>(c, name, &device);
            bench_rms_norm::<burn::backend::Autodiff<burn::backend::Flex>>(c, name, &device);
        }
        mdm::kernels::set_fused(true);
    }
    #[cfg(feature = "ndarray")]
    {
        let device = Default::default();
        bench_forward::<burn::backend::NdArray>(c, "ndarray", &device);
        bench_train_step::<burn::backend::Autodiff<burn::backend::NdArray>>(c, "ndarray", &device);
        bench_rms_norm::<burn::backend::Autodiff<burn::backend::NdArray>>(c, "ndarray", &device);
    }
    #[cfg(feature = "cuda")]
    {
        let device = Default::default();
        bench_forward::<burn::backend::Cuda>(c, "cuda", &device);
        bench_train_step::<burn::backend::Autodiff<burn::backend::Cuda>>(c, "cuda", &device);
        bench_rms_norm::<burn::backend::Autodiff<burn::backend::Cuda>>(c, "cuda", &device);
    }
    #[cfg(feature = "wgpu")]
    {
        let device = Default::default();
        bench_forward::<burn::backend::Wgpu>(c, "wgpu", &device);
        bench_train_step::<burn::backend::Autodiff<burn::backend::Wgpu>>(c, "wgpu", &device);
        bench_rms_norm::<burn::backend::Autodiff<burn::backend::Wgpu>>(c, "wgpu", &device);
    }
}

criterion_group!(model_benches, benches);
criterion_main!(model_benches);
