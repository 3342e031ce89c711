//! Parity with Dream's own code (`modeling_dream.py`, `tokenization_dream.py`, Dream's
//! `diffusion_generate` and Fast-dLLM's Dream block decoding, run in float32 by the fixture's
//! maker): a published-layout Dream folder (sharded, q/k/v biases, grouped-query attention, mask
//! token inside the vocabulary, shifted logits) loads, its logits match, its generations match token
//! for token with the same number of forward passes, and its `vocab.json` + `merges.txt` tokenizer
//! and chat template give the same ids. The folder comes from `MDM_DREAM_PARITY_DIR` (default:
//! `tests/data/dream-parity`); every size is read from its files.

use crate::common;

use std::path::{Path, PathBuf};

use common::{max_abs_diff, read_tensors};
use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Int, Tensor, TensorData};
use mdm::models::dream::DreamConfig;
use mdm::models::hf::HfFolder;
use mdm::models::{MaskPredictor, MaskedTransformer};

const LOGIT_TOL: f64 = 1e-4;

/// The fixture sets: the one `MDM_DREAM_PARITY_DIR` names, else both of the project's (the
/// published layout, untied; and `dream-tied-parity`, made by `scripts/dream_fixture.py`: a tied
/// head that sometimes proposes the mask token, thresholds some steps do not reach).
fn fixture_dirs() -> Vec<PathBuf> {
    const VAR: &str = "MDM_DREAM_PARITY_DIR";
    if std::env::var_os(VAR).is_some() {
        return vec![common::fixture_dir(
            VAR,
            "dream-parity",
            "model/config.json",
        )];
    }
    ["dream-parity", "dream-tied-parity"]
        .iter()
        .map(|set| common::fixture_dir(VAR, set, "model/config.json"))
        .collect()
}

fn manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn load(dir: &Path) -> MaskedTransformer<B> {
    MaskedTransformer::<B>::load_hf(dir.join("model"), &backend::device()).unwrap()
}

fn host(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Dream's raw logits `[rows, cols, V]` as the model serves them: position `i` from `i - 1`.
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

#[test]
fn forward_logits_match_dream_shifted() {
    for dir in fixture_dirs() {
        eprintln!("{}", dir.display());
        forward_logits_match_dream_shifted_in(&dir);
    }
}

fn forward_logits_match_dream_shifted_in(dir: &Path) {
    let folder = HfFolder::open(dir.join("model")).unwrap();
    let dream = DreamConfig::from_folder(&folder).unwrap();
    let m = manifest(dir);
    assert_eq!(dream.mask_token_id as u64, m["mask_id"].as_u64().unwrap());
    let model = load(dir);
    assert_eq!(model.mask_id(), dream.mask_token_id);
    let vocab = dream.vocab_size;
    assert_eq!(model.vocab_size(), vocab);

    let cases = read_tensors(&dir.join("cases.safetensors"));
    let ids = &cases["forward.ids"];
    let (rows, cols) = (ids.shape[0], ids.shape[1]);
    assert!(ids.i64().iter().any(|&t| t as usize == dream.mask_token_id));
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.i64(), [rows, cols]), &model.device());
    let ours = host(model.logits(input).unwrap());
    let expected = shifted(&cases["forward.logits"].f32(), rows, cols, vocab);
    let diff = max_abs_diff(&ours, &expected);
    assert!(diff <= LOGIT_TOL, "logits differ by {diff:e}");
    eprintln!("Dream logits [{rows}, {cols}, {vocab}] within {diff:.1e} (shifted)");
}

#[test]
fn a_left_padded_row_is_the_row_alone() {
    for dir in fixture_dirs() {
        eprintln!("{}", dir.display());
        a_left_padded_row_is_the_row_alone_in(&dir);
    }
}

