//! Models by name (`--hf owner/name`): a local HTTP server answers the way the Hugging Face hub
//! does (the repository listing `/api/models/{repo}/revision/main`, files under
//! `/{repo}/resolve/main/{file}` with `ETag`, `X-Repo-Commit` and range requests) for the Dream
//! fixture folder; the library fetches it into a Hugging Face cache, loads it, reuses the cache,
//! resumes an interrupted file, works offline, and says what failed when neither hub nor cache
//! has it. One test runs `predict` with `HF_ENDPOINT` and `HF_HOME`, as a user would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mdm::backend::{self, Default as B};
use mdm::hub::Hub;
use mdm::models::{MaskedTransformer, ModelError};

const REPO: &str = "dream-org/tiny-dream";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The fixture folder served as a hub repository; `log` holds `METHOD path range` of every request.
struct FakeHub {
    endpoint: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn etag(bytes: &[u8]) -> String {
    // FNV-1a, as hex: any stable name of the content will do
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

impl FakeHub {
    fn start(folder: &Path) -> Self {
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut range = None;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        if k.eq_ignore_ascii_case("range") {
                            range = Some(v.trim().to_string());
                        }
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock()
                    .unwrap()
                    .push(format!("GET {path} {}", range.clone().unwrap_or_default()));
                let listing = format!("/api/models/{REPO}/revision/main");
                let prefix = format!("/{REPO}/resolve/main/");
                let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == listing {
                    let siblings: Vec<_> = files
                        .iter()
                        .map(|(n, _)| serde_json::json!({"rfilename": n}))
                        .collect();
                    let body = serde_json::json!({"sha": COMMIT, "siblings": siblings});
                    ("200 OK", vec![], body.to_string().into_bytes())
                } else if let Some((_, bytes)) = path
                    .strip_prefix(&prefix)
                    .and_then(|f| files.iter().find(|(n, _)| n == f))
                {
                    let size = bytes.len();
                    let (from, to) = range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes="))
                        .and_then(|r| r.split_once('-'))
                        .map(|(a, b)| {
                            let a: usize = a.parse().unwrap_or(0);
                            let b = b
                                .parse()
                                .map_or(size.saturating_sub(1), |b: usize| b.min(size - 1));
                            (a, b)
                        })
                        .unwrap_or((0, size - 1));
                    let headers = vec![
                        format!("ETag: \"{}\"", etag(bytes)),
                        format!("X-Repo-Commit: {COMMIT}"),
                        format!("Content-Range: bytes {from}-{to}/{size}"),
                    ];
                    ("206 Partial Content", headers, bytes[from..=to].to_vec())
                } else {
                    (
                        "404 Not Found",
                        vec![],
                        b"{\"error\": \"not found\"}".to_vec(),
                    )
                };
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for h in headers {
                    head.push_str(&h);
                    head.push_str("\r\n");
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let _ = stream.flush();
                // drain anything left so the client sees a clean close
                let _ = reader.read(&mut [0u8; 1]);
            }
        });
        Self { endpoint, log }
    }

    fn downloads(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("/resolve/") && !l.ends_with("bytes=0-0"))
            .cloned()
            .collect()
    }
}

fn fixture() -> PathBuf {
    crate::common::fixture_dir("MDM_DREAM_PARITY_DIR", "dream-parity", "model/config.json")
        .join("model")
}

fn hub(endpoint: &str, cache: &Path) -> Hub {
    Hub {
        endpoint: Some(endpoint.to_string()),
        cache: cache.to_path_buf(),
        progress: false,
        offline: false,
    }
}

#[test]
fn a_model_is_fetched_by_name_cached_resumed_and_used_offline() {
    let src = fixture();
    let server = FakeHub::start(&src);
    let cache = tempfile::tempdir().unwrap();

    // an interrupted download: half of the largest file is already in the cache
    let (big, bytes) = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let blobs = cache
        .path()
        .join("models--dream-org--tiny-dream")
        .join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(blobs.join(format!("{}.part", etag(&bytes))), &bytes[..half]).unwrap();

    let dir = hub(&server.endpoint, cache.path()).fetch(REPO).unwrap();
    assert!(
        dir.ends_with(Path::new("snapshots").join(COMMIT)),
        "{}",
        dir.display()
    );
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(dir.join(name)).unwrap(),
            "{name:?}"
        );
    }
    let resumed: Vec<String> = server
        .downloads()
        .into_iter()
        .filter(|l| l.contains(&big))
        .collect();
    assert_eq!(
        resumed,
        vec![format!("GET /{REPO}/resolve/main/{big} bytes={half}-")]
    );
    let device = backend::device();
    let model = MaskedTransformer::<B>::load_hf(&dir, &device).unwrap();
    let direct = MaskedTransformer::<B>::load_hf(&src, &device).unwrap();
    assert_eq!(model.config(), direct.config());

    // again: the listing is asked for, no file is downloaded twice
    let before = server.downloads().len();
    assert_eq!(
        hub(&server.endpoint, cache.path()).fetch(REPO).unwrap(),
        dir
    );
    assert_eq!(server.downloads().len(), before);

    // offline, and with the hub unreachable: the cached snapshot, no request
    let requests = server.log.lock().unwrap().len();
    let offline = Hub {
        offline: true,
        ..hub(&server.endpoint, cache.path())
    };
    assert_eq!(offline.fetch(REPO).unwrap(), dir);
    assert_eq!(
        hub("http://127.0.0.1:9", cache.path()).fetch(REPO).unwrap(),
        dir
    );
    assert_eq!(server.log.lock().unwrap().len(), requests);

    // neither hub nor cache: a typed error naming the repository, the failure and the cache
    let empty = tempfile::tempdir().unwrap();
    match hub("http://127.0.0.1:9", empty.path()).fetch(REPO) {
        Err(ModelError::Hub { repo, reason }) => {
            assert_eq!(repo, REPO);
            assert!(
                reason.contains("127.0.0.1:9")
                    && reason.contains(&empty.path().display().to_string()),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    match hub(&server.endpoint, empty.path()).fetch("someone/absent") {
        Err(ModelError::Hub { reason, .. }) => assert!(reason.contains("listing"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn predict_takes_a_repository_name_with_hf_endpoint() {
    let server = FakeHub::start(&fixture());
    let home = tempfile::tempdir().unwrap();
    let exe = crate::kill::example("predict");
    let out = std::process::Command::new(exe)
        .args(["--hf", REPO, "--ids", "5 9 ? 17"])
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("position   2"), "{stdout}");
    assert!(home
        .path()
        .join("hub/models--dream-org--tiny-dream/snapshots")
        .join(COMMIT)
        .join("config.json")
        .is_file());
}
