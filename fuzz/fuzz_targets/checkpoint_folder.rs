//! One of our checkpoint folders: `config.json` and `model.safetensors` from the input.
#![no_main]
use arbitrary::Arbitrary;
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};
use mdm_models::{checkpoint::read_meta, CausalTransformer, MaskedTransformer};

#[derive(Arbitrary, Debug)]
struct Folder {
    config: String,
    weights: Vec<u8>,
}

fuzz_target!(|input: Folder| {
    file("config.json", input.config.as_bytes());
    file("model.safetensors", &input.weights);
    let dir = scratch();
    let _ = read_meta(dir);
    let _ = MaskedTransformer::<Flex>::load(dir, &Default::default());
    let _ = CausalTransformer::<Flex>::load(dir, &Default::default());
});