fn a_left_padded_row_is_the_row_alone_in(dir: &Path) {
    // Dream's left padding: padding neither attends nor is attended, positions count from the
    // row's first real token. Each row alone (its padding removed) gives the reference's logits
    // at its real positions.
    let cases = read_tensors(&dir.join("cases.safetensors"));
    let model = load(dir);
    let vocab = model.vocab_size();
    let ids = cases["forward_padded.ids"].i64();
    let mask = cases["forward_padded.attention_mask"].i64();
    let raw = cases["forward_padded.logits"].f32();
    let [rows, cols] = [
        cases["forward_padded.ids"].shape[0],
        cases["forward_padded.ids"].shape[1],
    ];
    let mut worst = 0.0f64;
    let mut padded_rows = 0;
    for r in 0..rows {
        let real: Vec<usize> = (0..cols).filter(|&c| mask[r * cols + c] == 1).collect();
        padded_rows += usize::from(real.len() < cols);
        let row: Vec<i64> = real.iter().map(|&c| ids[r * cols + c]).collect();
        let n = row.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(row, [1, n]), &model.device());
        let ours = host(model.logits(input).unwrap());
        // reference: raw output at the real positions, shifted within them
        let reference: Vec<f32> = (0..n)
            .flat_map(|j| {
                let c = real[j.saturating_sub(1)];
                raw[(r * cols + c) * vocab..(r * cols + c + 1) * vocab].to_vec()
            })
            .collect();
        worst = worst.max(max_abs_diff(&ours, &reference));
    }
    assert!(padded_rows > 0, "the case holds a padded row");
    assert!(worst <= LOGIT_TOL, "padded logits differ by {worst:e}");
}

#[test]
fn the_shipped_tokenizer_and_chat_template_give_dreams_ids() {
    for dir in fixture_dirs() {
        eprintln!("{}", dir.display());
        the_shipped_tokenizer_and_chat_template_give_dreams_ids_in(&dir);
    }
}

fn the_shipped_tokenizer_and_chat_template_give_dreams_ids_in(dir: &Path) {
    use mdm::data::chat::{ChatPrompt, Message};
    use mdm::data::Tokenizer;
    let folder = dir.join("model");
    assert!(
        !folder.join("tokenizer.json").exists(),
        "Dream ships vocab.json + merges.txt"
    );
    let tokenizer = Tokenizer::from_folder(&folder).unwrap();
    let m = manifest(dir);
    assert_eq!(tokenizer.eos_id() as u64, m["eos_id"].as_u64().unwrap());
    assert_eq!(tokenizer.bos_id().map(u64::from), m["bos_id"].as_u64());
    let cases = m["tokenizer"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        let decoded = tokenizer.inner().decode(&ids, false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{text:?}");
    }
    let chat = &m["chat"];
    let messages: Vec<Message> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|msg| {
            Message::new(
                msg["role"].as_str().unwrap(),
                msg["content"].as_str().unwrap(),
            )
        })
        .collect();
    let prompt = ChatPrompt::for_folder(&folder).unwrap();
    let text = prompt
        .render(&messages, chat["add_generation_prompt"].as_bool().unwrap())
        .unwrap();
    let expected: Vec<u32> = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tokenizer.encode(&text, false).unwrap(),
        expected,
        "{text:?}"
    );
}

