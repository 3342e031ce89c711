//! Parity with the Mixture-of-Experts families' own modeling code (fixtures made by running it in
//! float32 on CPU, `../shared/fixtures/README.md`): LLaDA2 (`modeling_llada2_moe.py`), LLaDA-MoE
//! (`modeling_lladamoe.py`) and RND1 (`modeling_rnd.py`). Each published-layout folder loads by its
//! `model_type`; its logits match (bidirectional, LLaDA2's block-causal mask with two block sizes,
//! LLaDA-MoE's key-padding mask; RND1's as its sampler shifts them); the router of one layer
//! chooses the same experts with the same weights from the reference's gate logits. The folders
//! come from `MDM_LLADA2_PARITY_DIR`, `MDM_LLADAMOE_PARITY_DIR`, `MDM_RND1_PARITY_DIR` (default:
//! the copies in `tests/data`); every size is read from their files. The tests named `..._parity`
//! also run on wgpu in CI (its filter); fine-tuning runs on the default backend only.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{max_abs_diff, read_tensors, HostTensor};
use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Bool, Int, Tensor, TensorData};
use mdm::models::attention::AttentionMask;
use mdm::models::transformer::Ffn;
use mdm::models::{MaskPredictor, MaskedTransformer};

/// Logits reach about 20; the references' own attention paths differ by up to 6e-5.
const LOGIT_TOL: f64 = 1e-4;

struct Set {
    dir: PathBuf,
    cases: HashMap<String, HostTensor>,
    manifest: serde_json::Value,
    model: MaskedTransformer<B>,
}

fn open(var: &str, name: &str) -> Set {
    let dir = common::fixture_dir(var, name, "model/config.json");
    eprintln!("{}", dir.display());
    let manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    Set {
        cases: read_tensors(&dir.join("cases.safetensors")),
        model: MaskedTransformer::<B>::load_hf(dir.join("model"), &backend::device())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
        dir,
        manifest,
    }
}

fn ids(t: &HostTensor) -> Tensor<B, 2, Int> {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.i64(), [rows, cols]), &backend::device())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Raw logits `[rows, cols, V]` as a shifting model serves them: position `i` from `i - 1`.
fn shifted(raw: &[f32], rows: usize, cols: usize, vocab: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(raw.len());
    for r in 0..rows {
        for c in 0..cols {
            let from = r * cols + c.saturating_sub(1);
            out.extend_from_slice(&raw[from * vocab..(from + 1) * vocab]);
        }
    }
    out
}

impl Set {
    fn case(&self, name: &str) -> &HostTensor {
        self.cases
            .get(name)
            .unwrap_or_else(|| panic!("{}: no case {name}", self.dir.display()))
    }

    /// `forward.ids` -> `forward.logits` (shifted as the model serves them when it shifts).
    fn forward_matches(&self) {
        let input = self.case("forward.ids");
        let expected = self.case("forward.logits");
        let [rows, cols, vocab] = [expected.shape[0], expected.shape[1], expected.shape[2]];
        assert_eq!(self.model.vocab_size(), vocab);
        assert_eq!(
            self.model.mask_id() as u64,
            self.manifest["mask_id"].as_u64().unwrap()
        );
        let ours = host(self.model.logits(ids(input)).unwrap());
        let expected = if self.model.shifts_logits() {
            shifted(&expected.f32(), rows, cols, vocab)
        } else {
            expected.f32()
        };
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff < LOGIT_TOL,
            "{}: logits differ by {diff}",
            self.dir.display()
        );
    }

    /// The reference's gate logits of one layer, routed by that layer of ours: the same experts
    /// (as a set per token) with the same weights.
    fn router_matches(&self) {
        let layer = self.case("forward.router.layer").scalar() as usize;
        let logits = self.case("forward.router.logits");
        let (n, e) = (logits.shape[0], logits.shape[1]);
        let idx = self.case("forward.router.topk_idx").i64();
        let weight = self.case("forward.router.topk_weight").f32();
        let k = idx.len() / n;
        let Ffn::Moe(moe) = &self.model.net.blocks[layer].mlp else {
            panic!("layer {layer} is not a Mixture of Experts");
        };
        let device = backend::device();
        let input = Tensor::<B, 2>::from_data(TensorData::new(logits.f32(), [n, e]), &device);
        let (routing, weights) = moe.route_logits(input).unwrap();
        assert_eq!(routing.k, k);
        let weights = host(weights);
        let mut worst = 0.0f64;
        for t in 0..n {
            let mut ours: Vec<usize> = routing.experts[t * k..(t + 1) * k].to_vec();
            let mut theirs: Vec<usize> = idx[t * k..(t + 1) * k]
                .iter()
                .map(|&x| x as usize)
                .collect();
            for j in 0..k {
                let w = weights[t * e + theirs[j]] as f64;
                worst = worst.max((w - weight[t * k + j] as f64).abs());
            }
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "token {t}: experts differ");
        }
        assert!(worst < LOGIT_TOL, "router weights differ by {worst}");
    }
}

