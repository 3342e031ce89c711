//! Reading SMDM parity fixtures (`tests/data/smdm-parity`, or `MDM_PARITY_DIR`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// The fixture folder: `MDM_PARITY_DIR` when set (it must exist), else the repo's copy.
pub fn parity_dir() -> PathBuf {
    fixture_dir("MDM_PARITY_DIR", "smdm-parity", "manifest.json")
}

/// A fixture folder: the one `$var` names when set (it must hold `marker`: no silent fallback),
/// else `tests/data/<default>`.
pub fn fixture_dir(var: &str, default: &str, marker: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join(marker).is_file(),
                "{var}={} has no {marker} (no silent fallback)",
                dir.display()
            );
            dir
        }
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(default),
    }
}

pub fn manifest() -> serde_json::Value {
    let path = parity_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// A fixture tensor on the host: shape and values as f64 (ids and masks too).
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl HostTensor {
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&x| x as f32).collect()
    }
    pub fn i64(&self) -> Vec<i64> {
        self.values.iter().map(|&x| x as i64).collect()
    }
    pub fn bool(&self) -> Vec<bool> {
        self.values.iter().map(|&x| x != 0.0).collect()
    }
    pub fn scalar(&self) -> f64 {
        self.values[0]
    }
}

pub fn read_cases(file: &str) -> HashMap<String, HostTensor> {
    read_tensors(&parity_dir().join(file))
}

/// Every tensor of a safetensors file, on the host.
pub fn read_tensors(path: &std::path::Path) -> HashMap<String, HostTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => d.iter().map(|&b| b as f64).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    out
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// A learnable stream of ids below `vocab` (at least 38) in train and valid shards under `dir`:
/// counting modulo 12 with a seeded token every 17th position.
pub fn shards(dir: &std::path::Path, vocab: usize) -> mdm::train::DataSpec {
    use mdm::data::shards::ShardWriter;
    let stream: Vec<u32> = (0..3000u32)
        .map(|i| {
            if i % 17 == 0 {
                (i * 7) % 37 + 1
            } else {
                (i % 12) + 1
            }
        })
        .collect();
    let mut train = ShardWriter::new(dir, "train", 512, vocab, 0).unwrap();
    train.add_document(&stream[..2500]).unwrap();
    let mut valid = ShardWriter::new(dir, "valid", 512, vocab, 0).unwrap();
    valid.add_document(&stream[2500..]).unwrap();
    mdm::train::DataSpec::Shards {
        train: train.finish().unwrap(),
        valid: valid.finish().unwrap(),
    }
}

/// Fine-tunes the Hugging Face folder `src` on `dataset` (three steps, prompts kept), checks the
/// weights moved, writes the result back as a folder like `src` and checks it reads back to the
/// fine-tuned model's logits.
pub fn fine_tune_and_write_back(src: &std::path::Path, dataset: mdm::data::sft::SftDataset) {
    use mdm::backend::{self, Default as B};
    use mdm::burn::tensor::{Int, Tensor, TensorData};
    use mdm::models::{MaskPredictor, MaskedTransformer};
    use mdm::train::{train_objective, DataSpec, Objective, RunOptions, TrainConfig};

    let probe = |model: &MaskedTransformer<B>| -> Vec<f32> {
        let m = model.mask_id() as i64;
        let ids = vec![5i64, 9, m, 17, m, m, 40, 3];
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 8]), &model.device());
        model
            .logits(input)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    let config = mdm::models::hf_model_config(src).unwrap();
    let train = TrainConfig {
        objective: Objective::Mdm,
        seq_len: dataset.seq_len,
        micro_batch: 2,
        steps: Some(3),
        lr: 1e-2,
        warmup_steps: 0,
        save_every: 0,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions {
        init_from: Some(src.to_path_buf()),
        ..Default::default()
    };
    let summary = train_objective::<mdm::backend::Training>(
        &config,
        &train,
        DataSpec::Sft(dataset),
        out.path(),
        &options,
        &[backend::device()],
    )
    .unwrap();
    assert!(summary.last_loss.is_finite());
    let device = backend::device();
    let tuned = MaskedTransformer::<B>::load(summary.model_dir.unwrap(), &device).unwrap();
    assert_eq!(
        tuned.config(),
        &config,
        "the family's network, flags included"
    );
    let before = MaskedTransformer::<B>::load_hf(src, &device).unwrap();
    assert_ne!(
        probe(&tuned),
        probe(&before),
        "three steps at lr 1e-2 move the weights"
    );
    let hf = out.path().join("hf");
    tuned.save_hf_like(src, &hf).unwrap();
    let reread = MaskedTransformer::<B>::load_hf(&hf, &device).unwrap();
    let stored_f32 = std::fs::read_to_string(src.join("config.json"))
        .map(|c| !c.contains("float16"))
        .unwrap_or(true);
    if stored_f32 {
        assert_eq!(probe(&reread), probe(&tuned));
    } else {
        // a half-precision folder holds the trained weights rounded: the model read back is the
        // one trained up to that rounding, far closer to it than to the model before training
        let (reread, tuned, before) = (probe(&reread), probe(&tuned), probe(&before));
        let off = max_abs_diff(&reread, &tuned);
        let moved = max_abs_diff(&tuned, &before);
        assert!(
            off < 0.05 * moved,
            "read back {off:e} off; training moved {moved:e}"
        );
    }
}
