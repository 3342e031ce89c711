//! The two models a run can train and their losses: the MDM (masked ELBO loss, SMDM.md section 2)
//! and the autoregressive baseline (next-token cross-entropy), for pre-training blocks and
//! fine-tuning rows with a prompt.

use mdm_kernels::{AutodiffKernels, Kernels};
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use mdm_core::augment::{prompt_dropout, stochastic_length, truncate};
use mdm_core::forward_process::{ForwardProcess, MaskedTargets, NoisedBatch};
use mdm_core::loss::{cross_entropy_rows, sparse_masked_loss};
use mdm_core::time::{stratified_times, uniform_times};
use mdm_core::MdmRng;
use mdm_eval::perplexity::{causal_nll_per_token, masked_elbo_per_token, PerTokenNll};
use mdm_models::checkpoint::ModelKind;
use mdm_models::moe::load_balancing_loss;
use mdm_models::{CausalTransformer, MaskedTransformer, ModelConfig, ModelError};

use crate::{TrainConfig, TrainError};

/// A batch of training rows: ids row-major `[rows, cols]`, and for fine-tuning the prompt length
/// of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Token ids, row-major.
    pub ids: Vec<u32>,
    /// Rows.
    pub rows: usize,
    /// Columns (tokens per row).
    pub cols: usize,
    /// Prompt length per row (fine-tuning), `None` for pre-training.
    pub prompt_len: Option<Vec<usize>>,
}

impl Batch {
    /// The ids as a `[rows, cols]` tensor.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&t| t as i64).collect();
        Tensor::from_data(TensorData::new(ids, [self.rows, self.cols]), device)
    }
}

/// An MDM micro-batch after the forward process: what [`masked_loss`] needs.
///
/// [`TrainModel::loss`] draws SMDM's ([`MaskedTrainBatch::draw`]); build one with
/// [`MaskedTrainBatch::from_mask`] to train with a masking scheme of your own or to replay a
/// reference's draws (`tests/suite/parity_train.rs`), and step with [`crate::step::optimizer_step`].
#[derive(Debug, Clone)]
pub struct MaskedTrainBatch<B: Backend> {
    /// `[rows, len]` model input: masked positions hold the mask id (and, for CFG training,
    /// dropped prompts too).
    pub input: Tensor<B, 2, Int>,
    /// The clean tokens, flat indices and `p_mask` of the masked positions.
    pub targets: MaskedTargets<B>,
    /// The loss's denominator: `rows x len` for pre-training (SMDM's `B L`), the response tokens
    /// of the batch for fine-tuning.
    pub normaliser: f64,
}

impl<B: Backend> MaskedTrainBatch<B> {
    /// SMDM's draws for `batch`: stochastic length (pre-training only), `t` per row (uniform or
    /// stratified), the mask, and prompt dropout (fine-tuning with `cfg_drop`).
    pub fn draw(
        batch: &Batch,
        mask_id: usize,
        config: &TrainConfig,
        rng: &mut MdmRng,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let process = ForwardProcess::new(mask_id).with_eps(config.mask_eps);
        let mut x0 = batch.tensor::<B>(device);
        let prompt_len = batch.prompt_len.as_deref();
        if prompt_len.is_none() {
            // stochastic sequence length (pre-training only: fine-tuning rows keep their length)
            let len = stochastic_length(batch.cols, config.ssl_ratio, rng)?;
            x0 = truncate(x0, len)?;
        }
        let [rows, len] = x0.dims();
        // redraw in the rare case that nothing is masked (all t tiny)
        let noised = loop {
            let t = if config.stratified_t {
                stratified_times(rows, rng)
            } else {
                uniform_times(rows, rng)
            };
            let noised = process.noise(x0.clone(), &t, prompt_len, rng)?;
            if !noised.masked_index.is_empty() {
                break noised;
            }
        };
        let targets = noised.masked_targets(x0)?;
        let (input, normaliser) = match prompt_len {
            None => (noised.noisy, (rows * len) as f64),
            Some(prompt_len) => {
                let (input, _) =
                    prompt_dropout(noised.noisy, prompt_len, config.cfg_drop, mask_id, rng)?;
                (
                    input,
                    (rows * len - prompt_len.iter().sum::<usize>()) as f64,
                )
            }
        };
        Ok(Self {
            input,
            targets,
            normaliser,
        })
    }

