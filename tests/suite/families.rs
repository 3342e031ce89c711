//! Loading, writing back and training of families beyond their parity fixtures, on the CPU
//! (not in the wgpu suites: what they check does not depend on the backend, and the tied Dream set
//! of `parity_dream` trains a tied head on every backend).

use std::path::PathBuf;

use crate::common;
use crate::parity_llada::id_rows;
use mdm::backend::{self, Default as B};
use mdm::models::MaskedTransformer;

/// A LLaDA folder whose head is the embedding (`weight_tying`: the tiny f16 folder llama.cpp's
/// converter read for `tests/data/gguf-parity`): one matrix among the parameters, written back byte for
/// byte, fine-tuned as one matrix and written back as the tied folder it came from.
#[test]
fn a_tied_llada_folder_holds_one_matrix_and_is_written_back_and_fine_tuned() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf-parity/llada/hf");
    let config = mdm::models::hf_model_config(&src).unwrap();
    assert!(config.tie_embeddings, "the folder ties its head");
    let model = MaskedTransformer::<B>::load_hf(&src, &backend::device()).unwrap();
    // the head is no parameter: none (the logits multiply the embedding), or on a backend that
    // packs weights (the lookup table then kept in half precision) the stored matrix multiplied
    // where it lies, written back as the embedding
    let packs = <B as mdm::kernels::Kernels>::PACKS_WEIGHTS;
    assert_eq!(
        model.net.lm_head.is_some(),
        packs,
        "a head beside the embedding"
    );
    if let Some(head) = &model.net.lm_head {
        assert!(
            head.weight().is_none() && head.packed_weight().is_some(),
            "a tied head kept as a parameter"
        );
    }
    let untied = mdm::models::ModelConfig {
        tie_embeddings: false,
        ..config.clone()
    };
    assert_eq!(
        untied.masked_params() - config.masked_params(),
        config.padded_vocab_size() * config.n_embd
    );
    let out = tempfile::tempdir().unwrap();
    let copy = out.path().join("llada");
    model.save_hf_like(&src, &copy).unwrap();
    for name in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(src.join(name)).unwrap(),
            std::fs::read(copy.join(name)).unwrap(),
            "{name}"
        );
    }
    common::fine_tune_and_write_back(&src, id_rows(&config));
}
