//! SMDM sampler fixtures (`sampler.cases.safetensors` of `MDM_PARITY_DIR`, default
//! `tests/data/smdm-parity`): one low-confidence ("greddy") step, the last step, and one iteration of
//! the greedy suffix check, reproduced exactly.

use crate::common;

use common::{manifest, read_cases, HostTensor};
use mdm::diffusion::rng_from_seed;
use mdm::samplers::proposal::{masked_slots, propose, Confidence, Slot};
use mdm::samplers::remasking::LowConfidence;
use mdm::samplers::schedule::{timesteps, transfer_count};
use mdm::samplers::step::{denoise_step, Counting};

fn rows(t: &HostTensor) -> Vec<Vec<usize>> {
    let len = t.shape[1];
    t.i64()
        .chunks(len)
        .map(|r| r.iter().map(|&v| v as usize).collect())
        .collect()
}

/// The logits of `slots` from a `[B, L, V]` fixture tensor.
fn slot_logits(logits: &HostTensor, slots: &[Slot]) -> Vec<f32> {
    let (len, vocab) = (logits.shape[1], logits.shape[2]);
    let all = logits.f32();
    slots
        .iter()
        .flat_map(|s| {
            let start = (s.row * len + s.pos) * vocab;
            all[start..start + vocab].to_vec()
        })
        .collect()
}

#[test]
fn greddy_steps_and_suffix_greedy_match_the_reference() {
    let m = manifest();
    let sampler = &m["sampler"];
    let mask_id = sampler["mask_id"].as_u64().unwrap() as usize;
    let sc = &sampler["scalars"];
    let f = |k: &str| sc[k].as_f64().unwrap_or_else(|| panic!("scalar {k}"));
    let cases = read_cases(sampler["cases"].as_str().unwrap());
    let get = |k: &str| cases.get(k).unwrap_or_else(|| panic!("tensor {k}"));

    // the time grid and the transfer count, in fp32 as the reference
    let steps = f("greddy.steps") as usize;
    let i = f("greddy.step_i") as usize;
    let grid = timesteps(steps, f("greddy.eps") as f32);
    assert_eq!(grid[i], f("greddy.t") as f32, "t");
    assert_eq!(grid[i + 1], f("greddy.s") as f32, "s");
    let x = rows(get("greddy.x"));
    let slots = masked_slots(&x, mask_id);
    assert_eq!(slots.len(), f("greddy.n_mask") as usize);
    let k_real = slots.len() as f32 * (1.0 - grid[i + 1] / grid[i]);
    assert_eq!(k_real, f("greddy.k_real") as f32, "k_real");
    assert_eq!(
        transfer_count(slots.len(), grid[i], grid[i + 1], false),
        f("greddy.k") as usize
    );

    // proposals: argmax and f64 confidence
    let logits = get("greddy.logits");
    let vocab = logits.shape[2];
    let slot_logits_greddy = slot_logits(logits, &slots);
    let proposals = propose(
        &slots,
        &slot_logits_greddy,
        vocab,
        0.0,
        &mut rng_from_seed(0),
    )
    .unwrap();
    let x0: Vec<i64> = proposals.iter().map(|p| p.token as i64).collect();
    assert_eq!(x0, get("greddy.x0").i64());
    for (p, want) in proposals.iter().zip(&get("greddy.confidence").values) {
        assert!(
            (p.confidence - want).abs() <= 1e-9,
            "confidence {} vs {want}",
            p.confidence
        );
    }

    // one step with SMDM's joint counting over the batch
    let mut out = x.clone();
    denoise_step(
        &mut out,
        &slots,
        &slot_logits_greddy,
        vocab,
        (grid[i], grid[i + 1]),
        false,
        (0.0, Confidence::Probability),
        &LowConfidence,
        Counting::JointBatch,
        &mut rng_from_seed(0),
    )
    .unwrap();
    assert_eq!(out, rows(get("greddy.x_out")), "greddy step");

    // the last step fills every masked slot
    let last = steps - 1;
    let mut out = x.clone();
    let revealed = denoise_step(
        &mut out,
        &slots,
        &slot_logits_greddy,
        vocab,
        (grid[last], grid[last + 1]),
        true,
        (0.0, Confidence::Probability),
        &LowConfidence,
        Counting::JointBatch,
        &mut rng_from_seed(0),
    )
    .unwrap();
    assert_eq!(revealed.len(), f("greddy_last.k") as usize);
    assert_eq!(out, rows(get("greddy_last.x_out")), "greddy last step");

    // greedy suffix check: fill the single most confident masked slot (batch 1, k = 1)
    let x = rows(get("suffix_greedy.x"));
    let slots = masked_slots(&x, mask_id);
    let logits = slot_logits(get("suffix_greedy.logits"), &slots);
    let proposals = propose(&slots, &logits, vocab, 0.0, &mut rng_from_seed(0)).unwrap();
    let chosen = mdm::samplers::remasking::Remasking::select(
        &LowConfidence,
        &proposals,
        &mdm::samplers::remasking::StepInfo {
            t: 1.0,
            s: 0.5,
            k: 1,
            last_step: false,
            order: Default::default(),
        },
        &mut rng_from_seed(0),
    );
    let mut out = x.clone();
    for c in chosen {
        out[proposals[c].slot.row][proposals[c].slot.pos] = proposals[c].token;
    }
    assert_eq!(out, rows(get("suffix_greedy.x_out")), "suffix greedy");
}
