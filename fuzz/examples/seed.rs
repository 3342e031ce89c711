//! Writes the generated part of the seed corpus (`fuzz/seed.sh` copies the rest): a tiny masked
//! model and baseline as SMDM files and as our folders, a small shard, and tiny llama.cpp-style
//! LLaDA and Dream GGUF files (f32 and f16 tensors, the converter's names and keys).
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed -- fuzz/corpus`

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use mdm_data::shards::ShardWriter;
use mdm_fuzz::{tiny_config, SEPARATOR};
use mdm_models::gguf::quant::quantize;
use mdm_models::gguf::GgmlType;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

/// A GGUF v3 file: metadata (u32, f32, bool or string values), then f32/f16 tensors of
/// `[rows, cols]` (GGUF lists the inner dimension first), data aligned to 32 bytes.
fn gguf(meta: &[(&str, Meta)], tensors: &[(String, Vec<usize>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Meta::Str(v) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, v);
            }
        }
    }
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (k, (name, shape, half)) in tensors.iter().enumerate() {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend((if *half { 1u32 } else { 0 }).to_le_bytes());
        out.extend(offset.to_le_bytes());
        let n: usize = shape.iter().product();
        // small seeded values; a norm's gains 1
        let values: Vec<f32> = (0..n)
            .map(|i| match shape.len() {
                1 => 1.0,
                _ => ((i * 7 + k * 13) % 17) as f32 / 40.0 - 0.2,
            })
            .collect();
        let dtype = if *half { GgmlType::F16 } else { GgmlType::F32 };
        data.extend(quantize(dtype, &values).expect("f32 and f16 take any length"));
        data.resize(data.len().next_multiple_of(32), 0);
        offset = data.len() as u64;
    }
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend(data);
    out
}

enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
}

/// A tiny model file as llama.cpp's converter names it: vocabulary 40, width 8, one layer, two
/// query heads over one key/value head, SwiGLU 16, tied head (Dream: q/k/v biases).
fn tiny_gguf(arch: &'static str, half: bool) -> Vec<u8> {
    let key = |k: &str| -> &'static str { Box::leak(format!("{arch}.{k}").into_boxed_str()) };
    let meta = [
        ("general.architecture", Meta::Str(arch)),
        (key("context_length"), Meta::U32(64)),
        (key("embedding_length"), Meta::U32(8)),
        (key("block_count"), Meta::U32(1)),
        (key("feed_forward_length"), Meta::U32(16)),
        (key("attention.head_count"), Meta::U32(2)),
        (key("attention.head_count_kv"), Meta::U32(1)),
        (key("attention.layer_norm_rms_epsilon"), Meta::F32(1e-5)),
        (key("rope.freq_base"), Meta::F32(10_000.0)),
        ("tokenizer.ggml.mask_token_id", Meta::U32(39)),
        ("diffusion.shift_logits", Meta::Bool(arch == "dream")),
    ];
    let (d, kv, hidden, vocab) = (8, 4, 16, 40);
    let mut tensors = vec![
        ("token_embd.weight".to_string(), vec![vocab, d], half),
        ("output_norm.weight".to_string(), vec![d], false),
    ];
    let blk = |n: &str| format!("blk.0.{n}");
    for (name, shape) in [
        ("attn_norm.weight", vec![d]),
        ("attn_q.weight", vec![d, d]),
        ("attn_k.weight", vec![kv, d]),
        ("attn_v.weight", vec![kv, d]),
        ("attn_output.weight", vec![d, d]),
        ("ffn_norm.weight", vec![d]),
        ("ffn_gate.weight", vec![hidden, d]),
        ("ffn_up.weight", vec![hidden, d]),
        ("ffn_down.weight", vec![d, hidden]),
    ] {
        let is_half = half && shape.len() == 2;
        tensors.push((blk(name), shape, is_half));
    }
    if arch == "dream" {
        for (name, n) in [("attn_q.bias", d), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
            tensors.push((blk(name), vec![n], false));
        }
    }
    gguf(&meta, &tensors)
}

fn main() {
    let corpus = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let config = tiny_config();
    let device = Default::default();
    let tmp = tempfile::tempdir().expect("temp");
    let masked = config.init_masked::<Flex>(1, &device).expect("init");
    let causal = config.init_causal::<Flex>(1, &device).expect("init");
    for (name, save) in [
        (
            "masked",
            Box::new(|d: &Path| masked.save(d)) as Box<dyn Fn(&Path) -> _>,
        ),
        ("causal", Box::new(|d: &Path| causal.save(d))),
    ] {
        let dir = tmp.path().join(name);
        save(&dir).expect("save");
        let weights = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let meta = std::fs::read(dir.join("config.json")).expect("config");
        write(&corpus.join("smdm_checkpoint"), name, &weights);
        let folder = [meta.as_slice(), SEPARATOR, weights.as_slice()].concat();
        write(&corpus.join("checkpoint_folder"), name, &folder);
    }
    for arch in ["llada", "dream"] {
        for half in [false, true] {
            let name = format!("{arch}-{}", if half { "f16" } else { "f32" });
            write(&corpus.join("gguf_file"), &name, &tiny_gguf(arch, half));
        }
    }
    let mut writer = ShardWriter::new(tmp.path(), "train", 64, 32, 0).expect("writer");
    writer
        .add_document(&(1..150).map(|i| i % 31 + 1).collect::<Vec<u32>>())
        .expect("document");
    for (k, path) in writer.finish().expect("finish").iter().enumerate() {
        let shard = std::fs::read(path).expect("shard");
        // block 8, vocabulary 32, shuffled globally, rank 0, four reads, second read at 5
        let input = [&[8u8, 32, 0, 1, 4, 5][..], &shard].concat();
        write(&corpus.join("shard_loader"), &format!("shard{k}"), &input);
    }
}