#[test]
fn llada2_logits_and_router_parity() {
    let set = open("MDM_LLADA2_PARITY_DIR", "llada2-parity");
    set.forward_matches();
    set.router_matches();
    // the block-causal mask of generation, blocks counted from position 0
    for case in ["forward_block", "forward_block4"] {
        let input = set.case(&format!("{case}.ids"));
        let block = set.case(&format!("{case}.block_length")).scalar() as usize;
        let expected = set.case(&format!("{case}.logits")).f32();
        let ours = host(
            set.model
                .forward_masked(ids(input), AttentionMask::BlockCausal(block))
                .unwrap(),
        );
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff < LOGIT_TOL, "{case}: logits differ by {diff}");
        // and the mask matters: bidirectional logits of the same ids differ
        let free = host(set.model.logits(ids(input)).unwrap());
        assert!(
            max_abs_diff(&free, &expected) > 1e-2,
            "{case}: the mask changed nothing"
        );
    }
}

#[test]
fn lladamoe_logits_router_and_padding_parity() {
    let set = open("MDM_LLADAMOE_PARITY_DIR", "lladamoe-parity");
    set.forward_matches();
    set.router_matches();
    // a left-padded row: padding keys hidden, positions 0..N-1, every logit compared
    let input = set.case("forward_padded.ids");
    let keep = set.case("forward_padded.attention_mask").bool();
    let expected = set.case("forward_padded.logits");
    let [rows, cols] = [input.shape[0], input.shape[1]];
    let device = backend::device();
    let padding = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(keep.iter().map(|k| !k).collect::<Vec<_>>(), [rows, cols]),
        &device,
    );
    let index = Tensor::<B, 1, Int>::arange(0..(rows * cols) as i64, &device);
    let ours = host(
        set.model
            .logits_at(ids(input), Some(padding), index)
            .unwrap(),
    );
    let diff = max_abs_diff(&ours, &expected.f32());
    assert!(diff < LOGIT_TOL, "padded logits differ by {diff}");
}

#[test]
fn rnd1_logits_and_router_parity() {
    let set = open("MDM_RND1_PARITY_DIR", "rnd1-parity");
    assert!(
        set.model.shifts_logits(),
        "RND1's sampler reads position i at i - 1"
    );
    set.forward_matches();
    set.router_matches();
}

