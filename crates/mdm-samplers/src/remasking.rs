//! Remasking rules: which proposals a step reveals (the others stay masked).

use mdm_core::MdmRng;
use rand::seq::index::sample;
use rand::Rng;

use crate::proposal::Proposal;
use crate::ties::torch_topk;
#[cfg(doc)]
use crate::ties::Ties;

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
    /// How proposals of equal confidence are ranked.
    pub order: Order,
}

/// How a rule ranks proposals of equal confidence ([`Ties`]), with what [`Ties::Torch`] needs:
/// the positions of the row the reference ranks over (`-inf` where no proposal is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// The earlier slot first.
    #[default]
    FirstSlot,
    /// As `torch.topk` over positions `start..end` of the row.
    Torch {
        /// First position of the ranked row.
        start: usize,
        /// One past its last.
        end: usize,
    },
}

/// The indices of the `k` most confident of `proposals` (one row's), most confident first, equal
/// confidences ranked as `order` says.
fn ranked(proposals: &[Proposal], order: Order, k: usize) -> Vec<usize> {
    if let Order::Torch { start, end } = order {
        let inside = proposals.iter().all(|p| (start..end).contains(&p.slot.pos));
        if inside && end > start {
            // the reference's f32 confidences, -inf where nothing is proposed
            let mut row = vec![f32::NEG_INFINITY; end - start];
            let mut at = vec![usize::MAX; end - start];
            for (i, p) in proposals.iter().enumerate() {
                row[p.slot.pos - start] = p.confidence as f32;
                at[p.slot.pos - start] = i;
            }
            return torch_topk(&row, k)
                .into_iter()
                .map(|c| at[c])
                .filter(|&i| i != usize::MAX)
                .collect();
        }
    }
    let mut order = by_confidence(proposals);
    order.truncate(k);
    order
}

/// A remasking rule: picks which of `proposals` (one group: a row, or the whole batch under joint
/// counting) are revealed. Returns indices into `proposals`.
pub trait Remasking: Send + Sync {
    /// The chosen proposals.
    fn select(&self, proposals: &[Proposal], step: &StepInfo, rng: &mut MdmRng) -> Vec<usize>;

    /// Whether the rule reveals the schedule's count (`step.k`) and so ends a block after its
    /// scheduled steps; a rule that decides from the confidences alone (the parallel rules) runs a
    /// block until it is full.
    fn scheduled(&self) -> bool {
        true
    }

    /// Whether the count a step gets is its share of the even split plus what earlier steps of
    /// the block held back (Dream's `confidence_threshold`), steps being added until the block is
    /// full; such a rule reveals at most that count.
    fn carries(&self) -> bool {
        false
    }
}

/// Indices of `proposals` by descending confidence, ties to the earlier slot.
fn by_confidence(proposals: &[Proposal]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..proposals.len()).collect();
    order.sort_by(|&a, &b| {
        proposals[b]
            .confidence
            .total_cmp(&proposals[a].confidence)
            .then(a.cmp(&b))
    });
    order
}

/// Low-confidence remasking (SMDM `greddy`, LLaDA `low_confidence`): reveal the `k` proposals with
/// the highest confidence; ties go to the earlier slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct LowConfidence;

