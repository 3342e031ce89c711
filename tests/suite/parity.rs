//! Parity with the SMDM reference (fixtures from an independent PyTorch implementation checked against
//! the original code). The folder comes from `MDM_PARITY_DIR` (default: `tests/data/smdm-parity`);
//! every size is read from its `manifest.json`.

use crate::common;

use common::{manifest, max_abs_diff, parity_dir, read_cases, rel_diff, HostTensor};
use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Bool, Int, Tensor, TensorData};
use mdm::diffusion::{cfg::cfg_combine, loss};
use mdm::models::{rope::rope_tables, MaskedTransformer, ModelConfig};
use std::collections::HashMap;

const LOGIT_TOL: f64 = 1e-4;
const LOSS_REL_TOL: f64 = 1e-5;

struct Case {
    name: String,
    config: ModelConfig,
    model: MaskedTransformer<B>,
    t: HashMap<String, HostTensor>,
    scalars: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let m = manifest();
    let models = m["models"].as_object().expect("manifest.models");
    assert!(!models.is_empty(), "no models in the manifest");
    let device = backend::device();
    models
        .iter()
        .map(|(name, entry)| {
            let config = ModelConfig::from_json(&entry["config"].to_string())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                config.mask_id() as u64,
                entry["config"]["mask_id"].as_u64().unwrap()
            );
            assert_eq!(
                config.head_size() as u64,
                entry["config"]["head_size"].as_u64().unwrap()
            );
            assert_eq!(
                config.rope_dims() as u64,
                entry["config"]["rope_dims"].as_u64().unwrap()
            );
            let weights = parity_dir().join(entry["weights"].as_str().unwrap());
            let model = MaskedTransformer::<B>::load_smdm(&weights, &config, &device)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            Case {
                name: name.clone(),
                config,
                model,
                t: read_cases(entry["cases"].as_str().unwrap()),
                scalars: entry["scalars"].clone(),
            }
        })
        .collect()
}

fn ids(t: &HostTensor) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(t.i64(), [t.shape[0], t.shape[1]]).convert::<i32>(),
        &backend::device(),
    )
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn get<'a>(c: &'a Case, key: &str) -> &'a HostTensor {
    c.t.get(key)
        .unwrap_or_else(|| panic!("{}: no tensor {key}", c.name))
}

#[test]
fn rope_tables_are_bf16_exact() {
    for c in cases() {
        let (cos, sin) = rope_tables(&c.config);
        for (ours, key) in [(cos, "rope.cos"), (sin, "rope.sin")] {
            let expected = get(&c, key);
            assert_eq!(ours.len(), expected.values.len(), "{} {key}", c.name);
            // exact, allowing one bf16 ulp where libm's last fp32 bit differs (fixture README)
            let mut off = 0;
            for (a, b) in ours.iter().zip(expected.f32()) {
                if *a != b {
                    let ulp = 2f32.powi((b.abs().max(1e-30)).log2().floor() as i32 - 7);
                    assert!((a - b).abs() <= ulp, "{} {key}: {a} vs {b}", c.name);
                    off += 1;
                }
            }
            assert!(
                off * 100 < ours.len(),
                "{} {key}: {off} entries off by one ulp",
                c.name
            );
        }
    }
}

#[test]
fn forward_logits_match() {
    for c in cases() {
        let input = get(&c, "forward.input_ids");
        let logits = c.model.forward(ids(input)).unwrap();
        let expected = get(&c, "forward.logits");
        assert_eq!(logits.dims().to_vec(), expected.shape);
        let diff = max_abs_diff(&host(logits), &expected.f32());
        assert!(
            diff <= LOGIT_TOL,
            "{}: forward logits max abs diff {diff}",
            c.name
        );
        println!("{}: forward logits max abs diff {diff:.2e}", c.name);
    }
}

