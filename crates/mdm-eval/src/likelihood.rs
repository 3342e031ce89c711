//! Likelihood estimators.

use burn::tensor::{Int, Tensor, TensorData};
use mdm_core::cfg::{guided_batch, split_guided};
use mdm_core::forward_process::{ForwardProcess, NoisedBatch};
use mdm_core::loss::cross_entropy_rows;
use mdm_core::time::stratified_times;
use mdm_core::{CoreError, MdmRng};
use mdm_kernels::Kernels;
use mdm_models::{CausalPredictor, MaskPredictor, ModelError};
use mdm_samplers::draw::proposals;
use mdm_samplers::options::Sampling;
use mdm_samplers::proposal::{Confidence, Slot};
use mdm_samplers::step::Streams;
use thiserror::Error;

/// Errors of the estimators.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Bad input to the diffusion core.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Reading proposals back from the device failed.
    #[error(transparent)]
    Sampler(#[from] mdm_samplers::SamplerError),
    /// An empty target, a zero sample count, an id outside the vocabulary, an unknown task.
    #[error("invalid evaluation request: {0}")]
    Request(String),
    /// A task file line that does not fit its shape.
    #[error("{file}, line {line}: {reason}")]
    Task {
        /// The task file.
        file: std::path::PathBuf,
        /// 1-based line number (0: the whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Reading a file failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Tokenising or decoding text failed.
    #[error(transparent)]
    Data(#[from] mdm_data::DataError),
}

/// A negative log-likelihood (nats) of a target, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct NllEstimate {
    /// The estimate (an upper bound for the MC ELBO).
    pub nll: f64,
    /// Its standard error (0 for exact methods).
    pub stderr: f64,
    /// Monte Carlo samples used (0 for exact methods).
    pub samples: usize,
    /// Forward passes (rows) the model ran.
    pub forward_rows: usize,
    /// Per-token log-probabilities of the target (exact methods only).
    pub token_log_probs: Vec<f64>,
}

fn check(prefix: &[usize], target: &[usize], vocab: usize) -> Result<(), EvalError> {
    if target.is_empty() {
        return Err(EvalError::Request("the target is empty".into()));
    }
    check_vocab(prefix.iter().chain(target), vocab)
}

pub(crate) fn check_vocab<'a>(
    ids: impl IntoIterator<Item = &'a usize>,
    vocab: usize,
) -> Result<(), EvalError> {
    if let Some(&bad) = ids.into_iter().find(|&&t| t >= vocab) {
        return Err(EvalError::Request(format!(
            "id {bad} is outside the vocabulary 0..{vocab}"
        )));
    }
    Ok(())
}

pub(crate) fn ids_tensor<B: Kernels>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let len = rows.first().map_or(0, Vec::len);
    Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), len]), device)
}

pub(crate) fn host_f64<B: Kernels, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f64>, EvalError> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| {
            EvalError::Model(ModelError::ReadBack {
                key: "likelihood".into(),
                reason: format!("{e:?}"),
            })
        })
}

/// The chain-rule rows of `prefix` + `target`: row `k` holds the prefix, `target[..k]`, and
/// `mask_id` at every target position `>= k` (`[target.len(), prefix.len() + target.len()]`).
pub fn chain_rule_rows(prefix: &[usize], target: &[usize], mask_id: usize) -> Vec<Vec<i64>> {
    (0..target.len())
        .map(|k| {
            prefix
                .iter()
                .chain(&target[..k])
                .map(|&t| t as i64)
                .chain(std::iter::repeat_n(mask_id as i64, target.len() - k))
                .collect()
        })
        .collect()
}

/// Exact negative log-likelihood of `target` after `prefix` by the chain rule, left to right: pass
/// `k` predicts `target[k]` from the prefix and `target[..k]` with the rest masked; the `n` passes
/// run as one batch of rows. Also returns the per-token log-probabilities.
pub fn chain_rule<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    target: &[usize],
) -> Result<NllEstimate, EvalError> {
    chain_rule_cfg(model, prefix, target, 0.0)
}