/// RND1's `diffusion_sample` (greedy) as infilling: its canvas (prefix, masks, suffix, padding;
/// a reserved EOS slot) decoded with RND1's schedule ([`Schedule::Fraction`]), entropy-ranked
/// reveals (or, with `eb_gamma`, entropy-bounded ones) measured at the run's temperature, and the
/// shifted logits; every token and forward
/// pass as the reference (every pass run, as it runs them), and the same tokens when passes that
/// would see an unchanged canvas are skipped.
#[test]
fn rnd1_generations_parity_with_its_sampler() {
    use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler, NamedRule, Schedule};

    let set = open("MDM_RND1_PARITY_DIR", "rnd1-parity");
    let generations = set.manifest["generations"].as_array().expect("generations");
    let mut failures = Vec::new();
    let mut ran = 0;
    for g in on_this_backend(generations) {
        let name = g["name"].as_str().unwrap();
        let field = |k: &str| g[k].as_u64().map(|v| v as usize);
        let ids = |key: &str| -> Vec<usize> {
            set.cases
                .get(&format!("{name}.{key}"))
                .map(|t| t.i64().iter().map(|&v| v as usize).collect())
                .unwrap_or_default()
        };
        let canvas = rnd1_canvas(
            &ids("prompt"),
            &ids("suffix"),
            field("seq_len").unwrap(),
            field("infill_length"),
            g["add_eos_at_end"].as_bool().unwrap_or(false),
            [
                field("mask_token_id").unwrap(),
                field("eos_token_id").unwrap(),
                field("pad_token_id").unwrap(),
            ],
            field("bos_token_id"),
        );
        let expected = ids("x");
        // every pass as the reference runs them; on the CPU also with the skipped passes
        let reuse_modes: &[bool] = if on_cpu() { &[true, false] } else { &[true] };
        for &no_reuse in reuse_modes {
            let options = DecodingOptions {
                confidence_temperature: g["temperature"].as_f64(),
                eb_gamma: g["eb_gamma"].as_f64(),
                no_reuse,
                ..DecodingOptions::default()
                    .with_steps(field("num_steps").unwrap())
                    .with_schedule(Schedule::Fraction)
                    .with_remasking(if g.get("eb_gamma").is_some() {
                        NamedRule::LowConfidence
                    } else {
                        NamedRule::Entropy
                    })
            };
            let out = MaskedDiffusionSampler::new(&set.model, options)
                .decode_infill(std::slice::from_ref(&canvas), |_| {})
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let nfe = field("nfe").unwrap();
            let passes_ok = if no_reuse {
                out.forward_passes == nfe
            } else {
                out.forward_passes <= nfe
            };
            if out.rows[0] != expected || !passes_ok {
                failures.push(format!(
                    "{name} (no_reuse {no_reuse}): nfe {} vs {nfe}\n  ours   {:?}\n  theirs {expected:?}",
                    out.forward_passes, out.rows[0]
                ));
            }
        }
        ran += 1;
    }
    assert!(ran > 0, "no RND1 generation in the set");
    assert!(
        failures.is_empty(),
        "{} runs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// RND1's initial canvas (`diffusion_sample`): with a prefix or suffix, padding of `seq_len` with
/// the prefix, `infill` masks (at most what is left after one slot reserved for EOS), the suffix,
/// and EOS last with `eos_at_end`; without, masks with BOS first and EOS last when given.
fn rnd1_canvas(
    prefix: &[usize],
    suffix: &[usize],
    seq_len: usize,
    infill: Option<usize>,
    eos_at_end: bool,
    [mask, eos, pad]: [usize; 3],
    bos: Option<usize>,
) -> Vec<usize> {
    let mut x;
    if prefix.is_empty() && suffix.is_empty() {
        x = vec![mask; seq_len];
        if let Some(bos) = bos {
            x[0] = bos;
        }
    } else {
        let room = seq_len - prefix.len() - suffix.len() - 1;
        let infill = infill.unwrap_or(room).min(room);
        x = [prefix, &vec![mask; infill][..], suffix].concat();
        x.resize(seq_len, pad);
    }
    if eos_at_end {
        x[seq_len - 1] = eos;
    }
    x
}

#[test]
fn a_moe_folder_whose_config_disagrees_names_the_tensor() {
    let src = common::fixture_dir("MDM_RND1_PARITY_DIR", "rnd1-parity", "model/config.json");
    let dir = std::env::temp_dir().join(format!("mdm-moe-broken-{}", std::process::id()));
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(src.join("model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    // one expert more in the config than in the shards
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let experts = config["num_experts"].as_u64().unwrap();
    config["num_experts"] = (experts + 1).into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = MaskedTransformer::<B>::load_hf(&model, &backend::device())
        .expect_err("a config that disagrees with the weights is refused")
        .to_string();
    let router = format!("[{}, {}]", experts + 1, config["hidden_size"]);
    assert!(
        err.contains("model.layers.0.mlp.gate.weight") && err.contains(&router),
        "the message names the router and its shape: {err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// LLaDA's `generate` (ML-GSAI/LLaDA `generate.py`, low confidence, temperature 0) on LLaDA-MoE:
/// blocks after the prompt, LLaDA's even schedule, a batch, classifier-free guidance, and a
/// left-padded pair (its padding dropped: a row of ours holds its own prompt, and RoPE sees only
/// relative positions, which the padding does not change). Every token and pass count exact.
#[test]
fn lladamoe_generations_parity_with_llada_generate() {
    use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, Schedule};

    let set = open("MDM_LLADAMOE_PARITY_DIR", "lladamoe-parity");
    let generations = set.manifest["generations"].as_array().expect("generations");
    assert!(!generations.is_empty());
    let mut failures = Vec::new();
    for g in generations {
        let name = g["name"].as_str().unwrap();
        assert_eq!(g["function"], "llada.generate", "{name}");
        assert_eq!(g["remasking"], "low_confidence", "{name}");
        assert_eq!(g["temperature"].as_f64(), Some(0.0), "{name}");
        let field = |k: &str| g[k].as_u64().unwrap() as usize;
        let options = DecodingOptions {
            cfg_scale: g["cfg_scale"].as_f64().filter(|&c| c > 0.0),
            ..DecodingOptions::default()
                .with_gen_length(field("gen_length"))
                .with_block_length(field("block_length"))
                .with_steps(field("steps"))
                .with_schedule(Schedule::Even)
                .with_cache(CacheMode::None)
        };
        let prompt = set.case(&format!("{name}.prompt"));
        let x = set.case(&format!("{name}.x"));
        let (rows, p, n) = (prompt.shape[0], prompt.shape[1], x.shape[1]);
        // the prompt's attention mask (`[rows, P]`, 0 at left padding); generated positions count
        let keep: Vec<bool> = match set.cases.get(&format!("{name}.attention_mask")) {
            Some(mask) => mask.bool(),
            None => vec![true; rows * p],
        };
        let kept = |values: &[i64], len: usize, r: usize| -> Vec<usize> {
            (0..len)
                .filter(|&i| i >= p || keep[r * p + i])
                .map(|i| values[r * len + i] as usize)
                .collect()
        };
        let prompts: Vec<Vec<usize>> = (0..rows).map(|r| kept(&prompt.i64(), p, r)).collect();
        let expected: Vec<Vec<usize>> = (0..rows).map(|r| kept(&x.i64(), n, r)).collect();
        let out = MaskedDiffusionSampler::new(&set.model, options)
            .decode(&prompts, |_| {})
            .unwrap();
        if out.rows != expected || out.forward_passes != field("nfe") {
            failures.push(format!(
                "{name}: nfe {} vs {}, tokens equal: {}",
                out.forward_passes,
                field("nfe"),
                out.rows == expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} generations differ:\n{}",
        failures.len(),
        generations.len(),
        failures.join("\n")
    );
}

/// Training goes through the experts (the router's gradient through the chosen experts' weights,
/// the shared expert, the dense first layer), and the folder is written back under LLaDA2's names
/// (q/k/v stacked again, the expert bias kept).
#[test]
fn a_llada2_folder_fine_tunes_through_its_experts_and_is_written_back() {
    let src = common::fixture_dir(
        "MDM_LLADA2_PARITY_DIR",
        "llada2-parity",
        "model/config.json",
    )
    .join("model");
    let config = mdm::models::hf_model_config(&src).unwrap();
    common::fine_tune_and_write_back(&src, crate::parity_llada::id_rows(&config));
}

/// The generated part of a row as LLaDA2 returns it: `gen_length` tokens cut after the first EOS.
fn cut_after_eos(row: &[usize], prompt: usize, gen: usize, eos: Option<usize>) -> Vec<usize> {
    let part = &row[prompt..(prompt + gen).min(row.len())];
    match eos.and_then(|e| part.iter().position(|&t| t == e)) {
        Some(i) => part[..=i].to_vec(),
        None => part.to_vec(),
    }
}

/// LLaDA2.0's block diffusion (`generate` of `modeling_llada2_moe.py`): blocks counted from
/// position 0 under the block-causal mask, its quota + threshold rule, `minimal_topk`, its EOS
/// stops; every token and pass count exact, without a cache and with the exact cache of the
/// earlier blocks.
#[test]
fn llada2_generations_parity_with_block_diffusion() {
    use mdm::samplers::{DecodingOptions, Schedule};

    block_diffusion_parity("llada2.generate", |g| {
        let field = |k: &str| g[k].as_u64().unwrap() as usize;
        let minimal_topk = g["minimal_topk"].as_u64().unwrap_or(1) as usize;
        DecodingOptions::default()
            .with_steps(field("steps").min(field("gen_length") / minimal_topk))
            .with_schedule(Schedule::Quota)
    });
}

#[test]
fn llada21_generations_parity_with_token_editing() {
    use mdm::samplers::DecodingOptions;

    block_diffusion_parity("llada21.generate", |g| DecodingOptions {
        per_step: g["num_to_transfer"].as_u64().map(|k| k as usize),
        edit_threshold: g["editing_threshold"].as_f64(),
        max_post_steps: g["max_post_steps"].as_u64().unwrap() as usize,
        ..DecodingOptions::default()
    });
}

/// Rows of different prompt lengths (their first blocks at different positions, one at position 0)
/// decoded together by block diffusion, with and without the exact cache and with token editing,
/// give each row what it gives alone.
#[test]
fn a_block_diffusion_batch_decodes_each_row_as_alone() {
    use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, Schedule};

    let set = open("MDM_LLADA2_PARITY_DIR", "llada2-parity");
    let vocab = set.model.vocab_size();
    let prompts: Vec<Vec<usize>> = [3usize, 7, 16]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 37 + n) % (vocab - 2)).collect())
        .collect();
    let base = DecodingOptions {
        threshold: Some(0.5),
        block_causal: true,
        ..DecodingOptions::default()
            .with_gen_length(20)
            .with_block_length(8)
            .with_steps(4)
            .with_schedule(Schedule::Quota)
    };
    let editing = DecodingOptions {
        edit_threshold: Some(0.6),
        max_post_steps: 4,
        ..base.clone()
    };
    for options in [base, editing] {
        for cache in [CacheMode::None, CacheMode::Prefix] {
            let options = DecodingOptions {
                cache,
                ..options.clone()
            };
            let sampler = MaskedDiffusionSampler::new(&set.model, options.clone());
            let together = sampler
                .decode(&prompts, |_| {})
                .unwrap_or_else(|e| panic!("{options:?}: {e}"));
            for (r, prompt) in prompts.iter().enumerate() {
                let alone = sampler
                    .decode(std::slice::from_ref(prompt), |_| {})
                    .unwrap_or_else(|e| panic!("{options:?}: {e}"));
                assert_eq!(
                    together.rows[r], alone.rows[0],
                    "row {r} ({cache:?}, editing {:?})",
                    options.edit_threshold
                );
            }
        }
    }
}

/// Whether the suite runs on a CPU backend (on CI's software Vulkan device a generation test runs
/// its main variant only: every pass there costs milliseconds).
fn on_cpu() -> bool {
    mdm::backend::NAME.contains("CPU")
}

/// The generation cases a test runs: all on the CPU, every other one on a GPU backend.
fn on_this_backend<T>(cases: &[T]) -> impl Iterator<Item = &T> {
    let step = if on_cpu() { 1 } else { 2 };
    cases.iter().step_by(step)
}

/// The cache modes a block-diffusion generation test runs: none (the reference's recomputation)
/// and the exact prefix cache on the CPU; the cache alone on a GPU backend.
fn cache_modes() -> &'static [mdm::samplers::CacheMode] {
    use mdm::samplers::CacheMode;
    if on_cpu() {
        &[CacheMode::None, CacheMode::Prefix]
    } else {
        &[CacheMode::Prefix]
    }
}

/// Every generation of the LLaDA2 set made by `function`, decoded as block diffusion with the
/// options `specific` adds to the shared ones (block length, threshold, EOS), with and without
/// the exact prefix cache: tokens (cut after the first EOS) and forward passes as the reference.
fn block_diffusion_parity(
    function: &str,
    specific: impl Fn(&serde_json::Value) -> mdm::samplers::DecodingOptions,
) {
    use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler};

    let set = open("MDM_LLADA2_PARITY_DIR", "llada2-parity");
    let generations = set.manifest["generations"].as_array().expect("generations");
    let mut failures = Vec::new();
    let mut ran = 0;
    let cases: Vec<&serde_json::Value> = generations
        .iter()
        .filter(|g| g["function"] == function)
        .collect();
    for g in on_this_backend(&cases) {
        let name = g["name"].as_str().unwrap();
        assert_eq!(g["temperature"].as_f64(), Some(0.0), "{name}");
        let field = |k: &str| g[k].as_u64().unwrap() as usize;
        let gen = field("gen_length");
        let eos = g["eos_id"].as_u64().map(|e| e as usize);
        let ids = |key: &str| -> Vec<usize> {
            set.case(&format!("{name}.{key}"))
                .i64()
                .iter()
                .map(|&t| t as usize)
                .collect()
        };
        let (prompt, expected) = (ids("prompt"), ids("x"));
        for &cache in cache_modes() {
            let options = DecodingOptions {
                threshold: g["threshold"].as_f64(),
                eos_id: eos,
                block_causal: true,
                eos_early_stop: g["eos_early_stop"].as_bool().unwrap_or(false),
                gen_length: gen,
                block_length: Some(field("block_length")),
                cache,
                ..specific(g)
            };
            let out = MaskedDiffusionSampler::new(&set.model, options)
                .decode(std::slice::from_ref(&prompt), |_| {})
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ours = cut_after_eos(&out.rows[0], prompt.len(), gen, eos);
            if ours != expected || out.forward_passes != field("nfe") {
                failures.push(format!(
                    "{name} ({cache:?}): nfe {} vs {}, tokens equal: {}\n  ours   {ours:?}\n  theirs {expected:?}",
                    out.forward_passes,
                    field("nfe"),
                    ours == expected
                ));
            }
        }
        ran += 1;
    }
    assert!(ran > 0, "no {function} generation in the set");
    assert!(
        failures.is_empty(),
        "{} of {} runs differ:\n{}",
        failures.len(),
        cache_modes().len() * ran,
        failures.join("\n")
    );
}

