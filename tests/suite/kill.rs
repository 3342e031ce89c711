//! Long runs survive SIGKILL. `pretrain`, `finetune` and a `scaling` sweep are started as a user
//! starts them (the example binaries that `cargo test` builds), killed with SIGKILL at points this
//! test chooses (in the middle of an optimizer step, and while a checkpoint folder is being
//! written), then started again with the same command (`--resume` for the first two; a sweep
//! resumes by itself). Each must end with a `model/model.safetensors` byte-identical to the one an
//! uninterrupted run writes, and after every kill each `checkpoints/step-*` folder must read back
//! whole (trainer state, config, every safetensors file).
//!
//! The models are large enough that every CPU kernel splits its work over several tasks (2 heads x
//! 8 rows of 64 positions: 16 attention tasks; 512 rows in the norms, 8 blocks of the gain
//! gradient's partial sums), so a kernel whose sums followed the thread scheduling would show here
//! as a resumed run that differs from the uninterrupted one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

/// No single run of these tiny models takes this long; a child past it is a hang.
const PATIENCE: Duration = Duration::from_secs(300);

/// An example binary beside this test's (`target/<profile>/examples/<name>`).
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds the examples, `cargo test --test suite` alone does not \
         (build them first: cargo build --release --examples)",
        path.display()
    );
    path
}

