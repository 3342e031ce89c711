//! Training across machines on MPI (feature `mpi`), the way clusters start it: `pretrain` run by
//! `mpirun` as two ranks on this machine.
//!
//! - two ranks (one device each, then two devices each) make the updates one device makes;
//! - a two-rank run stopped and resumed ends with the bytes of an uninterrupted one;
//! - a rank killed mid-run stops the other with an error naming it, within the timeout, and the
//!   run resumes from the last checkpoint.
//!
//! Needs the examples built with the feature: `cargo build --release --features mpi --examples`,
//! then `cargo test --release --features mpi --test mpi` (`.ci/run` does both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A program of the examples built beside this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the examples with the feature first (cargo build --release \
         --features mpi --examples)",
        path.display()
    );
    path
}

/// A small corpus `prepare`d into shards with a BPE tokenizer.
fn prepared(root: &Path) -> PathBuf {
    let words = [
        "the", "king", "a", "shepherd", "saw", "kept", "his", "sheep", "and", "sang",
    ];
    let mut text = String::new();
    for i in 0..3000usize {
        for j in 0..8 {
            text.push_str(words[(i * 7 + j * j * 3 + i / 5) % words.len()]);
            text.push(' ');
        }
        text.push('\n');
    }
    let corpus = root.join("corpus.txt");
    std::fs::write(&corpus, text).expect("corpus written");
    let data = root.join("data");
    let out = Command::new(example("prepare"))
        .args(["--input".as_ref(), corpus.as_os_str()])
        .args(["--out".as_ref(), data.as_os_str()])
        .args([
            "--vocab-size",
            "300",
            "--split",
            "lines",
            "--valid-fraction",
            "0.05",
        ])
        .output()
        .expect("prepare runs");
    assert!(out.status.success(), "prepare failed: {}", text_of(&out));
    data
}

fn text_of(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `pretrain` of a tiny MDM on `data` into `out`: `steps` steps of 4 micro-batches, validation and
/// a checkpoint every 3.
fn pretrain_args(data: &Path, out: &Path, steps: usize) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--steps".into(),
        steps.to_string(),
    ];
    for a in [
        "--model",
        "mdm",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--seq-len",
        "32",
        "--micro-batch",
        "2",
        "--grad-accum",
        "4",
        "--eval-every",
        "3",
        "--eval-blocks",
        "4",
        "--eval-mc",
        "1",
        "--save-every",
        "3",
        "--no-progress",
    ] {
        args.push(a.into());
    }
    args
}