    /// A pre-training batch masked where `mask` says (row-major, true = masked) with `p_mask`
    /// per row in `(0, 1]`, normalised by `rows x cols` as SMDM's `train_mdm.py`.
    pub fn from_mask(
        batch: &Batch,
        mask: Vec<bool>,
        p_mask: Vec<f64>,
        mask_id: usize,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let x0 = batch.tensor::<B>(device);
        let noised = NoisedBatch::from_mask(x0.clone(), mask, p_mask, mask_id)?;
        let targets = noised.masked_targets(x0)?;
        Ok(Self {
            input: noised.noisy,
            targets,
            normaliser: (batch.rows * batch.cols) as f64,
        })
    }
}

/// The MDM loss of a noised batch: `sum over masked positions of CE / p_mask`, divided by the
/// batch's normaliser (the head runs only at the masked positions).
pub fn masked_loss<B: Kernels>(
    model: &MaskedTransformer<B>,
    batch: &MaskedTrainBatch<B>,
) -> Result<Tensor<B, 1>, TrainError> {
    let logits = model.forward_at(batch.input.clone(), batch.targets.index.clone())?;
    Ok(sparse_masked_loss(
        logits,
        &batch.targets,
        batch.normaliser,
    )?)
}

/// [`masked_loss`] plus `weight` times the load-balancing loss of the model's routers
/// ([`mdm_models::moe::load_balancing_loss`], over every Mixture-of-Experts layer and every position
/// of the batch); a network without experts is an error naming the option.
pub fn masked_loss_balanced<B: Kernels>(
    model: &MaskedTransformer<B>,
    batch: &MaskedTrainBatch<B>,
    weight: f64,
) -> Result<Tensor<B, 1>, TrainError> {
    let Some(moe) = &model.config().moe else {
        return Err(TrainError::Config(format!(
            "router_aux_loss = {weight}: the model has no Mixture-of-Experts layer"
        )));
    };
    let (logits, router_logits) =
        model.forward_at_routed(batch.input.clone(), batch.targets.index.clone())?;
    let loss = sparse_masked_loss(logits, &batch.targets, batch.normaliser)?;
    let balance = load_balancing_loss(router_logits, moe.n_experts, moe.top_k)?;
    Ok(loss + balance * weight as f32)
}

/// The weight of the load-balancing loss a run adds: `router_aux_loss` when set, else the model's
/// own (0 for a network without experts).
pub fn router_aux_weight(config: &TrainConfig, model: &ModelConfig) -> f64 {
    config
        .router_aux_loss
        .unwrap_or_else(|| model.moe.as_ref().map_or(0.0, |m| m.aux_loss_coef))
}

/// A model the trainer can train: its loss on a batch, checkpoint I/O and validation.
pub trait TrainModel<B: AutodiffBackend>: AutodiffModule<B> + Sized + 'static {
    /// Which network this is (recorded in checkpoints).
    const KIND: ModelKind;

    /// A freshly initialised model.
    fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError>;
    /// Loads a checkpoint folder.
    fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError>;
    /// Saves to a checkpoint folder.
    fn save(&self, dir: &Path) -> Result<(), ModelError>;
    /// The hyper-parameters.
    fn model_config(&self) -> &ModelConfig;
    /// Tokens per pre-training block: `seq_len` for the MDM, `seq_len + 1` for the baseline (its
    /// inputs and shifted targets come from one block).
    fn block_len(seq_len: usize) -> usize;
    /// The mean loss of one micro-batch (a scalar to back-propagate); draws from `rng`.
    fn loss(
        &self,
        batch: &Batch,
        config: &TrainConfig,
        rng: &mut MdmRng,
    ) -> Result<Tensor<B, 1>, TrainError>;
    /// Validation NLL per token of `blocks` (MC ELBO bound for the MDM, exact for the baseline).
    fn validate(
        model: &Self::InnerModule,
        blocks: &[Vec<u32>],
        config: &TrainConfig,
        rng: &mut MdmRng,
    ) -> Result<PerTokenNll, TrainError>;
}

