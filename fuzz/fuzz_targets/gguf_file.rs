//! A GGUF file: header, metadata, tensor directory, then every tensor dequantized.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};
use mdm_models::gguf::Gguf;

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
});
