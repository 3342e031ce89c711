//! Sampling diffusion times `t`.

use crate::MdmRng;
use rand::Rng;

/// How the `t` of the rows of one batch are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSampling {
    /// Independent `t ~ U[0, 1)` per row (SMDM pre-training).
    #[default]
    Uniform,
    /// One `u ~ U[0, 1)` per batch and `t_j = (u + j / b) mod 1`: exactly one row per stratum
    /// `[j/b, (j+1)/b)`, which lowers the variance of Monte Carlo ELBO estimates.
    Stratified,
}

impl TimeSampling {
    /// Draws `batch` times in `[0, 1)`.
    pub fn sample(self, batch: usize, rng: &mut MdmRng) -> Vec<f64> {
        match self {
            TimeSampling::Uniform => uniform_times(batch, rng),
            TimeSampling::Stratified => stratified_times(batch, rng),
        }
    }
}

/// `batch` independent draws of `t ~ U[0, 1)`.
pub fn uniform_times(batch: usize, rng: &mut MdmRng) -> Vec<f64> {
    (0..batch).map(|_| rng.random::<f64>()).collect()
}

/// Stratified times `t_j = (u + j / b) mod 1` with one shared `u ~ U[0, 1)`.
pub fn stratified_times(batch: usize, rng: &mut MdmRng) -> Vec<f64> {
    let u: f64 = rng.random();
    (0..batch)
        .map(|j| (u + j as f64 / batch as f64).rem_euclid(1.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_from_seed;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stratified_covers_every_stratum(b in 1usize..64, seed in any::<u64>()) {
            let mut rng = rng_from_seed(seed);
            let t = stratified_times(b, &mut rng);
            let mut seen = vec![false; b];
            for &x in &t {
                prop_assert!((0.0..1.0).contains(&x));
                let s = ((x * b as f64).floor() as usize).min(b - 1);
                seen[s] = true;
            }
            prop_assert!(seen.iter().all(|&s| s), "strata hit: {:?} for t = {:?}", seen, t);
        }

        #[test]
        fn uniform_in_unit_interval(b in 1usize..64, seed in any::<u64>()) {
            let mut rng = rng_from_seed(seed);
            let t = TimeSampling::Uniform.sample(b, &mut rng);
            prop_assert_eq!(t.len(), b);
            prop_assert!(t.iter().all(|x| (0.0..1.0).contains(x)));
        }
    }

    #[test]
    fn same_seed_same_times() {
        let a = stratified_times(8, &mut rng_from_seed(7));
        let b = stratified_times(8, &mut rng_from_seed(7));
        assert_eq!(a, b);
    }
}