/// [`chain_rule`] with unsupervised classifier-free guidance of scale `cfg_scale` (`w`; 0 = off):
/// each pass's logits are `u + (w + 1)(c - u)`, `u` from the same row with the prefix masked.
/// Both passes run in one batch.
pub fn chain_rule_cfg<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    target: &[usize],
    cfg_scale: f64,
) -> Result<NllEstimate, EvalError> {
    check(prefix, target, model.vocab_size())?;
    let device = model.device();
    let rows = chain_rule_rows(prefix, target, model.mask_id());
    let n = target.len();
    let len = prefix.len() + n;
    // logits only where needed: row k at position prefix.len() + k
    let index: Vec<i64> = (0..n)
        .map(|k| (k * len + prefix.len() + k) as i64)
        .collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device);
    let prompt_len = vec![prefix.len(); n];
    let logits = guided_logits_at(
        model,
        ids_tensor(&rows, &device),
        index,
        &prompt_len,
        cfg_scale,
    )?;
    exact_estimate(logits, target, if cfg_scale == 0.0 { n } else { 2 * n })
}

/// `model.forward_at(ids, index)` (`ids` `[b, L]`, `index` into the flattened `b * L` positions),
/// with unsupervised CFG when `cfg_scale != 0`: the unconditional rows (row `r`'s first
/// `prompt_len[r]` positions masked) run in the same batch and the logits are combined.
pub fn guided_logits_at<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    ids: Tensor<B, 2, Int>,
    index: Tensor<B, 1, Int>,
    prompt_len: &[usize],
    cfg_scale: f64,
) -> Result<Tensor<B, 2>, EvalError> {
    if cfg_scale == 0.0 {
        return Ok(model.logits_at(ids, None, index)?);
    }
    let [b, len] = ids.dims();
    let both = guided_batch(ids, prompt_len, model.mask_id())?;
    let index = Tensor::cat(vec![index.clone(), index + (b * len) as i64], 0);
    let logits = model.logits_at(both, None, index)?;
    Ok(split_guided(logits, cfg_scale)?)
}

/// An exact estimate from the logits `[target.len(), V]` that predict each target token.
fn exact_estimate<B: Kernels>(
    logits: Tensor<B, 2>,
    target: &[usize],
    forward_rows: usize,
) -> Result<NllEstimate, EvalError> {
    let targets: Vec<i64> = target.iter().map(|&t| t as i64).collect();
    let targets =
        Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [target.len()]), &logits.device());
    let ce = host_f64(cross_entropy_rows(logits, targets)?)?;
    Ok(NllEstimate {
        nll: ce.iter().sum(),
        stderr: 0.0,
        samples: 0,
        forward_rows,
        token_log_probs: ce.iter().map(|c| -c).collect(),
    })
}

/// One Monte Carlo batch of the ELBO bound: `x0` (`[b, L]`) noised at times `t` (`[b]`, prefix
/// clean) as `noised` holds it. Returns each row's `sum over masked CE / t` (their mean is the
/// batch's NLL estimate). The head runs only at the masked positions; a row with nothing masked
/// scores 0.
pub fn mc_batch_nll<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    x0: Tensor<B, 2, Int>,
    noised: &NoisedBatch<B>,
    t: &[f64],
) -> Result<Vec<f64>, EvalError> {
    let rows = x0.dims()[0];
    mc_batch_nll_cfg(model, x0, noised, t, &vec![0; rows], 0.0)
}

/// [`mc_batch_nll`] with unsupervised CFG of scale `cfg_scale` (0 = off); `prompt_len[r]` is the
/// prefix of row `r` that the unconditional pass masks.
pub fn mc_batch_nll_cfg<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    x0: Tensor<B, 2, Int>,
    noised: &NoisedBatch<B>,
    t: &[f64],
    prompt_len: &[usize],
    cfg_scale: f64,
) -> Result<Vec<f64>, EvalError> {
    let [batch, len] = x0.dims();
    let mut per_row = vec![0.0; batch];
    if noised.masked_index.is_empty() {
        return Ok(per_row);
    }
    let targets = noised.masked_targets(x0)?;
    let logits = guided_logits_at(
        model,
        noised.noisy.clone(),
        targets.index,
        prompt_len,
        cfg_scale,
    )?;
    let ce = host_f64(cross_entropy_rows(logits, targets.targets)?)?;
    for (&i, ce) in noised.masked_index.iter().zip(ce) {
        per_row[i / len] += ce;
    }
    Ok(per_row
        .iter()
        .zip(t)
        .map(|(&s, &t)| if s > 0.0 { s / t } else { 0.0 })
        .collect())
}

