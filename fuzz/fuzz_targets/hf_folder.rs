//! A Hugging Face folder: `config.json`, one or two safetensors shards, and an optional
//! `model.safetensors.index.json`, opened, checked and loaded as LLaDA.
#![no_main]
use arbitrary::Arbitrary;
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, remove, scratch};
use mdm_models::MaskedTransformer;

#[derive(Arbitrary, Debug)]
struct Folder {
    config: String,
    index: Option<String>,
    first: Vec<u8>,
    second: Option<Vec<u8>>,
}

fuzz_target!(|input: Folder| {
    file("config.json", input.config.as_bytes());
    match &input.index {
        Some(index) => {
            remove("model.safetensors");
            file("model.safetensors.index.json", index.as_bytes());
            file("model-00001-of-00002.safetensors", &input.first);
            match &input.second {
                Some(second) => file("model-00002-of-00002.safetensors", second),
                None => {
                    remove("model-00002-of-00002.safetensors");
                    scratch().to_path_buf()
                }
            };
        }
        None => {
            remove("model.safetensors.index.json");
            file("model.safetensors", &input.first);
        }
    }
    let _ = MaskedTransformer::<Flex>::load_hf(scratch(), &Default::default());
});
