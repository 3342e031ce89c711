//! Training-time augmentations: stochastic sequence length and prompt dropout for CFG training.

use burn::tensor::{backend::Backend, Int, Tensor};
use rand::Rng;

use crate::error::check_unit_interval;
use crate::forward_process::prompt_mask;
use crate::{CoreError, MdmRng};

/// Stochastic sequence length: with probability `ssl_ratio` returns a length drawn uniformly from
/// `1..=seq_len`, otherwise `seq_len`. Cut the batch to this length before noising so the model also
/// sees short sequences (SMDM uses `ssl_ratio = 0.01`).
pub fn stochastic_length(
    seq_len: usize,
    ssl_ratio: f64,
    rng: &mut MdmRng,
) -> Result<usize, CoreError> {
    check_unit_interval("ssl_ratio", ssl_ratio)?;
    if seq_len == 0 {
        return Err(CoreError::Empty("stochastic length of an empty sequence"));
    }
    // one draw decides, a second picks the length: the stream advances the same way every call
    let cut = rng.random::<f64>() < ssl_ratio;
    let length = rng.random_range(1..=seq_len);
    Ok(if cut { length } else { seq_len })
}

/// Cuts a `[batch, seq_len]` batch to its first `length` positions.
pub fn truncate<B: Backend>(
    x: Tensor<B, 2, Int>,
    length: usize,
) -> Result<Tensor<B, 2, Int>, CoreError> {
    let [_, seq_len] = x.dims();
    if length == 0 || length > seq_len {
        return Err(CoreError::Value {
            what: "length",
            value: length as f64,
            reason: "must lie in 1..=seq_len",
        });
    }
    Ok(x.narrow(1, 0, length))
}

/// Prompt dropout for classifier-free-guidance training: with probability `p_uncond` the prompt
/// positions of the whole batch (`prompt_len` leading positions per row) are replaced by `mask_id`
/// for this step. `p_uncond = 0.1` is standard CFG; `0` (unsupervised CFG) never drops.
///
/// Returns the (possibly) modified ids and whether the prompt was dropped.
pub fn prompt_dropout<B: Backend>(
    noisy: Tensor<B, 2, Int>,
    prompt_len: &[usize],
    p_uncond: f64,
    mask_id: usize,
    rng: &mut MdmRng,
) -> Result<(Tensor<B, 2, Int>, bool), CoreError> {
    check_unit_interval("p_uncond", p_uncond)?;
    let drop = rng.random::<f64>() < p_uncond;
    if !drop {
        return Ok((noisy, false));
    }
    let [_, seq_len] = noisy.dims();
    let prompt = prompt_mask::<B>(prompt_len, seq_len, &noisy.device())?;
    Ok((noisy.mask_fill(prompt, mask_id as i64), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_from_seed;
    use burn::backend::Flex;

    #[test]
    fn stochastic_length_rate_and_range() {
        let mut rng = rng_from_seed(3);
        let n = 20_000;
        let mut cut = 0;
        for _ in 0..n {
            let l = stochastic_length(64, 0.1, &mut rng).unwrap();
            assert!((1..=64).contains(&l));
            if l < 64 {
                cut += 1;
            }
        }
        // P(cut and l < 64) = 0.1 * 63/64
        let rate = cut as f64 / n as f64;
        assert!((rate - 0.1 * 63.0 / 64.0).abs() < 0.01, "{rate}");
        assert_eq!(stochastic_length(64, 0.0, &mut rng).unwrap(), 64);
        assert!(stochastic_length(64, 1.5, &mut rng).is_err());
    }

    #[test]
    fn prompt_dropout_masks_exactly_the_prompt() {
        let d = Default::default();
        let x = Tensor::<Flex, 2, Int>::from_ints([[1, 2, 3], [4, 5, 6]], &d);
        let mut rng = rng_from_seed(0);
        let (y, dropped) = prompt_dropout(x.clone(), &[1, 2], 1.0, 9, &mut rng).unwrap();
        assert!(dropped);
        let y: Vec<i64> = y.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(y, vec![9, 2, 3, 9, 9, 6]);
        let (y, dropped) = prompt_dropout(x, &[1, 2], 0.0, 9, &mut rng).unwrap();
        assert!(!dropped);
        let y: Vec<i64> = y.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6]);
    }
}
