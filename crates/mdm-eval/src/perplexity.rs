//! Per-token likelihood of held-out token blocks (e.g. validation shards): the MC ELBO bound of an
//! MDM and the exact NLL of the autoregressive baseline, in nats and bits per token with standard
//! errors across blocks, and the unigram entropy to compare both with.

use burn::tensor::{Int, Tensor};
use mdm_core::forward_process::ForwardProcess;
use mdm_core::loss::cross_entropy_rows;
use mdm_core::time::stratified_times;
use mdm_core::MdmRng;
use mdm_kernels::Kernels;
use mdm_models::{CausalTransformer, MaskPredictor};

use crate::likelihood::{check_vocab, host_f64, ids_tensor, mc_batch_nll};
use crate::EvalError;

/// A per-token negative log-likelihood over blocks, with its standard error across blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerTokenNll {
    /// Mean NLL per token, nats (an upper bound for the MDM's ELBO estimate).
    pub nats: f64,
    /// Standard error of `nats` across blocks.
    pub stderr: f64,
    /// Blocks evaluated.
    pub blocks: usize,
    /// Tokens scored.
    pub tokens: usize,
}

impl PerTokenNll {
    /// Bits per token.
    pub fn bits(&self) -> f64 {
        self.nats / std::f64::consts::LN_2
    }

    /// Standard error in bits per token.
    pub fn stderr_bits(&self) -> f64 {
        self.stderr / std::f64::consts::LN_2
    }

    /// Perplexity `exp(nats)` (a bound for the MDM).
    pub fn perplexity(&self) -> f64 {
        self.nats.exp()
    }

    fn from_blocks(per_block: &[f64], tokens: usize) -> Self {
        let n = per_block.len() as f64;
        let mean = per_block.iter().sum::<f64>() / n;
        let stderr = if per_block.len() > 1 {
            let var = per_block.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (var / n).sqrt()
        } else {
            f64::INFINITY
        };
        Self {
            nats: mean,
            stderr,
            blocks: per_block.len(),
            tokens,
        }
    }
}

/// `[blocks.len(), L]` ids of equally long blocks.
fn blocks_tensor<B: Kernels>(blocks: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let rows: Vec<Vec<i64>> = blocks
        .iter()
        .map(|b| b.iter().map(|&t| t as i64).collect())
        .collect();
    ids_tensor::<B>(&rows, device)
}

fn check_blocks(blocks: &[Vec<u32>], vocab: usize) -> Result<usize, EvalError> {
    let len = blocks
        .first()
        .map(Vec::len)
        .ok_or_else(|| EvalError::Request("no blocks to evaluate".into()))?;
    if len < 2 || blocks.iter().any(|b| b.len() != len) {
        return Err(EvalError::Request(
            "blocks must share one length of at least 2".into(),
        ));
    }
    let ids: Vec<usize> = blocks.iter().flatten().map(|&t| t as usize).collect();
    check_vocab(ids.iter(), vocab)?;
    Ok(len)
}

/// The MC ELBO bound of an MDM on `blocks` (each `L` ids), per token: for each of `mc_samples`
/// rounds, every batch of `batch` blocks is noised at stratified times (no `eps`) and scored with
/// `sum over masked CE / t`; a block's estimate is the mean over rounds divided by `L`.
pub fn masked_elbo_per_token<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    blocks: &[Vec<u32>],
    batch: usize,
    mc_samples: usize,
    rng: &mut MdmRng,
) -> Result<PerTokenNll, EvalError> {
    let len = check_blocks(blocks, model.vocab_size())?;
    if batch == 0 || mc_samples == 0 {
        return Err(EvalError::Request(
            "batch and mc_samples must be positive".into(),
        ));
    }
    let device = model.device();
    let process = ForwardProcess::new(model.mask_id()).with_eps(0.0);
    let mut sums = vec![0.0; blocks.len()];
    for _ in 0..mc_samples {
        for (chunk_index, chunk) in blocks.chunks(batch).enumerate() {
            let x0 = blocks_tensor::<B>(chunk, &device);
            let t = stratified_times(chunk.len(), rng);
            let noised = process.noise(x0.clone(), &t, None, rng)?;
            let nll = mc_batch_nll(model, x0, &noised, &t)?;
            for (i, v) in nll.into_iter().enumerate() {
                sums[chunk_index * batch + i] += v;
            }
        }
    }
    let per_block: Vec<f64> = sums
        .iter()
        .map(|s| s / mc_samples as f64 / len as f64)
        .collect();
    Ok(PerTokenNll::from_blocks(&per_block, blocks.len() * len))
}

