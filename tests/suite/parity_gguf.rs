//! GGUF files written by llama.cpp's own converter (`convert_hf_to_gguf.py --outtype f16`, made by
//! `scripts/gguf_models.py`) load onto the network and compute exactly what the Hugging Face folder
//! they were converted from computes: LLaDA (arch `llada`: q/k rows permuted by the converter for
//! llama.cpp's RoPE, undone on load; `diffusion.shift_logits` false) and Dream (arch `dream`: q/k/v
//! biases, shifted logits by llama.cpp's default). The folder comes from `MDM_GGUF_PARITY_DIR`
//! (default `tests/data/gguf-parity`), each family in `<family>/hf` and `<family>/model-f16.gguf`;
//! every size is read from the files.

use crate::common;

use std::path::{Path, PathBuf};

use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Int, Tensor, TensorData};
use mdm::hub::ModelSource;
use mdm::models::gguf::GgmlType;
use mdm::models::{MaskPredictor, MaskedTransformer, WeightFormat};

fn fixture_dir() -> PathBuf {
    common::fixture_dir("MDM_GGUF_PARITY_DIR", "gguf-parity", "llada/model-f16.gguf")
}

fn load(source: ModelSource, format: WeightFormat) -> MaskedTransformer<B> {
    source
        .load_masked_as::<B>(format, &backend::device())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Logits `[2, 24, V]` of two rows of seeded ids, a third of them the mask.
fn logits(model: &MaskedTransformer<B>) -> Vec<f32> {
    let (rows, cols, vocab) = (2, 24, model.vocab_size());
    let mask = model.mask_id();
    let ids: Vec<i64> = (0..rows * cols)
        .map(|i| {
            if i % 3 == 1 {
                mask as i64
            } else {
                ((i * 7_919 + 13) % vocab) as i64
            }
        })
        .collect();
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, cols]), &backend::device());
    let out = model.forward(ids).unwrap();
    assert_eq!(out.dims(), [rows, cols, vocab]);
    out.into_data().convert::<f32>().to_vec().unwrap()
}

fn sources(family: &str) -> (ModelSource, ModelSource, PathBuf) {
    let dir = fixture_dir().join(family);
    let gguf = dir.join("model-f16.gguf");
    (
        ModelSource::from_flags(None, Some(&gguf), None, "", 0).unwrap(),
        ModelSource::HuggingFace(dir.join("hf")),
        gguf,
    )
}

fn same_logits_as_the_folder(family: &str) {
    let (gguf, hf, path) = sources(family);
    assert!(matches!(gguf, ModelSource::Gguf(_)), "{}", path.display());
    let (from_gguf, from_hf) = (
        load(gguf, WeightFormat::Stored),
        load(hf, WeightFormat::Stored),
    );
    assert_eq!(from_gguf.mask_id(), from_hf.mask_id());
    assert_eq!(from_gguf.vocab_size(), from_hf.vocab_size());
    assert_eq!(
        from_gguf.net.config.shift_logits,
        from_hf.net.config.shift_logits
    );
    assert_eq!(from_gguf.weight_bytes(), from_hf.weight_bytes());
    let (a, b) = (logits(&from_gguf), logits(&from_hf));
    let differ = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{family}: {differ} of {} logits differ", a.len());
}

#[test]
fn llada_gguf_from_llamas_converter_equals_its_folder() {
    same_logits_as_the_folder("llada");
}

#[test]
fn dream_gguf_from_llamas_converter_equals_its_folder() {
    same_logits_as_the_folder("dream");
}

/// Quantized on load (from the file's f16), against the f16 logits: the error Q8_0 and Q4_K are
/// known for, and the same top token at most positions.
#[test]
fn lladamoe_gguf_from_llamas_converter_equals_its_folder() {
    same_logits_as_the_folder("lladamoe");
}

#[test]
fn rnd1_gguf_from_llamas_converter_equals_its_folder() {
    same_logits_as_the_folder("rnd1");
}

