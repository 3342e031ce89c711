//! Causal KV cache, checkpoint round trips and checkpoint errors.

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use mdm_models::{CausalTransformer, KvCache, MaskedTransformer, ModelConfig, ModelError};
use safetensors::Dtype;

type B = Flex;

fn tiny() -> ModelConfig {
    ModelConfig::custom(100, 2, 4, 32, 64, 48).with_query_groups(2)
}

fn ids(rows: &[Vec<i32>]) -> Tensor<B, 2, Int> {
    let (b, l) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, l]), &Default::default())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let config = tiny();
    let model: CausalTransformer<B> = config.init_causal(3, &Default::default()).unwrap();
    let seq: Vec<Vec<i32>> = vec![
        (0..20).map(|i| i * 7 % 100).collect(),
        (0..20).map(|i| i * 13 % 97).collect(),
    ];
    let full = model.forward(ids(&seq)).unwrap();
    let v = config.padded_vocab_size();
    // a prompt of 5 in one pass, then one token at a time, then a chunk of 4
    let mut cache = KvCache::new(&model);
    let mut parts = vec![];
    let chunk =
        |a: usize, b: usize| -> Vec<Vec<i32>> { seq.iter().map(|r| r[a..b].to_vec()).collect() };
    parts.push(model.forward_cached(ids(&chunk(0, 5)), &mut cache).unwrap());
    for p in 5..16 {
        parts.push(
            model
                .forward_cached(ids(&chunk(p, p + 1)), &mut cache)
                .unwrap(),
        );
    }
    parts.push(
        model
            .forward_cached(ids(&chunk(16, 20)), &mut cache)
            .unwrap(),
    );
    assert_eq!(cache.len(), 20);
    let incremental = Tensor::cat(parts, 1);
    assert_eq!(incremental.dims(), [2, 20, v]);
    let d = max_diff(&host(full), &host(incremental));
    assert!(d < 1e-4, "cached vs full logits differ by {d}");
    // a batch of another size is an error and leaves the cache as it was
    let err = model
        .forward_cached(ids(&[vec![1]]), &mut cache)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::CacheBatch {
                cached: 2,
                input: 1
            }
        ),
        "{err}"
    );
    assert_eq!(cache.len(), 20);
    let next = model
        .forward_cached(ids(&[vec![1], vec![2]]), &mut cache)
        .unwrap();
    assert_eq!(next.dims(), [2, 1, v]);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn causal_model_ignores_the_future_and_masked_model_does_not() {
    let config = tiny();
    let device = Default::default();
    let causal: CausalTransformer<B> = config.init_causal(1, &device).unwrap();
    let masked: MaskedTransformer<B> = config.init_masked(1, &device).unwrap();
    let a = ids(&[vec![1, 2, 3, 4, 5, 6]]);
    let b = ids(&[vec![1, 2, 3, 9, 9, 9]]);
    let first3 = |t: Tensor<B, 3>| host(t.slice([0..1, 0..3]));
    assert!(
        max_diff(
            &first3(causal.forward(a.clone()).unwrap()),
            &first3(causal.forward(b.clone()).unwrap())
        ) < 1e-6
    );
    assert!(
        max_diff(
            &first3(masked.forward(a).unwrap()),
            &first3(masked.forward(b).unwrap())
        ) > 1e-4
    );
}