/// The exact NLL of the causal baseline on `blocks`, per predicted token: position `i` predicts
/// token `i + 1`, so each block of `L` ids scores `L - 1` tokens.
pub fn causal_nll_per_token<B: Kernels>(
    model: &CausalTransformer<B>,
    blocks: &[Vec<u32>],
    batch: usize,
) -> Result<PerTokenNll, EvalError> {
    let len = check_blocks(blocks, model.config().padded_vocab_size())?;
    if batch == 0 {
        return Err(EvalError::Request("batch must be positive".into()));
    }
    let device = model.net.device();
    let mut per_block = Vec::with_capacity(blocks.len());
    for chunk in blocks.chunks(batch) {
        let ids = blocks_tensor::<B>(chunk, &device);
        let b = chunk.len();
        let logits = model.forward(ids.clone().narrow(1, 0, len - 1))?;
        let v = logits.dims()[2];
        let targets = ids.narrow(1, 1, len - 1).reshape([b * (len - 1)]);
        let ce = host_f64(cross_entropy_rows(
            logits.reshape([b * (len - 1), v]),
            targets,
        )?)?;
        per_block.extend(
            ce.chunks(len - 1)
                .map(|row| row.iter().sum::<f64>() / (len - 1) as f64),
        );
    }
    Ok(PerTokenNll::from_blocks(
        &per_block,
        blocks.len() * (len - 1),
    ))
}

/// Generative perplexity: how likely an autoregressive `judge` finds generated `samples` (token ids
/// in the judge's vocabulary, e.g. MDM generations re-encoded with its tokenizer). Each sample is
/// scored after `context`, the tokens every sample follows (the judge's BOS, or the EOS that starts
/// documents, and a shared prompt if any; at least one token); `nats` is token-weighted (total NLL
/// over total tokens, as MDLM computes it), its standard error the ratio estimator's across
/// samples. Empty samples are an error, not skipped.
pub fn generative_perplexity<B: Kernels>(
    judge: &CausalTransformer<B>,
    samples: &[Vec<usize>],
    context: &[usize],
) -> Result<PerTokenNll, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::Request("no samples to score".into()));
    }
    if context.is_empty() {
        return Err(EvalError::Request(
            "an empty context: samples are scored after at least one token (BOS or EOS)".into(),
        ));
    }
    let mut per_sample = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        if sample.is_empty() {
            return Err(EvalError::Request(format!("sample {i} is empty")));
        }
        let nll = crate::likelihood::causal_nll(judge, context, sample)?;
        per_sample.push((nll.nll, sample.len() as f64));
    }
    let (total, tokens) = per_sample
        .iter()
        .fold((0.0, 0.0), |(a, b), (nll, n)| (a + nll, b + n));
    let ratio = total / tokens;
    let k = per_sample.len() as f64;
    let stderr = if per_sample.len() > 1 {
        let mean_n = tokens / k;
        let ss: f64 = per_sample
            .iter()
            .map(|(nll, n)| (nll - ratio * n).powi(2))
            .sum();
        (ss / (k * (k - 1.0))).sqrt() / mean_n
    } else {
        f64::INFINITY
    };
    Ok(PerTokenNll {
        nats: ratio,
        stderr,
        blocks: per_sample.len(),
        tokens: tokens as usize,
    })
}

/// Mean cross-entropy (nats) per masked token when `blocks` are noised at the fixed masking rate
/// `t` (no `eps`): how well the MDM predicts a token from the visible rest. Near `t = 0` almost all
/// context is visible; near `t = 1` almost none (the unigram entropy is the no-context limit). The
/// ELBO bound is the integral of this curve over `t` in `(0, 1)`.
pub fn masked_ce_at_rate<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    blocks: &[Vec<u32>],
    t: f64,
    batch: usize,
    rng: &mut MdmRng,
) -> Result<f64, EvalError> {
    check_blocks(blocks, model.vocab_size())?;
    if batch == 0 || !(t > 0.0 && t <= 1.0) {
        return Err(EvalError::Request(format!(
            "batch must be positive and t in (0, 1], got {batch} and {t}"
        )));
    }
    let device = model.device();
    let process = ForwardProcess::new(model.mask_id()).with_eps(0.0);
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in blocks.chunks(batch) {
        let x0 = blocks_tensor::<B>(chunk, &device);
        let noised = process.noise(x0.clone(), &vec![t; chunk.len()], None, rng)?;
        if noised.masked_index.is_empty() {
            continue;
        }
        let targets = noised.masked_targets(x0)?;
        let logits = model.logits_at(noised.noisy, None, targets.index.clone())?;
        let ce = host_f64(cross_entropy_rows(logits, targets.targets)?)?;
        count += ce.len();
        sum += ce.iter().sum::<f64>();
    }
    if count == 0 {
        return Err(EvalError::Request(format!("nothing was masked at t = {t}")));
    }
    Ok(sum / count as f64)
}

