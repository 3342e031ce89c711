//! Proposals with any temperature and confidence from host logits, by the vectorised kernels.
//!
//! At temperature `T > 0` SMDM draws `argmax_j exp(l_j) / (-log U_j)^T` with one uniform `U_j` per
//! logit: by the Gumbel-max trick that token follows `softmax(l / T)`. [`draw_proposals`] draws
//! from the same distribution by inverse CDF with **one uniform per slot**: the exponentials
//! `exp((l_j - max) / T)` are summed per block, the block holding `U * total` is found, then the
//! token inside it. This replaces 32,000 f64 logarithms per slot by one vectorised pass; the
//! tokens drawn for a seed differ from [`propose_with`](crate::proposal::propose_with)'s (the f64
//! reference, kept for tests), their distribution does not.
//!
//! Confidences, from the same kernels: the softmax probability of the token (at temperature 1, as
//! SMDM), Dream's margin and negative entropy (equal to
//! [`Confidence::measure`](crate::proposal::Confidence::measure)'s f64 values within 1e-6).

use std::borrow::Cow;

use burn::tensor::Tensor;
use mdm_core::cfg::{cfg_combine, cfg_combine_host};
use mdm_core::gumbel::check_temperature;
use mdm_kernels::Kernels;
use rand::Rng;

use crate::greedy::{finish, greedy_proposals_device, greedy_proposals_host, shape_error};
use crate::host::device_error;
use crate::kernel::{self, BLOCK};
use crate::options::Sampling;
use crate::proposal::{Confidence, Proposal, Slot};
use crate::step::{SamplerError, Streams};

/// The proposals of a step: a token and a confidence for every slot from its logits (`[slots, V]`,
/// or with classifier-free guidance `[2 slots, V]`, the conditional rows first, combined here as
/// `u + (w + 1)(c - u)`), drawn with `sampling`'s temperature and filters and measured by
/// `confidence`. The one function every decoding path proposes with.
///
/// The logits are read on the host through the backend extension
/// ([`Kernels::with_host_f32`]: in place on burn-flex). The one exception is the greedy step
/// without filters (temperature 0, probability confidence) on a backend whose tensors do not live
/// in host memory ([`Kernels::HOST_MEMORY`] false): the argmax and log-sum-exp are reduced on the
/// device and three numbers per slot come back.
pub fn proposals<B: Kernels>(
    logits: Tensor<B, 2>,
    slots: &[Slot],
    cfg_scale: Option<f64>,
    sampling: &Sampling,
    confidence: Confidence,
    streams: &mut Streams<'_>,
) -> Result<Vec<Proposal>, SamplerError> {
    let greedy = sampling.temperature == 0.0
        && confidence == Confidence::Probability
        && !sampling.filters()
        && sampling.confidence_temperature.is_none();
    let [rows, vocab] = logits.dims();
    let halves = if cfg_scale.is_some() { 2 } else { 1 };
    if rows != halves * slots.len() {
        return Err(shape_error(slots.len(), vocab, rows * vocab / halves));
    }
    if slots.is_empty() {
        // a pass with nothing to propose (a cached pass after its block filled)
        return Ok(Vec::new());
    }
    if greedy && !B::HOST_MEMORY {
        let logits = match cfg_scale {
            Some(w) => {
                let cond = logits.clone().narrow(0, 0, slots.len());
                let uncond = logits.narrow(0, slots.len(), slots.len());
                cfg_combine(cond, uncond, w)?
            }
            None => logits,
        };
        return greedy_proposals_device(slots, logits);
    }
    B::with_host_f32(logits, |values| {
        let guided;
        let values = match cfg_scale {
            Some(w) => {
                let (cond, uncond) = values.split_at(values.len() / 2);
                guided = cfg_combine_host(cond, uncond, w)?;
                &guided[..]
            }
            None => values,
        };
        if greedy {
            greedy_proposals_host(slots, values, vocab)
        } else {
            draw_proposals(slots, values, vocab, sampling, confidence, streams)
        }
    })
    .map_err(|e| device_error("slot logits", e))?
}

