//! The training config, as TOML and as JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};
use mdm_train::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let _ = TrainConfig::from_file(file(scratch(), "train.toml", data));
    let _ = TrainConfig::from_file(file(scratch(), "train.json", data));
});
