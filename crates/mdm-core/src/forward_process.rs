//! The forward (noising) process: replace tokens by `mask_id` at random.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use rand::Rng;

use crate::error::{check_shape, check_unit_interval};
use crate::schedule::{LinearSchedule, MaskSchedule};
use crate::{CoreError, MdmRng};

/// The `eps` of SMDM pre-training: `p_mask = (1 - eps) t + eps`, so no row is ever left clean.
pub const DEFAULT_EPS: f64 = 1e-3;

/// A noised batch.
#[derive(Debug, Clone)]
pub struct NoisedBatch<B: Backend> {
    /// `[batch, seq_len]` ids with masked positions replaced by `mask_id`.
    pub noisy: Tensor<B, 2, Int>,
    /// `[batch, seq_len]`, true where the token was masked.
    pub mask: Tensor<B, 2, Bool>,
    /// `[batch]`, the masking probability of each row, `1 - alpha((1 - eps) t + eps)`.
    pub p_mask: Tensor<B, 1>,
    /// Row-major flat indices `b * seq_len + l` of the masked positions (host copy of `mask`).
    pub masked_index: Vec<usize>,
    /// `p_mask` on the host, as used for the draws (f64).
    pub p_mask_host: Vec<f64>,
}

/// The masked positions of a batch, gathered: what the sparse loss needs.
#[derive(Debug, Clone)]
pub struct MaskedTargets<B: Backend> {
    /// `[n_masked]` row-major flat indices into `[batch * seq_len]`.
    pub index: Tensor<B, 1, Int>,
    /// `[n_masked]` clean tokens at those positions.
    pub targets: Tensor<B, 1, Int>,
    /// `[n_masked]` `p_mask` of each position's row.
    pub p_mask: Tensor<B, 1>,
}

impl<B: Backend> NoisedBatch<B> {
    /// Gathers the clean tokens and `p_mask` at the masked positions of `x0`, for
    /// [`sparse_masked_loss`](crate::loss::sparse_masked_loss): the output head then only runs where
    /// the loss needs it. Errors when nothing is masked.
    pub fn masked_targets(&self, x0: Tensor<B, 2, Int>) -> Result<MaskedTargets<B>, CoreError> {
        let [batch, seq_len] = x0.dims();
        check_shape("x0", &self.mask.dims(), &[batch, seq_len])?;
        if self.masked_index.is_empty() {
            return Err(CoreError::Empty("no masked position in the batch"));
        }
        let device = x0.device();
        let n = self.masked_index.len();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                self.masked_index
                    .iter()
                    .map(|&i| i as i64)
                    .collect::<Vec<_>>(),
                [n],
            ),
            &device,
        );
        let p_mask = self
            .masked_index
            .iter()
            .map(|&i| self.p_mask_host[i / seq_len] as f32)
            .collect::<Vec<_>>();
        Ok(MaskedTargets {
            targets: x0.reshape([batch * seq_len]).select(0, index.clone()),
            index,
            p_mask: Tensor::from_data(TensorData::new(p_mask, [n]), &device),
        })
    }
}

impl<B: Backend> NoisedBatch<B> {
    /// A noised batch from a mask chosen by the caller (another masking scheme, or a replay of a
    /// reference's draws): `mask` row-major `[batch * seq_len]` (true = masked), `p_mask` per row,
    /// each in `(0, 1]` (the loss divides by it). Masked positions of `x0` become `mask_id`.
    pub fn from_mask(
        x0: Tensor<B, 2, Int>,
        mask: Vec<bool>,
        p_mask: Vec<f64>,
        mask_id: usize,
    ) -> Result<Self, CoreError> {
        let [batch, seq_len] = x0.dims();
        check_shape("mask", &[batch * seq_len], &[mask.len()])?;
        check_shape("p_mask", &[batch], &[p_mask.len()])?;
        for &p in &p_mask {
            if !(p > 0.0 && p <= 1.0) {
                return Err(CoreError::Value {
                    what: "p_mask",
                    value: p,
                    reason: "must lie in (0, 1]",
                });
            }
        }
        let masked_index = (0..mask.len()).filter(|&i| mask[i]).collect();
        Ok(Self::assemble(x0, mask, masked_index, p_mask, mask_id))
    }

    /// The batch's tensors from the host mask (row-major), its flat masked indices and `p_mask`.
    fn assemble(
        x0: Tensor<B, 2, Int>,
        mask: Vec<bool>,
        masked_index: Vec<usize>,
        p_mask: Vec<f64>,
        mask_id: usize,
    ) -> Self {
        let [batch, seq_len] = x0.dims();
        let device = x0.device();
        let mask =
            Tensor::<B, 2, Bool>::from_bool(TensorData::new(mask, [batch, seq_len]), &device);
        let noisy = x0.mask_fill(mask.clone(), mask_id as i64);
        let p_mask_tensor = Tensor::<B, 1>::from_data(
            TensorData::new(p_mask.iter().map(|&p| p as f32).collect(), [batch]),
            &device,
        );
        Self {
            noisy,
            mask,
            p_mask: p_mask_tensor,
            masked_index,
            p_mask_host: p_mask,
        }
    }
}

