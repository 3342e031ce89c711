//! A GGUF file: header, metadata, tensor directory, then every tensor dequantized; then the same
//! file as a llama.cpp LLaDA or Dream model (config from the metadata keys, tensors by name, at
//! their stored types and quantized to Q8_0 on load).
#![no_main]
use burn::backend::Flex;
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};
use mdm_models::gguf::model::GgufModel;
use mdm_models::gguf::{GgmlType, Gguf};
use mdm_models::WeightFormat;

fuzz_target!(|data: &[u8]| {
    let path = file(scratch(), "model.gguf", data);
    if let Ok(gguf) = Gguf::open(&path) {
        for tensor in &gguf.tensors {
            // bounded: the fuzzer's inputs are small, so are the tensors they can describe
            if tensor.len() <= 1 << 20 {
                let _ = gguf.dequantize(&tensor.name);
            }
        }
    }
    if let Ok(model) = GgufModel::open(&path) {
        let c = model.config();
        // a network the input could describe (its tensors are checked against the config); the
        // sizes are the input's, so the count is checked (a file may declare any width)
        let params = (|| {
            let per_layer = c
                .n_embd
                .checked_mul(2)?
                .checked_add(c.intermediate_size.checked_mul(3)?)?
                .checked_mul(c.n_embd)?;
            c.n_layer
                .checked_mul(per_layer)?
                .checked_add(c.padded_vocab_size().checked_mul(c.n_embd)?)
        })();
        if c.n_layer <= 4 && params.is_some_and(|p| p <= 1 << 16) && c.block_size <= 1 << 12 {
            for format in [WeightFormat::Stored, WeightFormat::As(GgmlType::Q8_0)] {
                let _ = model.load::<Flex>(format, &Default::default());
            }
        }
    }
});
