//! The generation loop on a small random model (flex backend).

use burn::backend::Flex;
use mdm_models::{MaskedTransformer, ModelConfig};
use mdm_samplers::remasking::RandomRemasking;
use mdm_samplers::{DecodingOptions, MaskedDiffusionSampler};

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
    let config = DecodingOptions::default().with_gen_length(12).with_steps(6);
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
    let config = DecodingOptions::default()
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
    let base = DecodingOptions::default().with_gen_length(8).with_steps(4);
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
    let config = DecodingOptions::default()
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
    let config = DecodingOptions::default()
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

#[test]
fn autoregressive_sampler_matches_full_recomputation() {
    use burn::tensor::{Int, Tensor, TensorData};
    use mdm_samplers::autoregressive::{generate_autoregressive, AutoregressiveConfig};
    let m = ModelConfig::custom(60, 2, 4, 32, 64, 64)
        .init_causal::<Flex>(4, &Default::default())
        .unwrap();
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]];
    let config = AutoregressiveConfig {
        max_new_tokens: 10,
        ..Default::default()
    };
    let out = generate_autoregressive(&m, &prompts, &config).unwrap();
    for (p, row) in prompts.iter().zip(&out) {
        // greedy decoding by recomputing the whole sequence each time (no cache)
        let mut seq: Vec<i64> = p.iter().map(|&t| t as i64).collect();
        for _ in 0..10 {
            let len = seq.len();
            let ids = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(seq.clone(), [1, len]),
                &Default::default(),
            );
            let logits = m.forward(ids).unwrap();
            let v = logits.dims()[2];
            let next = logits
                .narrow(1, len - 1, 1)
                .reshape([1, v])
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()[0];
            seq.push(next);
        }
        let expected: Vec<usize> = seq[p.len()..].iter().map(|&t| t as usize).collect();
        assert_eq!(row, &expected, "prompt {p:?}");
    }
    // sampling: same seed, same tokens; EOS cuts the row
    let hot = AutoregressiveConfig {
        max_new_tokens: 10,
        temperature: 1.0,
        seed: 9,
        ..Default::default()
    };
    let a = generate_autoregressive(&m, &prompts, &hot).unwrap();
    assert_eq!(a, generate_autoregressive(&m, &prompts, &hot).unwrap());
    let eos = out[0][3];
    let cut = generate_autoregressive(
        &m,
        &prompts,
        &AutoregressiveConfig {
            eos_id: Some(eos),
            ..config
        },
    )
    .unwrap();
    assert_eq!(
        cut[0],
        out[0][..out[0].iter().position(|&t| t == eos).unwrap()].to_vec()
    );
}

#[test]
fn every_confidence_measure_fills_every_slot() {
    use mdm_samplers::NamedRule;
    let m = model();
    let vocab = m.config().padded_vocab_size();
    let prompts = vec![vec![1, 2, 3], vec![4]];
    for c in [
        NamedRule::LowConfidence,
        NamedRule::Margin,
        NamedRule::Entropy,
    ] {
        let config = DecodingOptions::default()
            .with_gen_length(12)
            .with_steps(6)
            .with_remasking(c);
        let out = MaskedDiffusionSampler::new(&m, config)
            .generate(&prompts, |_| {})
            .unwrap();
        assert!(
            out.iter()
                .all(|r| r.len() == 12 && r.iter().all(|&t| t < vocab)),
            "{c:?}"
        );
    }
}