/// The decoding options of one of the fixture's generations: Dream's `diffusion_generate` (its
/// algorithms on the time grid of `eps`, `confidence_threshold` as the carried threshold) or
/// Fast-dLLM's `diffusion_generate_block` (prefix or dual cache; `confidence_threshold` as the
/// threshold, otherwise its fixed-step branch, which ranks by entropy).
fn options_of(g: &serde_json::Value) -> mdm::samplers::DecodingOptions {
    use mdm::samplers::{CacheMode, DecodingOptions, NamedRule, Ties};
    let name = g["name"].as_str().unwrap();
    let field = |k: &str| g[k].as_u64().unwrap() as usize;
    assert_eq!(g["temperature"].as_f64(), Some(0.0), "{name}");
    // Dream's eps; equal confidences as torch.topk ranks them; every step runs its forward pass
    // (Dream's loop has no reuse of logits after a step that revealed nothing)
    let mut o = DecodingOptions::default()
        .with_gen_length(field("max_new_tokens"))
        .with_steps(field("steps"))
        .with_eps(1e-3)
        .with_ties(Ties::Torch);
    o.no_reuse = true;
    o.top_p = g["top_p"].as_f64();
    o.top_k = g["top_k"].as_u64().map(|k| k as usize);
    let alg = g["alg"].as_str().unwrap();
    let threshold = alg == "confidence_threshold";
    match g["function"].as_str().unwrap() {
        "diffusion_generate" if threshold => {
            o = o.with_threshold_carry(g["threshold"].as_f64().unwrap());
        }
        "diffusion_generate" => {
            o.remasking = alg.parse::<NamedRule>().unwrap();
            o = o.with_mean_counting();
        }
        "diffusion_generate_block" => {
            o = o.with_block_length(field("block_length")).with_cache(
                if g["dual_cache"].as_bool().unwrap() {
                    CacheMode::Dual
                } else {
                    CacheMode::Prefix
                },
            );
            if threshold {
                o = o.with_threshold(g["threshold"].as_f64().unwrap());
            } else {
                o.remasking = NamedRule::Entropy;
            }
        }
        other => panic!("{name}: unknown function {other}"),
    }
    o
}

/// Rows of `name` in `cases` (`[rows, cols]` ids) without the positions its attention mask
/// (if any) marks as left padding.
fn unpadded(
    cases: &std::collections::HashMap<String, common::HostTensor>,
    name: &str,
    key: &str,
) -> Vec<Vec<usize>> {
    let t = &cases[&format!("{name}.{key}")];
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let ids = t.i64();
    let pads: Vec<usize> = match cases.get(&format!("{name}.attention_mask")) {
        Some(m) => {
            let (mask, width) = (m.i64(), m.shape[1]);
            (0..rows)
                .map(|r| {
                    mask[r * width..(r + 1) * width]
                        .iter()
                        .filter(|&&v| v == 0)
                        .count()
                })
                .collect()
        }
        None => vec![0; rows],
    };
    (0..rows)
        .map(|r| {
            ids[r * cols + pads[r]..(r + 1) * cols]
                .iter()
                .map(|&t| t as usize)
                .collect()
        })
        .collect()
}

#[test]
fn dream_and_fast_dllm_generations_match_token_for_token() {
    let mut tie_sensitive = 0;
    for dir in fixture_dirs() {
        eprintln!("{}", dir.display());
        tie_sensitive += dream_and_fast_dllm_generations_match_token_for_token_in(&dir);
    }
    // equal confidences (top_p's nuclei of one token) decide some of them
    assert!(tie_sensitive > 0, "no generation depends on how ties rank");
}

/// The forward passes Fast-dLLM's fixed-step block branch (`diffusion_generate_block` without
/// `confidence_threshold`) makes and throws away: its loop runs the model before it tests whether
/// the block's steps are spent, so a block still holding a mask after its steps (the model
/// proposed the mask token there) costs one pass whose logits are never read. Our loop does not
/// make that pass; the reference's count is ours plus one per such block of its output.
fn discarded_passes(g: &serde_json::Value, prompts: &[Vec<usize>], rows: &[Vec<usize>]) -> usize {
    let fixed_steps =
        g["function"] == "diffusion_generate_block" && g["alg"] != "confidence_threshold";
    if !fixed_steps {
        return 0;
    }
    let (block, mask) = (
        g["block_length"].as_u64().unwrap() as usize,
        g["mask_token_id"].as_u64().unwrap() as usize,
    );
    // the batch's passes: a block costs the pass when any row's holds a mask
    let blocks = rows[0]
        .len()
        .saturating_sub(prompts[0].len())
        .div_ceil(block);
    (0..blocks)
        .filter(|&b| {
            prompts.iter().zip(rows).any(|(p, x)| {
                let start = p.len() + b * block;
                x[start..(start + block).min(x.len())].contains(&mask)
            })
        })
        .count()
}

