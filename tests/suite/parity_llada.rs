//! Parity with LLaDA's own model code (`modeling_llada.py`, run in float32 by the fixture's
//! maker): a Hugging Face folder of a tiny random LLaDA (sharded, grouped-query attention, mask
//! token inside the vocabulary) loads, and its logits match. The folder comes from
//! `MDM_LLADA_PARITY_DIR` (default: `tests/data/llada-parity`); every size is read from its files.

use crate::common;

use std::path::PathBuf;

use common::{max_abs_diff, read_tensors};
use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Int, Tensor, TensorData};
use mdm::models::hf::HfFolder;
use mdm::models::llada::LladaConfig;
use mdm::models::MaskedTransformer;

const LOGIT_TOL: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    common::fixture_dir("MDM_LLADA_PARITY_DIR", "llada-parity", "model/config.json")
}

fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    values
        .chunks_exact(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

#[test]
fn forward_logits_match_llada() {
    let dir = fixture_dir();
    let folder = HfFolder::open(dir.join("model")).unwrap();
    let llada = LladaConfig::from_folder(&folder).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        llada.mask_token_id as u64,
        manifest["mask_id"].as_u64().unwrap()
    );
    let device = backend::device();
    let model = MaskedTransformer::<B>::load_hf(dir.join("model"), &device).unwrap();
    assert_eq!(model.mask_id(), llada.mask_token_id);

    let cases = read_tensors(&dir.join("cases.safetensors"));
    let ids = &cases["forward.ids"];
    let expected = &cases["forward.logits"];
    let (rows, cols) = (ids.shape[0], ids.shape[1]);
    assert!(
        ids.i64().iter().any(|&t| t as usize == llada.mask_token_id),
        "the case holds masks"
    );
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.i64(), [rows, cols]), &device);
    let logits = model.forward(input).unwrap();
    let width = llada.embedding_size;
    assert_eq!(logits.dims(), [rows, cols, width]);
    assert_eq!(expected.shape, vec![rows, cols, width]);
    let ours: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap();
    let reference = expected.f32();
    let diff = max_abs_diff(&ours, &reference);
    assert!(diff <= LOGIT_TOL, "logits differ by {diff:e}");
    assert_eq!(argmax_rows(&ours, width), argmax_rows(&reference, width));
    eprintln!("LLaDA logits [{rows}, {cols}, {width}] within {diff:.1e}");
}