/// `mpirun` for `ranks` ranks of `pretrain --mpi` (as root and on 2 cores: allowed and
/// oversubscribed), each rank's process in its own session of the test.
fn mpirun(ranks: usize, extra: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &ranks.to_string(),
    ]);
    command.args(extra);
    command.arg(example("pretrain"));
    command.arg("--mpi");
    // one core each: two ranks on this machine share it as two machines would not
    command.env("RAYON_NUM_THREADS", "1");
    command
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = text_of(&out);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Every tensor of a model folder's safetensors, as f32.
fn tensors(model: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(model.join("model.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest absolute difference between two models' weights.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    let mut max = 0f32;
    for (name, x) in &a {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{name}");
        for (u, v) in x.iter().zip(y) {
            max = max.max((u - v).abs());
        }
    }
    max
}

fn validation_rows(out: &Path) -> usize {
    std::fs::read_to_string(out.join("validation.csv"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn two_ranks_update_as_one_device_and_resume_exactly() {
    let root = tempfile::tempdir().expect("a temporary folder");
    let data = prepared(root.path());
    let one = root.path().join("one");
    let mut single = Command::new(example("pretrain"));
    single.args(pretrain_args(&data, &one, 6));
    run(&mut single, "one device");

    let two = root.path().join("two");
    let log = run(
        mpirun(2, &[]).args(pretrain_args(&data, &two, 6)),
        "two ranks",
    );
    let diff = max_difference(&one.join("model"), &two.join("model"));
    assert!(
        diff < 1e-6,
        "two ranks differ from one device by {diff}:\n{log}"
    );
    assert!(validation_rows(&two) >= 2, "rank 0 validated:\n{log}");
    assert!(two.join("checkpoints").is_dir(), "rank 0 checkpointed");

    // two devices in each rank: four peers, burn-collective inside each rank
    let four = root.path().join("four");
    let log = run(
        mpirun(2, &[])
            .args(pretrain_args(&data, &four, 6))
            .args(["--devices", "cpu:2"]),
        "two ranks of two devices",
    );
    let diff = max_difference(&one.join("model"), &four.join("model"));
    assert!(
        diff < 1e-6,
        "2 x 2 peers differ from one device by {diff}:\n{log}"
    );

    // stopped after 4 steps (checkpoint at 3), then resumed: the next invocation starts at 3
    let resumed = root.path().join("resumed");
    run(
        mpirun(2, &[])
            .args(pretrain_args(&data, &resumed, 6))
            .args(["--stop-after", "4"]),
        "two ranks, stopped",
    );
    assert!(!resumed.join("model").exists(), "stopped before the end");
    run(
        mpirun(2, &[])
            .args(pretrain_args(&data, &resumed, 6))
            .arg("--resume"),
        "two ranks, resumed",
    );
    assert_eq!(
        std::fs::read(two.join("model").join("model.safetensors")).expect("model"),
        std::fs::read(resumed.join("model").join("model.safetensors")).expect("model"),
        "the resumed two-rank run ends with the bytes of the uninterrupted one"
    );
}

/// Checkpoint folders of a run.
fn checkpoints(out: &Path) -> usize {
    std::fs::read_dir(out.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                .count()
        })
        .unwrap_or(0)
}

/// The processes (pid) whose environment says they are MPI rank `rank` and whose command line
/// names `out`.
fn ranks_processes(rank: u32, out: &Path) -> Vec<u32> {
    let wanted_env = format!("OMPI_COMM_WORLD_RANK={rank}");
    let wanted_arg = out.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |bytes: &[u8], s: &str| bytes.split(|&b| b == 0).any(|part| part == s.as_bytes());
        if has(&cmdline, &wanted_arg) && has(&environ, &wanted_env) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_rank_stops_the_other_with_an_error_naming_it() {
    let root = tempfile::tempdir().expect("a temporary folder");
    let data = prepared(root.path());
    let out = root.path().join("killed");
    // long enough to be killed in the middle
    let mut args = pretrain_args(&data, &out, 100_000);
    args.extend(["--mpi-timeout".into(), "5".into()]);
    // --enable-recovery: Open MPI keeps the job when a rank dies, so the survivor speaks
    let log = root.path().join("killed.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = mpirun(2, &["--enable-recovery"])
        .args(&args)
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("mpirun starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoints(&out) == 0 {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no checkpoint within 2 minutes:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let victims = ranks_processes(1, &out);
    assert_eq!(victims.len(), 1, "one process is rank 1: {victims:?}");
    let killed_at = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &victims[0].to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    child.wait().expect("mpirun ends");
    let waited = killed_at.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // (mpirun's own status after MPI_Abort is 0 under --enable-recovery: not asserted)
    assert!(
        !out.join("model").exists(),
        "the run did not finish:\n{text}"
    );
    assert!(
        waited < Duration::from_secs(60),
        "the survivor stopped {waited:?} after the kill (timeout 5 s):\n{text}"
    );
    assert!(
        text.contains("rank 0 of 2") && text.contains("for rank 1"),
        "rank 0's error names rank 1:\n{text}"
    );

    // the last checkpoint resumes, on two ranks again
    let mut resume = pretrain_args(&data, &out, 100_000);
    resume.push("--resume".into());
    resume.extend(["--stop-after".into(), "2".into()]);
    let log = run(mpirun(2, &[]).args(&resume), "the resumed run");
    assert!(log.contains("resumed from"), "{log}");
}

#[test]
fn a_rank_that_fails_with_an_error_stops_the_other_naming_it_and_its_reason() {
    let root = tempfile::tempdir().expect("a temporary folder");
    let data = prepared(root.path());
    let out = root.path().join("refused");
    let good = pretrain_args(&data, &out, 6);
    // rank 1 alone is given a batch the two ranks cannot split: it fails, rank 0 waits for it
    let mut bad = good.clone();
    let at = bad
        .iter()
        .position(|a| a == "--grad-accum")
        .expect("the flag");
    bad[at + 1] = "3".into();
    let started = Instant::now();
    let output = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "1"])
        .arg(example("pretrain"))
        .arg("--mpi")
        .args(&good)
        .args([":", "-np", "1"])
        .arg(example("pretrain"))
        .arg("--mpi")
        .args(&bad)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("mpirun runs");
    let text = text_of(&output);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "ended in {:?}:\n{text}",
        started.elapsed()
    );
    assert!(
        text.contains("Error (rank 0): rank 1 failed at step 0: ")
            && text.contains("grad_accum 3 must be a multiple of the 2 peers"),
        "rank 0 names rank 1 and its reason:\n{text}"
    );
    assert!(!out.join("model").exists());
}