/// The experts' load-balancing loss (`router_aux_loss` in training) and its gradient at every
/// router equal the reference's, from the routers' logits of the same batch
/// (`tests/data/lladamoe-aux-loss`, made by `scripts/moe_aux_loss_fixture.py` from the LLaDA-MoE
/// folder copied in `tests/data`, whose weights it names by digest; LLaDA-MoE's own forward cannot
/// return router logits, see the script). A fine-tuning step through it moves the routers more
/// than one without it.
#[test]
fn the_load_balancing_loss_and_its_router_gradients_match_the_reference() {
    use mdm::backend::Training as A;
    use mdm::models::moe::load_balancing_loss;

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let cases = read_tensors(&dir.join("lladamoe-aux-loss/cases.safetensors"));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("lladamoe-aux-loss/manifest.json")).unwrap(),
    )
    .unwrap();
    let device = backend::device();
    let model = MaskedTransformer::<A>::load_hf(dir.join("lladamoe-parity/model"), &device)
        .expect("the in-repo LLaDA-MoE folder");
    let moe = model.config().moe.clone().expect("a Mixture of Experts");
    assert_eq!(
        moe.n_experts as u64,
        manifest["n_experts"].as_u64().unwrap()
    );
    let ids = {
        let t = &cases["ids"];
        Tensor::<A, 2, Int>::from_data(TensorData::new(t.i64(), [t.shape[0], t.shape[1]]), &device)
    };
    let none = Tensor::<A, 1, Int>::from_data(TensorData::new(Vec::<i64>::new(), [0]), &device);
    let (_, router_logits) = model.forward_at_routed(ids, none).unwrap();
    let layers: Vec<usize> = manifest["moe_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        router_logits.len(),
        layers.len(),
        "one set of logits per MoE layer"
    );
    for (logits, l) in router_logits.iter().zip(&layers) {
        let diff = max_abs_diff(
            &logits
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap(),
            &cases[&format!("router_logits.{l}")].f32(),
        );
        assert!(diff < 1e-4, "layer {l}: router logits differ by {diff}");
    }
    let loss = load_balancing_loss(router_logits, moe.n_experts, moe.top_k).unwrap();
    let value = loss.clone().into_scalar() as f64;
    let expected = cases["aux_loss"].f32()[0] as f64;
    assert!(
        (value - expected).abs() < 1e-5,
        "loss {value} against the reference's {expected}"
    );
    let grads = loss.backward();
    for l in &layers {
        let Ffn::Moe(m) = &model.net.blocks[*l].mlp else {
            panic!("layer {l} is a Mixture of Experts")
        };
        // ours is `[C, E]`, the reference's `gate.weight.grad` `[E, C]`
        let grad = m
            .router
            .weight()
            .unwrap()
            .grad(&grads)
            .expect("the router has a gradient");
        let grad = grad.transpose().into_data().to_vec::<f32>().unwrap();
        let expected = cases[&format!("gate_grad.{l}")].f32();
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(&grad, &expected);
        assert!(
            scale > 0.0 && diff < 1e-5 + 1e-4 * scale as f64,
            "layer {l}: router gradient differs by {diff} (largest {scale})"
        );
    }

    // training adds it with the weight asked for: the same draws, weights 0, 1 and 2
    use mdm::train::objective::{router_aux_weight, Batch, TrainModel};
    use mdm::train::TrainConfig;
    let t = &cases["ids"];
    let batch = Batch {
        ids: t.i64().iter().map(|&x| x as u32).collect(),
        rows: t.shape[0],
        cols: t.shape[1],
        prompt_len: Some(vec![2; t.shape[0]]),
    };
    let loss_with = |weight: f64| {
        let config = TrainConfig {
            router_aux_loss: Some(weight),
            ..TrainConfig::default()
        };
        let mut rng = mdm::diffusion::rng_from_seed(3);
        model.loss(&batch, &config, &mut rng).unwrap().into_scalar() as f64
    };
    let (l0, l1, l2) = (loss_with(0.0), loss_with(1.0), loss_with(2.0));
    assert!(
        l1 - l0 > 0.5 && ((l2 - l1) - (l1 - l0)).abs() < 1e-4,
        "the loss grows by the weight times the balancing loss: {l0} {l1} {l2}"
    );
    // a folder's own weight: LLaDA-MoE's coefficient where its config asks for router logits
    assert_eq!(
        router_aux_weight(&TrainConfig::default(), model.config()),
        0.0
    );
    let asked = std::env::temp_dir().join(format!("mdm-aux-{}", std::process::id()));
    std::fs::create_dir_all(&asked).unwrap();
    for entry in std::fs::read_dir(dir.join("lladamoe-parity/model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, asked.join(path.file_name().unwrap())).unwrap();
    }
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("lladamoe-parity/model/config.json")).unwrap(),
    )
    .unwrap();
    json["output_router_logits"] = true.into();
    json["router_aux_loss_coef"] = 0.25.into();
    std::fs::write(asked.join("config.json"), json.to_string()).unwrap();
    let config = mdm::models::hf_model_config(&asked).unwrap();
    std::fs::remove_dir_all(&asked).ok();
    assert_eq!(router_aux_weight(&TrainConfig::default(), &config), 0.25);
}