#[test]
fn a_broken_folder_names_the_file_and_key() {
    let src = fixture_dir().join("model");
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let index_path = copy.path().join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let (key, shard) = index["weight_map"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .unwrap();

    // a shard the index names is gone
    let moved = copy.path().join("moved.bin");
    std::fs::rename(copy.path().join(&shard), &moved).unwrap();
    let err = HfFolder::open(copy.path()).err().unwrap().to_string();
    assert!(err.contains(&shard), "{err}");
    std::fs::rename(&moved, copy.path().join(&shard)).unwrap();

    // the index lists a key in a shard that does not hold it
    let other = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .find(|s| *s != shard)
        .unwrap()
        .to_string();
    let mut bad = index.clone();
    bad["weight_map"][&key] = serde_json::Value::from(other);
    std::fs::write(&index_path, bad.to_string()).unwrap();
    let err = HfFolder::open(copy.path()).err().unwrap().to_string();
    assert!(err.contains(&key) && err.contains("index.json"), "{err}");
    std::fs::write(&index_path, index.to_string()).unwrap();

    // a tensor stored in two shards
    let tensors = read_tensors(&copy.path().join(&shard));
    let t = &tensors[&key];
    let bytes: Vec<u8> = t.f32().iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), &bytes)
            .unwrap();
    std::fs::write(
        copy.path().join("extra.safetensors"),
        safetensors::serialize(vec![(key.clone(), view)], &None).unwrap(),
    )
    .unwrap();
    let mut twice = index.clone();
    twice["weight_map"]["extra"] = serde_json::Value::from("extra.safetensors");
    std::fs::write(&index_path, twice.to_string()).unwrap();
    let err = HfFolder::open(copy.path()).err().unwrap().to_string();
    assert!(err.contains(&key) && err.contains("also in"), "{err}");
    std::fs::write(&index_path, index.to_string()).unwrap();

    // a truncated shard
    let bytes = std::fs::read(copy.path().join(&shard)).unwrap();
    std::fs::write(copy.path().join(&shard), &bytes[..bytes.len() / 2]).unwrap();
    let err = HfFolder::open(copy.path()).err().unwrap().to_string();
    assert!(err.contains(&shard), "{err}");
    std::fs::write(copy.path().join(&shard), &bytes).unwrap();

    // an unknown family
    let config_path = copy.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["model_type"] = serde_json::Value::from("mamba");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = MaskedTransformer::<B>::load_hf(copy.path(), &backend::device())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model_type") && err.contains("mamba") && err.contains("Dream"),
        "{err}"
    );
    // a Dream config.json in a LLaDA folder: Dream's reader names the first key it lacks
    config["model_type"] = serde_json::Value::from("Dream");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = MaskedTransformer::<B>::load_hf(copy.path(), &backend::device())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn samplers_and_estimators_run_on_llada() {
    use mdm::diffusion::rng_from_seed;
    use mdm::eval::likelihood::{chain_rule, mc_elbo, McOptions};
    use mdm::samplers::{DecodingOptions, MaskedDiffusionSampler};

    let device = backend::device();
    let model = MaskedTransformer::<B>::load_hf(fixture_dir().join("model"), &device).unwrap();
    let (mask, width) = (model.mask_id(), model.config().padded_vocab_size());

    // generation and infilling: every mask filled, known tokens kept, same seed same tokens
    let config = DecodingOptions::default()
        .with_gen_length(8)
        .with_steps(4)
        .with_temperature(1.0)
        .with_seed(7);
    let sampler = MaskedDiffusionSampler::new(&model, config);
    let prompts = vec![vec![5, 9, 17], vec![3]];
    let a = sampler.generate(&prompts, |_| {}).unwrap();
    assert_eq!(a, sampler.generate(&prompts, |_| {}).unwrap());
    assert!(a
        .iter()
        .all(|r| r.len() == 8 && r.iter().all(|&t| t < width)));
    let row = vec![5, mask, 9, mask, mask, 17];
    let filled = MaskedDiffusionSampler::new(&model, DecodingOptions::default().with_steps(3))
        .infill(std::slice::from_ref(&row), |_| {})
        .unwrap();
    assert_eq!((filled[0][0], filled[0][2], filled[0][5]), (5, 9, 17));

    // the chain rule of a one-token target is that token's -log p at the masked slot
    let (prefix, target) = (vec![5usize, 9, 17], vec![41usize]);
    let exact = chain_rule(&model, &prefix, &target).unwrap();
    let ids: Vec<i64> = vec![5, 9, 17, mask as i64];
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 4]), &device);
    let logits: Vec<f32> = model
        .forward(ids)
        .unwrap()
        .narrow(1, 3, 1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let by_hand = lse - logits[41] as f64;
    assert!(
        (exact.nll - by_hand).abs() < 1e-4,
        "{} vs {by_hand}",
        exact.nll
    );

    // with one target token the Monte Carlo estimator's expectation is that token's CE exactly
    // (masked with probability t, weighted 1 / t)
    let mut rng = rng_from_seed(1);
    let mc = mc_elbo(
        &model,
        &prefix,
        &target,
        McOptions::default().with_batch(8).with_mc_num(64),
        &mut rng,
    )
    .unwrap();
    assert!(
        (mc.nll - exact.nll).abs() <= 4.0 * mc.stderr + 1e-6,
        "{mc:?} vs {exact:?}"
    );
}

