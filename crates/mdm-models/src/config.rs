//! Model configurations: the 30 published Diff_LLaMA sizes and custom ones.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Hyper-parameters of a Diff_LLaMA network (masked Transformer) or its causal baseline.
///
/// Field names follow SMDM / lit-gpt, so the `config` objects of SMDM fixture manifests and
/// lit-gpt config JSON deserialize directly.
///
/// ```
/// use mdm_models::ModelConfig;
/// let config = ModelConfig::named("Diff_LLaMA_170M").unwrap();
/// assert_eq!(config.n_layer, 18);
/// assert_eq!(config.mask_id(), 32000);
/// assert_eq!(config.non_embedding_params(), 169_897_728);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Name (`Diff_LLaMA_170M`, or anything for custom configs).
    #[serde(default)]
    pub name: String,
    /// Longest sequence the RoPE tables cover.
    pub block_size: usize,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// The vocabulary is padded up to a multiple of this.
    #[serde(default = "default_padding_multiple")]
    pub padding_multiple: usize,
    /// Padded vocabulary `V`: the head has `V` outputs and `mask_id = V`. Derived when absent.
    #[serde(default)]
    pub padded_vocab_size: Option<usize>,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads `H`.
    pub n_head: usize,
    /// Width `C`.
    pub n_embd: usize,
    /// Key/value groups `G` (`G = H`: multi-head attention; `G < H`: grouped-query attention).
    #[serde(default)]
    pub n_query_groups: Option<usize>,
    /// SwiGLU hidden size `I`.
    pub intermediate_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_base")]
    pub rope_base: f64,
    /// Fraction of each head that is rotated.
    #[serde(default = "default_rotary_percentage")]
    pub rotary_percentage: f64,
    /// Positions are divided by this before the rotation (lit-gpt position interpolation).
    #[serde(default = "default_condense_ratio")]
    pub condense_ratio: usize,
    /// Round the RoPE cos/sin tables to bfloat16 as the published SMDM models do (needed to
    /// reproduce their logits to 1e-4).
    #[serde(default = "default_true")]
    pub rope_bf16_tables: bool,
    /// The mask token's id when it is one of the vocabulary's (LLaDA's `mask_token_id`, below
    /// `padded_vocab_size`: the embedding then has `V` rows). Absent for SMDM, whose mask id is
    /// `V`, one past the head, with an embedding of `V + 1` rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_token_id: Option<usize>,
    /// The fused q/k/v projection has a bias (Qwen2, so Dream: `q_proj.bias`, `k_proj.bias`,
    /// `v_proj.bias`). Absent: no bias (SMDM, LLaDA).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qkv_bias: bool,
    /// Shifted logits (Dream, trained from an autoregressive model): the token at position `i` is
    /// predicted from the network's output at `i - 1`, position 0 from its own. The model applies
    /// the shift itself, so every caller reads position `i`'s prediction at `i`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shift_logits: bool,
    /// The output head is the token embedding (its first `V` rows): Hugging Face's
    /// `tie_word_embeddings`, LLaDA's `weight_tying`, a GGUF file without `output.weight`. One
    /// matrix serves both, in training too; checkpoints and written-back folders hold it once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tie_embeddings: bool,
    /// The head size `D` when it is not `C / H` (Qwen3's and LLaDA2's `head_dim`): q/k/v heads of
    /// `D` values and an output projection `[C, H D]`. Absent: `C / H`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// A per-head RMSNorm (gain `[D]`, epsilon `norm_eps`) of the queries and of the keys, before
    /// RoPE (LLaDA2's `use_qk_norm`, LLaDA-MoE's `qk_layernorm`, Qwen3 and so RND1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// A Mixture-of-Experts feed-forward in every layer but [`MoeConfig::dense_layers`] (those keep
    /// the dense SwiGLU of `intermediate_size`). Absent: every layer is dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
}

/// How a Mixture-of-Experts layer scores its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterScore {
    /// `softmax(u W^T)` over the experts (LLaDA-MoE, Qwen3-MoE / RND1).
    Softmax,
    /// `sigmoid(u W^T)` per expert (LLaDA2, DeepSeek-V3).
    Sigmoid,
}