/// The greedy suffix fill of SMDM's evaluation (used for LAMBADA): from `prefix` followed by `n`
/// masks, repeatedly fill the single most confident masked position (softmax probability of its
/// argmax) with its argmax, `n` passes in all. Returns the filled suffix.
pub fn greedy_suffix<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    n: usize,
) -> Result<Vec<usize>, EvalError> {
    greedy_suffix_cfg(model, prefix, n, 0.0)
}

/// [`greedy_suffix`] with unsupervised CFG of scale `cfg_scale` (0 = off).
pub fn greedy_suffix_cfg<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    n: usize,
    cfg_scale: f64,
) -> Result<Vec<usize>, EvalError> {
    if n == 0 {
        return Err(EvalError::Request("the target is empty".into()));
    }
    check_vocab(prefix, model.vocab_size())?;
    let device = model.device();
    let mask_id = model.mask_id();
    let mut x: Vec<usize> = prefix.to_vec();
    x.resize(prefix.len() + n, mask_id);
    let len = x.len();
    for _ in 0..n {
        let slots: Vec<Slot> = (prefix.len()..len)
            .filter(|&pos| x[pos] == mask_id)
            .map(|pos| Slot { row: 0, pos })
            .collect();
        let ids: Vec<i64> = x.iter().map(|&t| t as i64).collect();
        let index: Vec<i64> = slots.iter().map(|s| s.pos as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [slots.len()]), &device);
        let logits = guided_logits_at(
            model,
            ids_tensor(&[ids], &device),
            index,
            &[prefix.len()],
            cfg_scale,
        )?;
        // greedy: the stream is never drawn from
        let mut unused = mdm_core::rng_from_seed(0);
        let proposals = proposals(
            logits,
            &slots,
            None,
            &Sampling::default(),
            Confidence::Probability,
            &mut Streams::Joint(&mut unused),
        )?;
        // most confident first; the earlier position on ties
        if let Some(best) = proposals.iter().max_by(|a, b| {
            a.confidence
                .total_cmp(&b.confidence)
                .then(b.slot.pos.cmp(&a.slot.pos))
        }) {
            x[best.slot.pos] = best.token;
        }
    }
    Ok(x[prefix.len()..].to_vec())
}

/// Whether the greedy suffix fill of `target.len()` masks after `prefix` reproduces `target`
/// (LAMBADA's accuracy criterion for MDMs).
pub fn greedy_suffix_matches<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    target: &[usize],
) -> Result<bool, EvalError> {
    greedy_suffix_matches_cfg(model, prefix, target, 0.0)
}

/// [`greedy_suffix_matches`] with unsupervised CFG of scale `cfg_scale` (0 = off).
pub fn greedy_suffix_matches_cfg<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    target: &[usize],
    cfg_scale: f64,
) -> Result<bool, EvalError> {
    check(prefix, target, model.vocab_size())?;
    Ok(greedy_suffix_cfg(model, prefix, target.len(), cfg_scale)? == target)
}

/// Options of the Monte Carlo ELBO estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McOptions {
    /// Rows per forward batch (`b`, one stratified set of times each).
    pub batch: usize,
    /// Samples to draw (rounded up to whole batches); the cap in adaptive mode.
    pub mc_num: usize,
    /// Adaptive mode: stop after a batch once the standard error is at most this.
    pub tolerance: Option<f64>,
    /// Unsupervised classifier-free guidance scale `w` (0 = off; each sample then costs two rows).
    pub cfg_scale: f64,
}

impl McOptions {
    /// Builder: rows per forward batch.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Builder: samples to draw (the cap in adaptive mode).
    pub fn with_mc_num(mut self, mc_num: usize) -> Self {
        self.mc_num = mc_num;
        self
    }
    /// Builder: adaptive mode with this standard-error tolerance (nats).
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = Some(tolerance);
        self
    }
    /// Builder: unsupervised CFG scale.
    pub fn with_cfg_scale(mut self, cfg_scale: f64) -> Self {
        self.cfg_scale = cfg_scale;
        self
    }
}

impl Default for McOptions {
    fn default() -> Self {
        Self {
            batch: 32,
            mc_num: 128,
            tolerance: None,
            cfg_scale: 0.0,
        }
    }
}