impl<B: AutodiffKernels> TrainModel<B> for MaskedTransformer<B> {
    const KIND: ModelKind = ModelKind::Masked;

    fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        config.init_masked(seed, device)
    }

    fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        // a published folder (fine-tuning LLaDA or Dream) or one of our checkpoints
        if mdm_models::is_hf_folder(dir) {
            MaskedTransformer::load_hf(dir, device)
        } else {
            MaskedTransformer::load(dir, device)
        }
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        MaskedTransformer::save(self, dir)
    }

    fn model_config(&self) -> &ModelConfig {
        self.config()
    }

    fn block_len(seq_len: usize) -> usize {
        seq_len
    }

    fn loss(
        &self,
        batch: &Batch,
        config: &TrainConfig,
        rng: &mut MdmRng,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let device = self.net.device();
        let noised = MaskedTrainBatch::draw(batch, self.mask_id(), config, rng, &device)?;
        match router_aux_weight(config, self.config()) {
            0.0 => masked_loss(self, &noised),
            weight => masked_loss_balanced(self, &noised, weight),
        }
    }

    fn validate(
        model: &Self::InnerModule,
        blocks: &[Vec<u32>],
        config: &TrainConfig,
        rng: &mut MdmRng,
    ) -> Result<PerTokenNll, TrainError> {
        Ok(masked_elbo_per_token(
            model,
            blocks,
            config.micro_batch,
            config.eval_mc,
            rng,
        )?)
    }
}

impl<B: AutodiffKernels> TrainModel<B> for CausalTransformer<B> {
    const KIND: ModelKind = ModelKind::Causal;

    fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        config.init_causal(seed, device)
    }

    fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        CausalTransformer::load(dir, device)
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        CausalTransformer::save(self, dir)
    }

    fn model_config(&self) -> &ModelConfig {
        self.config()
    }

    fn block_len(seq_len: usize) -> usize {
        seq_len + 1
    }

    fn loss(
        &self,
        batch: &Batch,
        config: &TrainConfig,
        _rng: &mut MdmRng,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let weight = router_aux_weight(config, self.config());
        if weight != 0.0 {
            return Err(TrainError::Config(format!(
                "router_aux_loss = {weight}: the load-balancing loss trains the MDM's experts; \
                 the autoregressive baseline trains without it (set router_aux_loss = 0)"
            )));
        }
        let device = self.net.device();
        let ids = batch.tensor::<B>(&device);
        let (rows, n) = (batch.rows, batch.cols - 1);
        let logits = self.forward(ids.clone().narrow(1, 0, n))?;
        let v = logits.dims()[2];
        let logits = logits.reshape([rows * n, v]);
        let targets = ids.narrow(1, 1, n).reshape([rows * n]);
        match &batch.prompt_len {
            None => Ok(cross_entropy_rows(logits, targets)?.mean()),
            Some(prompt_len) => {
                // fine-tuning: only response tokens (target index >= prompt length) count
                let index: Vec<i64> = prompt_len
                    .iter()
                    .enumerate()
                    .flat_map(|(r, &p)| (p.saturating_sub(1)..n).map(move |i| (r * n + i) as i64))
                    .collect();
                if index.is_empty() {
                    return Err(TrainError::Config(
                        "a fine-tuning batch without response tokens".into(),
                    ));
                }
                let count = index.len();
                let index =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(index, [count]), &device);
                let ce =
                    cross_entropy_rows(logits.select(0, index.clone()), targets.select(0, index))?;
                Ok(ce.mean())
            }
        }
    }

    fn validate(
        model: &Self::InnerModule,
        blocks: &[Vec<u32>],
        config: &TrainConfig,
        _rng: &mut MdmRng,
    ) -> Result<PerTokenNll, TrainError> {
        Ok(causal_nll_per_token(model, blocks, config.micro_batch)?)
    }
}