/// Samples the forward process `q(x_t | x_0)`: each position of row `b` is masked independently with
/// probability `p_mask[b]`, except positions that must stay clean (prompts).
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::{Int, Tensor};
/// use mdm_core::{forward_process::ForwardProcess, rng_from_seed};
///
/// let device = Default::default();
/// let x0 = Tensor::<Flex, 2, Int>::from_ints([[5, 6, 7, 8], [9, 10, 11, 12]], &device);
/// let process = ForwardProcess::new(1024);
/// let mut rng = rng_from_seed(0);
/// // row 0 at t = 0.5, row 1 at t = 1.0 (everything outside the prompt masked)
/// let noised = process.noise(x0, &[0.5, 1.0], Some(&[0, 2]), &mut rng).unwrap();
/// let row1: Vec<i32> = noised.noisy.slice([1..2, 0..4]).into_data().convert::<i32>().to_vec().unwrap();
/// assert_eq!(row1, vec![9, 10, 1024, 1024]);
/// ```
#[derive(Debug, Clone)]
pub struct ForwardProcess<S: MaskSchedule = LinearSchedule> {
    /// Id written at masked positions.
    pub mask_id: usize,
    /// Lower bound on the time actually used: `t' = (1 - eps) t + eps`.
    pub eps: f64,
    /// The masking schedule.
    pub schedule: S,
}

impl ForwardProcess<LinearSchedule> {
    /// The SMDM forward process: linear schedule, `eps = 1e-3`.
    pub fn new(mask_id: usize) -> Self {
        Self {
            mask_id,
            eps: DEFAULT_EPS,
            schedule: LinearSchedule,
        }
    }
}

impl<S: MaskSchedule> ForwardProcess<S> {
    /// Same process with another `eps` (0 gives `p_mask = t`, as the likelihood estimators use).
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Same process with another schedule.
    pub fn with_schedule<S2: MaskSchedule>(self, schedule: S2) -> ForwardProcess<S2> {
        ForwardProcess {
            mask_id: self.mask_id,
            eps: self.eps,
            schedule,
        }
    }

    /// The masking probability at time `t`: `1 - alpha((1 - eps) t + eps)`.
    pub fn p_mask(&self, t: f64) -> f64 {
        self.schedule.mask_prob((1.0 - self.eps) * t + self.eps)
    }

    /// Noises `x0` (`[batch, seq_len]`) at per-row times `t` (`[batch]`, each in `[0, 1]`).
    ///
    /// `prompt_len`, when given, holds per row the number of leading positions that stay clean.
    /// Uniform draws are made on the host from `rng`, so the result depends only on the seed.
    pub fn noise<B: Backend>(
        &self,
        x0: Tensor<B, 2, Int>,
        t: &[f64],
        prompt_len: Option<&[usize]>,
        rng: &mut MdmRng,
    ) -> Result<NoisedBatch<B>, CoreError> {
        let [batch, seq_len] = x0.dims();
        check_shape("t", &[batch], &[t.len()])?;
        let p_mask: Vec<f64> = t
            .iter()
            .map(|&t| {
                check_unit_interval("t", t)?;
                Ok(self.p_mask(t))
            })
            .collect::<Result<_, CoreError>>()?;
        if let Some(prompt_len) = prompt_len {
            check_shape("prompt_len", &[batch], &[prompt_len.len()])?;
            check_prompt_len(prompt_len, seq_len)?;
        }
        let mut mask = Vec::with_capacity(batch * seq_len);
        let mut masked_index = Vec::new();
        for (b, &p) in p_mask.iter().enumerate() {
            let clean = prompt_len.map_or(0, |pl| pl[b]);
            for l in 0..seq_len {
                // draw for every position (also clean ones) so that the stream does not depend on
                // the prompt lengths
                let u: f64 = rng.random();
                let masked = l >= clean && u < p;
                if masked {
                    masked_index.push(b * seq_len + l);
                }
                mask.push(masked);
            }
        }
        Ok(NoisedBatch::assemble(
            x0,
            mask,
            masked_index,
            p_mask,
            self.mask_id,
        ))
    }
}

