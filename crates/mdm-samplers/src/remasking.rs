//! Remasking rules: which proposals a step reveals (the others stay masked).

use mdm_core::MdmRng;
use rand::seq::index::sample;
use rand::Rng;

use crate::proposal::Proposal;

/// What a rule knows about the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Current time `t`.
    pub t: f32,
    /// Next time `s < t`.
    pub s: f32,
    /// Scheduled number of reveals for this group of proposals (`floor(n (1 - s/t))`, or all at the
    /// last step).
    pub k: usize,
    /// Whether this is the last step (everything must be revealed).
    pub last_step: bool,
}

/// A remasking rule: picks which of `proposals` (one group: a row, or the whole batch under joint
/// counting) are revealed. Returns indices into `proposals`.
pub trait Remasking: Send + Sync {
    /// The chosen proposals.
    fn select(&self, proposals: &[Proposal], step: &StepInfo, rng: &mut MdmRng) -> Vec<usize>;
}

/// Low-confidence remasking (SMDM `greddy`, LLaDA `low_confidence`): reveal the `k` proposals with
/// the highest confidence; ties go to the earlier slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct LowConfidence;

impl Remasking for LowConfidence {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..proposals.len()).collect();
        order.sort_by(|&a, &b| {
            proposals[b]
                .confidence
                .total_cmp(&proposals[a].confidence)
                .then(a.cmp(&b))
        });
        order.truncate(step.k.min(proposals.len()));
        order
    }
}

/// Random remasking (LLaDA `random`): reveal `k` proposals chosen uniformly.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomRemasking;

impl Remasking for RandomRemasking {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, rng: &mut MdmRng) -> Vec<usize> {
        let k = step.k.min(proposals.len());
        sample(rng, proposals.len(), k).into_vec()
    }
}

/// Ancestral sampling (SMDM `origin`): each proposal is revealed independently with probability
/// `1 - s/t` (all at the last step); the number revealed is random, `k` is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ancestral;

impl Remasking for Ancestral {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, rng: &mut MdmRng) -> Vec<usize> {
        let p_reveal = 1.0 - (step.s / step.t) as f64;
        (0..proposals.len())
            .filter(|_| {
                let u: f64 = rng.random();
                step.last_step || u < p_reveal
            })
            .collect()
    }
}

/// A remasking rule by name, as command lines and requests give it: the rule and the confidence
/// it ranks by (`margin` and `entropy` are low-confidence remasking with another measure).
/// Parsed from `low_confidence` (or `low-confidence`), `margin`, `entropy`, `random`, `ancestral`;
/// applied with [`MaskedDiffusionSampler::with_named_rule`](crate::MaskedDiffusionSampler::with_named_rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamedRule {
    /// [`LowConfidence`] by probability (SMDM, LLaDA).
    #[default]
    LowConfidence,
    /// [`LowConfidence`] by probability margin (Dream's `margin`).
    Margin,
    /// [`LowConfidence`] by negative entropy (Dream's `entropy`).
    Entropy,
    /// [`RandomRemasking`].
    Random,
    /// [`Ancestral`] (MDLM).
    Ancestral,
}

impl NamedRule {
    /// The confidence measure the rule ranks by.
    pub fn confidence(self) -> crate::proposal::Confidence {
        use crate::proposal::Confidence;
        match self {
            Self::Margin => Confidence::Margin,
            Self::Entropy => Confidence::NegEntropy,
            _ => Confidence::Probability,
        }
    }

    /// Whether the rule itself draws random numbers (so its choices depend on the seed even at
    /// temperature 0).
    pub fn is_random(self) -> bool {
        matches!(self, Self::Random | Self::Ancestral)
    }

    /// The rule.
    pub fn rule(self) -> Box<dyn Remasking> {
        match self {
            Self::Random => Box::new(RandomRemasking),
            Self::Ancestral => Box::new(Ancestral),
            _ => Box::new(LowConfidence),
        }
    }
}

/// The names [`NamedRule`] parses, for messages.
pub const RULE_NAMES: &str = "low_confidence, margin, entropy, random or ancestral";

impl std::str::FromStr for NamedRule {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "low_confidence" | "low-confidence" => Self::LowConfidence,
            "margin" => Self::Margin,
            "entropy" => Self::Entropy,
            "random" => Self::Random,
            "ancestral" => Self::Ancestral,
            _ => return Err(format!("unknown remasking `{name}`: {RULE_NAMES}")),
        })
    }
}