/// A token and a confidence for every slot from host logits (`slots.len() x vocab`, row-major),
/// drawn with `sampling`'s temperature (0 = argmax, first index on ties) among the tokens its
/// filters keep, and measured by `confidence` on the kept tokens' renormalised distribution (at
/// temperature 1, or at the temperature with [`Sampling::tempered_confidence`], or at
/// [`Sampling::confidence_temperature`] at temperature 0). The
/// uniforms are taken from each slot's row stream in slot order before the rows are processed in
/// parallel, so the same seed gives the same tokens. A row holding NaN or `+inf`, or only `-inf`,
/// is an error naming its slot; a `-inf` logit is never drawn.
pub fn draw_proposals(
    slots: &[Slot],
    logits: &[f32],
    vocab: usize,
    sampling: &Sampling,
    confidence: Confidence,
    streams: &mut Streams<'_>,
) -> Result<Vec<Proposal>, SamplerError> {
    let temperature = sampling.temperature;
    check_temperature(temperature)?;
    if vocab == 0 || logits.len() != slots.len() * vocab {
        return Err(shape_error(slots.len(), vocab, logits.len()));
    }
    let uniforms: Vec<f64> = if temperature > 0.0 {
        slots
            .iter()
            .map(|s| streams.row(s.row).random::<f64>())
            .collect()
    } else {
        vec![0.0; slots.len()]
    };
    let filtering = sampling.filters();
    // the temperature the confidences are measured at, when not 1
    let tempered = if temperature > 0.0 {
        sampling.tempered_confidence.then_some(temperature)
    } else {
        sampling.confidence_temperature
    };
    let results = kernel::map_rows(logits, vocab, |i, row| {
        let filtered;
        let row = if filtering {
            match filter_row(row, sampling) {
                Some(kept) => {
                    filtered = kept;
                    &filtered[..]
                }
                None => return (0, f64::NAN, None),
            }
        } else {
            row
        };
        if let Some(t) = tempered {
            // Dream: the draw and the confidence both from softmax(row / T); RND1: the argmax
            // (unchanged by the scale) and the confidence at T
            let scaled: Vec<f32> = if temperature > 0.0 {
                let inverse = (1.0 / t) as f32;
                row.iter().map(|&x| x * inverse).collect()
            } else {
                // as RND1's `logits / temperature`
                let t = t as f32;
                row.iter().map(|&x| x / t).collect()
            };
            let at = if temperature > 0.0 { 1.0 } else { 0.0 };
            return propose_row(&scaled, uniforms[i], at, confidence);
        }
        propose_row(row, uniforms[i], temperature, confidence)
    });
    finish(slots, results.into_iter())
}

/// The token, confidence and (with [`Confidence::ProbabilityAndEntropy`]) entropy of one
/// (filtered) row at uniform `u`.
fn propose_row(
    row: &[f32],
    u: f64,
    temperature: f64,
    confidence: Confidence,
) -> (usize, f64, Option<f64>) {
    let Some((top, argmax)) = row_top(row) else {
        return (0, f64::NAN, None);
    };
    let with_entropy = confidence == Confidence::ProbabilityAndEntropy;
    // the blocks' sums of exp(x - top), with the entropy's weighted sums in the same pass
    let (block_sums, weighted): (Vec<f64>, f64) =
        if confidence == Confidence::NegEntropy || with_entropy {
            let sums: Vec<(f64, f64)> = row
                .chunks(BLOCK)
                .map(|block| kernel::entropy_sums(block, top))
                .collect();
            (
                sums.iter().map(|s| s.0).collect(),
                sums.iter().map(|s| s.1).sum(),
            )
        } else {
            let sums = row.chunks(BLOCK).map(|b| kernel::exp_sum(b, top, 1.0));
            (sums.collect(), 0.0)
        };
    let normaliser: f64 = block_sums.iter().sum();
    let token = if temperature > 0.0 {
        sample_row(row, top, u, temperature as f32, &block_sums)
    } else {
        Some(argmax)
    };
    let summary = Summary {
        top,
        argmax,
        normaliser,
        weighted,
    };
    let entropy = with_entropy.then(|| -measure(row, argmax, &summary, Confidence::NegEntropy));
    match token {
        Some(token) => (token, measure(row, token, &summary, confidence), entropy),
        None => (0, f64::NAN, None),
    }
}

