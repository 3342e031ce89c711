//! Validation during a run: the first `eval_blocks` validation blocks, in order, scored every
//! `eval_every` steps and at the end, with an RNG of its own so that validating never changes the
//! training stream.

use mdm_core::MdmRng;
use mdm_eval::perplexity::PerTokenNll;
use rand::SeedableRng;

use crate::objective::TrainModel;
use crate::{TrainConfig, TrainError};

/// The validation blocks of a run and when to score them.
#[derive(Debug, Clone)]
pub struct Validator {
    blocks: Vec<Vec<u32>>,
    every: usize,
    seed: u64,
}

impl Validator {
    /// Scores `blocks` every `config.eval_every` steps (0 = only at the end).
    pub fn new(blocks: Vec<Vec<u32>>, config: &TrainConfig) -> Self {
        Self {
            blocks,
            every: config.eval_every,
            seed: config.seed,
        }
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Vec<u32>] {
        &self.blocks
    }

    /// Entropy (bits per token) of the blocks' unigram distribution, `None` without blocks.
    pub fn unigram_bits(&self) -> Option<f64> {
        (!self.blocks.is_empty()).then(|| {
            mdm_eval::perplexity::unigram_entropy_bits(self.blocks.iter().flatten().copied())
        })
    }

    /// Whether a validation is due after `step` (`finished`: the run's last step).
    pub fn due(&self, step: usize, finished: bool) -> bool {
        !self.blocks.is_empty() && (finished || (self.every > 0 && step.is_multiple_of(self.every)))
    }

    /// Scores `model` (the same draws at every validation: the RNG restarts from the seed).
    pub fn run<B, M>(
        &self,
        model: &M::InnerModule,
        config: &TrainConfig,
    ) -> Result<PerTokenNll, TrainError>
    where
        B: burn::tensor::backend::AutodiffBackend,
        M: TrainModel<B>,
    {
        let mut rng = MdmRng::seed_from_u64(self.seed);
        rng.set_stream(2);
        M::validate(model, &self.blocks, config, &mut rng)
    }
}
