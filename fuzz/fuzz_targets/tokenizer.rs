//! Loading a tokenizer.json (and, when it loads, encoding and decoding a short text with it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_data::Tokenizer;
use mdm_fuzz::{file, scratch};

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::from_file(file(scratch(), "tokenizer.json", data)) {
        if let Ok(ids) = tok.encode("In the beginning", false) {
            let _ = tok.decode(&ids);
        }
        let _ = tok.eos_id();
    }
});
