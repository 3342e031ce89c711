//! SMDM likelihood fixtures (`chain_rule` and `mc` cases of each model in `MDM_PARITY_DIR`).

use crate::common;

use common::{manifest, parity_dir, read_cases, rel_diff};
use mdm::backend::{self, Default as B};
use mdm::burn::tensor::{Bool, Int, Tensor, TensorData};
use mdm::diffusion::forward_process::NoisedBatch;
use mdm::eval::likelihood::{chain_rule, chain_rule_rows, mc_batch_nll};
use mdm::models::{MaskedTransformer, ModelConfig};

#[test]
fn chain_rule_and_mc_match_the_reference() {
    let m = manifest();
    let device = backend::device();
    for (name, entry) in m["models"].as_object().expect("models") {
        let config = ModelConfig::from_json(&entry["config"].to_string()).unwrap();
        let weights = parity_dir().join(entry["weights"].as_str().unwrap());
        let model = MaskedTransformer::<B>::load_smdm(&weights, &config, &device).unwrap();
        let c = read_cases(entry["cases"].as_str().unwrap());
        let ids = |k: &str| -> Vec<usize> { c[k].i64().iter().map(|&v| v as usize).collect() };

        // chain rule: same rows, same per-token CE, same NLL
        let (prefix, target) = (ids("chain_rule.prefix"), ids("chain_rule.target"));
        let rows: Vec<i64> = chain_rule_rows(&prefix, &target, config.mask_id()).concat();
        assert_eq!(rows, c["chain_rule.rows"].i64(), "{name}: chain-rule rows");
        let est = chain_rule(&model, &prefix, &target).unwrap();
        let want = c["chain_rule.nll"].scalar();
        assert!(
            rel_diff(est.nll, want) <= 1e-5,
            "{name}: chain rule {} vs {want}",
            est.nll
        );
        for (lp, ce) in est.token_log_probs.iter().zip(&c["chain_rule.ce"].values) {
            assert!(
                rel_diff(-lp, *ce) <= 1e-5,
                "{name}: token CE {} vs {ce}",
                -lp
            );
        }

        // one Monte Carlo batch with the reference's times and masks
        let seq = &c["mc.seq"];
        let [b, l] = [seq.shape[0], seq.shape[1]];
        let tensor =
            |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, l]), &device);
        let mask = c["mc.mask"].bool();
        let t: Vec<f64> = c["mc.t"].values.clone();
        let noised = NoisedBatch::<B> {
            noisy: tensor(c["mc.perturbed_input"].i64()),
            mask: Tensor::<B, 2, Bool>::from_bool(TensorData::new(mask.clone(), [b, l]), &device),
            p_mask: Tensor::from_data(TensorData::new(c["mc.t"].f32(), [b]), &device),
            masked_index: (0..b * l).filter(|&i| mask[i]).collect(),
            p_mask_host: t.clone(),
        };
        let per_row = mc_batch_nll(&model, tensor(seq.i64()), &noised, &t).unwrap();
        let nll = per_row.iter().sum::<f64>() / b as f64;
        let want = c["mc.nll"].scalar();
        assert!(
            rel_diff(nll, want) <= 1e-5,
            "{name}: mc nll {nll} vs {want}"
        );
    }
}