/// Entropy (bits per token) of the empirical unigram distribution of `tokens`: what a model that
/// knows only token frequencies would score on them.
pub fn unigram_entropy_bits(tokens: impl IntoIterator<Item = u32>) -> f64 {
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    let mut n = 0u64;
    for t in tokens {
        *counts.entry(t).or_default() += 1;
        n += 1;
    }
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use mdm_core::rng_from_seed;
    use mdm_models::ModelConfig;

    #[test]
    fn generative_perplexity_is_token_weighted() {
        let config = ModelConfig::custom(50, 1, 2, 16, 32, 32);
        let judge = config.init_causal::<Flex>(9, &Default::default()).unwrap();
        let samples = vec![vec![3usize, 4, 5], vec![6usize], vec![7usize, 8]];
        let g = generative_perplexity(&judge, &samples, &[0]).unwrap();
        let total: f64 = samples
            .iter()
            .map(|s| crate::likelihood::causal_nll(&judge, &[0], s).unwrap().nll)
            .sum();
        assert!((g.nats - total / 6.0).abs() < 1e-9, "{g:?}");
        assert_eq!((g.blocks, g.tokens), (3, 6));
        assert!(g.stderr.is_finite() && g.stderr > 0.0);
        assert!((g.perplexity() - (total / 6.0).exp()).abs() < 1e-9);
        assert!(generative_perplexity(&judge, &[vec![]], &[0]).is_err());
        assert!(generative_perplexity(&judge, &[], &[0]).is_err());
        assert!(generative_perplexity(&judge, &samples, &[]).is_err());
        // a longer context conditions every sample on it
        let after = generative_perplexity(&judge, &samples, &[0, 9]).unwrap();
        let total: f64 = samples
            .iter()
            .map(|s| {
                crate::likelihood::causal_nll(&judge, &[0, 9], s)
                    .unwrap()
                    .nll
            })
            .sum();
        assert!((after.nats - total / 6.0).abs() < 1e-9, "{after:?}");
    }

    #[test]
    fn unigram_entropy_by_hand() {
        assert_eq!(unigram_entropy_bits([3, 3, 3]), 0.0);
        assert!((unigram_entropy_bits([1, 2, 3, 4]) - 2.0).abs() < 1e-12);
        // p = (1/2, 1/4, 1/4) → 1.5 bits
        assert!((unigram_entropy_bits([7, 7, 8, 9]) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn causal_block_nll_equals_the_estimator_per_block() {
        let config = ModelConfig::custom(50, 2, 2, 16, 32, 32);
        let model = config.init_causal::<Flex>(3, &Default::default()).unwrap();
        let blocks: Vec<Vec<u32>> = (0..3)
            .map(|b| (0..9).map(|i| ((b * 7 + i * 5) % 50) as u32).collect())
            .collect();
        let all = causal_nll_per_token(&model, &blocks, 2).unwrap();
        let mut expected = 0.0;
        for b in &blocks {
            let ids: Vec<usize> = b.iter().map(|&t| t as usize).collect();
            expected += crate::likelihood::causal_nll(&model, &ids[..1], &ids[1..])
                .unwrap()
                .nll
                / 8.0;
        }
        assert!((all.nats - expected / 3.0).abs() < 1e-5, "{all:?}");
        assert_eq!(all.tokens, 24);
    }

    #[test]
    fn masked_bound_is_near_log_vocab_for_a_random_model() {
        // an untrained model predicts close to uniform: the bound is about ln V per token
        let config = ModelConfig::custom(64, 1, 2, 16, 32, 64);
        let model = config.init_masked::<Flex>(3, &Default::default()).unwrap();
        let blocks: Vec<Vec<u32>> = (0..8)
            .map(|b| (0..64).map(|i| ((b * 13 + i * 7) % 64) as u32).collect())
            .collect();
        // the 1/t weights make the estimator heavy-tailed: compare within its own standard error
        let est = masked_elbo_per_token(&model, &blocks, 4, 16, &mut rng_from_seed(0)).unwrap();
        assert!(
            (est.nats - 64f64.ln()).abs() < 3.0 * est.stderr + 0.15,
            "{est:?}"
        );
        assert!(est.stderr > 0.0 && est.stderr < 0.5, "{est:?}");
        assert!(masked_elbo_per_token(&model, &[], 4, 8, &mut rng_from_seed(0)).is_err());
        // the bound is the integral over t of the CE per masked token: for an untrained model both
        // sit near ln V at every rate
        for t in [0.1, 0.9] {
            let ce = masked_ce_at_rate(&model, &blocks, t, 4, &mut rng_from_seed(1)).unwrap();
            assert!((ce - 64f64.ln()).abs() < 0.3, "t {t}: {ce}");
        }
        assert!(masked_ce_at_rate(&model, &blocks, 0.0, 4, &mut rng_from_seed(1)).is_err());
    }
}
