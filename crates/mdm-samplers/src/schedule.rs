//! Time grid and transfer counts of the reverse process.

/// The `eps` of SMDM's sampler: the last time of the grid.
pub const DEFAULT_EPS: f32 = 1e-5;

/// `steps + 1` times `linspace(1, eps, steps + 1)`, computed in fp32 exactly as PyTorch's
/// `torch.linspace` does (`start + i * step` for the first half of the points, `end - (n - 1 - i) *
/// step` for the second), so `t` and `s` match the reference bit for bit.
pub fn timesteps(steps: usize, eps: f32) -> Vec<f32> {
    let points = steps + 1;
    if points == 1 {
        return vec![1.0];
    }
    let (start, end) = (1.0f32, eps);
    let step = (end - start) / (points - 1) as f32;
    let halfway = points / 2;
    (0..points)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (points - 1 - i) as f32
            }
        })
        .collect()
}

/// How many of `n_masked` slots the step from time `t` to `s` reveals: `floor(n_masked * (1 - s/t))`
/// in fp32 as the reference; every slot at the last step.
pub fn transfer_count(n_masked: usize, t: f32, s: f32, last_step: bool) -> usize {
    if last_step {
        return n_masked;
    }
    let k = n_masked as f32 * (1.0 - s / t);
    (k.max(0.0) as usize).min(n_masked)
}

/// Dream's count for every row of a batch from the batch's mean masked count `mean` (f32, as
/// `mask_index.sum() / batch`): `int(mean * (1 - s/t))` in fp32, `int(mean)` at the last step.
pub fn mean_count(mean: f32, (t, s): (f32, f32), last_step: bool) -> usize {
    let k = if last_step {
        mean
    } else {
        mean * (1.0 - s / t)
    };
    k.max(0.0) as usize
}

/// LLaDA's `get_num_transfer_tokens`: `masks` spread over `steps`, the first `masks % steps` steps
/// one more.
pub fn transfer_schedule(masks: usize, steps: usize) -> Vec<usize> {
    let (base, extra) = (masks / steps, masks % steps);
    (0..steps).map(|i| base + usize::from(i < extra)).collect()
}

/// RND1's schedule (`diffusion_sample`): of the `masks` a block had at its start, how many stay
/// masked after step `step` of `steps`: `trunc(masks (steps - 1 - step) / steps)`, the product in
/// f32 as the reference's (`108 x 7/12` is 62 there, not 63); 0 after the last step.
pub fn fraction_kept(masks: usize, step: usize, steps: usize) -> usize {
    let left = steps.saturating_sub(step + 1);
    let rate = (left as f64 / steps as f64) as f32;
    (masks as f32 * rate) as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn rnd1_fraction_is_an_f32_product() {
        // the reference's float32 product: 108 x 7/12 rounds below 63
        assert_eq!(super::fraction_kept(108, 4, 12), 62);
        assert_eq!(super::fraction_kept(25, 0, 16), 23);
        assert_eq!(super::fraction_kept(25, 15, 16), 0);
        assert_eq!(super::fraction_kept(12, 14, 16), 0);
    }

    use super::*;

    #[test]
    fn grid_ends_and_is_decreasing() {
        for steps in [1usize, 2, 7, 8, 64, 256] {
            let t = timesteps(steps, DEFAULT_EPS);
            assert_eq!(t.len(), steps + 1);
            assert_eq!(t[0], 1.0);
            assert_eq!(t[steps], DEFAULT_EPS);
            assert!(t.windows(2).all(|w| w[0] > w[1]), "{t:?}");
        }
    }

    #[test]
    fn counts_sum_to_everything_over_a_run() {
        // revealing floor(n (1 - s/t)) of what is left at each step, then all at the last step,
        // leaves nothing masked
        let steps = 10;
        let t = timesteps(steps, DEFAULT_EPS);
        let mut left = 100usize;
        for i in 0..steps {
            let k = transfer_count(left, t[i], t[i + 1], i + 1 == steps);
            assert!(k <= left);
            left -= k;
        }
        assert_eq!(left, 0);
    }

    #[test]
    fn the_even_split_spreads_the_remainder_first() {
        assert_eq!(transfer_schedule(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(transfer_schedule(7, 3), vec![3, 2, 2]);
        assert_eq!(transfer_schedule(2, 4), vec![1, 1, 0, 0]);
    }
}