/// Monte Carlo ELBO bound on the NLL of `target` after `prefix` (SMDM.md section 4): per sample
/// draw `t`, mask each target position with probability `t` (prefix never masked), score
/// `sum over masked CE / t`; times of one batch are stratified `(u + j/b) mod 1`. Returns the mean,
/// its standard error over samples, and the number of samples used.
pub fn mc_elbo<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    prefix: &[usize],
    target: &[usize],
    options: McOptions,
    rng: &mut MdmRng,
) -> Result<NllEstimate, EvalError> {
    check(prefix, target, model.vocab_size())?;
    if options.batch == 0 || options.mc_num == 0 {
        return Err(EvalError::Request(
            "batch and mc_num must be positive".into(),
        ));
    }
    let device = model.device();
    let seq: Vec<i64> = prefix.iter().chain(target).map(|&t| t as i64).collect();
    let b = options.batch;
    let x0 = ids_tensor::<B>(&vec![seq; b], &device);
    // SMDM's estimator masks with probability t itself (no eps), never inside the prefix
    let process = ForwardProcess::new(model.mask_id()).with_eps(0.0);
    let prefix_len = vec![prefix.len(); b];
    let mut samples: Vec<f64> = Vec::new();
    while samples.len() < options.mc_num {
        let t = stratified_times(b, rng);
        let noised = process.noise(x0.clone(), &t, Some(&prefix_len), rng)?;
        samples.extend(mc_batch_nll_cfg(
            model,
            x0.clone(),
            &noised,
            &t,
            &prefix_len,
            options.cfg_scale,
        )?);
        if let Some(tol) = options.tolerance {
            if samples.len() >= 2 * b && stderr(&samples) <= tol {
                break;
            }
        }
    }
    let n = samples.len();
    Ok(NllEstimate {
        nll: samples.iter().sum::<f64>() / n as f64,
        stderr: stderr(&samples),
        samples: n,
        forward_rows: if options.cfg_scale == 0.0 { n } else { 2 * n },
        token_log_probs: vec![],
    })
}

fn stderr(samples: &[f64]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return f64::INFINITY;
    }
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

/// Exact NLL of `target` after `prefix` under the causal baseline (one pass), with per-token
/// log-probabilities. `prefix` must not be empty (a BOS token at least).
pub fn causal_nll<B: Kernels, C: CausalPredictor<B>>(
    model: &C,
    prefix: &[usize],
    target: &[usize],
) -> Result<NllEstimate, EvalError> {
    Ok(causal_score(model, prefix, target)?.0)
}

