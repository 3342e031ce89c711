//! An SMDM safetensors file, loaded as the masked model and as the baseline of a tiny config.
#![no_main]
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch, tiny_config};
use mdm_models::{CausalTransformer, MaskedTransformer};

fuzz_target!(|data: &[u8]| {
    let path = file(scratch(), "model.safetensors", data);
    let config = tiny_config();
    let _ = MaskedTransformer::<Flex>::load_smdm(&path, &config, &Default::default());
    let _ = CausalTransformer::<Flex>::load_smdm(&path, &config, &Default::default());
});