#[test]
fn forward_long_argmax_exact() {
    for c in cases() {
        let input = get(&c, "forward_long.input_ids");
        let logits = c.model.forward(ids(input)).unwrap();
        let [_, len, vocab] = logits.dims();
        let argmax: Vec<i64> = logits
            .clone()
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(argmax, get(&c, "forward_long.argmax").i64(), "{}", c.name);
        let lse = host(
            mdm::burn::tensor::activation::log_softmax(logits.clone(), 2)
                .neg()
                .slice([0..1, 0..len, 0..1])
                + logits.clone().slice([0..1, 0..len, 0..1]),
        );
        let diff = max_abs_diff(&lse, &get(&c, "forward_long.logsumexp").f32());
        assert!(diff <= LOGIT_TOL, "{}: logsumexp diff {diff}", c.name);
        let last8 = host(logits.slice([0..1, len - 8..len, 0..vocab]));
        let diff = max_abs_diff(&last8, &get(&c, "forward_long.logits_last8").f32());
        assert!(diff <= LOGIT_TOL, "{}: last-8 logits diff {diff}", c.name);
    }
}

#[test]
fn pretrain_loss_matches() {
    for c in cases() {
        let d = backend::device();
        let noisy = get(&c, "pretrain.noisy_input");
        let [b, l] = [noisy.shape[0], noisy.shape[1]];
        let mask = Tensor::<B, 2, Bool>::from_bool(
            TensorData::new(get(&c, "pretrain.mask").bool(), [b, l]),
            &d,
        );
        let p_mask =
            Tensor::<B, 1>::from_data(TensorData::new(get(&c, "pretrain.p_mask").f32(), [b]), &d);
        // the fixture's noisy input is x0 with mask_id exactly where the mask is set
        let x0 = get(&c, "pretrain.x0");
        let noisy_check = ids(x0).mask_fill(mask.clone(), c.config.mask_id() as i64);
        let noisy_check: Vec<i64> = noisy_check.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(noisy_check, noisy.i64(), "{}", c.name);
        // p_mask = (1 - 1e-3) t + 1e-3
        for (p, t) in get(&c, "pretrain.p_mask")
            .values
            .iter()
            .zip(&get(&c, "pretrain.t").values)
        {
            assert!((p - ((1.0 - 1e-3) * t + 1e-3)).abs() < 1e-6);
        }
        let logits = c.model.forward(ids(noisy)).unwrap();
        let out = loss::pretrain_loss(logits, ids(x0), mask, p_mask).unwrap();
        let got = host(out.loss)[0] as f64;
        let want = get(&c, "pretrain.loss").scalar();
        assert!(
            rel_diff(got, want) <= LOSS_REL_TOL,
            "{}: loss {got} vs {want}",
            c.name
        );
        assert!(rel_diff(want, c.scalars["pretrain.loss"].as_f64().unwrap()) < 1e-12);
        let rows = host(out.loss_per_row);
        for (g, w) in rows.iter().zip(&get(&c, "pretrain.loss_per_row").values) {
            assert!(
                rel_diff(*g as f64, *w) <= LOSS_REL_TOL,
                "{}: row loss {g} vs {w}",
                c.name
            );
        }
        let ce = host(out.ce);
        let want_ce = get(&c, "pretrain.ce").f32();
        for (g, w) in ce.iter().zip(&want_ce) {
            assert!(
                (g - w).abs() as f64 <= LOSS_REL_TOL * w.abs().max(1.0) as f64,
                "{}: ce {g} vs {w}",
                c.name
            );
        }
        println!("{}: pretrain loss {got} (reference {want})", c.name);

        // the sparse path (head only at masked positions) gives the same loss
        let mask_host = get(&c, "pretrain.mask").bool();
        let noised = mdm::diffusion::forward_process::NoisedBatch::<B> {
            noisy: ids(noisy),
            mask: Tensor::from_bool(TensorData::new(mask_host.clone(), [b, l]), &d),
            p_mask: Tensor::from_data(TensorData::new(get(&c, "pretrain.p_mask").f32(), [b]), &d),
            masked_index: (0..b * l).filter(|&i| mask_host[i]).collect(),
            p_mask_host: get(&c, "pretrain.p_mask").values.clone(),
        };
        let targets = noised.masked_targets(ids(x0)).unwrap();
        let masked_logits = c
            .model
            .forward_at(noised.noisy.clone(), targets.index.clone())
            .unwrap();
        let sparse =
            host(loss::sparse_masked_loss(masked_logits, &targets, (b * l) as f64).unwrap())[0]
                as f64;
        assert!(
            rel_diff(sparse, want) <= LOSS_REL_TOL,
            "{}: sparse loss {sparse} vs {want}",
            c.name
        );
    }
}