#[test]
fn quantized_on_load_stays_near_the_stored_weights() {
    let rows = 2 * 24;
    for family in ["llada", "dream"] {
        let (gguf, _, _) = sources(family);
        let reference = logits(&load(gguf.clone(), WeightFormat::Stored));
        let vocab = reference.len() / rows;
        // bf16 where the backend packs weights; elsewhere it would be a burn bf16 network, which
        // wgpu cannot run (WGSL has no bf16)
        let packs = <B as mdm::kernels::Kernels>::PACKS_WEIGHTS;
        let formats = [(GgmlType::Q8_0, 0.05), (GgmlType::Bf16, 0.05)];
        for (t, max_err) in formats
            .into_iter()
            .filter(|(t, _)| packs || *t != GgmlType::Bf16)
        {
            let model = load(gguf.clone(), WeightFormat::As(t));
            let got = logits(&model);
            let err = got
                .iter()
                .zip(&reference)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                err <= max_err * scale,
                "{family} {}: max error {err} (logits up to {scale})",
                t.name()
            );
            let top = |v: &[f32], r: usize| {
                let row = &v[r * vocab..(r + 1) * vocab];
                (0..vocab)
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                    .unwrap()
            };
            let agree = (0..rows)
                .filter(|&r| top(&got, r) == top(&reference, r))
                .count();
            assert!(
                agree * 10 >= rows * 8,
                "{family} {}: top-1 agrees at {agree} of {rows}",
                t.name()
            );
            if packs {
                assert!(
                    model.weight_bytes()
                        < load(gguf.clone(), WeightFormat::As(GgmlType::F32)).weight_bytes()
                );
            }
        }
    }
}

#[test]
fn a_gguf_file_of_another_architecture_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture_dir().join("dream/model-f16.gguf")).unwrap();
    // "dream" -> "dreaX" in general.architecture's value
    let at = bytes
        .windows(5)
        .position(|w| w == b"dream")
        .expect("the arch string");
    let mut changed = bytes.clone();
    changed[at + 4] = b'X';
    let file = dir.path().join("other.gguf");
    std::fs::write(&file, changed).unwrap();
    let source = ModelSource::from_flags(None, Some(Path::new(&file)), None, "", 0).unwrap();
    let err = source
        .load_masked_as::<B>(WeightFormat::Stored, &backend::device())
        .expect_err("an unknown architecture");
    assert!(err.to_string().contains("general.architecture"), "{err}");
}

/// The memory check runs before anything is loaded and names what would fit
/// (`MDM_AVAILABLE_MEMORY` stands in for a small machine).
#[test]
fn a_model_that_does_not_fit_is_refused_before_loading() {
    let gguf = fixture_dir().join("llada/model-f16.gguf");
    let run = |available: &str| {
        std::process::Command::new(crate::kill::example("generate"))
            .env("MDM_AVAILABLE_MEMORY", available)
            .args([
                "--prompt",
                "1 2 3",
                "--gen-length",
                "4",
                "--steps",
                "2",
                "--no-live",
                "--hf",
            ])
            .arg(&gguf)
            .output()
            .expect("generate runs")
    };
    let small = run("20MB");
    let err = String::from_utf8_lossy(&small.stderr);
    assert!(!small.status.success(), "{err}");
    assert!(
        err.contains("needs") && err.contains("as f16, 20 MB available"),
        "{err}"
    );
    let enough = run("4GB");
    assert!(
        enough.status.success(),
        "{}",
        String::from_utf8_lossy(&enough.stderr)
    );
}