#[test]
fn rows_stopped_at_eos_leave_the_batch_without_changing_the_others() {
    let m = model();
    let prompts = vec![vec![3, 4, 5], vec![7], vec![9, 10]];
    let base = DecodingOptions::default()
        .with_gen_length(12)
        .with_steps(12);
    let full = MaskedDiffusionSampler::new(&m, base.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    // an EOS that one row produces early, so that row stops while others go on
    let eos = full[1][0];
    let config = base.with_eos(eos);
    let sampler = MaskedDiffusionSampler::new(&m, config);
    let mut pass_rows = vec![];
    let together = sampler
        .generate(&prompts, |e| {
            pass_rows.push(
                e.revealed
                    .iter()
                    .map(|r| r.slot.row)
                    .collect::<std::collections::BTreeSet<_>>(),
            )
        })
        .unwrap();
    for (p, row) in prompts.iter().zip(&together) {
        let alone = sampler.generate(std::slice::from_ref(p), |_| {}).unwrap();
        assert_eq!(&alone[0], row, "prompt {p:?}");
    }
    // the stopped row reveals nothing after it stopped
    assert!(
        pass_rows.iter().skip(1).any(|rows| !rows.contains(&1)),
        "{pass_rows:?}"
    );
}

/// On flex the logits are read in place and guided on the host; under `Autodiff<Flex>` (whose
/// tensors cannot be lent) guidance and the greedy reduction run as tensor operations. Same
/// weights, same tokens, for every kind of step; profiling reports both parts of every step.
#[test]
fn in_place_and_device_paths_generate_the_same_tokens() {
    use burn::backend::Autodiff;
    use mdm_samplers::NamedRule;
    let config = ModelConfig::custom(300, 2, 4, 32, 64, 64);
    let flex = config.init_masked::<Flex>(5, &Default::default()).unwrap();
    let autodiff = config
        .init_masked::<Autodiff<Flex>>(5, &Default::default())
        .unwrap();
    let prompts = vec![vec![1, 2, 3, 4], vec![9, 8]];
    let base = DecodingOptions::default()
        .with_gen_length(12)
        .with_steps(6)
        .with_seed(4);
    for generation in [
        base.clone(),
        base.clone().with_cfg_scale(1.5),
        base.clone().with_temperature(0.8),
        base.clone()
            .with_temperature(0.8)
            .with_cfg_scale(0.5)
            .with_remasking(NamedRule::Margin),
        base.clone().with_remasking(NamedRule::Entropy),
    ] {
        let mut steps = 0;
        let in_place = MaskedDiffusionSampler::new(&flex, generation.clone().with_profiling())
            .generate(&prompts, |event| {
                let timing = event.timing.expect("profiling is on");
                assert!(timing.forward > std::time::Duration::ZERO);
                steps += 1;
            })
            .unwrap();
        assert_eq!(steps, 6);
        let device = MaskedDiffusionSampler::new(&autodiff, generation.clone())
            .generate(&prompts, |event| assert!(event.timing.is_none()))
            .unwrap();
        assert_eq!(in_place, device, "{generation:?}");
    }
}

#[test]
fn a_step_that_reveals_nothing_lets_the_next_reuse_its_logits_exactly() {
    use mdm_samplers::remasking::Ancestral;
    let m = model();
    let prompts = vec![vec![3, 4], vec![5, 6, 7]];
    // many steps for few tokens: MDLM's ancestral rule often reveals nothing in a step
    for cfg in [None, Some(0.5)] {
        let mut config = DecodingOptions::default()
            .with_gen_length(6)
            .with_steps(48)
            .with_temperature(1.0)
            .with_seed(5);
        config.cfg_scale = cfg;
        let run = |config: DecodingOptions| {
            let sampler = MaskedDiffusionSampler::new(&m, config).with_rule(Ancestral);
            let (mut passes, mut reused, mut positions, mut steps) = (0, 0, 0, 0);
            let out = sampler
                .generate(&prompts, |e| {
                    steps += 1;
                    if e.cost.reused {
                        reused += 1;
                        assert_eq!(e.cost.forward_rows, 0);
                    } else {
                        passes += 1;
                        positions += e.cost.positions;
                        assert!(e.cost.forward_rows > 0);
                    }
                })
                .unwrap();
            (out, passes, reused, positions, steps)
        };
        let (with, passes, reused, positions, steps) = run(config.clone());
        let (without, all, none, all_positions, _) = run(config.without_reuse());
        assert_eq!(with, without, "cfg {cfg:?}");
        assert_eq!(none, 0);
        assert!(reused > 0, "no step revealed nothing (cfg {cfg:?})");
        assert_eq!(passes + reused, steps);
        assert_eq!(all, steps);
        assert!(positions < all_positions);
    }
}

/// On a backend whose tensors are not in host memory (here `Autodiff<Flex>`), a cached pass with
/// no slot left (a block filled by its caching pass) proposes nothing, CFG included.
#[test]
fn the_device_path_takes_a_pass_without_slots() {
    use burn::backend::Autodiff;
    use mdm_samplers::CacheMode;
    let config = ModelConfig::custom(300, 2, 4, 32, 64, 64);
    let flex = config.init_masked::<Flex>(5, &Default::default()).unwrap();
    let autodiff = config
        .init_masked::<Autodiff<Flex>>(5, &Default::default())
        .unwrap();
    let prompts = vec![vec![1, 2, 3, 4], vec![9, 8]];
    for cache in [CacheMode::Prefix, CacheMode::Dual] {
        let o = DecodingOptions::default()
            .with_gen_length(16)
            .with_block_length(8)
            .with_steps(2)
            .with_threshold(0.0)
            .with_cfg_scale(1.0)
            .with_cache(cache);
        let a = MaskedDiffusionSampler::new(&flex, o.clone())
            .generate(&prompts, |_| {})
            .unwrap();
        let b = MaskedDiffusionSampler::new(&autodiff, o)
            .generate(&prompts, |_| {})
            .unwrap();
        assert_eq!(a, b, "{cache:?}");
    }
}

/// A network that always proposes its mask token (a tied head can, at masked positions): the
/// random model with a large logit added to the mask id's column.
struct ProposesMask(MaskedTransformer<Flex>);

impl ProposesMask {
    fn bias(&self, logits: burn::tensor::Tensor<Flex, 2>) -> burn::tensor::Tensor<Flex, 2> {
        use mdm_models::MaskPredictor;
        let v = MaskPredictor::vocab_size(&self.0);
        let mut b = vec![0.0f32; v];
        b[self.0.mask_id()] = 100.0;
        let b = burn::tensor::Tensor::<Flex, 1>::from_data(
            burn::tensor::TensorData::new(b, [v]),
            &Default::default(),
        );
        logits + b.unsqueeze()
    }
}

impl mdm_models::MaskPredictor<Flex> for ProposesMask {
    type Cache = mdm_models::BlockCache<Flex>;
    fn mask_id(&self) -> usize {
        self.0.mask_id()
    }
    fn vocab_size(&self) -> usize {
        mdm_models::MaskPredictor::vocab_size(&self.0)
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn device(&self) -> burn::backend::flex::FlexDevice {
        mdm_models::MaskPredictor::device(&self.0)
    }
    fn logits(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 3>, mdm_models::ModelError> {
        let logits = self.0.logits(ids)?;
        let [b, n, v] = logits.dims();
        Ok(self.bias(logits.reshape([b * n, v])).reshape([b, n, v]))
    }
    fn logits_at(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        padding: Option<burn::tensor::Tensor<Flex, 2, burn::tensor::Bool>>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        Ok(self.bias(mdm_models::MaskPredictor::logits_at(
            &self.0, ids, padding, index,
        )?))
    }
    fn logits_caching(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        lengths: Option<&[usize]>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<(burn::tensor::Tensor<Flex, 2>, mdm_models::BlockCache<Flex>), mdm_models::ModelError>
    {
        let (logits, cache) = self.0.logits_caching(ids, lengths, index)?;
        Ok((self.bias(logits), cache))
    }
    fn logits_after_prefix(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        prefix: &mdm_models::BlockCache<Flex>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        Ok(self.bias(self.0.logits_after_prefix(ids, prefix, index)?))
    }
    fn logits_in_window(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        starts: &[usize],
        cache: &mut mdm_models::BlockCache<Flex>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        Ok(self.bias(self.0.logits_in_window(ids, starts, cache, index)?))
    }
}

#[test]
fn a_parallel_rule_ends_a_block_the_model_fills_with_its_mask_token() {
    // the references loop forever here; the loop ends the block after two passes that changed
    // nothing, the slots left masked
    use mdm_samplers::CacheMode;
    // the mask token inside the head (LLaDA's and Dream's layout), so it can be proposed
    let mut config = ModelConfig::custom(60, 2, 4, 32, 64, 64).with_query_groups(2);
    config.padded_vocab_size = Some(64);
    config.mask_token_id = Some(63);
    let model = ProposesMask(config.init_masked(11, &Default::default()).unwrap());
    let mask = model.0.mask_id();
    for (cache, passes) in [(CacheMode::None, 2), (CacheMode::Dual, 3)] {
        let options = DecodingOptions::default()
            .with_gen_length(8)
            .with_block_length(8)
            .with_threshold(0.9)
            .with_cache(cache);
        let out = MaskedDiffusionSampler::new(&model, options)
            .decode(&[vec![1, 2, 3]], |_| {})
            .unwrap();
        assert_eq!(out.forward_passes, passes, "{cache:?}");
        assert_eq!(&out.rows[0][3..], &[mask; 8], "{cache:?}");
    }
    // a scheduled rule runs its steps; Dream's carried threshold its steps (nothing held back)
    let scheduled = DecodingOptions::default().with_gen_length(8).with_steps(4);
    let out = MaskedDiffusionSampler::new(&model, scheduled.clone())
        .decode(&[vec![1, 2, 3]], |_| {})
        .unwrap();
    assert_eq!(out.forward_passes, 4);
    let carried = scheduled.with_threshold_carry(0.5).without_reuse();
    let out = MaskedDiffusionSampler::new(&model, carried)
        .decode(&[vec![1, 2, 3]], |_| {})
        .unwrap();
    assert_eq!(out.forward_passes, 4);
}

/// The least a network outside the library writes to be decoded: its sizes and `logits_at`
/// (`logits` and the cache hooks keep their defaults, its cache is `NoCache`).
struct Minimal(MaskedTransformer<Flex>);

impl mdm_models::MaskPredictor<Flex> for Minimal {
    type Cache = mdm_models::NoCache;
    fn mask_id(&self) -> usize {
        self.0.mask_id()
    }
    fn vocab_size(&self) -> usize {
        mdm_models::MaskPredictor::vocab_size(&self.0)
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn device(&self) -> burn::backend::flex::FlexDevice {
        mdm_models::MaskPredictor::device(&self.0)
    }
    fn logits_at(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        padding: Option<burn::tensor::Tensor<Flex, 2, burn::tensor::Bool>>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        mdm_models::MaskPredictor::logits_at(&self.0, ids, padding, index)
    }
}

#[test]
fn a_network_with_only_logits_at_decodes_and_refuses_the_caches() {
    use mdm_models::MaskPredictor;
    use mdm_samplers::CacheMode;
    let minimal = Minimal(model());
    let m = model();
    // the default `logits` (logits_at at every position) equals the network's own
    let ids = burn::tensor::Tensor::<Flex, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(vec![3i64, 4, 5, m.mask_id() as i64, 7, 8], [2, 3]),
        &Default::default(),
    );
    let own = m.logits(ids.clone()).unwrap().into_data();
    let default = minimal.logits(ids).unwrap().into_data();
    assert_eq!(own.shape, default.shape);
    assert_eq!(
        own.to_vec::<f32>().unwrap(),
        default.to_vec::<f32>().unwrap()
    );

    let prompts = vec![vec![3, 4, 5], vec![7]];
    let options = DecodingOptions::default()
        .with_gen_length(8)
        .with_block_length(4)
        .with_steps(8);
    let want = MaskedDiffusionSampler::new(&m, options.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    let got = MaskedDiffusionSampler::new(&minimal, options.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    assert_eq!(got, want);
    for cache in [CacheMode::Prefix, CacheMode::Dual] {
        let err = MaskedDiffusionSampler::new(&minimal, options.clone().with_cache(cache))
            .generate(&prompts, |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("no key/value cache"), "{err}");
    }
}
