//! Masking schedules: how much of the sequence is masked at diffusion time `t`.

/// A masking (noise) schedule `alpha_t`: the probability that a token is still clean at time `t`.
///
/// The forward process masks each token independently with probability `1 - alpha_t`; the ELBO
/// weights the cross-entropy of a masked token by `-alpha'_t / (1 - alpha_t)`.
pub trait MaskSchedule: Send + Sync {
    /// `alpha_t`, decreasing from 1 at `t = 0` to 0 at `t = 1`.
    fn alpha(&self, t: f64) -> f64;
    /// The ELBO weight `-alpha'_t / (1 - alpha_t)` of a token masked at time `t`.
    fn elbo_weight(&self, t: f64) -> f64;
    /// Probability that a token is masked at time `t`: `1 - alpha_t`.
    fn mask_prob(&self, t: f64) -> f64 {
        1.0 - self.alpha(t)
    }
}

/// The linear schedule of SMDM/MDLM/LLaDA: `alpha_t = 1 - t`, so a token is masked with
/// probability `t` and the ELBO weight is `1 / t`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinearSchedule;

impl MaskSchedule for LinearSchedule {
    fn alpha(&self, t: f64) -> f64 {
        1.0 - t
    }
    fn elbo_weight(&self, t: f64) -> f64 {
        1.0 / t
    }
    fn mask_prob(&self, t: f64) -> f64 {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_values() {
        let s = LinearSchedule;
        assert_eq!(s.alpha(0.25), 0.75);
        assert_eq!(s.mask_prob(0.25), 0.25);
        assert_eq!(s.elbo_weight(0.25), 4.0);
        // the weight is -alpha'/(1-alpha) with alpha' = -1
        let t = 0.3;
        let h = 1e-6;
        let d_alpha = (s.alpha(t + h) - s.alpha(t - h)) / (2.0 * h);
        assert!((-d_alpha / (1.0 - s.alpha(t)) - s.elbo_weight(t)).abs() < 1e-6);
    }
}
