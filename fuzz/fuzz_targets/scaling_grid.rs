//! The scaling sweep's grid (TOML) and its results table (CSV).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_fuzz::{file, scratch};
use mdm_train::scaling::{read_results, ScalingGrid};

fuzz_target!(|data: &[u8]| {
    let _ = ScalingGrid::from_file(&file(scratch(), "grid.toml", data));
    let _ = read_results(&file(scratch(), "results.csv", data));
});
