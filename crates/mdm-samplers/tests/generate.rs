//! The generation loop on a small random model (flex backend).

use burn::backend::Flex;
use mdm_models::{MaskedTransformer, ModelConfig};
use mdm_samplers::remasking::RandomRemasking;
use mdm_samplers::{GenerationConfig, MaskedDiffusionSampler};

fn model() -> MaskedTransformer<Flex> {
    ModelConfig::custom(60, 2, 4, 32, 64, 64)
        .with_query_groups(2)
        .init_masked(11, &Default::default())
        .unwrap()
}

#[test]
fn ragged_batch_rows_equal_rows_alone() {
    let m = model();
    let prompts = vec![vec![3, 4, 5], vec![7], vec![9, 10, 11, 12, 13]];
    let config = GenerationConfig::default()
        .with_gen_length(12)
        .with_steps(6);
    let sampler = MaskedDiffusionSampler::new(&m, config);
    let together = sampler.generate(&prompts, |_| {}).unwrap();
    for (p, row) in prompts.iter().zip(&together) {
        let alone = sampler.generate(std::slice::from_ref(p), |_| {}).unwrap();
        assert_eq!(&alone[0], row, "prompt {p:?}");
    }
}

#[test]
fn prompt_kept_every_mask_filled_and_steps_streamed() {
    let m = model();
    let mask = m.mask_id();
    let prompts = vec![vec![1, 2], vec![3, 4, 5, 6]];
    let config = GenerationConfig::default()
        .with_gen_length(10)
        .with_steps(5)
        .with_temperature(0.8)
        .with_seed(3);
    let mut events = 0;
    let out = MaskedDiffusionSampler::new(&m, config.clone())
        .generate(&prompts, |e| {
            events += 1;
            for (row, p) in e.tokens.iter().zip(&prompts) {
                assert_eq!(&row[..p.len()], &p[..]);
            }
            assert!(e.revealed.iter().all(|r| r.token != mask));
        })
        .unwrap();
    assert_eq!(events, 5);
    assert!(out
        .iter()
        .all(|r| r.len() == 10 && r.iter().all(|&t| t != mask)));
    // the same seed gives the same tokens
    let again = MaskedDiffusionSampler::new(&m, config)
        .generate(&prompts, |_| {})
        .unwrap();
    assert_eq!(out, again);
}

#[test]
fn cfg_with_zero_scale_equals_no_cfg() {
    let m = model();
    let prompts = vec![vec![5, 6, 7], vec![8]];
    let base = GenerationConfig::default().with_gen_length(8).with_steps(4);
    let plain = MaskedDiffusionSampler::new(&m, base.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    let guided = MaskedDiffusionSampler::new(&m, base.clone().with_cfg_scale(0.0))
        .generate(&prompts, |_| {})
        .unwrap();
    assert_eq!(plain, guided);
    // a real guidance scale runs and fills everything
    let strong = MaskedDiffusionSampler::new(&m, base.with_cfg_scale(2.0))
        .generate(&prompts, |_| {})
        .unwrap();
    assert!(strong.iter().all(|r| r.len() == 8));
}

#[test]
fn semi_autoregressive_blocks_reveal_only_the_current_block() {
    let m = model();
    let prompts = vec![vec![1, 2, 3], vec![4]];
    let config = GenerationConfig::default()
        .with_gen_length(12)
        .with_steps(6)
        .with_block_length(4);
    let mut blocks_seen = vec![];
    MaskedDiffusionSampler::new(&m, config)
        .with_rule(RandomRemasking)
        .generate(&prompts, |e| {
            blocks_seen.push(e.block);
            for r in e.revealed {
                let gen_pos = r.slot.pos - prompts[r.slot.row].len();
                assert_eq!(
                    gen_pos / 4,
                    e.block,
                    "revealed {r:?} outside block {}",
                    e.block
                );
            }
        })
        .unwrap();
    assert_eq!(blocks_seen, vec![0, 0, 1, 1, 2, 2]);
}

#[test]
fn eos_trims_and_bad_requests_are_errors() {
    let m = model();
    let prompts = vec![vec![1, 2]];
    let config = GenerationConfig::default()
        .with_gen_length(16)
        .with_steps(8)
        .with_temperature(1.0);
    let full = MaskedDiffusionSampler::new(&m, config.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    // use the most frequent generated token as "EOS": the output is cut before its first occurrence
    let eos = full[0][full[0].len() / 2];
    let cut = MaskedDiffusionSampler::new(&m, config.clone().with_eos(eos))
        .generate(&prompts, |_| {})
        .unwrap();
    assert!(!cut[0].contains(&eos));
    assert!(cut[0].len() < 16);
    assert!(
        MaskedDiffusionSampler::new(&m, config.clone().with_block_length(5))
            .generate(&prompts, |_| {})
            .is_err()
    );
    assert!(
        MaskedDiffusionSampler::new(&m, config.clone().with_gen_length(64))
            .generate(&prompts, |_| {})
            .is_err()
    );
    assert!(MaskedDiffusionSampler::new(&m, config)
        .generate(&[vec![500]], |_| {})
        .is_err());
}