/// The row with the tokens `sampling`'s filters remove set to `-inf`, or `None` for a row that is
/// not finite. The filters, on `softmax(row / T)` (`T` = 1 at temperature 0), in Dream's order:
/// nucleus (`top_p`: in order of decreasing logit, the tokens whose predecessors' mass is at most
/// `top_p`, the first always, as `top_p_logits`), then `top_k` (tokens below the k-th largest
/// kept logit removed, as `top_k_logits`), then `min_p` (tokens less likely than `min_p` times the
/// most likely). Each keeps the tokens at or above a cutoff logit, so tokens tied with the last
/// one kept are kept (PyTorch's sort leaves their order unspecified).
pub fn filter_row(row: &[f32], sampling: &Sampling) -> Option<Vec<f32>> {
    let (top, _) = row_top(row)?;
    let scale = if sampling.temperature > 0.0 {
        1.0 / sampling.temperature
    } else {
        1.0
    };
    let mut cutoff = f32::NEG_INFINITY;
    let top_p = sampling.top_p.filter(|&p| p < 1.0);
    if top_p.is_some() || sampling.top_k.is_some() {
        let mass = top_p.map(|p| {
            p * row
                .chunks(BLOCK)
                .map(|block| kernel::exp_sum(block, top, scale as f32))
                .sum::<f64>()
        });
        cutoff = sorted_cutoff(row, top, scale, mass, sampling.top_k);
    }
    if let Some(min_p) = sampling.min_p.filter(|&p| p > 0.0) {
        // exp((x - top) / T) >= min_p, without an exponential per token
        let floor = f64::from(top) + min_p.ln() / scale;
        // the smallest f32 at or above the floor
        let mut f = floor as f32;
        if f64::from(f) < floor {
            f = f.next_up();
        }
        cutoff = cutoff.max(f);
    }
    Some(
        row.iter()
            .map(|&x| if x >= cutoff { x } else { f32::NEG_INFINITY })
            .collect(),
    )
}

/// The smallest logit the nucleus of `mass` (if given) and then the top `k` (if given) keep. Walks
/// the row in order of decreasing logit without sorting it: the logits are bucketed by their
/// distance below `top` (a counting sort, no exponential), and buckets are taken from the top,
/// each sorted, until both cuts are found; only the tokens walked are weighed
/// (`exp((x - top) scale)`, f32 exponential, f64 sum).
fn sorted_cutoff(row: &[f32], top: f32, scale: f64, mass: Option<f64>, k: Option<usize>) -> f32 {
    const BUCKETS: usize = 2048;
    // below this distance a weight is under e^-50: the last bucket holds them all
    // (monotone in x: f32 rounding keeps the order, equal logits share a bucket)
    let per_unit = (BUCKETS as f64 * scale / 50.0) as f32;
    let buckets: Vec<u16> = row
        .iter()
        .map(|&x| (((top - x) * per_unit) as usize).min(BUCKETS) as u16)
        .collect();
    let mut starts = vec![0usize; BUCKETS + 2];
    for &b in &buckets {
        starts[b as usize + 1] += 1;
    }
    for b in 0..=BUCKETS {
        starts[b + 1] += starts[b];
    }
    let mut cursor = starts.clone();
    let mut values = vec![0f32; row.len()];
    for (&x, &b) in row.iter().zip(&buckets) {
        values[cursor[b as usize]] = x;
        cursor[b as usize] += 1;
    }
    let (mut nucleus_end, mut kth) = (mass.is_none().then_some(f32::NEG_INFINITY), None);
    let mut taken = 0usize;
    let mut before = 0.0f64;
    let mut last = top;
    'walk: for b in 0..=BUCKETS {
        let group = &mut values[starts[b]..starts[b + 1]];
        group.sort_unstable_by(|a, b| b.total_cmp(a));
        for &x in group.iter() {
            if nucleus_end.is_none() && taken > 0 && before > mass.unwrap_or(f64::INFINITY) {
                nucleus_end = Some(last);
            }
            // a found k-th decides (a nucleus still open goes past it); else an ended nucleus
            if kth.is_some() || (nucleus_end.is_some() && mass.is_some()) {
                break 'walk;
            }
            if nucleus_end.is_none() {
                before += f64::from(kernel::exp_nonpositive(((x - top) as f64 * scale) as f32));
            }
            taken += 1;
            if k == Some(taken) {
                kth = Some(x);
            }
            last = x;
        }
    }
    let nucleus_end = nucleus_end.unwrap_or(f32::NEG_INFINITY);
    // top_k of what the nucleus keeps: its k-th largest, when the nucleus holds k
    match kth {
        Some(v) if v >= nucleus_end => v,
        _ => nucleus_end,
    }
}