impl Remasking for LowConfidence {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        ranked(proposals, step.order, step.k.min(proposals.len()))
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

/// Dream's `alg_temp`: the `k` revealed positions are drawn without replacement, each draw from
/// `softmax(confidence / temperature)` over the positions not yet drawn (`torch.multinomial`
/// without replacement); as `temperature` falls to 0 this becomes [`LowConfidence`].
#[derive(Debug, Clone, Copy)]
pub struct StochasticConfidence {
    /// The temperature on the confidences (> 0).
    pub temperature: f64,
}

impl Remasking for StochasticConfidence {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, rng: &mut MdmRng) -> Vec<usize> {
        let k = step.k.min(proposals.len());
        if k == 0 {
            return Vec::new();
        }
        let top = proposals
            .iter()
            .map(|p| p.confidence)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut weights: Vec<f64> = proposals
            .iter()
            .map(|p| ((p.confidence - top) / self.temperature).exp())
            .collect();
        let mut chosen = Vec::with_capacity(k);
        for _ in 0..k {
            let total: f64 = weights.iter().sum();
            let u: f64 = rng.random::<f64>() * total;
            let mut acc = 0.0;
            // the last position with weight when rounding leaves u past the sum
            let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
            for (i, &w) in weights.iter().enumerate() {
                acc += w;
                if w > 0.0 && u < acc {
                    pick = i;
                    break;
                }
            }
            weights[pick] = 0.0;
            chosen.push(pick);
            if weights.iter().all(|&w| w == 0.0) {
                // every remaining weight underflowed: the rest by confidence
                let rest = by_confidence(proposals)
                    .into_iter()
                    .filter(|i| !chosen.contains(i))
                    .take(k - chosen.len());
                chosen.extend(rest.collect::<Vec<_>>());
                break;
            }
        }
        chosen
    }
}

/// Of `ranked` (indices into `proposals`, most confident first), the first and those at least
/// `tau` confident, in that order.
fn first_and_above(proposals: &[Proposal], ranked: Vec<usize>, tau: f64) -> Vec<usize> {
    ranked
        .into_iter()
        .enumerate()
        .filter(|&(rank, i)| rank == 0 || proposals[i].confidence >= tau)
        .map(|(_, i)| i)
        .collect()
}

/// Every proposal at least `tau` confident, and always the most confident one (Fast-dLLM's
/// `threshold`, Dream's `confidence_threshold`); in confidence order.
#[derive(Debug, Clone, Copy)]
pub struct Threshold(pub f64);

impl Remasking for Threshold {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        first_and_above(
            proposals,
            ranked(proposals, step.order, proposals.len()),
            self.0,
        )
    }

    fn scheduled(&self) -> bool {
        false
    }
}

/// Dream's `confidence_threshold` (`diffusion_generate` without blocks): of the `k` most confident
/// proposals (`k`: the step's share of the even split plus what earlier steps held back), those
/// at least `tau` confident, and always the most confident one; in confidence order. The ones held
/// back are carried to the next step ([`Remasking::carries`]) and steps are added at the end until
/// every slot is revealed.
#[derive(Debug, Clone, Copy)]
pub struct CarriedThreshold(pub f64);

impl Remasking for CarriedThreshold {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        first_and_above(proposals, ranked(proposals, step.order, step.k), self.0)
    }

    fn scheduled(&self) -> bool {
        false
    }

    fn carries(&self) -> bool {
        true
    }
}

/// LLaDA2's threshold with a quota (`generate` of `modeling_llada2_moe.py`): when at least the
/// step's count `k` of proposals are more than `tau` confident (strictly), every one of them is
/// revealed; otherwise the `k` most confident (all, if fewer). In confidence order. The count is
/// [`Schedule::Quota`](crate::Schedule::Quota)'s, and the block ends after its steps; or, `until_full`,
/// a fixed count every step until the block is full (LLaDA2.1's `num_to_transfer`).
#[derive(Debug, Clone, Copy)]
pub struct QuotaThreshold {
    /// The threshold (strict).
    pub tau: f64,
    /// The block runs until it is full instead of for its scheduled steps.
    pub until_full: bool,
}

impl Remasking for QuotaThreshold {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        let order = ranked(proposals, step.order, proposals.len());
        let above = order
            .iter()
            .take_while(|&&i| proposals[i].confidence > self.tau)
            .count();
        let take = if above >= step.k {
            above
        } else {
            step.k.min(order.len())
        };
        order.into_iter().take(take).collect()
    }

    fn scheduled(&self) -> bool {
        !self.until_full
    }
}

/// RND1's entropy-bounded rule (`diffusion_sample` with `eb_gamma`): the proposals in order of
/// decreasing probability, the longest prefix whose entropies' sum less their largest is at most
/// `gamma` (always the first); everything at the last step. The block runs its scheduled steps.
/// The entropies come from [`Confidence::ProbabilityAndEntropy`](crate::proposal::Confidence).
#[derive(Debug, Clone, Copy)]
pub struct EntropyBound(pub f64);