/// A few thousand lines of a small grammar, the same every time.
fn corpus() -> String {
    let subjects = [
        "the king",
        "a shepherd",
        "my servant",
        "the people",
        "his son",
    ];
    let verbs = [
        "went up to",
        "spake unto",
        "looked upon",
        "came into",
        "blessed",
    ];
    let objects = [
        "the city",
        "the mountain",
        "the LORD",
        "her house",
        "the river",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut pick = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text = String::new();
    for line in 0..3000 {
        let (s, v, o) = (pick(5), pick(5), pick(5));
        text.push_str(&format!(
            "{line}: And {} {} {}.\n",
            subjects[s], verbs[v], objects[o]
        ));
    }
    text
}

/// `prepare`d data: the corpus above in shards with a small BPE tokenizer.
fn prepared(root: &Path) -> PathBuf {
    let text = root.join("corpus.txt");
    std::fs::write(&text, corpus()).expect("corpus written");
    let data = root.join("data");
    let status = Command::new(example("prepare"))
        .args(["--input".as_ref(), text.as_os_str()])
        .args(["--out".as_ref(), data.as_os_str()])
        .args([
            "--vocab-size",
            "320",
            "--split",
            "lines",
            "--valid-fraction",
            "0.05",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("prepare runs");
    assert!(status.success(), "prepare failed: {status}");
    data
}

/// A child whose stderr lines arrive through a channel, stamped with their arrival.
struct Running {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Running {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the example starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line, or `None` once the child closed it.
    fn next_line(&mut self, deadline: Instant) -> Option<(Instant, String)> {
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok((at, line)) => {
                self.seen.push(line.clone());
                Some((at, line))
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                panic!("no output for {PATIENCE:?}; stderr so far:\n{}", self.log())
            }
        }
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }

    fn kill(&mut self) {
        // Child::kill sends SIGKILL on Unix
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("the killed child is reaped");
    }

    fn finish(mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        while self.next_line(deadline).is_some() {}
        let status = self.child.wait().expect("the child is reaped");
        assert!(status.success(), "{status}; stderr:\n{}", self.log());
        status
    }
}

/// Where a run is killed.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Half-way through optimizer step `k` (1-based), timed from the steps before it.
    InStep(usize),
    /// While a `checkpoints/*.partial` folder exists under the output folder (and is still there
    /// after the kill: the write was cut, not finished).
    InCheckpointWrite,
}

/// Runs `command` and kills it at `kill`; returns whether the kill landed where asked (false when
/// the run ended first, e.g. a checkpoint write too quick to catch).
fn run_and_kill(command: &mut Command, out: &Path, kill: Kill) -> bool {
    let mut run = Running::start(command);
    let deadline = Instant::now() + PATIENCE;
    let landed = match kill {
        Kill::InStep(k) => {
            let mut previous: Option<Instant> = None;
            loop {
                let Some((at, line)) = run.next_line(deadline) else {
                    break false;
                };
                let Some(step) = step_of(&line) else { continue };
                if step + 1 == k {
                    if let Some(before) = previous {
                        std::thread::sleep((at - before) / 2);
                        break run.child.try_wait().expect("child status").is_none();
                    }
                }
                previous = Some(at);
            }
        }
        Kill::InCheckpointWrite => loop {
            if let Some(partial) = partial_checkpoint(out) {
                run.kill();
                if partial.exists() {
                    break true;
                }
                return false;
            }
            if run.child.try_wait().expect("child status").is_some() {
                break false;
            }
            assert!(Instant::now() < deadline, "no checkpoint write seen");
        },
    };
    if run.child.try_wait().expect("child status").is_none() {
        run.kill();
    }
    assert_checkpoints_whole(out);
    landed
}

/// The step number of a log line `step N/M ...` (the trainer's `--no-progress` lines).
fn step_of(line: &str) -> Option<usize> {
    line.strip_prefix("step ")?.split('/').next()?.parse().ok()
}

/// `out` and, for a sweep, each of its `out/runs/<run>` folders.
fn run_folders(out: &Path) -> Vec<PathBuf> {
    let mut folders = vec![out.to_path_buf()];
    if let Ok(runs) = std::fs::read_dir(out.join("runs")) {
        folders.extend(runs.map_while(Result::ok).map(|e| e.path()));
    }
    folders
}

/// A `*.partial` folder being written under `out` (or under any sweep run of `out/runs`).
fn partial_checkpoint(out: &Path) -> Option<PathBuf> {
    run_folders(out).iter().find_map(|root| {
        std::fs::read_dir(root.join("checkpoints"))
            .ok()?
            .map_while(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "partial"))
    })
}

/// Every `checkpoints/step-*` folder under `out` (and its sweep runs) reads back whole.
fn assert_checkpoints_whole(out: &Path) {
    for root in run_folders(out) {
        for (step, dir) in mdm::train::checkpoint::list_checkpoints(&root).expect("listable") {
            let state = mdm::train::checkpoint::read_state(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert_eq!(state.step, step, "{}", dir.display());
            mdm::models::checkpoint::read_meta(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut tensors = 0;
            for entry in std::fs::read_dir(&dir).expect("readable") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|x| x == "safetensors") {
                    let bytes = std::fs::read(&path).expect("readable");
                    SafeTensors::deserialize(&bytes)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    tensors += 1;
                }
            }
            assert_eq!(tensors, 2, "{}: model and optimizer", dir.display());
        }
    }
}

/// The steps of the complete checkpoints under `out` and its sweep runs.
fn checkpoint_steps(out: &Path) -> Vec<usize> {
    run_folders(out)
        .iter()
        .flat_map(|r| mdm::train::checkpoint::list_checkpoints(r).expect("listable"))
        .map(|(step, _)| step)
        .collect()
}

fn weights(model_dir: &Path) -> Vec<u8> {
    let path = model_dir.join("model.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `command(out, resume)` uninterrupted into `<root>/<name>-whole`, then again into
/// `<root>/<name>-killed` with a kill at each of `kills` (each restart resuming), and asserts the
/// final weights are the same bytes. A kill that misses its point (the write it saw ended first, or
/// the run did) is tried again, resuming, or from nothing when the run had finished, up to five
/// times. Returns the uninterrupted output folder.
fn survives(
    root: &Path,
    name: &str,
    model_of: impl Fn(&Path) -> PathBuf,
    command: impl Fn(&Path, bool) -> Command,
    kills: &[Kill],
) -> PathBuf {
    let whole = root.join(format!("{name}-whole"));
    Running::start(&mut command(&whole, false)).finish();

    let killed = root.join(format!("{name}-killed"));
    let mut resume = false;
    for &kill in kills {
        let mut tries = 0;
        while !run_and_kill(&mut command(&killed, resume), &killed, kill) {
            tries += 1;
            assert!(tries < 5, "{name}: {kill:?} never landed in five tries");
            // the run got to its end before the kill landed: start it again from nothing
            if model_of(&killed).exists() {
                std::fs::remove_dir_all(&killed).expect("the finished run is removed");
                resume = false;
            } else {
                resume = true;
            }
        }
        let kept: Vec<usize> = checkpoint_steps(&killed);
        eprintln!(
            "{name}: killed {kill:?} (after {tries} missed tries); checkpoints left: {kept:?}"
        );
        resume = true;
    }
    Running::start(&mut command(&killed, true)).finish();
    assert!(
        weights(&model_of(&whole)) == weights(&model_of(&killed)),
        "{name}: the resumed run's weights differ from the uninterrupted run's"
    );
    whole
}

fn pretrain(data: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(example("pretrain"));
    c.args(["--data".as_ref(), data.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args([
            "--model",
            "mdm",
            "--n-layer",
            "2",
            "--n-head",
            "2",
            "--n-embd",
            "128",
        ])
        .args(["--seq-len", "64", "--micro-batch", "8", "--steps", "12"])
        .args(["--save-every", "2", "--keep-last", "2", "--eval-every", "6"])
        .args(["--eval-blocks", "4", "--log-every", "1", "--no-progress"]);
    if resume {
        c.arg("--resume");
    }
    c
}

#[test]
fn pretrain_finetune_and_a_sweep_point_resume_bit_identically_after_sigkill() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let data = prepared(root);

    let pretrained = survives(
        root,
        "pretrain",
        |out| out.join("model"),
        |out, resume| pretrain(&data, out, resume),
        &[Kill::InStep(4), Kill::InCheckpointWrite, Kill::InStep(10)],
    );

    let rows = root.join("rows.jsonl");
    let mut jsonl = String::new();
    for i in 0..40 {
        jsonl.push_str(&format!(
            "{{\"prompt\": \"{i}: And the king\", \"response\": \" went up to the city.\"}}\n"
        ));
    }
    std::fs::write(&rows, jsonl).expect("rows written");
    let init = pretrained.join("model");
    survives(
        root,
        "finetune",
        |out| out.join("model"),
        |out, resume| {
            let mut c = Command::new(example("finetune"));
            c.args(["--init".as_ref(), init.as_os_str()])
                .args(["--data".as_ref(), rows.as_os_str()])
                .args(["--out".as_ref(), out.as_os_str()])
                .args(["--steps", "10", "--micro-batch", "8", "--save-every", "2"])
                .args(["--log-every", "1", "--no-progress"]);
            if resume {
                c.arg("--resume");
            }
            c
        },
        &[Kill::InCheckpointWrite, Kill::InStep(8)],
    );

    let grid = |out: &Path| {
        let path = out.with_extension("toml");
        let toml = format!(
            "data = {data:?}\nout = {out:?}\nbudgets = [8e9]\nmodels = [\"mdm\"]\n\n\
             [[sizes]]\nname = \"s\"\nn_layer = 2\nn_head = 2\nn_embd = 128\nintermediate = 352\n\n\
             [train]\nseq_len = 64\nmicro_batch = 8\nsave_every = 2\neval_blocks = 4\nlog_every = 1\n"
        );
        std::fs::write(&path, toml).expect("grid written");
        path
    };
    let sweep = survives(
        root,
        "sweep",
        |out| out.join("runs").join("mdm-s-8e9").join("model"),
        |out, _| {
            let mut c = Command::new(example("scaling"));
            c.args(["--grid".as_ref(), grid(out).as_os_str()])
                .arg("--no-progress");
            c
        },
        &[Kill::InCheckpointWrite, Kill::InStep(7)],
    );
    // the killed sweep wrote its row once, with the uninterrupted sweep's figures (its wall time,
    // the last column, aside)
    let rows = |dir: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("results.csv")).expect("results.csv");
        text.lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
            .collect()
    };
    let whole = rows(&sweep);
    assert_eq!(whole.len(), 2, "header and one run: {whole:?}");
    assert_eq!(rows(&root.join("sweep-killed")), whole);
}