/// Checks every generation of the set in `dir`; returns how many depend on how ties rank.
fn dream_and_fast_dllm_generations_match_token_for_token_in(dir: &Path) -> usize {
    use mdm::samplers::{MaskedDiffusionSampler, Ties};

    let m = manifest(dir);
    let cases = read_tensors(&dir.join("cases.safetensors"));
    let model = load(dir);
    let generations = m["generations"].as_array().expect("generations");
    assert!(!generations.is_empty());
    let mut failures = Vec::new();
    let mut tie_sensitive = 0;
    let mut remasking = 0;
    for g in generations {
        let name = g["name"].as_str().unwrap();
        let options = options_of(g);
        let prompts = unpadded(&cases, name, "prompt");
        let expected = unpadded(&cases, name, "x");
        let out = MaskedDiffusionSampler::new(&model, options.clone())
            .decode(&prompts, |_| {})
            .unwrap();
        let discarded = discarded_passes(g, &prompts, &expected);
        let nfe = g["nfe"].as_u64().unwrap() as usize - discarded;
        // equal confidences come from the filters (nuclei of one token: confidence exactly 1);
        // where they can arise, ranking ties to the first slot must change some outputs
        if options.top_p.is_some() || options.top_k.is_some() {
            let first = MaskedDiffusionSampler::new(&model, options.clone().with_ties(Ties::First))
                .decode(&prompts, |_| {})
                .unwrap();
            tie_sensitive += usize::from(first.rows != expected);
        }
        // Dream's batch count can exceed a row's masks: `torch.topk` then picks positions of
        // confidence -inf and writes the mask token over decoded tokens (the maker counts them).
        // We do not: only the pass count is comparable, and every prompt is kept.
        if g["remasked_decoded"].as_u64().unwrap_or(0) > 0 {
            remasking += 1;
            let kept = prompts.iter().zip(&out.rows).all(|(p, x)| x.starts_with(p));
            if out.forward_passes != nfe || !kept {
                failures.push(format!(
                    "{name}: nfe {} vs {nfe}, prompts kept: {kept}",
                    out.forward_passes
                ));
            }
            continue;
        }
        if out.rows != expected || out.forward_passes != nfe {
            failures.push(format!(
                "{name} ({} {}): nfe {} vs {nfe}, tokens equal: {}",
                g["function"],
                g["alg"],
                out.forward_passes,
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
    assert!(
        remasking < generations.len(),
        "some generations are compared"
    );
    eprintln!(
        "{} generations equal ({remasking} of them in their pass count only: the reference \
         re-masked decoded tokens); {tie_sensitive} differ with ties to the first slot",
        generations.len()
    );
    tie_sensitive
}

/// Logits of `model` on a fixed masked row.
fn probe(model: &MaskedTransformer<B>) -> Vec<f32> {
    let m = model.mask_id() as i64;
    let ids = vec![5i64, 9, m, 17, m, m, 40, 3];
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 8]), &model.device());
    host(model.logits(input).unwrap())
}

#[test]
fn a_model_written_back_as_its_folder_is_that_folder() {
    for dir in fixture_dirs() {
        eprintln!("{}", dir.display());
        a_model_written_back_as_its_folder_is_that_folder_in(&dir);
    }
}

fn a_model_written_back_as_its_folder_is_that_folder_in(dir: &Path) {
    let src = dir.join("model");
    let model = load(dir);
    let out = tempfile::tempdir().unwrap();
    let copy = out.path().join("dream");
    model.save_hf_like(&src, &copy).unwrap();
    // loaded and written back: every file byte for byte (names, dtypes, shards, config, tokenizer)
    let mut files = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(copy.join(name)).unwrap(),
            "{name:?}"
        );
        files += 1;
    }
    assert_eq!(std::fs::read_dir(&copy).unwrap().count(), files);
    // other weights of the same shape (biases too): written in the folder's layout, read back the same
    let config = mdm::models::hf_model_config(&src).unwrap();
    let other = config.init_masked::<B>(3, &model.device()).unwrap();
    other.save_hf_like(&src, &copy).unwrap();
    let again = MaskedTransformer::<B>::load_hf(&copy, &model.device()).unwrap();
    assert_eq!(probe(&again), probe(&other));
    assert_ne!(probe(&again), probe(&model));
}