#[test]
fn an_unsharded_bf16_or_f16_folder_loads_with_rounded_weights() {
    let src = fixture_dir().join("model");
    let device = backend::device();
    let reference = MaskedTransformer::<B>::load_hf(&src, &device).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (name, t) in read_tensors(&path) {
                tensors.push((name, t.shape.clone(), t.f32()));
            }
        }
    }
    let ids: Vec<i64> = (0..24).map(|i| (i * 7 % 250) as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 12]), &device);
    let logits = |m: &MaskedTransformer<B>| -> Vec<f32> {
        m.forward(ids.clone())
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    let expected = logits(&reference);
    for (dtype, tol) in [
        (safetensors::Dtype::BF16, 0.2),
        (safetensors::Dtype::F16, 0.02),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                let b = v
                    .iter()
                    .flat_map(|&x| match dtype {
                        safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
                        _ => half::f16::from_f32(x).to_le_bytes(),
                    })
                    .collect();
                (n.clone(), s.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| {
                let view = safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap();
                (n.clone(), view)
            })
            .collect();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, safetensors::serialize(views, &None).unwrap()).unwrap();
        let model = MaskedTransformer::<B>::load_hf(dir.path(), &device).unwrap();
        let diff = max_abs_diff(&logits(&model), &expected);
        assert!(
            diff > 0.0 && diff < tol,
            "{dtype:?}: logits differ by {diff}"
        );
    }
}

#[test]
fn fast_dllm_generations_match_token_for_token() {
    use mdm::samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, Schedule};

    let dir = fixture_dir();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = read_tensors(&dir.join("cases.safetensors"));
    let device = backend::device();
    let model = MaskedTransformer::<B>::load_hf(dir.join("model"), &device).unwrap();
    let generations = manifest["generations"].as_array().expect("generations");
    assert!(!generations.is_empty());
    let mut failures = Vec::new();
    for g in generations {
        let name = g["name"].as_str().unwrap();
        assert_eq!(g["temperature"].as_f64(), Some(0.0), "{name}");
        assert_eq!(g["remasking"], "low_confidence", "{name}");
        let cache = match g["function"].as_str().unwrap() {
            "generate" => CacheMode::None,
            "generate_with_prefix_cache" => CacheMode::Prefix,
            "generate_with_dual_cache" => CacheMode::Dual,
            other => panic!("{name}: unknown function {other}"),
        };
        let field = |k: &str| g[k].as_u64().unwrap() as usize;
        // LLaDA's schedule (get_num_transfer_tokens), greedy, low confidence
        let config = DecodingOptions {
            threshold: g["threshold"].as_f64(),
            ..DecodingOptions::default()
                .with_gen_length(field("gen_length"))
                .with_block_length(field("block_length"))
                .with_steps(field("steps"))
                .with_schedule(Schedule::Even)
                .with_cache(cache)
        };
        let prompt: Vec<usize> = cases[&format!("{name}.prompt")]
            .i64()
            .iter()
            .map(|&t| t as usize)
            .collect();
        let expected: Vec<usize> = cases[&format!("{name}.x")]
            .i64()
            .iter()
            .map(|&t| t as usize)
            .collect();
        let out = MaskedDiffusionSampler::new(&model, config.clone())
            .decode(&[prompt], |_| {})
            .unwrap();
        let tokens = &out.rows[0];
        if *tokens != expected || out.forward_passes != field("nfe") {
            failures.push(format!(
                "{name} ({:?}, threshold {:?}): nfe {} vs {}, tokens equal: {}",
                cache,
                config.threshold,
                out.forward_passes,
                field("nfe"),
                *tokens == expected
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

#[test]
fn a_llada_folder_fine_tunes_and_is_written_back() {
    let src = fixture_dir().join("model");
    let config = mdm::models::hf_model_config(&src).unwrap();
    common::fine_tune_and_write_back(&src, id_rows(&config));
}

/// Fine-tuning rows of ids for a folder without a tokenizer: 4 prompt ids kept, 8 response ids
/// (never the mask id), EOS padding.
pub(crate) fn id_rows(config: &mdm::models::ModelConfig) -> mdm::data::sft::SftDataset {
    let (vocab, mask, eos) = (config.vocab_size as u32, config.mask_id() as u32, 1u32);
    let rows: Vec<Vec<u32>> = (0..6u32)
        .map(|r| {
            let mut row: Vec<u32> = (0..12u32)
                .map(|i| (r * 37 + i * 11 + 2) % vocab)
                .map(|t| if t == mask { (t + 1) % vocab } else { t })
                .collect();
            row.extend([eos; 4]);
            row
        })
        .collect();
    mdm::data::sft::SftDataset {
        prompt_len: vec![4; rows.len()],
        rows,
        seq_len: 16,
        dropped: 0,
    }
}
