//! The autoregressive baseline's sampler: one token per forward pass with the KV cache.

use mdm_kernels::Kernels;
use std::collections::BTreeMap;

use burn::tensor::{Int, Tensor, TensorData};
use mdm_core::rng_from_seed;
use mdm_models::CausalPredictor;

use crate::draw::proposals;
use crate::host::read_back;
use crate::options::Sampling;
use crate::proposal::{Confidence, Slot};
use crate::step::Streams;
use crate::step::{check_prompts, SamplerError};

/// Options of autoregressive generation.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoregressiveConfig {
    /// Most tokens generated per row.
    pub max_new_tokens: usize,
    /// Temperature (0 = argmax): tokens drawn from `softmax(logits / T)` as by the MDM sampler
    /// ([`draw_proposals`]).
    pub temperature: f64,
    /// Stop a row at this id (excluded from the output).
    pub eos_id: Option<usize>,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for AutoregressiveConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            eos_id: None,
            seed: 0,
        }
    }
}

/// Generates continuations from a left-to-right network (the baseline's
/// [`mdm_models::CausalTransformer`] or any [`CausalPredictor`]): the prompt in one pass, then one
/// token per pass reusing the keys and values of its cache. Rows with equal prompt lengths run as one
/// batch; the draws of each group come from the seed, in prompt-length order.
pub fn generate_autoregressive<B: Kernels, C: CausalPredictor<B>>(
    model: &C,
    prompts: &[Vec<usize>],
    config: &AutoregressiveConfig,
) -> Result<Vec<Vec<usize>>, SamplerError> {
    let vocab = model.vocab_size();
    let device = model.device();
    // the last generated token is never fed back: one position more than a pass takes
    check_prompts(
        prompts,
        vocab,
        config.max_new_tokens,
        model.max_positions() + 1,
    )?;
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (row, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(SamplerError::Config {
                reason: format!(
                    "prompt {row} is empty: the baseline needs at least one token (BOS)"
                ),
            });
        }
        groups.entry(p.len()).or_default().push(row);
    }
    let mut rng = rng_from_seed(config.seed);
    let mut out = vec![Vec::new(); prompts.len()];
    for (prompt_len, rows) in groups {
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|&r| prompts[r].iter().map(|&t| t as i64))
            .collect();
        let mut input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), prompt_len]), &device);
        let mut cache = model.new_cache();
        let mut finished = vec![false; rows.len()];
        for step in 0..config.max_new_tokens {
            let logits = model.logits_cached(input, &mut cache)?;
            let [batch, len, v] = logits.dims();
            let last = logits.narrow(1, len - 1, 1).reshape([batch, v]);
            let next = if config.temperature == 0.0 {
                read_back::<i64>(last.argmax(1).into_data(), "argmax")?
                    .into_iter()
                    .map(|t| t as usize)
                    .collect()
            } else {
                // the position each token is drawn for, to name it if its logits are not finite
                let slots: Vec<Slot> = rows
                    .iter()
                    .map(|&row| Slot {
                        row,
                        pos: prompt_len + step,
                    })
                    .collect();
                let sampling = Sampling {
                    temperature: config.temperature,
                    ..Sampling::default()
                };
                let proposals = proposals(
                    last,
                    &slots,
                    None,
                    &sampling,
                    Confidence::Probability,
                    &mut Streams::Joint(&mut rng),
                )?;
                proposals.into_iter().map(|p| p.token).collect::<Vec<_>>()
            };
            for (i, &tok) in next.iter().enumerate() {
                if finished[i] {
                    continue;
                }
                if Some(tok) == config.eos_id {
                    finished[i] = true;
                } else {
                    out[rows[i]].push(tok);
                }
            }
            if finished.iter().all(|&f| f) {
                break;
            }
            let next: Vec<i64> = next.iter().map(|&t| t as i64).collect();
            input = Tensor::from_data(TensorData::new(next, [batch, 1]), &device);
        }
    }
    Ok(out)
}