#[test]
fn a_dream_folder_fine_tunes_with_the_prompt_kept_and_is_written_back() {
    // the last set only: the tied one holds all the published one trains (Dream's shifted
    // logits, biases) and a tied head too (CI time: each fine-tune costs about 30 s on lavapipe)
    let dirs = fixture_dirs();
    let dir = dirs.last().expect("a Dream set");
    eprintln!("{}", dir.display());
    a_dream_folder_fine_tunes_with_the_prompt_kept_and_is_written_back_in(dir);
}

fn a_dream_folder_fine_tunes_with_the_prompt_kept_and_is_written_back_in(dir: &Path) {
    use mdm::data::sft::{SftDataset, SftRecord};
    use mdm::data::Tokenizer;

    let src = dir.join("model");
    let tokenizer = Tokenizer::from_folder(&src).unwrap();
    let records: Vec<SftRecord> = [
        ("What is 7 x 8?", "56."),
        ("And 9 x 9?", "81."),
        (
            "Who made the heaven?",
            "God created the heaven and the earth.",
        ),
        ("What was there?", "Light."),
    ]
    .iter()
    .map(|(p, r)| SftRecord {
        prompt: p.to_string(),
        response: r.to_string(),
    })
    .collect();
    let dataset = SftDataset::build(&records, &tokenizer, 48, None, false).unwrap();
    common::fine_tune_and_write_back(&src, dataset);
}

#[test]
fn a_dream_folder_is_evaluated() {
    // the first set only: the harness reads logits through the seam, whatever the head
    let dirs = fixture_dirs();
    let dir = dirs.first().expect("a Dream set");
    eprintln!("{}", dir.display());
    a_dream_folder_is_evaluated_in(dir);
}

fn a_dream_folder_is_evaluated_in(dir: &Path) {
    use mdm::data::Tokenizer;
    use mdm::eval::harness::{evaluate_task, Estimator, TaskSettings};
    use mdm::eval::tasks::{ChoiceItem, ContinuationItem, Task, TaskItems};
    use mdm::eval::Masked;

    let tokenizer = Tokenizer::from_folder(dir.join("model")).unwrap();
    let model = load(dir);
    let task = |items| Task {
        name: "dream".into(),
        file: "dream.jsonl".into(),
        items,
    };
    let continuation = task(TaskItems::Continuation(vec![ContinuationItem {
        id: "0".into(),
        context: "In the beginning God created the heaven and".into(),
        continuation: " the earth".into(),
    }]));
    let choices = task(TaskItems::MultipleChoice(vec![ChoiceItem {
        id: "0".into(),
        context: "And God said, Let there be".into(),
        choices: vec![" light".into(), " darkness".into()],
        gold: 0,
    }]));
    for estimator in [Estimator::ChainRule, Estimator::MonteCarlo] {
        let settings = TaskSettings {
            estimator,
            ..TaskSettings::default()
        };
        for t in [&continuation, &choices] {
            let run =
                || evaluate_task(&Masked(&model), &tokenizer, t, &settings, |_, _| {}).unwrap();
            let r = run();
            assert!(!r.metrics.is_empty());
            assert!(
                r.metrics.iter().all(|m| m.value.is_finite()),
                "{:?}",
                r.metrics
            );
            let again = run();
            assert_eq!(
                r.metrics.iter().map(|m| m.value).collect::<Vec<_>>(),
                again.metrics.iter().map(|m| m.value).collect::<Vec<_>>()
            );
        }
    }
}
