//! # mdm-core: the mathematics of masked diffusion language models
//!
//! Backend-generic building blocks of SMDM ("Scaling up Masked Diffusion Models on Text",
//! Nie et al., ICLR 2025) and its successors. No model code lives here: every function takes
//! logits or token ids as `burn` tensors on any [`Backend`](burn::tensor::backend::Backend),
//! so a crate that depends on `mdm-core` chooses its own backend.
//!
//! Vocabulary used throughout (the paper's):
//! - `mask_id`: the id of the extra `[MASK]` token, equal to the padded vocabulary size.
//! - `t`: diffusion time in `(0, 1]`; at time `t` each token is masked independently with
//!   probability `1 - alpha_t` (`= t` for the linear schedule).
//! - `p_mask`: the masking probability actually used for a row, `(1 - eps) t + eps`.
//! - `cfg_scale` (`w`): classifier-free guidance strength, `u + (w + 1)(c - u)`.
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | the masking schedule trait and the linear schedule |
//! | [`time`] | uniform and stratified time sampling |
//! | [`forward_process`] | noising a batch: noisy ids, mask and `p_mask` |
//! | [`loss`] | pre-training ELBO loss and fine-tuning loss |
//! | [`augment`] | stochastic sequence length and prompt dropout (CFG training) |
//! | [`cfg`](mod@cfg) | classifier-free guidance |
//! | [`gumbel`] | Gumbel-max token draws with temperature, in float64 |
//! | [`probs`] | softmax probabilities of a row of logits on the host, in float64 |
//!
//! Every random choice takes an explicit [`MdmRng`]; build one from a seed with [`rng_from_seed`].
//! Random numbers are drawn on the host, so the same seed gives the same draws on every backend.

pub mod augment;
pub mod cfg;
pub mod error;
pub mod forward_process;
pub mod gumbel;
pub mod loss;
pub mod probs;
pub mod schedule;
pub mod time;

pub use error::CoreError;

/// The random number generator used for every random choice in the library (ChaCha8: fast, portable,
/// and stable across platforms and crate versions for a given seed).
pub type MdmRng = rand_chacha::ChaCha8Rng;

/// A generator for `seed`; the same seed always yields the same stream.
pub fn rng_from_seed(seed: u64) -> MdmRng {
    use rand::SeedableRng;
    MdmRng::seed_from_u64(seed)
}