/// The row's maximum and its first index (searched from the block that holds it), or `None` for a
/// row with NaN, `+inf` or only `-inf`.
fn row_top(row: &[f32]) -> Option<(f32, usize)> {
    let (mut top, mut top_block) = (f32::NEG_INFINITY, 0);
    for (b, block) in row.chunks(BLOCK).enumerate() {
        let m = kernel::max(block);
        if m.is_nan() {
            return None;
        }
        if m > top {
            (top, top_block) = (m, b * BLOCK);
        }
    }
    top.is_finite()
        .then(|| (top, kernel::first_index(row, top_block, top)))
}

/// What the confidences need of a row: its maximum `top` and first index of it `argmax`,
/// `normaliser = S = sum exp(x - top)` and, for the entropy, `weighted = sum exp(x - top) (x - top)`
/// (0 otherwise).
struct Summary {
    top: f32,
    argmax: usize,
    normaliser: f64,
    weighted: f64,
}

/// The confidence of `token` given the row's [`Summary`]: the probability `exp(l - top) / S`; the
/// margin `(1 - exp(second - top)) / S` with `second` the largest logit besides the first maximum
/// (equal to `top` on a tie: margin 0); the negative entropy `sum p ln p = weighted / S - ln S`.
fn measure(row: &[f32], token: usize, summary: &Summary, confidence: Confidence) -> f64 {
    let (top, s) = (summary.top, summary.normaliser);
    match confidence {
        Confidence::Probability | Confidence::ProbabilityAndEntropy => {
            f64::from(row[token] - top).exp() / s
        }
        Confidence::Margin => {
            let first = summary.argmax;
            let second = row[..first]
                .chunks(BLOCK)
                .chain(row[first + 1..].chunks(BLOCK))
                .map(kernel::max)
                .fold(f32::NEG_INFINITY, f32::max);
            (1.0 - f64::from(second - top).exp()) / s
        }
        Confidence::NegEntropy => summary.weighted / s - s.ln(),
    }
}