impl Remasking for EntropyBound {
    fn select(&self, proposals: &[Proposal], step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        let order = ranked(proposals, step.order, proposals.len());
        if step.last_step {
            return order;
        }
        let (mut sum, mut largest) = (0.0f64, 0.0f64);
        let within = order
            .iter()
            .take_while(|&&i| {
                let h = proposals[i].entropy.unwrap_or(0.0);
                sum += h;
                largest = largest.max(h);
                sum - largest <= self.0
            })
            .count();
        order.into_iter().take(within.max(1)).collect()
    }
}

/// Fast-dLLM's factor rule (`get_transfer_index_dynamic`): with the confidences sorted,
/// `c_1 >= c_2 >= ...`, rank `n` passes when `c_n >= 1 - factor / (n + 1)` (rank 1 always); the
/// ranks before the first failure are revealed.
#[derive(Debug, Clone, Copy)]
pub struct Factor {
    /// The factor.
    pub factor: f64,
    /// Fast-dLLM's code also reveals the last rank when it is the only one to fail.
    pub reveal_failing_last_rank: bool,
}

impl Remasking for Factor {
    fn select(&self, proposals: &[Proposal], _step: &StepInfo, _rng: &mut MdmRng) -> Vec<usize> {
        let order = by_confidence(proposals);
        let passing = order
            .iter()
            .enumerate()
            .take_while(|&(r, &i)| {
                r == 0 || proposals[i].confidence >= 1.0 - self.factor / (r as f64 + 2.0)
            })
            .count();
        let take = if self.reveal_failing_last_rank && passing + 1 == order.len() {
            order.len()
        } else {
            passing
        };
        order.into_iter().take(take).collect()
    }

    fn scheduled(&self) -> bool {
        false
    }
}

/// A remasking rule by name, as command lines and requests give it; the confidence it ranks by
/// comes with it (`margin` and `entropy` are low-confidence remasking with another measure).
/// Parsed from its name or the references' (see [`NamedRule::from_str`](std::str::FromStr)).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum NamedRule {
    /// [`LowConfidence`] by probability (SMDM's `greddy`, LLaDA's `low_confidence`, Dream's
    /// `maskgit_plus`).
    #[default]
    LowConfidence,
    /// [`LowConfidence`] by probability margin (Dream's `topk_margin`).
    Margin,
    /// [`LowConfidence`] by negative entropy (Dream's `entropy`).
    Entropy,
    /// [`RandomRemasking`] (LLaDA's `random`).
    Random,
    /// [`Ancestral`] (SMDM's and Dream's `origin`, MDLM).
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

    /// Whether the rule reveals the most confident slots (so a threshold, a factor or `alg_temp`
    /// can replace its count).
    pub fn ranks_by_confidence(self) -> bool {
        !self.is_random()
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::LowConfidence => "low_confidence",
            Self::Margin => "margin",
            Self::Entropy => "entropy",
            Self::Random => "random",
            Self::Ancestral => "ancestral",
        }
    }
}

/// The names [`NamedRule`] parses, for messages.
pub const RULE_NAMES: &str = "low_confidence (maskgit_plus, confidence, llama.cpp 4), margin \
     (topk_margin, 2), entropy (1), random (3) or ancestral (origin, 0)";

impl std::str::FromStr for NamedRule {
    type Err = String;

    /// Our names and the references': LLaDA's `low_confidence` and `random`, Dream's
    /// `maskgit_plus`, `topk_margin`, `entropy` and `origin`, llama.cpp's algorithm numbers
    /// (`0` origin, `1` entropy, `2` margin, `3` random, `4` confidence).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "low_confidence" | "low-confidence" | "maskgit_plus" | "confidence" | "4" => {
                Self::LowConfidence
            }
            "margin" | "topk_margin" | "2" => Self::Margin,
            "entropy" | "1" => Self::Entropy,
            "random" | "3" => Self::Random,
            "ancestral" | "origin" | "0" => Self::Ancestral,
            _ => return Err(format!("unknown remasking `{name}`: {RULE_NAMES}")),
        })
    }
}