/// `[batch, seq_len]` mask, true at the first `prompt_len[b]` positions of row `b`.
pub fn prompt_mask<B: Backend>(
    prompt_len: &[usize],
    seq_len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2, Bool>, CoreError> {
    check_prompt_len(prompt_len, seq_len)?;
    let data: Vec<bool> = prompt_len
        .iter()
        .flat_map(|&p| (0..seq_len).map(move |l| l < p))
        .collect();
    Ok(Tensor::from_bool(
        TensorData::new(data, [prompt_len.len(), seq_len]),
        device,
    ))
}

pub(crate) fn check_prompt_len(prompt_len: &[usize], seq_len: usize) -> Result<(), CoreError> {
    for (row, &p) in prompt_len.iter().enumerate() {
        if p > seq_len {
            return Err(CoreError::PromptTooLong {
                row,
                prompt_len: p,
                seq_len,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_from_seed;
    use burn::backend::Flex;
    use proptest::prelude::*;

    type B = Flex;

    fn ids(batch: usize, len: usize) -> Tensor<B, 2, Int> {
        let data: Vec<i32> = (0..batch * len).map(|i| (i % 97) as i32).collect();
        Tensor::from_data(TensorData::new(data, [batch, len]), &Default::default())
    }

    fn host<T: burn::tensor::Element>(data: TensorData) -> Vec<T> {
        data.convert::<T>().to_vec().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn clean_positions_never_masked_and_mask_id_exactly_where_masked(
            batch in 1usize..5, len in 1usize..40, seed in any::<u64>(), t in 0.0f64..=1.0,
            prompt_seed in any::<u64>(),
        ) {
            let mut rng = rng_from_seed(seed);
            let prompt_len: Vec<usize> = (0..batch).map(|b| ((prompt_seed >> (b * 8)) as usize) % (len + 1)).collect();
            let x0 = ids(batch, len);
            let noised = ForwardProcess::new(1024)
                .noise(x0.clone(), &vec![t; batch], Some(&prompt_len), &mut rng).unwrap();
            let mask: Vec<bool> = host(noised.mask.into_data());
            let noisy: Vec<i64> = host(noised.noisy.into_data());
            let clean: Vec<i64> = host(x0.into_data());
            for (b, &p) in prompt_len.iter().enumerate() {
                for l in 0..len {
                    let i = b * len + l;
                    if l < p { prop_assert!(!mask[i]); }
                    if mask[i] { prop_assert_eq!(noisy[i], 1024); } else { prop_assert_eq!(noisy[i], clean[i]); }
                }
            }
        }
    }

    #[test]
    fn mask_rate_converges_to_p_mask() {
        let process = ForwardProcess::new(1024);
        for (seed, t) in [(1u64, 0.1f64), (2, 0.5), (3, 0.9)] {
            let mut rng = rng_from_seed(seed);
            let (batch, len) = (64, 512);
            let noised = process
                .noise(ids(batch, len), &vec![t; batch], None, &mut rng)
                .unwrap();
            let rate: f64 = host::<f32>(noised.mask.float().mean().into_data())[0] as f64;
            let p = process.p_mask(t);
            // binomial standard error of the mean over 32768 draws is at most 0.0028
            assert!((rate - p).abs() < 0.012, "t={t}: rate {rate} vs p_mask {p}");
            let pm: Vec<f32> = host(noised.p_mask.into_data());
            assert!(pm.iter().all(|&x| (x as f64 - p).abs() < 1e-7));
        }
    }

    #[test]
    fn p_mask_formula_and_errors() {
        let p = ForwardProcess::new(7);
        assert!((p.p_mask(0.0) - 1e-3).abs() < 1e-15);
        assert!((p.p_mask(1.0) - 1.0).abs() < 1e-15);
        assert!((p.p_mask(0.5) - (0.999 * 0.5 + 1e-3)).abs() < 1e-15);
        let mut rng = rng_from_seed(0);
        assert!(matches!(
            p.noise(ids(2, 4), &[0.5], None, &mut rng),
            Err(CoreError::Shape { what: "t", .. })
        ));
        assert!(matches!(
            p.noise(ids(1, 4), &[1.5], None, &mut rng),
            Err(CoreError::Value { what: "t", .. })
        ));
        assert!(matches!(
            p.noise(ids(1, 4), &[0.5], Some(&[5]), &mut rng),
            Err(CoreError::PromptTooLong {
                row: 0,
                prompt_len: 5,
                seq_len: 4
            })
        ));
    }

    #[test]
    fn a_given_mask_is_applied_as_is() {
        let x0 = ids(2, 3);
        let mask = vec![true, false, false, false, true, true];
        let n = NoisedBatch::from_mask(x0.clone(), mask.clone(), vec![0.25, 0.5], 77).unwrap();
        assert_eq!(n.masked_index, vec![0, 4, 5]);
        assert_eq!(host::<i64>(n.noisy.into_data()), vec![77, 1, 2, 3, 77, 77]);
        assert_eq!(host::<bool>(n.mask.into_data()), mask);
        assert_eq!(n.p_mask_host, vec![0.25, 0.5]);
        assert!(matches!(
            NoisedBatch::from_mask(x0.clone(), vec![true; 5], vec![0.5, 0.5], 77),
            Err(CoreError::Shape { what: "mask", .. })
        ));
        assert!(matches!(
            NoisedBatch::from_mask(x0, vec![true; 6], vec![0.5, 0.0], 77),
            Err(CoreError::Value { what: "p_mask", .. })
        ));
    }

    #[test]
    fn same_seed_same_noise() {
        let p = ForwardProcess::new(99);
        let a = p
            .noise(ids(3, 20), &[0.3, 0.6, 0.9], None, &mut rng_from_seed(5))
            .unwrap();
        let b = p
            .noise(ids(3, 20), &[0.3, 0.6, 0.9], None, &mut rng_from_seed(5))
            .unwrap();
        assert_eq!(
            host::<i64>(a.noisy.into_data()),
            host::<i64>(b.noisy.into_data())
        );
    }
}
