//! What the trainer's tests share: a tiny corpus in shards, and weight comparisons.

use std::path::{Path, PathBuf};

use mdm_data::shards::ShardWriter;

/// Vocabulary of the corpus.
pub const VOCAB: usize = 48;

/// Shards of a learnable stream: an arithmetic pattern with a little seeded noise.
pub fn shards(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let stream: Vec<u32> = (0..6000u32)
        .map(|i| {
            if i % 17 == 0 {
                (i * 7) % 47 + 1
            } else {
                (i % 12) + 1
            }
        })
        .collect();
    let mut train = ShardWriter::new(dir, "train", 512, VOCAB, 0).unwrap();
    train.add_document(&stream[..5000]).unwrap();
    let mut valid = ShardWriter::new(dir, "valid", 512, VOCAB, 0).unwrap();
    valid.add_document(&stream[5000..]).unwrap();
    (train.finish().unwrap(), valid.finish().unwrap())
}

/// Largest absolute difference between the weights of two checkpoint folders.
pub fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (fa, fb) = (
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap(),
    );
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&fa).unwrap(),
        safetensors::SafeTensors::deserialize(&fb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b);
    let floats = |v: safetensors::tensor::TensorView| -> Vec<f32> {
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    names
        .iter()
        .map(|n| {
            let (x, y) = (floats(ta.tensor(n).unwrap()), floats(tb.tensor(n).unwrap()));
            x.iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs() as f64)
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}