#[test]
fn initialisation_statistics_and_seed() {
    let config = ModelConfig::custom(1000, 4, 4, 128, 256, 32);
    let device = Default::default();
    let m: MaskedTransformer<B> = config.init_masked(7, &device).unwrap();
    let std = |v: &[f32]| {
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let c = 128f64;
    let qkv = host(m.net.blocks[0].attn.qkv.weight().unwrap());
    let proj = host(m.net.blocks[0].attn.proj.weight().unwrap());
    assert!((std(&qkv) / (2.0 / (5.0 * c)).sqrt() - 1.0).abs() < 0.02);
    assert!((std(&proj) / (1.0 / c.sqrt() / 4.0) - 1.0).abs() < 0.03);
    assert!(host(m.net.ln_f.gain.val()).iter().all(|&g| g == 1.0));
    let again: MaskedTransformer<B> = config.init_masked(7, &device).unwrap();
    assert_eq!(qkv, host(again.net.blocks[0].attn.qkv.weight().unwrap()));
    assert_eq!(m.net.wte.weight.dims(), [1025, 128]);
}

#[test]
fn checkpoint_round_trip_and_atomic_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny();
    let device = Default::default();
    let model: MaskedTransformer<B> = config.init_masked(5, &device).unwrap();
    model.save(dir.path().join("ckpt")).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path().join("ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // the same weights give the same bytes, save after save (hash-map order must not leak in)
    let first = std::fs::read(dir.path().join("ckpt/model.safetensors")).unwrap();
    for i in 0..8 {
        let again = dir.path().join(format!("again{i}"));
        model.save(&again).unwrap();
        let bytes = std::fs::read(again.join("model.safetensors")).unwrap();
        assert!(bytes == first, "save {i} wrote other bytes");
    }
    let loaded = MaskedTransformer::<B>::load(dir.path().join("ckpt"), &device).unwrap();
    assert_eq!(loaded.config(), model.config());
    let x = ids(&[vec![1, 2, 100, 4, 100]]);
    assert_eq!(
        host(model.forward(x.clone()).unwrap()),
        host(loaded.forward(x.clone()).unwrap())
    );
    // the weights file is an SMDM file: it loads through the SMDM path too
    let smdm = MaskedTransformer::<B>::load_smdm(
        dir.path().join("ckpt/model.safetensors"),
        &config,
        &device,
    )
    .unwrap();
    assert_eq!(
        host(model.forward(x).unwrap()),
        host(smdm.forward(ids(&[vec![1, 2, 100, 4, 100]])).unwrap())
    );
    // a masked checkpoint is not a causal one
    let err = CausalTransformer::<B>::load(dir.path().join("ckpt"), &device).unwrap_err();
    assert!(matches!(err, ModelError::Config { .. }), "{err}");

    let causal: CausalTransformer<B> = config.init_causal(5, &device).unwrap();
    causal.save(dir.path().join("arm")).unwrap();
    let back = CausalTransformer::<B>::load(dir.path().join("arm"), &device).unwrap();
    let y = ids(&[vec![3, 4, 5]]);
    assert_eq!(
        host(causal.forward(y.clone()).unwrap()),
        host(back.forward(y).unwrap())
    );
}

type HostTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Writes `tensors` (skipping `skip`, adding `extra`) to a safetensors file, each stored as the dtype
/// `dtype_of(name)` says (BF16/F16 converted; any other dtype gets the f32 bytes under that label).
fn write_file(
    path: &std::path::Path,
    tensors: &HostTensors,
    skip: &str,
    extra: Option<(&str, Vec<usize>, Vec<f32>)>,
    dtype_of: impl Fn(&str) -> Dtype,
) {
    let encode = |dtype: Dtype, v: &[f32]| -> Vec<u8> {
        match dtype {
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    };
    let extra = extra.map(|(k, s, v)| (k.to_string(), s, v));
    let encoded: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .chain(extra.as_ref())
        .filter(|(k, _, _)| k != skip)
        .map(|(k, s, v)| {
            let dtype = dtype_of(k);
            (k.clone(), s.clone(), dtype, encode(dtype, v))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
        .iter()
        .map(|(k, s, d, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// The tensors of a valid checkpoint of `config`, as SMDM names → (shape, f32 values).
fn smdm_tensors(config: &ModelConfig) -> HostTensors {
    let dir = tempfile::tempdir().unwrap();
    let model: MaskedTransformer<B> = config.init_masked(0, &Default::default()).unwrap();
    model.save(dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.shape().to_vec(),
                v.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn bf16_and_f16_checkpoints_load() {
    let config = tiny();
    let tensors = smdm_tensors(&config);
    let dir = tempfile::tempdir().unwrap();
    for dtype in [Dtype::BF16, Dtype::F16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        write_file(&path, &tensors, "", None, |_| dtype);
        let m = MaskedTransformer::<B>::load_smdm(&path, &config, &Default::default()).unwrap();
        let gain = host(m.net.ln_f.gain.val());
        assert!(gain.iter().all(|&g| g == 1.0), "{dtype:?}");
        let w = host(m.net.wte.weight.val());
        let orig = &tensors
            .iter()
            .find(|t| t.0 == "transformer.wte.weight")
            .unwrap()
            .2;
        assert!(max_diff(&w, orig) < 1e-2, "{dtype:?}");
    }
}

#[test]
fn checkpoint_errors_name_the_key_and_shapes() {
    let config = tiny();
    let tensors = smdm_tensors(&config);
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let f32_all = |_: &str| Dtype::F32;

    // missing key
    let path = dir.path().join("missing.safetensors");
    write_file(
        &path,
        &tensors,
        "transformer.h.1.attn.proj.weight",
        None,
        f32_all,
    );
    let err = MaskedTransformer::<B>::load_smdm(&path, &config, &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingKey { key, .. } if key == "transformer.h.1.attn.proj.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("missing.safetensors"));

    // unexpected key
    let path = dir.path().join("extra.safetensors");
    let extra = ("transformer.h.9.extra", vec![2], vec![0.0, 1.0]);
    write_file(&path, &tensors, "", Some(extra), f32_all);
    let err = MaskedTransformer::<B>::load_smdm(&path, &config, &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedKey { key, found, .. } if key == "transformer.h.9.extra" && found == &vec![2]),
        "{err}"
    );

    // shape mismatch: a config with a different width
    let path = dir.path().join("ok.safetensors");
    write_file(&path, &tensors, "", None, f32_all);
    let wider = ModelConfig::custom(100, 2, 4, 64, 64, 48).with_query_groups(2);
    let err = MaskedTransformer::<B>::load_smdm(&path, &wider, &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { key, expected, found, .. } if key == "transformer.wte.weight" && expected == &vec![129, 64] && found == &vec![129, 32]),
        "{msg}"
    );
    // the causal model needs V rows in the embedding, not V + 1
    let err = CausalTransformer::<B>::load_smdm(&path, &config, &device).unwrap_err();
    assert!(matches!(&err, ModelError::ShapeMismatch { .. }), "{err}");

    // unsupported dtype and garbage
    let path = dir.path().join("int.safetensors");
    write_file(&path, &tensors, "", None, |k| {
        if k == "lm_head.weight" {
            Dtype::I32
        } else {
            Dtype::F32
        }
    });
    let err = MaskedTransformer::<B>::load_smdm(&path, &config, &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::Dtype { key, .. } if key == "lm_head.weight"),
        "{err}"
    );
    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(matches!(
        MaskedTransformer::<B>::load_smdm(&path, &config, &device).unwrap_err(),
        ModelError::Format { .. }
    ));
    assert!(matches!(
        MaskedTransformer::<B>::load_smdm(dir.path().join("nope"), &config, &device).unwrap_err(),
        ModelError::Io { .. }
    ));
}

#[test]
fn too_long_sequences_are_errors() {
    let config = tiny();
    let model: MaskedTransformer<B> = config.init_masked(0, &Default::default()).unwrap();
    let long = ids(&[vec![1; 49]]);
    assert!(matches!(
        model.forward(long).unwrap_err(),
        ModelError::SequenceTooLong {
            len: 49,
            block_size: 48,
            ..
        }
    ));
}

#[test]
fn half_precision_logits_stay_close_to_f32() {
    use burn::tensor::DType;
    use mdm_models::Precision;
    let device = Default::default();
    let config = tiny();
    let masked: MaskedTransformer<B> = config.init_masked(5, &device).unwrap();
    let causal: CausalTransformer<B> = config.init_causal(5, &device).unwrap();
    let x = ids(&[
        vec![1, 2, 100, 4, 100, 7, 8, 9],
        vec![3, 100, 100, 6, 5, 4, 3, 2],
    ]);
    let y = ids(&[vec![1, 2, 3, 4, 5, 6, 7, 8], vec![9, 8, 7, 6, 5, 4, 3, 2]]);
    let want_masked = host(masked.forward(x.clone()).unwrap());
    let want_causal = host(causal.forward(y.clone()).unwrap());
    let scale = want_masked.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // measured (flex): f16 within 1.4e-3 of the logits' scale, bf16 within 9.5e-3 (8 mantissa bits)
    for (precision, dtype, tol) in [
        (Precision::F16, DType::F16, 5e-3),
        (Precision::Bf16, DType::BF16, 3e-2),
    ] {
        let half = masked.clone().with_precision(precision);
        assert_eq!(
            half.net.lm_head.as_ref().unwrap().weight().unwrap().dtype(),
            dtype,
            "{precision}: weights cast"
        );
        let logits = half.forward(x.clone()).unwrap();
        assert_eq!(logits.dtype(), DType::F32, "{precision}: logits are f32");
        let diff = max_diff(&host(logits), &want_masked) / scale;
        eprintln!("{precision}: masked logits within {diff:.2e} of the scale {scale:.3}");
        assert!(
            diff < tol && diff > 0.0,
            "{precision}: masked logits off by {diff}"
        );
        let half = causal.clone().with_precision(precision);
        let diff = max_diff(&host(half.forward(y.clone()).unwrap()), &want_causal) / scale;
        assert!(
            diff < tol && diff > 0.0,
            "{precision}: causal logits off by {diff}"
        );
    }
    assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!(matches!(
        "f8".parse::<Precision>(),
        Err(ModelError::Config { .. })
    ));
}