impl std::fmt::Display for NamedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for NamedRule {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<NamedRule> for String {
    fn from(rule: NamedRule) -> Self {
        rule.name().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::Slot;
    use mdm_core::rng_from_seed;

    fn proposals(confidence: &[f64]) -> Vec<Proposal> {
        confidence
            .iter()
            .enumerate()
            .map(|(pos, &confidence)| Proposal {
                slot: Slot { row: 0, pos },
                token: 0,
                confidence,
                entropy: None,
            })
            .collect()
    }

    fn pick(rule: &dyn Remasking, c: &[f64], k: usize) -> Vec<usize> {
        let info = StepInfo {
            t: 1.0,
            s: 0.5,
            k,
            last_step: false,
            order: Order::FirstSlot,
        };
        rule.select(&proposals(c), &info, &mut rng_from_seed(0))
    }

    #[test]
    fn selection_by_count_and_by_threshold() {
        let c = [0.3, 0.9, 0.1, 0.5];
        assert_eq!(pick(&LowConfidence, &c, 2), vec![1, 3]);
        assert_eq!(pick(&LowConfidence, &c, 0), Vec::<usize>::new());
        assert_eq!(pick(&Threshold(0.4), &c, 0), vec![1, 3]);
        // the top slot always, even below the threshold
        assert_eq!(pick(&Threshold(0.95), &c, 0), vec![1]);
        assert_eq!(pick(&Threshold(0.3), &c, 0), vec![1, 3, 0]);
    }

    #[test]
    fn the_factor_rule_and_its_reference_quirk() {
        let f = |factor, quirk| Factor {
            factor,
            reveal_failing_last_rank: quirk,
        };
        // f = 1: rank 2 needs 1 - 1/3 = 0.667, rank 3 needs 0.75, rank 4 needs 0.8
        let c = [0.76, 0.99, 0.1, 0.8];
        assert_eq!(pick(&f(1.0, false), &c, 0), vec![1, 3, 0]);
        // only the last rank fails: the reference reveals it anyway
        assert_eq!(pick(&f(1.0, true), &c, 0), vec![1, 3, 0, 2]);
        // an earlier failure stops there either way
        let c = [0.5, 0.99, 0.1, 0.2];
        assert_eq!(pick(&f(1.0, true), &c, 0), vec![1]);
        // a larger factor lowers every rank's bar
        assert_eq!(pick(&f(2.0, false), &c, 0), vec![1, 0]);
        assert_eq!(pick(&f(1.5, false), &[0.6, 0.5], 0), vec![0, 1]);
    }

    #[test]
    fn alg_temp_draws_positions_by_the_softmax_of_confidence() {
        // first draw of k = 1 over confidences c at temperature a: P(i) = softmax(c / a)_i
        let c = [0.2, 0.9, 0.5, 0.6];
        let a = 0.25;
        let rule = StochasticConfidence { temperature: a };
        let n = 40_000;
        let mut counts = [0usize; 4];
        let mut rng = rng_from_seed(9);
        let info = StepInfo {
            t: 1.0,
            s: 0.5,
            k: 1,
            last_step: false,
            order: Order::FirstSlot,
        };
        for _ in 0..n {
            counts[rule.select(&proposals(&c), &info, &mut rng)[0]] += 1;
        }
        let w: Vec<f64> = c.iter().map(|x| (x / a).exp()).collect();
        let total: f64 = w.iter().sum();
        for i in 0..4 {
            let p = w[i] / total;
            let seen = counts[i] as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((seen - p).abs() < 5.0 * sigma, "{i}: {seen} vs {p}");
        }
        // k draws are distinct, and a cold temperature is the most confident first
        let picked = pick(&rule, &c, 3);
        let mut sorted = picked.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        let cold = StochasticConfidence { temperature: 1e-4 };
        assert_eq!(pick(&cold, &c, 2), vec![1, 3]);
        // weights that underflow fall back to confidence order
        let frozen = StochasticConfidence {
            temperature: 1e-300,
        };
        assert_eq!(pick(&frozen, &c, 3), vec![1, 3, 2]);
    }
}
