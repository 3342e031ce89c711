//! The fine-tuning JSONL reader and the evaluation task reader on the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};

fuzz_target!(|data: &[u8]| {
    let path = file(scratch(), "data.jsonl", data);
    let _ = mdm_data::sft::read_jsonl(&path);
    let _ = mdm_eval::tasks::read_task("fuzz", &path);
});
