//! A Hugging Face folder: `config.json`, `model.safetensors.index.json` (an empty part: none), then
//! the shards (`model-0000k-of-0000n.safetensors`, or `model.safetensors` without an index),
//! opened, checked and loaded as LLaDA.
#![no_main]
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, parts, scratch};
use mdm_models::MaskedTransformer;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let dir = scratch();
    file(dir, "config.json", parts[0]);
    let index = parts.get(1).copied().unwrap_or_default();
    let shards = parts.get(2..).unwrap_or_default();
    if index.is_empty() {
        if let Some(first) = shards.first() {
            file(dir, "model.safetensors", first);
        }
    } else {
        file(dir, "model.safetensors.index.json", index);
        for (k, shard) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards.len());
            file(dir, &name, shard);
        }
    }
    let _ = MaskedTransformer::<Flex>::load_hf(dir, &Default::default());
});