/// The options that compute what llama.cpp's diffusion decoding computes with `--temp 0 --top-k 1`
/// (`scripts/llama_diffusion_tokens.cpp`): its chain keeps the one most likely token and draws it at
/// temperature 1, so every confidence is 1 and slots are revealed left to right (ours: the tempered
/// confidence of the top-1 candidate, equal confidences to the earlier slot). Its canvas counts the
/// prompt: LLaDA's block schedule splits `steps` over `canvas / block_length` blocks starting after
/// the prompt (ours: the blocks after the prompt, with the same steps each); Dream's timestep
/// schedule is our time grid of `eps`.
fn llama_options(case: &serde_json::Value) -> mdm::samplers::DecodingOptions {
    use mdm::samplers::{DecodingOptions, Schedule};
    let field = |k: &str| case[k].as_u64().unwrap() as usize;
    let (canvas, steps, block) = (field("canvas"), field("steps"), field("block_length"));
    let gen_length = canvas - case["prompt"].as_array().unwrap().len();
    let mut o = DecodingOptions::default()
        .with_gen_length(gen_length)
        .with_temperature(1.0)
        .with_top_k(1);
    o.tempered_confidence = true;
    // llama.cpp runs a pass at every step, revealing or not
    o.no_reuse = true;
    if let Some(blocks) = canvas.checked_div(block) {
        let per_block = steps / blocks;
        o = o
            .with_block_length(block)
            .with_steps(gen_length / block * per_block)
            .with_schedule(Schedule::Even);
    } else {
        o = o.with_steps(steps).with_eps(case["eps"].as_f64().unwrap());
    }
    o
}

/// Token for token what llama.cpp's own diffusion decoding (`diffusion_generate` from
/// llama-cpp-python 0.3.36's llama.cpp) generates from the same GGUF files:
/// `llama-generations.json`, made by `scripts/llama_generations.sh`. LLaDA's prompts are text:
/// the file's own GPT-2 vocabulary, read by [`ModelSource::tokenizer`], encodes them to the ids
/// llama.cpp's tokenizer gave (BOS added, a special token in the text parsed whole).
#[test]
fn generations_equal_llamas_diffusion_decoding() {
    use mdm::samplers::MaskedDiffusionSampler;
    let dir = fixture_dir();
    let text = std::fs::read_to_string(dir.join("llama-generations.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let family = case["family"].as_str().unwrap();
        let gguf = dir.join(family).join("model-f16.gguf");
        let source = ModelSource::from_flags(None, Some(&gguf), None, "", 0).unwrap();
        let model = load(source, WeightFormat::Stored);
        let ids = |k: &str| -> Vec<usize> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let (prompt, expected) = (ids("prompt"), ids("output"));
        if let Some(text) = case["text"].as_str() {
            let tokenizer = ModelSource::Gguf(gguf.clone())
                .tokenizer(None)
                .unwrap_or_else(|e| panic!("{e}"))
                .expect("the file's vocabulary");
            let ours: Vec<usize> = tokenizer
                .encode(text, true)
                .unwrap()
                .into_iter()
                .map(|t| t as usize)
                .collect();
            if ours != prompt {
                failures.push(format!(
                    "case {i}: {text:?} encodes to {ours:?}, llama.cpp {prompt:?}"
                ));
            }
        }
        let options = llama_options(case);
        options
            .validate()
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let out = MaskedDiffusionSampler::new(&model, options)
            .decode(std::slice::from_ref(&prompt), |_| {})
            .unwrap();
        let generated = &out.rows[0][prompt.len()..];
        if generated != expected.as_slice() {
            let first = generated.iter().zip(&expected).position(|(a, b)| a != b);
            failures.push(format!(
                "case {i} ({family}): first difference at token {first:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A GGUF file's SentencePiece vocabulary (Dream's fixture has Llama 2's) is not read: the error
/// names the key, and a tokenizer file given beside it is used instead.
#[test]
fn a_sentencepiece_gguf_vocabulary_is_named_and_a_tokenizer_file_wins() {
    let gguf = fixture_dir().join("dream/model-f16.gguf");
    let source = ModelSource::Gguf(gguf);
    let err = source.tokenizer(None).expect_err("SentencePiece in GGUF");
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
    // a tokenizer.json: the LLaDA file's GPT-2 vocabulary, written out
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenizer.json");
    ModelSource::Gguf(fixture_dir().join("llada/model-f16.gguf"))
        .tokenizer(None)
        .unwrap()
        .expect("LLaDA's vocabulary")
        .save(&file)
        .unwrap();
    let tokenizer = source.tokenizer(Some(&file)).unwrap().expect("the file");
    assert_eq!(tokenizer.encode("Hello", false).unwrap(), vec![15496]);
}
