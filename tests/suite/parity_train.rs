//! Training-step parity with SMDM's recipe in PyTorch (`train_mdm.py` loss, `torch.optim.AdamW`,
//! `clip_grad_norm_`, lit-gpt's learning-rate schedule): the fixture's noised batches are fed
//! through [`MaskedTrainBatch::from_mask`] and [`optimizer_step`], and every step's loss and
//! gradient norm and the final weights must match. The folder comes from `MDM_TRAIN_PARITY_DIR`
//! (default: `tests/data/train-parity`); every size is read from its files.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{read_tensors, rel_diff, HostTensor};
use mdm::backend::{self, Training};
use mdm::models::{MaskedTransformer, ModelConfig};
use mdm::train::config::{learning_rate, LrSchedule};
use mdm::train::objective::{masked_loss, MaskedTrainBatch};
use mdm::train::optim::{AdamW, AdamWConfig};
use mdm::train::step::{optimizer_step, SingleDevice};
use mdm::train::{Batch, TrainConfig};

const STEP_REL_TOL: f64 = 1e-4;
const WEIGHT_ABS_TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    common::fixture_dir("MDM_TRAIN_PARITY_DIR", "train-parity", "train.json")
}

/// The tensors under `prefix` (`init.` / `final.`), the prefix removed, as an f32 safetensors
/// file with SMDM names.
fn write_weights(tensors: &HashMap<String, HostTensor>, prefix: &str, path: &Path) {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let name = k.strip_prefix(prefix)?;
            let bytes = t.f32().iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((name.to_string(), t.shape.clone(), bytes))
        })
        .collect();
    assert!(!named.is_empty(), "no `{prefix}*` tensors in the fixture");
    named.sort();
    let views: Vec<(String, safetensors::tensor::TensorView)> = named
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

fn f64_field(json: &serde_json::Value, key: &str) -> f64 {
    json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("train.json: `{key}` is not a number"))
}

#[test]
fn six_optimizer_steps_match_pytorch() {
    let dir = fixture_dir();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    let tensors = read_tensors(&dir.join("train.safetensors"));
    let config = ModelConfig::from_json(&json["config"].to_string()).unwrap();
    assert_eq!(
        config.mask_id() as u64,
        json["config"]["mask_id"].as_u64().unwrap()
    );
    let device = backend::device();
    let scratch = tempfile::tempdir().unwrap();
    let init = scratch.path().join("init.safetensors");
    write_weights(&tensors, "init.", &init);
    let mut model = MaskedTransformer::<Training>::load_smdm(&init, &config, &device).unwrap();

    let betas = json["betas"].as_array().expect("betas");
    let mut optim = AdamW::new(AdamWConfig {
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: f64_field(&json, "adam_eps"),
        weight_decay: f64_field(&json, "weight_decay"),
        max_norm: f64_field(&json, "grad_clip"),
    });
    // lit-gpt's schedule, which the fixture used, is ours under `LrSchedule::Litgpt`
    let steps = json["steps"].as_u64().unwrap() as usize;
    let schedule = TrainConfig {
        lr: f64_field(&json, "lr"),
        min_lr: f64_field(&json, "min_lr"),
        warmup_steps: json["warmup_steps"].as_u64().unwrap() as usize,
        lr_schedule: LrSchedule::Litgpt,
        ..Default::default()
    };
    let log = json["log"].as_array().expect("log");
    let (mut worst_loss, mut worst_norm, mut worst_weight) = (0.0f64, 0.0f64, 0.0f64);
    assert_eq!(log.len(), steps);
    for (i, entry) in log.iter().enumerate() {
        let lr = f64_field(entry, "lr");
        let ours = learning_rate(&schedule, i, steps);
        assert!(
            (ours - lr).abs() <= 1e-12 * lr.max(1e-3),
            "step {i}: lr {ours} vs {lr}"
        );

        let x0 = &tensors[&format!("step{i}.x0")];
        let (rows, cols) = (x0.shape[0], x0.shape[1]);
        let batch = Batch {
            ids: x0.i64().iter().map(|&t| t as u32).collect(),
            rows,
            cols,
            prompt_len: None,
        };
        let mask = tensors[&format!("step{i}.mask")].bool();
        let p_mask = tensors[&format!("step{i}.p_mask")].values.clone();
        let noised = MaskedTrainBatch::<Training>::from_mask(
            &batch,
            mask,
            p_mask,
            config.mask_id(),
            &device,
        )
        .unwrap();
        let (next, outcome) = optimizer_step(
            model,
            &mut optim,
            lr,
            1,
            i,
            &mut SingleDevice,
            |m: &MaskedTransformer<Training>, _| masked_loss(m, &noised),
        )
        .unwrap();
        model = next;
        let (loss, norm) = (f64_field(entry, "loss"), f64_field(entry, "grad_norm"));
        worst_loss = worst_loss.max(rel_diff(outcome.loss, loss));
        worst_norm = worst_norm.max(rel_diff(outcome.grad_norm, norm));
        assert!(
            rel_diff(outcome.loss, loss) < STEP_REL_TOL,
            "step {i}: loss {} vs {loss}",
            outcome.loss
        );
        assert!(
            rel_diff(outcome.grad_norm, norm) < STEP_REL_TOL,
            "step {i}: grad norm {} vs {norm}",
            outcome.grad_norm
        );
    }

    let saved = scratch.path().join("after");
    model.save(&saved).unwrap();
    let ours = read_tensors(&saved.join("model.safetensors"));
    let mut checked = 0;
    for (name, expected) in tensors.iter().filter(|(k, _)| k.starts_with("final.")) {
        let key = name.trim_start_matches("final.");
        let got = ours
            .get(key)
            .unwrap_or_else(|| panic!("our model has no `{key}`"));
        assert_eq!(got.shape, expected.shape, "{key}");
        let diff = common::max_abs_diff(&got.f32(), &expected.f32());
        assert!(
            diff <= WEIGHT_ABS_TOL,
            "{key}: final weights differ by {diff:e}"
        );
        worst_weight = worst_weight.max(diff);
        checked += 1;
    }
    assert_eq!(checked, ours.len(), "every parameter compared");
    eprintln!(
        "{steps} steps: loss within {worst_loss:.1e} relative, gradient norm within \
         {worst_norm:.1e}, final weights within {worst_weight:.1e} absolute"
    );
    // negative control: the weights did move (the comparison above could not pass by accident)
    let moved = tensors
        .iter()
        .filter_map(|(k, t)| {
            let key = k.strip_prefix("init.")?;
            Some(common::max_abs_diff(
                &t.f32(),
                &tensors[&format!("final.{key}")].f32(),
            ))
        })
        .fold(0.0, f64::max);
    assert!(
        moved > 100.0 * WEIGHT_ABS_TOL,
        "the fixture's weights barely move ({moved:e})"
    );
}