/// Where a router's expert bias (a learned per-expert offset) is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertBias {
    /// No bias.
    None,
    /// Added to the scores to choose the experts only; the weights use the unbiased scores
    /// (LLaDA2's `expert_bias`, DeepSeek-V3's `e_score_correction_bias`).
    Selection,
    /// Added to the scores, used to choose and as the weights (LLaDA-MoE's
    /// `moe_router_enable_expert_bias`).
    Weights,
}

/// A Mixture-of-Experts feed-forward: `y = scaling * sum_j w_j E_{i_j}(u) + S(u)` over the `top_k`
/// experts a router chooses per token, `S` the shared expert(s) when there are any. Every expert
/// is a SwiGLU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Routed experts `E`.
    pub n_experts: usize,
    /// Experts per token `k`.
    pub top_k: usize,
    /// SwiGLU hidden size of each routed expert.
    pub expert_size: usize,
    /// SwiGLU hidden size of the shared expert (`moe_intermediate_size * num_shared_experts`); 0:
    /// none.
    #[serde(default)]
    pub shared_size: usize,
    /// Softmax or sigmoid scores.
    pub score: RouterScore,
    /// The `k` weights are divided by their sum.
    #[serde(default)]
    pub renormalize: bool,
    /// The weights are multiplied by this (`routed_scaling_factor`).
    #[serde(default = "default_scaling")]
    pub scaling: f64,
    /// The experts form this many consecutive groups; each group is scored by the sum of its two
    /// highest (biased) scores and only the `topk_groups` best groups are chosen from (1: no group
    /// limit).
    #[serde(default = "default_one")]
    pub groups: usize,
    /// Groups kept.
    #[serde(default = "default_one")]
    pub topk_groups: usize,
    /// The expert bias, if any.
    #[serde(default = "default_expert_bias")]
    pub expert_bias: ExpertBias,
    /// Layers whose feed-forward is the dense SwiGLU (LLaDA2's `first_k_dense_replace` first
    /// layers, LLaDA-MoE's `moe_layer_freq` zeros).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense_layers: Vec<usize>,
    /// The weight of the auxiliary load-balancing loss training adds
    /// ([`crate::moe::load_balancing_loss`]): a folder's `router_aux_loss_coef` where its
    /// `config.json` sets `output_router_logits` and its modeling code computes that loss
    /// (LLaDA-MoE); 0 otherwise (training's `router_aux_loss` overrides it).
    #[serde(default)]
    pub aux_loss_coef: f64,
}

fn default_scaling() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_expert_bias() -> ExpertBias {
    ExpertBias::None
}

impl MoeConfig {
    /// Checks that the sizes fit together.
    pub fn validate(&self, n_layer: usize) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::Config { reason });
        if self.n_experts == 0 || self.expert_size == 0 {
            return bad("a Mixture of Experts needs experts of a positive size".into());
        }
        if self.top_k == 0 || self.top_k > self.n_experts {
            return bad(format!(
                "top_k {} must be between 1 and the {} experts",
                self.top_k, self.n_experts
            ));
        }
        if !(self.aux_loss_coef.is_finite() && self.aux_loss_coef >= 0.0) {
            return bad(format!(
                "the load-balancing loss weight {} must be finite and not negative",
                self.aux_loss_coef
            ));
        }
        if self.groups == 0 || !self.n_experts.is_multiple_of(self.groups) {
            return bad(format!(
                "{} expert groups do not divide the {} experts",
                self.groups, self.n_experts
            ));
        }
        let per_group = self.n_experts / self.groups;
        if self.groups > 1 && per_group < 2 {
            return bad(
                "a group of experts is scored by its two best: groups need 2 experts".into(),
            );
        }
        if self.topk_groups == 0
            || self.topk_groups > self.groups
            || self.topk_groups * per_group < self.top_k
        {
            return bad(format!(
                "topk_groups {} of {} groups cannot hold the top_k {} experts",
                self.topk_groups, self.groups, self.top_k
            ));
        }
        if let Some(l) = self.dense_layers.iter().find(|&&l| l >= n_layer) {
            return bad(format!("dense layer {l} is beyond the {n_layer} layers"));
        }
        Ok(())
    }
}

