//! Where the time of a training step goes: Diff_LLaMA_6M, batch 4 x 256, sparse loss, on the default
//! backend. Times each phase with a read-back after it (which forces asynchronous backends to finish)
//! and prints the mean over `--steps` steps after one warm-up step.
//!
//! `cargo run --release --example profile_train_step`

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use mdm::backend::{self, Training};
use mdm::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use mdm::burn::tensor::{Int, Tensor, TensorData};
use mdm::diffusion::{forward_process::ForwardProcess, loss::sparse_masked_loss, rng_from_seed};
use mdm::models::ModelConfig;

#[derive(Parser, Debug)]
struct Args {
    /// Measured steps (after one warm-up step).
    #[arg(long, default_value_t = 6)]
    steps: usize,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let config = ModelConfig::named("6M")?;
    let mut model = config.init_masked::<Training>(0, &device)?;
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.95)
        .with_epsilon(1e-8)
        .with_weight_decay(0.1)
        .init::<Training, _>();
    let ids: Vec<i64> = (0..1024).map(|i| (i * 31 % 32000) as i64).collect();
    let x0 = Tensor::<Training, 2, Int>::from_data(TensorData::new(ids, [4, 256]), &device);
    let process = ForwardProcess::new(config.mask_id());
    let mut rng = rng_from_seed(0);
    let mut totals = [0f64; 5];
    for step in 0..=args.steps {
        let noised = process.noise(x0.clone(), &[0.5; 4], None, &mut rng)?;
        let targets = noised.masked_targets(x0.clone())?;
        let t0 = Instant::now();
        let hidden = model.forward_hidden(noised.noisy.clone())?;
        let _ = hidden.clone().sum().into_data();
        let t1 = Instant::now();
        let [b, l, c] = hidden.dims();
        let logits = model.head(hidden.reshape([b * l, c]).select(0, targets.index.clone()));
        let _ = logits.clone().sum().into_data();
        let t2 = Instant::now();
        let loss = sparse_masked_loss(logits, &targets, (b * l) as f64)?;
        let _ = loss.clone().into_data();
        let t3 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t4 = Instant::now();
        model = optim.step(2e-4, model, grads);
        let _ = model.net.ln_f.gain.val().sum().into_data();
        let t5 = Instant::now();
        if step > 0 {
            for (total, (a, z)) in
                totals
                    .iter_mut()
                    .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)])
            {
                *total += (z - a).as_secs_f64();
            }
        }
    }
    let ms = |x: f64| x * 1e3 / args.steps as f64;
    println!(
        "{} (about half of 1024 positions masked): forward blocks {:.0} ms, head at masked positions {:.0} ms, loss {:.0} ms, backward {:.0} ms, AdamW {:.0} ms",
        backend::NAME,
        ms(totals[0]), ms(totals[1]), ms(totals[2]), ms(totals[3]), ms(totals[4])
    );
    Ok(())
}
