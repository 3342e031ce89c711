//! What the programs print when a user makes a mistake: the message and its causes, not a stack
//! trace, even with `RUST_BACKTRACE` set.

use std::process::Command;

use crate::kill::example;

#[test]
fn a_users_mistake_prints_its_causes_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let mystery = dir.path().join("mystery-model");
    std::fs::create_dir(&mystery).unwrap();
    std::fs::write(mystery.join("config.json"), r#"{"model_type": "mystery"}"#).unwrap();
    for (program, args, named) in [
        (
            "predict",
            vec!["--checkpoint", missing.to_str().unwrap(), "--ids", "1 ?"],
            "no-such-folder",
        ),
        (
            "generate",
            vec!["--hf", mystery.to_str().unwrap(), "--prompt", "a"],
            "mystery",
        ),
    ] {
        let out = Command::new(example(program))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{program}: {stderr}");
        assert!(stderr.starts_with("error: "), "{program}: {stderr}");
        assert!(
            stderr.contains(named),
            "{program} names what was wrong: {stderr}"
        );
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("Backtrace"),
            "{program}: {stderr}"
        );
    }
}