fn default_padding_multiple() -> usize {
    64
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_rope_base() -> f64 {
    10000.0
}
fn default_rotary_percentage() -> f64 {
    1.0
}
fn default_condense_ratio() -> usize {
    1
}
fn default_true() -> bool {
    true
}

/// `(size, n_layer, n_head, n_embd, intermediate_size)` of the 30 published Diff_LLaMA models.
const DIFF_LLAMA: [(&str, usize, usize, usize, usize); 30] = [
    ("6M", 6, 4, 256, 1024),
    ("19M", 8, 6, 384, 1536),
    ("34M", 8, 8, 512, 2048),
    ("48M", 9, 9, 576, 2304),
    ("66M", 10, 10, 640, 2560),
    ("85M", 13, 10, 640, 2560),
    ("75M", 16, 8, 640, 1600),
    ("113M", 12, 12, 768, 3072),
    ("142M", 15, 12, 768, 3072),
    ("170M", 18, 12, 768, 3072),
    ("180M", 14, 14, 896, 3584),
    ("206M", 16, 14, 896, 3584),
    ("231M", 18, 14, 896, 3584),
    ("268M", 16, 16, 1024, 4096),
    ("302M", 18, 16, 1024, 4096),
    ("336M", 20, 16, 1024, 4096),
    ("472M", 18, 10, 1280, 5120),
    ("551M", 21, 10, 1280, 5120),
    ("571M", 18, 11, 1408, 5632),
    ("629M", 24, 10, 1280, 5120),
    ("666M", 21, 11, 1408, 5632),
    ("717M", 19, 12, 1536, 6144),
    ("761M", 24, 11, 1408, 5632),
    ("831M", 22, 12, 1536, 6144),
    ("944M", 25, 12, 1536, 6144),
    ("1028M", 20, 14, 1792, 7168),
    ("1233M", 24, 14, 1792, 7168),
    ("1476M", 22, 16, 2048, 8192),
    ("1678M", 25, 16, 2048, 8192),
    ("2121M", 28, 17, 2176, 8704),
];

impl ModelConfig {
    /// A published Diff_LLaMA config by name: `Diff_LLaMA_170M` or just `170M`
    /// (block 2048, Llama-2 vocabulary of 32,000, multi-head attention).
    pub fn named(name: &str) -> Result<Self, ModelError> {
        let size = name.strip_prefix("Diff_LLaMA_").unwrap_or(name);
        let (size, n_layer, n_head, n_embd, intermediate_size) = DIFF_LLAMA
            .iter()
            .find(|c| c.0.eq_ignore_ascii_case(size))
            .copied()
            .ok_or_else(|| ModelError::UnknownConfig {
                name: name.to_string(),
                known: Self::names().join(", "),
            })?;
        Ok(Self {
            name: format!("Diff_LLaMA_{size}"),
            ..Self::custom(32000, n_layer, n_head, n_embd, intermediate_size, 2048)
        })
    }

    /// Names of all published configs (`Diff_LLaMA_6M` ... `Diff_LLaMA_2121M`).
    pub fn names() -> Vec<String> {
        DIFF_LLAMA
            .iter()
            .map(|c| format!("Diff_LLaMA_{}", c.0))
            .collect()
    }

    /// A custom config with SMDM's defaults for everything not given.
    pub fn custom(
        vocab_size: usize,
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        intermediate_size: usize,
        block_size: usize,
    ) -> Self {
        Self {
            name: format!("custom_{n_layer}x{n_embd}"),
            block_size,
            vocab_size,
            padding_multiple: 64,
            padded_vocab_size: None,
            n_layer,
            n_head,
            n_embd,
            n_query_groups: Some(n_head),
            intermediate_size,
            norm_eps: 1e-5,
            rope_base: 10000.0,
            rotary_percentage: 1.0,
            condense_ratio: 1,
            rope_bf16_tables: true,
            mask_token_id: None,
            qkv_bias: false,
            shift_logits: false,
            tie_embeddings: false,
            head_dim: None,
            qk_norm: false,
            moe: None,
        }
    }

    /// Whether layer `l`'s feed-forward is a Mixture of Experts (else the dense SwiGLU).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|moe| !moe.dense_layers.contains(&l))
    }

    /// Builder: grouped-query attention with `groups` key/value groups.
    pub fn with_query_groups(mut self, groups: usize) -> Self {
        self.n_query_groups = Some(groups);
        self
    }

    /// Builder: another block size (RoPE table length).
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    /// Builder: another vocabulary size (the padded size and mask id follow).
    pub fn with_vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = vocab_size;
        self.padded_vocab_size = None;
        self
    }

    /// Builder: bf16-rounded RoPE tables (published models) or exact fp32 tables.
    pub fn with_rope_bf16_tables(mut self, on: bool) -> Self {
        self.rope_bf16_tables = on;
        self
    }

    /// Reads a config from JSON (ours, or the `config` object of an SMDM fixture manifest).
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(json).map_err(|e| ModelError::Config {
            reason: format!("invalid config JSON: {e}"),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// A published name (`170M`, `Diff_LLaMA_170M`) or the path of a config JSON file (ending in
    /// `.json`): what command-line tools accept for `--config`.
    pub fn from_name_or_file(arg: &str) -> Result<Self, ModelError> {
        if arg.ends_with(".json") {
            let text = std::fs::read_to_string(arg).map_err(|source| ModelError::Io {
                file: arg.into(),
                source,
            })?;
            Self::from_json(&text)
        } else {
            Self::named(arg)
        }
    }

    /// `V`: `vocab_size` rounded up to a multiple of `padding_multiple`, unless given explicitly.
    pub fn padded_vocab_size(&self) -> usize {
        self.padded_vocab_size.unwrap_or_else(|| {
            let m = self.padding_multiple.max(1);
            self.vocab_size.div_ceil(m) * m
        })
    }

    /// The mask token id: `mask_token_id` when set (LLaDA), else `padded_vocab_size` (one past the
    /// last id the head can predict, SMDM).
    pub fn mask_id(&self) -> usize {
        self.mask_token_id
            .unwrap_or_else(|| self.padded_vocab_size())
    }

    /// Rows of the masked model's embedding: `V + 1` when the mask id is `V` (SMDM), `V` when the
    /// mask token is one of the vocabulary (LLaDA).
    pub fn masked_embedding_rows(&self) -> usize {
        let v = self.padded_vocab_size();
        if self.mask_id() < v {
            v
        } else {
            v + 1
        }
    }

    /// `D`: [`Self::head_dim`] when set, else `C / H`.
    pub fn head_size(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head.max(1))
    }

    /// `G`, the number of key/value groups (`H` when not set).
    pub fn query_groups(&self) -> usize {
        self.n_query_groups.unwrap_or(self.n_head)
    }

    /// Rotated dimensions per head: `rotary_percentage * D`.
    pub fn rope_dims(&self) -> usize {
        (self.rotary_percentage * self.head_size() as f64) as usize
    }

    /// Rows of the fused q/k/v projection: `(H + 2G) D`.
    pub fn qkv_rows(&self) -> usize {
        (self.n_head + 2 * self.query_groups()) * self.head_size()
    }

    /// Parameters outside the embedding and the output head (norm gains and q/k/v biases
    /// included): the `N` of the scaling laws, summed over the slots ([`crate::slots`]).
    pub fn non_embedding_params(&self) -> usize {
        crate::slots::non_embedding_values(self)
    }

    /// As [`Self::non_embedding_params`], counting of the routed experts only the `top_k` a token
    /// passes through (equal for a dense network): the weights behind a token's FLOPs.
    pub fn active_non_embedding_params(&self) -> usize {
        crate::slots::active_non_embedding_values(self)
    }

    /// All parameters of the masked model (embedding of `V + 1` rows, or `V` when the mask token
    /// is in the vocabulary, and head of `V` columns unless it is tied to the embedding).
    pub fn masked_params(&self) -> usize {
        let head = if self.tie_embeddings {
            0
        } else {
            self.padded_vocab_size()
        };
        self.non_embedding_params() + (head + self.masked_embedding_rows()) * self.n_embd
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::Config { reason });
        if self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 || self.block_size == 0 {
            return bad("n_layer, n_head, n_embd and block_size must be positive".into());
        }
        if let Some(moe) = &self.moe {
            moe.validate(self.n_layer)?;
        }
        if self.head_dim == Some(0) {
            return bad("head_dim must be positive".into());
        }
        if self.head_dim.is_none() && !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            ));
        }
        let g = self.query_groups();
        if g == 0 || !self.n_head.is_multiple_of(g) {
            return bad(format!(
                "n_head {} is not divisible by n_query_groups {g}",
                self.n_head
            ));
        }
        let r = self.rope_dims();
        if !r.is_multiple_of(2) || r > self.head_size() {
            return bad(format!(
                "rotated dimensions {r} must be even and at most the head size {}",
                self.head_size()
            ));
        }
        if self.padded_vocab_size() < self.vocab_size {
            return bad(format!(
                "padded_vocab_size {} is smaller than vocab_size {}",
                self.padded_vocab_size(),
                self.vocab_size
            ));
        }
        if self.condense_ratio == 0 {
            return bad("condense_ratio must be at least 1".into());
        }
        if let Some(m) = self.mask_token_id {
            if m > self.padded_vocab_size() {
                return bad(format!(
                    "mask_token_id {m} is beyond the padded vocabulary {}",
                    self.padded_vocab_size()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of SMDM.md section 6 (non-embedding parameters, RMSNorm gains included).
    const EXPECTED: [(&str, usize); 30] = [
        ("6M", 6_294_784),
        ("19M", 18_880_896),
        ("34M", 33_563_136),
        ("48M", 47_786_688),
        ("66M", 65_549_440),
        ("85M", 85_214_080),
        ("75M", 75_387_520),
        ("113M", 113_265_408),
        ("142M", 141_581_568),
        ("170M", 169_897_728),
        ("180M", 179_856_768),
        ("206M", 205_550_464),
        ("231M", 231_244_160),
        ("268M", 268_469_248),
        ("302M", 302_027_776),
        ("336M", 335_586_304),
        ("472M", 471_906_560),
        ("551M", 550_557_440),
        ("571M", 571_001_728),
        ("629M", 629_208_320),
        ("666M", 666_168_448),
        ("717M", 717_285_888),
        ("761M", 761_335_168),
        ("831M", 830_541_312),
        ("944M", 943_796_736),
        ("1028M", 1_027_677_952),
        ("1233M", 1_233_213_184),
        ("1476M", 1_476_487_168),
        ("1678M", 1_677_826_048),
        ("2121M", 2_121_393_280),
    ];

    #[test]
    fn all_30_configs_match_the_paper_table() {
        assert_eq!(ModelConfig::names().len(), 30);
        for (name, params) in EXPECTED {
            let c = ModelConfig::named(&format!("Diff_LLaMA_{name}")).unwrap();
            c.validate().unwrap();
            assert_eq!(c.non_embedding_params(), params, "{name}");
            assert_eq!(ModelConfig::named(name).unwrap(), c);
            assert_eq!(c.padded_vocab_size(), 32000);
            assert_eq!(c.mask_id(), 32000);
        }
    }

    #[test]
    fn unknown_name_and_bad_sizes() {
        let err = ModelConfig::named("7B").unwrap_err().to_string();
        assert!(err.contains("7B") && err.contains("Diff_LLaMA_6M"), "{err}");
        let c = ModelConfig::custom(100, 2, 3, 64, 128, 32);
        assert!(c.validate().is_err());
        let c = ModelConfig::custom(100, 2, 4, 64, 128, 32).with_query_groups(3);
        assert!(c.validate().is_err());
    }

    #[test]
    fn padding_and_json_round_trip() {
        let c = ModelConfig::custom(1000, 2, 4, 64, 256, 128).with_query_groups(2);
        assert_eq!(c.padded_vocab_size(), 1024);
        assert_eq!(c.qkv_rows(), (4 + 4) * 16);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(ModelConfig::from_json(&json).unwrap(), c);
        assert!(ModelConfig::from_json("{\"n_layer\": 2}").is_err());
        let dir = std::env::temp_dir().join(format!("mdm-config-{}.json", std::process::id()));
        std::fs::write(&dir, &json).unwrap();
        assert_eq!(
            ModelConfig::from_name_or_file(dir.to_str().unwrap()).unwrap(),
            c
        );
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(ModelConfig::from_name_or_file("6M").unwrap().n_layer, 6);
        assert!(matches!(
            ModelConfig::from_name_or_file("/nonexistent/c.json"),
            Err(ModelError::Io { .. })
        ));
    }
}
