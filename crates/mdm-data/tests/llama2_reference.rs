//! The Llama-2 tokenizer of `../shared/data/tokenizers/llama2/` reproduces the ids python
//! `sentencepiece` gives on all 200 reference texts. Skips with a notice when `../shared` is absent.

use std::path::PathBuf;

use mdm_data::Tokenizer;

fn shared_llama2() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/tokenizers/llama2");
    if dir.join("tokenizer.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} not found (needs ../shared/data)",
            dir.join("tokenizer.json").display()
        );
        None
    }
}

#[test]
fn llama2_tokenizer_matches_sentencepiece_on_200_texts() {
    let Some(dir) = shared_llama2() else { return };
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 32_000);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), 2);
    let lines = std::fs::read_to_string(dir.join("reference_ids.jsonl")).unwrap();
    let mut checked = 0;
    for (i, line) in lines.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let expected: Vec<u32> = v["ids_with_bos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, expected, "line {}: {text:?}", i + 1);
        checked += 1;
    }
    assert_eq!(checked, 200);
}