/// The token drawn from `softmax(row / temperature)` by inverse CDF at `u` in `[0, 1)`, given the
/// row's finite maximum `top` and its blocks' sums of `exp(x - top)` (reused at temperature 1);
/// `None` if no entry has weight.
fn sample_row(
    row: &[f32],
    top: f32,
    u: f64,
    temperature: f32,
    block_sums: &[f64],
) -> Option<usize> {
    let scale = 1.0 / temperature;
    let tempered: Cow<[f64]> = if scale == 1.0 {
        Cow::Borrowed(block_sums)
    } else {
        row.chunks(BLOCK)
            .map(|block| kernel::exp_sum(block, top, scale))
            .collect()
    };
    let target = u * tempered.iter().sum::<f64>();
    // the block where the running sum passes the target (the last one with weight when rounding
    // leaves the target beyond the end), then the token inside it
    let mut before = 0.0;
    let mut chosen = None;
    for (b, &weight) in tempered.iter().enumerate() {
        if weight > 0.0 {
            chosen = Some((b, before));
            if before + weight > target {
                break;
            }
        }
        before += weight;
    }
    let (b, before) = chosen?;
    let start = b * BLOCK;
    let mut running = before;
    let mut token = None;
    for (i, &x) in row[start..(start + BLOCK).min(row.len())]
        .iter()
        .enumerate()
    {
        if x == f32::NEG_INFINITY {
            continue;
        }
        token = Some(start + i);
        running += f64::from(kernel::exp_nonpositive((x - top) * scale));
        if running > target {
            break;
        }
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::propose_with;
    use mdm_core::rng_from_seed;

    /// [`draw_proposals`] with one stream seeded by `rng` and no filters.
    fn draw(
        slots: &[Slot],
        logits: &[f32],
        vocab: usize,
        temperature: f64,
        confidence: Confidence,
        rng: &mut mdm_core::MdmRng,
    ) -> Result<Vec<Proposal>, SamplerError> {
        let sampling = Sampling {
            temperature,
            ..Sampling::default()
        };
        draw_proposals(
            slots,
            logits,
            vocab,
            &sampling,
            confidence,
            &mut Streams::Joint(rng),
        )
    }

    /// Three likely tokens in different blocks of a 3,000-way vocabulary, the rest far below, and
    /// `-inf` (banned) entries around them.
    fn spread_logits() -> Vec<f32> {
        let mut row: Vec<f32> = (0..3000).map(|i| -8.0 - (i % 7) as f32).collect();
        row[10] = 2.0;
        row[1500] = 1.0;
        row[2900] = 0.0;
        for i in [11, 1499, 2899, 2999] {
            row[i] = f32::NEG_INFINITY;
        }
        row
    }

    #[test]
    fn draws_follow_the_tempered_softmax() {
        let row = spread_logits();
        for temperature in [1.0, 0.5, 2.0] {
            let n = 20_000;
            let slots: Vec<Slot> = (0..n).map(|pos| Slot { row: 0, pos }).collect();
            let logits: Vec<f32> = (0..n).flat_map(|_| row.iter().copied()).collect();
            let p = draw(
                &slots,
                &logits,
                row.len(),
                temperature,
                Confidence::Probability,
                &mut rng_from_seed(1),
            )
            .unwrap();
            let weights: Vec<f64> = row
                .iter()
                .map(|&l| (f64::from(l) / temperature).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            for token in [10, 1500, 2900] {
                let expected = weights[token] / total;
                let seen = p.iter().filter(|q| q.token == token).count() as f64 / n as f64;
                let sigma = (expected * (1.0 - expected) / n as f64).sqrt();
                assert!(
                    (seen - expected).abs() < 5.0 * sigma + 1e-4,
                    "T = {temperature}, token {token}: {seen} vs {expected}"
                );
            }
            // the rest of the mass, and never a -inf entry
            assert!(p.iter().all(|q| ![11, 1499, 2899, 2999].contains(&q.token)));
            // confidence: the softmax probability at temperature 1 of the drawn token
            let exact = propose_with(
                &slots[..50],
                &logits[..50 * row.len()],
                row.len(),
                0.0,
                Confidence::Probability,
                &mut rng_from_seed(0),
            )
            .unwrap();
            let norm: f64 = row.iter().map(|&l| f64::from(l - 2.0).exp()).sum();
            for q in &p[..50] {
                let want = f64::from(row[q.token] - 2.0).exp() / norm;
                assert!((q.confidence - want).abs() <= 1e-6 * want, "{q:?} {want}");
            }
            assert!((exact[0].confidence - f64::from(0.0f32).exp() / norm).abs() < 1e-9);
        }
    }

    #[test]
    fn temperature_zero_and_other_confidences_match_the_reference() {
        let (n, vocab) = (6, 2500);
        let logits: Vec<f32> = (0..n * vocab)
            .map(|i| (((i * 7919) % 10_007) as f32 / 531.0).sin() * 5.0)
            .collect();
        let slots: Vec<Slot> = (0..n).map(|pos| Slot { row: 1, pos }).collect();
        for confidence in [
            Confidence::Probability,
            Confidence::Margin,
            Confidence::NegEntropy,
        ] {
            let fast = draw(
                &slots,
                &logits,
                vocab,
                0.0,
                confidence,
                &mut rng_from_seed(0),
            )
            .unwrap();
            let exact = propose_with(
                &slots,
                &logits,
                vocab,
                0.0,
                confidence,
                &mut rng_from_seed(0),
            )
            .unwrap();
            for (f, e) in fast.iter().zip(&exact) {
                assert_eq!((f.slot, f.token), (e.slot, e.token));
                let tolerance = 1e-6 * e.confidence.abs().max(1e-3);
                assert!(
                    (f.confidence - e.confidence).abs() <= tolerance,
                    "{confidence:?}"
                );
            }
            // at a temperature the drawn token is measured the same way
            let drawn = draw(
                &slots,
                &logits,
                vocab,
                0.7,
                confidence,
                &mut rng_from_seed(3),
            )
            .unwrap();
            for (d, row) in drawn.iter().zip(logits.chunks(vocab)) {
                let want = confidence.measure(row, d.token);
                assert!((d.confidence - want).abs() <= 1e-6 * want.abs().max(1e-3));
            }
        }
    }

    #[test]
    fn seeds_reproduce_and_bad_rows_are_errors() {
        let row = spread_logits();
        let logits: Vec<f32> = (0..40).flat_map(|_| row.iter().copied()).collect();
        let slots: Vec<Slot> = (0..40).map(|pos| Slot { row: 0, pos }).collect();
        let run = |seed| {
            draw(
                &slots,
                &logits,
                3000,
                1.0,
                Confidence::Probability,
                &mut rng_from_seed(seed),
            )
            .unwrap()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let mut bad = logits.clone();
        bad[3 * 3000 + 7] = f32::NAN;
        let err = draw(
            &slots,
            &bad,
            3000,
            1.0,
            Confidence::Probability,
            &mut rng_from_seed(0),
        )
        .unwrap_err();
        assert!(
            matches!(err, SamplerError::NonFiniteLogits { row: 0, pos: 3 }),
            "{err}"
        );
        let banned = vec![f32::NEG_INFINITY; 3000];
        let one = [Slot { row: 0, pos: 0 }];
        for t in [0.0, 1.0] {
            assert!(draw(
                &one,
                &banned,
                3000,
                t,
                Confidence::Margin,
                &mut rng_from_seed(0)
            )
            .is_err());
        }
        assert!(draw(
            &one,
            &banned,
            3000,
            -1.0,
            Confidence::Probability,
            &mut rng_from_seed(0)
        )
        .is_err());
        assert!(draw(
            &slots,
            &logits[1..],
            3000,
            1.0,
            Confidence::Probability,
            &mut rng_from_seed(0)
        )
        .is_err());
    }

    /// The kept set and its renormalised probabilities computed directly: a full sort, f64.
    fn direct(row: &[f32], s: &Sampling) -> Vec<f64> {
        let scale = if s.temperature > 0.0 {
            1.0 / s.temperature
        } else {
            1.0
        };
        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = row
            .iter()
            .map(|&x| (f64::from(x - top) * scale).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut keep = vec![true; row.len()];
        if let Some(p) = s.top_p {
            let mut cum = 0.0;
            for &i in &order {
                keep[i] = cum <= p; // the mass before i
                cum += w[i] / total;
            }
        }
        if let Some(k) = s.top_k {
            let kept: Vec<usize> = order.iter().copied().filter(|&i| keep[i]).collect();
            if kept.len() > k {
                let kth = row[kept[k - 1]];
                for i in 0..row.len() {
                    keep[i] &= row[i] >= kth;
                }
            }
        }
        if let Some(m) = s.min_p {
            for i in 0..row.len() {
                keep[i] &= w[i] >= m;
            }
        }
        // the confidence's distribution: temperature 1 (or T, tempered) over the kept tokens
        let at = if s.tempered_confidence { scale } else { 1.0 };
        let w1: Vec<f64> = (0..row.len())
            .map(|i| {
                if keep[i] {
                    (f64::from(row[i] - top) * at).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let z: f64 = w1.iter().sum();
        w1.iter().map(|x| x / z).collect()
    }

    #[test]
    fn filters_match_a_direct_computation() {
        let vocab = 3000;
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..vocab)
                    .map(|i| (((i * 7919 + r * 131) % 10_007) as f32 / 531.0).sin() * 4.0)
                    .collect()
            })
            .collect();
        let logits: Vec<f32> = rows.concat();
        let slots: Vec<Slot> = (0..4).map(|pos| Slot { row: 0, pos }).collect();
        let cases = [
            Sampling {
                top_k: Some(5),
                ..Sampling::default()
            },
            Sampling {
                top_p: Some(0.3),
                ..Sampling::default()
            },
            Sampling {
                min_p: Some(0.5),
                ..Sampling::default()
            },
            Sampling {
                top_p: Some(0.6),
                top_k: Some(40),
                min_p: Some(0.1),
                ..Sampling::default()
            },
            Sampling {
                temperature: 0.5,
                top_p: Some(0.2),
                ..Sampling::default()
            },
            Sampling {
                temperature: 2.0,
                top_k: Some(1),
                ..Sampling::default()
            },
        ];
        for s in cases {
            // temperature 0: the argmax, its confidence the renormalised probability
            let greedy = Sampling {
                temperature: 0.0,
                ..s
            };
            let got = draw_proposals(
                &slots,
                &logits,
                vocab,
                &greedy,
                Confidence::Probability,
                &mut Streams::Joint(&mut rng_from_seed(0)),
            )
            .unwrap();
            for (p, row) in got.iter().zip(&rows) {
                let probs = direct(row, &greedy);
                let best = (0..vocab).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
                assert_eq!(p.token, best, "{s:?}");
                assert!(
                    (p.confidence - probs[best]).abs() < 1e-6 * probs[best],
                    "{s:?}"
                );
                assert!(p.confidence > Confidence::Probability.measure(row, best) - 1e-12);
            }
            // at a temperature: only kept tokens are drawn, each with its renormalised probability
            // (at temperature 1, or Dream's tempered one)
            for s in [
                s,
                Sampling {
                    tempered_confidence: true,
                    ..s
                },
            ] {
                if s.temperature > 0.0 {
                    let n = 4_000;
                    let many: Vec<Slot> = (0..n).map(|pos| Slot { row: 0, pos }).collect();
                    let repeated: Vec<f32> = (0..n).flat_map(|_| rows[0].iter().copied()).collect();
                    let drawn = draw_proposals(
                        &many,
                        &repeated,
                        vocab,
                        &s,
                        Confidence::Probability,
                        &mut Streams::Joint(&mut rng_from_seed(2)),
                    )
                    .unwrap();
                    let probs = direct(&rows[0], &s);
                    for p in &drawn {
                        assert!(
                            probs[p.token] > 0.0,
                            "{s:?}: token {} was filtered",
                            p.token
                        );
                        assert!((p.confidence - probs[p.token]).abs() < 1e-6 * probs[p.token]);
                    }
                }
            }
        }
    }
}