/// [`causal_nll`] and lm-evaluation-harness's `is_greedy` from the same pass: whether every target
/// token is the argmax of its next-token distribution (LAMBADA's accuracy for the baseline).
pub fn causal_score<B: Kernels, C: CausalPredictor<B>>(
    model: &C,
    prefix: &[usize],
    target: &[usize],
) -> Result<(NllEstimate, bool), EvalError> {
    check(prefix, target, model.vocab_size())?;
    if prefix.is_empty() {
        return Err(EvalError::Request(
            "the causal model needs a non-empty prefix".into(),
        ));
    }
    let device = model.device();
    let seq: Vec<i64> = prefix.iter().chain(target).map(|&t| t as i64).collect();
    let logits = model.logits(ids_tensor(&[seq], &device))?;
    let v = logits.dims()[2];
    // position i predicts token i + 1: the target is predicted from positions prefix.len() - 1 ..
    let n = target.len();
    let logits = logits.narrow(1, prefix.len() - 1, n).reshape([n, v]);
    let argmax = host_f64(logits.clone().argmax(1).float().reshape([n]))?;
    let greedy = argmax.iter().zip(target).all(|(&a, &t)| a as usize == t);
    Ok((exact_estimate(logits, target, 1)?, greedy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use mdm_core::rng_from_seed;
    use mdm_models::ModelConfig;

    fn config() -> ModelConfig {
        ModelConfig::custom(60, 2, 4, 32, 64, 64)
    }

    #[test]
    fn mc_standard_error_shrinks_as_one_over_sqrt_n() {
        let model = config()
            .init_masked::<Flex>(1, &Default::default())
            .unwrap();
        let (prefix, target) = ([1usize, 2, 3, 4], [5usize, 6, 7, 8, 9, 10]);
        let run = |n: usize| {
            let options = McOptions::default().with_batch(16).with_mc_num(n);
            mc_elbo(
                &model,
                &prefix,
                &target,
                options,
                &mut rng_from_seed(n as u64),
            )
            .unwrap()
        };
        let (small, large) = (run(64), run(1024));
        assert_eq!((small.samples, large.samples), (64, 1024));
        let ratio = small.stderr / large.stderr;
        assert!(
            (2.5..6.5).contains(&ratio),
            "stderr ratio {ratio}, expected about sqrt(16) = 4"
        );
        // the two estimates agree within their errors
        let gap = (small.nll - large.nll).abs();
        assert!(
            gap < 4.0 * (small.stderr.powi(2) + large.stderr.powi(2)).sqrt(),
            "{small:?} {large:?}"
        );
        // adaptive mode stops early once the tolerance is met
        let loose = McOptions::default()
            .with_batch(16)
            .with_mc_num(4096)
            .with_tolerance(small.stderr * 1.5);
        let adaptive = mc_elbo(&model, &prefix, &target, loose, &mut rng_from_seed(3)).unwrap();
        assert!(
            adaptive.samples < 4096 && adaptive.stderr <= small.stderr * 1.5,
            "{adaptive:?}"
        );
    }

    #[test]
    fn causal_nll_equals_the_sum_of_cached_next_token_losses() {
        use mdm_models::KvCache;
        let model = config()
            .init_causal::<Flex>(2, &Default::default())
            .unwrap();
        let (prefix, target) = ([1usize, 2, 3], [4usize, 5, 6, 7]);
        let direct = causal_nll(&model, &prefix, &target).unwrap();
        // the same from one-token passes through the KV cache
        let mut cache = KvCache::new(&model);
        let seq: Vec<usize> = prefix.iter().chain(&target).copied().collect();
        let mut total = 0.0;
        for i in 0..seq.len() - 1 {
            let ids = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(vec![seq[i] as i64], [1, 1]),
                &Default::default(),
            );
            let logits = model.forward_cached(ids, &mut cache).unwrap();
            if i + 1 >= prefix.len() {
                let v = logits.dims()[2];
                let lp = burn::tensor::activation::log_softmax(logits.reshape([1, v]), 1);
                total -= host_f64(lp.narrow(1, seq[i + 1], 1).reshape([1])).unwrap()[0];
            }
        }
        assert!(
            (direct.nll - total).abs() < 1e-4 * total,
            "{} vs {total}",
            direct.nll
        );
        assert_eq!(direct.token_log_probs.len(), 4);
        assert!(causal_nll(&model, &[], &target).is_err());
        assert!(causal_nll(&model, &prefix, &[]).is_err());
        assert!(causal_nll(&model, &prefix, &[500]).is_err());
    }

    #[test]
    fn greedy_suffix_check_accepts_its_own_fill_only() {
        let model = config()
            .init_masked::<Flex>(5, &Default::default())
            .unwrap();
        let prefix = [1usize, 2, 3, 4, 5];
        let fill = greedy_suffix(&model, &prefix, 4).unwrap();
        assert_eq!(fill.len(), 4);
        assert!(fill.iter().all(|&t| t < model.mask_id()));
        assert!(greedy_suffix_matches(&model, &prefix, &fill).unwrap());
        let mut other = fill.clone();
        other[2] = (other[2] + 1) % 60;
        assert!(!greedy_suffix_matches(&model, &prefix, &other).unwrap());
        assert!(greedy_suffix_matches(&model, &prefix, &[]).is_err());
    }

    #[test]
    fn causal_chain_rule_equals_the_direct_sum_and_greedy_check() {
        let model = config()
            .init_causal::<Flex>(4, &Default::default())
            .unwrap();
        let (prefix, target) = ([1usize, 2, 3], [4usize, 5, 6, 7]);
        let (direct, greedy) = causal_score(&model, &prefix, &target).unwrap();
        // chain rule: pass k sees prefix + target[..k] and predicts target[k] from its last position
        let mut total = 0.0;
        let mut argmax = vec![];
        for k in 0..target.len() {
            let seq: Vec<i64> = prefix
                .iter()
                .chain(&target[..k])
                .map(|&t| t as i64)
                .collect();
            let len = seq.len();
            let logits = model
                .forward(ids_tensor::<Flex>(&[seq], &Default::default()))
                .unwrap();
            let v = logits.dims()[2];
            let last = logits.narrow(1, len - 1, 1).reshape([1, v]);
            let lp = host_f64(burn::tensor::activation::log_softmax(last, 1)).unwrap();
            total -= lp[target[k]];
            let best = (0..v).max_by(|&a, &b| lp[a].total_cmp(&lp[b])).unwrap();
            argmax.push(best);
        }
        assert!(
            (direct.nll - total).abs() < 1e-4 * total,
            "{} vs {total}",
            direct.nll
        );
        // the greedy check: false for this target, true for the argmax continuation
        assert_eq!(greedy, argmax == target);
        let own: Vec<usize> = {
            // greedy continuation token by token
            let mut seq = prefix.to_vec();
            for _ in 0..3 {
                let ids: Vec<i64> = seq.iter().map(|&t| t as i64).collect();
                let logits = model
                    .forward(ids_tensor::<Flex>(&[ids], &Default::default()))
                    .unwrap();
                let [_, len, v] = logits.dims();
                let last = host_f64(logits.narrow(1, len - 1, 1).reshape([v])).unwrap();
                seq.push((0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap());
            }
            seq[prefix.len()..].to_vec()
        };
        assert!(causal_score(&model, &prefix, &own).unwrap().1);
        let mut other = own.clone();
        other[1] = (other[1] + 1) % 60;
        assert!(!causal_score(&model, &prefix, &other).unwrap().1);
    }

    #[test]
    fn cfg_zero_is_no_guidance_and_guidance_changes_the_estimates() {
        let model = config()
            .init_masked::<Flex>(6, &Default::default())
            .unwrap();
        let (prefix, target) = ([1usize, 2, 3, 4], [5usize, 6, 7]);
        let plain = chain_rule(&model, &prefix, &target).unwrap();
        let zero = chain_rule_cfg(&model, &prefix, &target, 0.0).unwrap();
        assert_eq!(plain, zero);
        let guided = chain_rule_cfg(&model, &prefix, &target, 1.0).unwrap();
        assert_eq!(guided.forward_rows, 2 * plain.forward_rows);
        assert!((guided.nll - plain.nll).abs() > 1e-6);
        // w: the guided logits equal u + (w + 1)(c - u) computed by hand from two passes
        let rows = chain_rule_rows(&prefix, &target, model.mask_id());
        let uncond: Vec<Vec<i64>> = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r[..prefix.len()].fill(model.mask_id() as i64);
                r
            })
            .collect();
        let dev = Default::default();
        let len = prefix.len() + target.len();
        let index: Vec<i64> = (0..3)
            .map(|k| (k * len + prefix.len() + k) as i64)
            .collect();
        let index = Tensor::<Flex, 1, Int>::from_data(TensorData::new(index, [3]), &dev);
        let c = model
            .forward_at(ids_tensor(&rows, &dev), index.clone())
            .unwrap();
        let u = model.forward_at(ids_tensor(&uncond, &dev), index).unwrap();
        let by_hand = exact_estimate(u.clone() + (c - u) * 2.0, &target, 6).unwrap();
        assert!(
            (by_hand.nll - guided.nll).abs() < 1e-4,
            "{by_hand:?} {guided:?}"
        );
        // the MC estimate and the greedy fill accept a scale too
        let mc = McOptions::default().with_batch(8).with_mc_num(8);
        let a = mc_elbo(&model, &prefix, &target, mc, &mut rng_from_seed(1)).unwrap();
        let b = mc_elbo(
            &model,
            &prefix,
            &target,
            mc.with_cfg_scale(0.0),
            &mut rng_from_seed(1),
        );
        assert_eq!(a, b.unwrap());
        let g = mc_elbo(
            &model,
            &prefix,
            &target,
            mc.with_cfg_scale(2.0),
            &mut rng_from_seed(1),
        );
        let g = g.unwrap();
        assert_eq!(g.forward_rows, 16);
        assert!((g.nll - a.nll).abs() > 1e-6);
        let fill = greedy_suffix_cfg(&model, &prefix, 3, 2.0).unwrap();
        assert!(greedy_suffix_matches_cfg(&model, &prefix, &fill, 2.0).unwrap());
    }

    #[test]
    fn chain_rule_rows_layout() {
        let rows = chain_rule_rows(&[1, 2], &[3, 4, 5], 9);
        assert_eq!(
            rows,
            vec![
                vec![1, 2, 9, 9, 9],
                vec![1, 2, 3, 9, 9],
                vec![1, 2, 3, 4, 9]
            ]
        );
    }
}
