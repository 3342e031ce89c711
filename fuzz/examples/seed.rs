//! Writes the generated part of the seed corpus (`fuzz/seed.sh` copies the rest): a tiny masked
//! model and baseline as SMDM files and as our folders, and a small shard.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed -- fuzz/corpus`

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use mdm_data::shards::ShardWriter;
use mdm_fuzz::{tiny_config, SEPARATOR};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed file");
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
