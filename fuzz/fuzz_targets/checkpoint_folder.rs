//! One of our checkpoint folders: `config.json` then `model.safetensors` (see `parts`).
#![no_main]
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, parts, scratch};
use mdm_models::{checkpoint::read_meta, CausalTransformer, MaskedTransformer};

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let dir = scratch();
    file(dir, "config.json", parts[0]);
    if let Some(weights) = parts.get(1) {
        file(dir, "model.safetensors", weights);
    }
    let _ = read_meta(dir);
    let _ = MaskedTransformer::<Flex>::load(dir, &Default::default());
    let _ = CausalTransformer::<Flex>::load(dir, &Default::default());
});