#[test]
fn sft_loss_matches() {
    for c in cases() {
        let d = backend::device();
        let noisy = get(&c, "sft.noisy_input");
        let [b, l] = [noisy.shape[0], noisy.shape[1]];
        let prompt_len: Vec<usize> = get(&c, "sft.prompt_len")
            .i64()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let max_len = *get(&c, "sft.length").i64().iter().max().unwrap() as usize;
        assert_eq!(max_len, l, "{}: sequences are cut to max(length)", c.name);
        let mask_host = get(&c, "sft.mask").bool();
        for (row, &p) in prompt_len.iter().enumerate() {
            assert!(
                mask_host[row * l..row * l + p].iter().all(|m| !m),
                "prompt never masked"
            );
        }
        let mask = Tensor::<B, 2, Bool>::from_bool(TensorData::new(mask_host, [b, l]), &d);
        let p_mask =
            Tensor::<B, 1>::from_data(TensorData::new(get(&c, "sft.p_mask").f32(), [b]), &d);
        let logits = c.model.forward(ids(noisy)).unwrap();
        let out =
            loss::sft_loss(logits, ids(get(&c, "sft.x0")), mask, p_mask, &prompt_len).unwrap();
        let got = host(out.loss)[0] as f64;
        let want = get(&c, "sft.loss").scalar();
        assert!(
            rel_diff(got, want) <= LOSS_REL_TOL,
            "{}: sft loss {got} vs {want}",
            c.name
        );
    }
}

#[test]
fn cfg_logits_match() {
    for c in cases() {
        let w = c.scalars["cfg.w"].as_f64().unwrap();
        let prompt_len = c.scalars["cfg.prompt_len"].as_u64().unwrap() as usize;
        let cond_input = get(&c, "cfg.cond_input");
        // our unconditional input equals the reference's
        let uncond = mdm::diffusion::cfg::unconditional_input(
            ids(cond_input),
            &[prompt_len],
            c.config.mask_id(),
        )
        .unwrap();
        let uncond_host: Vec<i64> = uncond
            .clone()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(uncond_host, get(&c, "cfg.uncond_input").i64(), "{}", c.name);
        let cond = c.model.forward(ids(cond_input)).unwrap();
        let un = c.model.forward(uncond).unwrap();
        for (t, key) in [(&cond, "cfg.cond_logits"), (&un, "cfg.uncond_logits")] {
            let diff = max_abs_diff(&host(t.clone()), &get(&c, key).f32());
            assert!(diff <= LOGIT_TOL, "{}: {key} diff {diff}", c.name);
        }
        let guided = cfg_combine(cond, un, w).unwrap();
        let diff = max_abs_diff(&host(guided), &get(&c, "cfg.logits").f32());
        assert!(diff <= LOGIT_TOL, "{}: cfg logits diff {diff}", c.name);
    }
}

/// Without the bf16 rounding of the tables the logits move by ~8e-3: the test above would catch a
/// wrong table, and this shows the tolerance is meaningful.
#[test]
fn unrounded_rope_tables_fail_the_tolerance() {
    for c in cases() {
        let config = c.config.clone().with_rope_bf16_tables(false);
        let weights = parity_dir().join(manifest()["models"][&c.name]["weights"].as_str().unwrap());
        let model =
            MaskedTransformer::<B>::load_smdm(&weights, &config, &backend::device()).unwrap();
        let logits = model.forward(ids(get(&c, "forward.input_ids"))).unwrap();
        let diff = max_abs_diff(&host(logits), &get(&c, "forward.logits").f32());
        assert!(
            diff > LOGIT_TOL,
            "{}: fp32 tables should differ, diff {diff}",
            c.name
        );
    }
}
