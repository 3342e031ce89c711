//! The server end to end: each test starts it on `127.0.0.1:0` over a small random model with a
//! byte-level BPE tokenizer trained here, and talks to it with a real HTTP client.

use std::time::Duration;

use burn::backend::Flex;
use mdm_data::chat::ChatPrompt;
use mdm_data::Tokenizer;
use mdm_models::ModelConfig;
use mdm_serve::engine::{Engine, EngineConfig};
use mdm_serve::server::{serve, AppState, ServerConfig, Stopped};
use mdm_serve::{Causal, LanguageModel, Masked};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const TEXT: &str = "In the beginning God created the heaven and the earth. And the earth was \
without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved \
upon the face of the waters. And God said, Let there be light: and there was light.";

fn tokenizer() -> Tokenizer {
    let docs: Vec<String> = TEXT.split(". ").map(String::from).collect();
    Tokenizer::train_bpe(docs.iter(), 300).expect("tokenizer")
}

#[derive(Clone)]
struct Setup {
    api_key: Option<String>,
    max_batch: usize,
    max_queue: usize,
    batch_wait_ms: u64,
    causal: bool,
    /// layers, width, positions
    size: (usize, usize, usize),
    max_body: usize,
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    max_connections: usize,
    shutdown_timeout_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            api_key: None,
            max_batch: 8,
            max_queue: 64,
            batch_wait_ms: 2,
            causal: false,
            size: (2, 32, 128),
            max_body: 1 << 16,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 512,
            shutdown_timeout_ms: 30_000,
        }
    }
}

struct TestServer {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<Stopped>>>,
}

impl TestServer {
    async fn start(setup: Setup) -> Self {
        let tok = tokenizer();
        let vocab = tok.vocab_size();
        let (layers, width, positions) = setup.size;
        let causal = setup.causal;
        let engine = Engine::start::<Flex, _, _>(
            move || {
                let config = ModelConfig::custom(vocab, layers, 2, width, 2 * width, positions);
                let device = Default::default();
                let model: Box<dyn LanguageModel<Flex>> = if causal {
                    Box::new(Causal(config.init_causal(1, &device)?))
                } else {
                    Box::new(Masked(config.init_masked(1, &device)?))
                };
                Ok(model)
            },
            EngineConfig {
                max_batch: setup.max_batch,
                max_queue: setup.max_queue,
                batch_wait: Duration::from_millis(setup.batch_wait_ms),
            },
        )
        .expect("engine");
        let config = ServerConfig {
            model_name: "tiny".into(),
            api_key: setup.api_key.clone(),
            max_tokens: 256,
            max_choices: 4,
            max_body: setup.max_body,
            request_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_millis(setup.header_timeout_ms),
            body_timeout: Duration::from_millis(setup.body_timeout_ms),
            max_connections: setup.max_connections,
            shutdown_timeout: Duration::from_millis(setup.shutdown_timeout_ms),
        };
        let state = AppState::new(engine, Some(tok), ChatPrompt::plain(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            client: reqwest::Client::new(),
            stop: Some(stop),
            done: Some(done),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn stats(&self) -> Value {
        self.get("/health").await.1["stats"].clone()
    }
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// The `data:` payloads of an event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].as_str().is_some(), "{body}");
    if let Some(p) = param {
        assert_eq!(error["param"], json!(p), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_in_openai_shapes() {
    let s = TestServer::start(Setup::default()).await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["kind"], "masked");

    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "And God said", "max_tokens": 8}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let choice = &r["choices"][0];
    assert!(choice["text"].is_string());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let generated = choice["token_ids"].as_array().unwrap().len();
    assert!(generated <= 8);
    let usage = &r["usage"];
    assert_eq!(usage["completion_tokens"], json!(generated));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + generated as u64
    );

    // two id prompts x n = 2: four choices, indexed prompt-major
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [[0, 40, 41], [0, 50]], "n": 2, "max_tokens": 4, "temperature": 0.8, "seed": 3}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let indexes: Vec<u64> = r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1, 2, 3]);
    assert_eq!(r["usage"]["prompt_tokens"], json!(5));

    // every sampler option as an extension field
    for extra in [
        json!({"steps": 4, "block_length": 4, "remasking": "margin"}),
        json!({"cfg_scale": 0.5, "remasking": "entropy"}),
        json!({"remasking": "ancestral", "temperature": 1.0}),
        json!({"remasking": "random", "temperature": 0.5, "seed": 9}),
        json!({"cache": "dual", "block_length": 4, "threshold": 0.9}),
        json!({"cache": "prefix", "block_length": 4, "steps": 8}),
        json!({"factor": 1.0, "block_length": 4}),
    ] {
        let mut body = json!({"prompt": "In the beginning", "max_tokens": 8});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, r) = s.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{extra}: {r}");
    }

    // chat, through the plain template
    let (status, r) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who said it?"}], "max_tokens": 6}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert!(r["choices"][0]["message"]["content"].is_string());
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_when_set() {
    let s = TestServer::start(Setup {
        api_key: Some("sesame".into()),
        ..Setup::default()
    })
    .await;
    assert_eq!(s.get("/health").await.0, 200);
    let (status, body) = s.get("/v1/models").await;
    assert_error(status, &body, 401, None);
    let wrong = s
        .client
        .get(format!("{}/v1/models", s.base))
        .bearer_auth("open")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .bearer_auth("sesame")
        .json(&json!({"prompt": [0, 5, 6], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temperature_zero_is_deterministic_and_seeds_repeat() {
    let s = TestServer::start(Setup::default()).await;
    let body = json!({"prompt": "And the earth", "max_tokens": 12, "steps": 6});
    let a = s.post("/v1/completions", &body).await.1;
    let b = s.post("/v1/completions", &body).await.1;
    assert_eq!(a["choices"], b["choices"]);
    let body = json!({"prompt": "And the earth", "max_tokens": 12, "temperature": 1.0, "seed": 17});
    let a = s.post("/v1/completions", &body).await.1;
    let b = s.post("/v1/completions", &body).await.1;
    assert_eq!(a["choices"], b["choices"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_request_gets_the_tokens_it_gets_alone() {
    let prompts = [
        "In the beginning",
        "And God said, Let there",
        "the face of the deep",
        "light",
    ];
    // every kind of decoding that batches: greedy, sampled (temperature, nucleus), random and
    // ancestral remasking, with and without blocks, caches and a threshold; each request its
    // own seed
    let combos = [
        json!({"steps": 5}),
        json!({"steps": 5, "temperature": 0.9}),
        json!({"steps": 6, "temperature": 1.0, "top_p": 0.9, "remasking": "random"}),
        json!({"steps": 10, "remasking": "ancestral", "temperature": 1.0}),
        json!({"steps": 6, "block_length": 5, "cache": "dual", "threshold": 0.05, "temperature": 0.7}),
    ];
    let body = |p: &str, combo: &Value, seed: usize| {
        let mut b = combo.clone();
        b["prompt"] = json!(p);
        b["max_tokens"] = json!(10);
        b["seed"] = json!(seed);
        b
    };
    // alone: one row per batch
    let solo = TestServer::start(Setup {
        max_batch: 1,
        ..Setup::default()
    })
    .await;
    // together: the worker waits for the batch to fill
    let s = TestServer::start(Setup {
        batch_wait_ms: 500,
        ..Setup::default()
    })
    .await;
    for (c, combo) in combos.iter().enumerate() {
        let mut alone = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let (status, r) = solo.post("/v1/completions", &body(p, combo, 17 * i)).await;
            assert_eq!(status, 200, "{r}");
            alone.push(r["choices"][0]["token_ids"].clone());
        }
        let batches_before = s.stats().await["batches"].as_u64().unwrap();
        let replies = futures_join(prompts.iter().enumerate().map(|(i, p)| {
            let (client, url, body) = (
                s.client.clone(),
                format!("{}/v1/completions", s.base),
                body(p, combo, 17 * i),
            );
            async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        }))
        .await;
        for (got, want) in replies.iter().zip(&alone) {
            assert_eq!(&got["choices"][0]["token_ids"], want, "{combo}: {got}");
        }
        let batches = s.stats().await["batches"].as_u64().unwrap() - batches_before;
        assert!(
            batches < prompts.len() as u64,
            "combination {c} ({combo}) was not batched: {batches} batches"
        );
    }
    // the seeds matter: the sampled rows are not all greedy's
    let greedy = solo
        .post("/v1/completions", &body(prompts[0], &combos[0], 0))
        .await
        .1;
    let hot = solo
        .post("/v1/completions", &body(prompts[0], &combos[2], 0))
        .await
        .1;
    assert_ne!(
        greedy["choices"][0]["token_ids"],
        hot["choices"][0]["token_ids"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_joins_a_running_batch_at_a_block_boundary() {
    let size = (4, 128, 512);
    // a long generation in blocks, sampled; another request arrives while it runs
    let long = json!({"prompt": [0, 7, 9], "max_tokens": 256, "steps": 256, "block_length": 8,
        "temperature": 0.8, "seed": 1});
    let late = json!({"prompt": [0, 40, 41, 42, 43], "max_tokens": 256, "steps": 256,
        "block_length": 8, "temperature": 0.8, "seed": 2});
    let solo = TestServer::start(Setup {
        size,
        max_batch: 1,
        ..Setup::default()
    })
    .await;
    let ids = |r: &Value| r["choices"][0]["token_ids"].clone();
    let long_alone = ids(&solo.post("/v1/completions", &long).await.1);
    let late_alone = ids(&solo.post("/v1/completions", &late).await.1);
    let s = TestServer::start(Setup {
        size,
        ..Setup::default()
    })
    .await;
    let mut streaming = long.clone();
    streaming["stream"] = json!(true);
    streaming["stream_steps"] = json!(true);
    let mut resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&streaming)
        .send()
        .await
        .unwrap();
    // the long one has taken its first step: the late one arrives now
    let mut body = String::from_utf8_lossy(&resp.chunk().await.unwrap().unwrap()).to_string();
    assert!(body.contains("diffusion.step"), "{body}");
    let (status, joined) = s.post("/v1/completions", &late).await;
    assert_eq!(status, 200, "{joined}");
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = sse_data(&body)
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let last_step = events
        .iter()
        .rfind(|e| e["object"] == "diffusion.step")
        .unwrap();
    let streamed: Vec<Value> = last_step["tokens"].as_array().unwrap().clone();
    let want = long_alone.as_array().unwrap();
    assert_eq!(&streamed[..want.len()], &want[..], "the long row as alone");
    assert_eq!(ids(&joined), late_alone, "the joined row as alone");
    let stats = s.stats().await;
    assert_eq!(
        stats["batches"],
        json!(1),
        "the late request joined: {stats}"
    );
    assert_eq!(stats["largest_batch"], json!(2), "{stats}");
}

/// Runs the futures concurrently (spawned), in order of the results.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_requests_are_all_answered() {
    let s = TestServer::start(Setup::default()).await;
    let replies = futures_join((0..32).map(|i| {
        let (client, url) = (s.client.clone(), format!("{}/v1/completions", s.base));
        let body = json!({"prompt": [0, 10 + i, 20 + i], "max_tokens": 6, "steps": 3});
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    }))
    .await;
    for (status, body) in &replies {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"].as_array().unwrap().len(), 1);
    }
    let stats = s.stats().await;
    assert_eq!(stats["jobs"], json!(32), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_rest_are_served() {
    let s = TestServer::start(Setup {
        max_batch: 1,
        max_queue: 1,
        size: (2, 64, 256),
        ..Setup::default()
    })
    .await;
    let replies = futures_join((0..12).map(|i| {
        let (client, url) = (s.client.clone(), format!("{}/v1/completions", s.base));
        let body = json!({"prompt": [0, 10 + i], "max_tokens": 64, "temperature": 1.0, "seed": i});
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let refused: Vec<_> = replies.iter().filter(|(st, _)| *st == 429).collect();
    assert!(!refused.is_empty(), "nothing was refused");
    for (status, body) in &replies {
        assert!(*status == 200 || *status == 429, "{status}: {body}");
        if *status == 429 {
            assert_error(*status, body, 429, None);
        }
    }
    assert!(replies.iter().any(|(st, _)| *st == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sends_the_same_text_and_ends_with_done() {
    let s = TestServer::start(Setup::default()).await;
    let body = json!({"prompt": "And God said", "max_tokens": 16, "steps": 8, "block_length": 8});
    let whole = text_of(&s.post("/v1/completions", &body).await.1);
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, whole);
    let reasons: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(reasons.len(), 1, "one final chunk");

    // every step: its canvas with masks, what it revealed and how sure, the passes so far; the
    // choices' text is what it was without them
    streaming["stream_steps"] = json!(true);
    let resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&streaming)
        .send()
        .await
        .unwrap();
    let events: Vec<Value> = sse_data(&resp.text().await.unwrap())
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .collect();
    let steps: Vec<&Value> = events
        .iter()
        .filter(|v| v["object"] == "diffusion.step")
        .collect();
    assert_eq!(steps.len(), 8, "one event per step");
    let text: String = events
        .iter()
        .filter(|v| v["object"] == "text_completion")
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, whole, "the step events change nothing else");
    assert!(steps[0]["canvas"].as_str().unwrap().contains('_'));
    let mut seen = vec![None; 16];
    for (k, step) in steps.iter().enumerate() {
        assert_eq!(step["steps_done"], json!(k + 1));
        assert_eq!(step["index"], json!(0));
        let passes = step["forward_passes"].as_u64().unwrap();
        assert!(passes >= 1 && passes <= k as u64 + 1, "{step}");
        let tokens = step["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 16);
        assert_eq!(step["block"], json!(k / 4), "8 steps over 2 blocks");
        assert_eq!(
            step["masked"],
            json!(tokens.iter().filter(|t| t.is_null()).count())
        );
        for r in step["revealed"].as_array().unwrap() {
            let pos = r["position"].as_u64().unwrap() as usize;
            let c = r["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c), "{r}");
            assert_eq!(
                tokens[pos], r["token"],
                "the canvas holds what was revealed"
            );
            assert!(seen[pos].is_none(), "position {pos} revealed twice");
            seen[pos] = Some(r["token"].clone());
        }
    }
    let last = steps.last().unwrap();
    assert_eq!(last["masked"], json!(0));
    let seen: Vec<Value> = seen
        .into_iter()
        .map(|t| t.expect("every position revealed once"))
        .collect();
    assert_eq!(&Value::Array(seen), &last["tokens"]);
    // the non-streamed answer's tokens are the last canvas (cut at EOS)
    let mut plain = streaming.clone();
    plain["stream"] = json!(false);
    plain["stream_steps"] = json!(false);
    let ids = s.post("/v1/completions", &plain).await.1["choices"][0]["token_ids"].clone();
    let ids = ids.as_array().unwrap();
    assert_eq!(&last["tokens"].as_array().unwrap()[..ids.len()], &ids[..]);

    // chat streams deltas, the first with the role
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": true}))
        .send()
        .await
        .unwrap();
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let s = TestServer::start(Setup {
        size: (4, 128, 512),
        ..Setup::default()
    })
    .await;
    // `stream_canvas`, the extension's earlier name, still asks for the step events
    let body = json!({"prompt": [0, 7], "max_tokens": 256, "steps": 256, "stream": true, "stream_canvas": true});
    let mut resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    // the first canvas arrives after the first step; then hang up
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    drop(resp);
    let mut cancelled = false;
    for _ in 0..200 {
        if s.stats().await["cancelled"].as_u64().unwrap() >= 1 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cancelled,
        "the generation was not cancelled: {}",
        s.stats().await
    );
    // and the server goes on serving
    let (status, _) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [0, 7], "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_cuts_the_text() {
    let s = TestServer::start(Setup::default()).await;
    let body = json!({"prompt": "And God", "max_tokens": 24});
    let whole = text_of(&s.post("/v1/completions", &body).await.1);
    let chars: Vec<char> = whole.chars().collect();
    assert!(chars.len() > 6, "too short to cut: {whole:?}");
    let stop: String = chars[4..6].iter().collect();
    let expected = &whole[..whole.find(&stop).unwrap()];
    let mut with_stop = body.clone();
    with_stop["stop"] = json!([stop]);
    let r = s.post("/v1/completions", &with_stop).await.1;
    assert_eq!(text_of(&r), expected);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    with_stop["stream"] = json!(true);
    let resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&with_stop)
        .send()
        .await
        .unwrap();
    let events = sse_data(&resp.text().await.unwrap());
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_logprobs_are_the_chain_rule_lm_eval_reads() {
    for causal in [false, true] {
        let s = TestServer::start(Setup {
            causal,
            ..Setup::default()
        })
        .await;
        let context = vec![0, 60, 61, 62];
        let continuation = vec![70, 71, 72];
        let prompt: Vec<u64> = context.iter().chain(&continuation).copied().collect();
        // what lm-evaluation-harness's local-completions model sends
        let (status, r) = s
            .post(
                "/v1/completions",
                &json!({"model": "tiny", "prompt": [prompt], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        let lp = &r["choices"][0]["logprobs"];
        let token_logprobs = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(token_logprobs.len(), prompt.len() + 1);
        assert!(token_logprobs[0].is_null());
        let tops = lp["top_logprobs"].as_array().unwrap();
        for (t, top) in token_logprobs.iter().zip(tops).skip(1) {
            let t = t.as_f64().unwrap();
            assert!(t <= 0.0);
            let best = top
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!(best >= t - 1e-9);
        }
        // lm-eval: sum(token_logprobs[ctxlen:-1])
        let summed: f64 = token_logprobs[context.len()..prompt.len()]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let (status, ll) = s
            .post(
                "/v1/loglikelihood",
                &json!({"context": context, "continuation": continuation}),
            )
            .await;
        assert_eq!(status, 200, "{ll}");
        let exact = ll["loglikelihood"].as_f64().unwrap();
        assert!(
            (summed - exact).abs() <= 1e-4 * exact.abs().max(1.0),
            "{summed} vs {exact} (causal: {causal})"
        );
        assert!(ll["is_greedy"].is_boolean());
        if causal {
            let (status, body) = s
                .post(
                    "/v1/loglikelihood",
                    &json!({"context": context, "continuation": continuation, "estimator": "mc"}),
                )
                .await;
            assert_error(status, &body, 400, Some("estimator"));
            let (status, body) = s
                .post("/v1/completions", &json!({"prompt": [0, 5], "steps": 4}))
                .await;
            assert_error(status, &body, 400, Some("steps"));
        } else {
            let (status, mc) = s
                .post("/v1/loglikelihood", &json!({"context": context, "continuation": continuation, "estimator": "mc", "mc_num": 64, "seed": 2}))
                .await;
            assert_eq!(status, 200, "{mc}");
            assert!(mc["stderr"].as_f64().unwrap() > 0.0);
            // the ELBO bounds the log-likelihood from below, within its noise
            let bound = mc["loglikelihood"].as_f64().unwrap();
            assert!(
                bound <= exact + 4.0 * mc["stderr"].as_f64().unwrap(),
                "{bound} vs {exact}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_json_errors_and_the_server_keeps_serving() {
    let s = TestServer::start(Setup {
        max_body: 4096,
        ..Setup::default()
    })
    .await;
    let url = format!("{}/v1/completions", s.base);
    let raw = |body: &'static str| {
        let (client, url) = (s.client.clone(), url.clone());
        async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (st, b) = raw("{\"prompt\": [1, 2").await;
    assert_error(st, &b, 400, None);
    let (st, b) = raw("[1, 2, 3]").await;
    assert_error(st, &b, 400, None);
    let cases = [
        (
            json!({"prompt": [0, 1], "max_tokens": "many"}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"prompt": [0, 1], "max_tokens": -1}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"prompt": [0, 1], "max_tokens": 100000000}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"prompt": [0, 1], "max_tokens": 200}),
            400,
            Some("prompt"),
        ),
        (
            json!({"prompt": [[0, 1], [0, 99999]]}),
            400,
            Some("prompt[1][1]"),
        ),
        (json!({"prompt": [0, -3]}), 400, Some("prompt[1]")),
        (json!({"prompt": []}), 400, Some("prompt")),
        (
            json!({"prompt": [0, 1], "model": "gpt-4"}),
            404,
            Some("model"),
        ),
        (json!({"prompt": [0, 1], "top_p": 1.5}), 400, Some("top_p")),
        (json!({"prompt": [0, 1], "top_k": 0}), 400, Some("top_k")),
        (json!({"prompt": [0, 1], "seed": -1}), 400, Some("seed")),
        (
            json!({"prompt": [0, 1], "gen_length": 4}),
            400,
            Some("gen_length"),
        ),
        (
            json!({"prompt": [0, 1], "alg_temp": 0.5, "remasking": "random"}),
            400,
            Some("alg_temp"),
        ),
        (
            json!({"prompt": [0, 1], "temperature": -1}),
            400,
            Some("temperature"),
        ),
        (json!({"prompt": [0, 1], "n": 0}), 400, Some("n")),
        (
            json!({"prompt": [0, 1], "remasking": "psychic"}),
            400,
            Some("remasking"),
        ),
        (json!({"prompt": [0, 1], "cache": "l3"}), 400, Some("cache")),
        (
            json!({"prompt": [0, 1], "max_tokens": 8, "block_length": 3}),
            400,
            Some("block_length"),
        ),
        (
            json!({"prompt": [0, 1], "threshold": 2.0}),
            400,
            Some("threshold"),
        ),
        (
            json!({"prompt": [0, 1], "threshold": 0.9, "remasking": "random"}),
            400,
            Some("remasking"),
        ),
        (
            json!({"prompt": [0, 1], "stop": ["a", "b", "c", "d", "e"]}),
            400,
            Some("stop"),
        ),
        (
            json!({"prompt": [0, 1], "logprobs": 100}),
            400,
            Some("logprobs"),
        ),
        (
            json!({"prompt": [0, 1], "stream": true, "echo": true}),
            400,
            Some("echo"),
        ),
        (json!({"max_tokens": 4}), 400, None),
    ];
    for (body, status, param) in cases {
        let (st, b) = s.post("/v1/completions", &body).await;
        assert_error(st, &b, status, param);
    }
    let (st, b) = s
        .post("/v1/chat/completions", &json!({"messages": []}))
        .await;
    assert_error(st, &b, 400, Some("messages"));
    let (st, b) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        )
        .await;
    assert_error(st, &b, 400, Some("messages[0].content[0]"));
    let (st, b) = s
        .post(
            "/v1/loglikelihood",
            &json!({"context": [0, 1], "continuation": []}),
        )
        .await;
    assert_error(st, &b, 400, Some("continuation"));
    let (st, b) = s
        .post(
            "/v1/loglikelihood",
            &json!({"context": "text", "continuation": [1]}),
        )
        .await;
    assert_error(st, &b, 400, Some("continuation"));
    let (st, b) = s
        .post(
            "/v1/loglikelihood",
            &json!({"context": [0], "continuation": [1], "estimator": "guess"}),
        )
        .await;
    assert_error(st, &b, 400, Some("estimator"));
    // over the body limit
    let big = json!({"prompt": "x".repeat(10_000)});
    let (st, b) = s.post("/v1/completions", &big).await;
    assert_error(st, &b, 413, None);
    let (st, b) = s.get("/v1/nothing-here").await;
    assert_error(st, &b, 404, None);
    // still serving
    let (st, b) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [0, 1], "max_tokens": 4}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_requests_and_lets_running_ones_finish() {
    let mut s = TestServer::start(Setup {
        size: (4, 128, 512),
        ..Setup::default()
    })
    .await;
    let (client, url) = (s.client.clone(), format!("{}/v1/completions", s.base));
    let in_flight = tokio::spawn(async move {
        let resp = client
            .post(url)
            .json(&json!({"prompt": [0, 7], "max_tokens": 128, "steps": 128}))
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    });
    // wait until the worker has taken it
    for _ in 0..200 {
        if s.stats().await["jobs"].as_u64().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // a new request while draining: 503, told when to come back
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"prompt": [0, 7], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    assert_eq!(in_flight.await.unwrap(), 200);
    let stopped = s.done.take().unwrap().await.unwrap().unwrap();
    assert_eq!(stopped, Stopped::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_bound_cancels_what_still_runs() {
    let mut s = TestServer::start(Setup {
        size: (4, 128, 512),
        shutdown_timeout_ms: 300,
        ..Setup::default()
    })
    .await;
    let (client, url) = (s.client.clone(), format!("{}/v1/completions", s.base));
    let body = json!({"prompt": [0, 7], "max_tokens": 256, "steps": 256, "stream": true, "stream_steps": true});
    let mut resp = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // the stream has started
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("diffusion.step"));
    s.stop.take().unwrap().send(()).unwrap();
    let started = std::time::Instant::now();
    let stopped = s.done.take().unwrap().await.unwrap().unwrap();
    assert!(
        matches!(stopped, Stopped::Cancelled { connections } if connections >= 1),
        "{stopped:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(Setup {
        header_timeout_ms: 500,
        body_timeout_ms: 500,
        max_connections: 8,
        ..Setup::default()
    })
    .await;
    let address = s.base.trim_start_matches("http://").to_string();
    // 40 clients that send part of their headers and then nothing
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut c = tokio::net::TcpStream::connect(&address).await.unwrap();
        c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    // a normal request still gets through: the slow ones are cut off after the header timeout,
    // and never more than the cap are served at once
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [0, 7], "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mdm_open_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open <= 8.0, "{open} connections open over a cap of 8");
    for mut c in slow {
        let mut buf = Vec::new();
        // closed by the server: the read ends
        let read = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow connection is still open");
    }
    // a body sent too slowly: 408
    let mut c = tokio::net::TcpStream::connect(&address).await.unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_batches_passes_and_tokens() {
    let s = TestServer::start(Setup::default()).await;
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [0, 7], "max_tokens": 6, "steps": 3}),
        )
        .await;
    assert_eq!(status, 200);
    let generated = r["choices"][0]["token_ids"].as_array().unwrap().len();
    let (status, _) = s
        .post(
            "/v1/completions",
            &json!({"prompt": [0, 7], "max_tokens": -1}),
        )
        .await;
    assert_eq!(status, 400);
    // a row is answered as soon as its tokens are final: the worker may still be closing its
    // batch (the batch's histograms) for a moment
    let mut text = String::new();
    for _ in 0..100 {
        let resp = s
            .client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        text = resp.text().await.unwrap();
        if text.contains("mdm_generation_seconds_count 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"mdm_requests_total{endpoint="/v1/completions",status="200"}"#),
        1.0
    );
    assert_eq!(
        value(r#"mdm_requests_total{endpoint="/v1/completions",status="400"}"#),
        1.0
    );
    assert_eq!(value("mdm_forward_passes_total"), 3.0);
    assert_eq!(value("mdm_generated_tokens_total"), generated as f64);
    assert_eq!(value("mdm_batch_rows_count"), 1.0);
    assert_eq!(value("mdm_step_seconds_count"), 3.0);
    assert_eq!(value("mdm_jobs_total"), 1.0);
    assert_eq!(value("mdm_queue_depth"), 0.0);
    assert_eq!(value("mdm_panics_total"), 0.0);
    assert_eq!(
        value("mdm_request_duration_seconds_count{endpoint=\"/v1/completions\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_is_served_and_needs_nothing_from_outside() {
    let s = TestServer::start(Setup {
        api_key: Some("k".into()),
        ..Setup::default()
    })
    .await;
    // the page itself needs no key (it asks for one); the API still does
    let resp = s.client.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.text().await.unwrap();
    for id in [
        "id=\"prompt\"",
        "id=\"generate\"",
        "id=\"canvas\"",
        "stream_steps",
    ] {
        assert!(page.contains(id), "{id}");
    }
    // offline: no script, style or font from another host
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import")
    );
    assert_eq!(s.get("/v1/models").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llada_folder_is_served_with_fast_dllm_decoding() {
    use mdm_samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/llada-parity/model");
    let model = mdm_models::MaskedTransformer::<Flex>::load_hf(&dir, &Default::default()).unwrap();
    // prompts of different lengths, sent together: one ragged batch with the dual cache
    let prompts = [
        vec![5usize, 9, 17, 3],
        vec![8usize],
        vec![2usize, 4, 6, 8, 10, 12, 14],
    ];
    let config = DecodingOptions::default()
        .with_gen_length(16)
        .with_block_length(8)
        .with_steps(16)
        .with_threshold(0.9)
        .with_cache(CacheMode::Dual);
    let sampler = MaskedDiffusionSampler::new(&model, config);
    let want: Vec<Vec<usize>> = prompts
        .iter()
        .map(|p| {
            sampler
                .generate(std::slice::from_ref(p), |_| {})
                .unwrap()
                .remove(0)
        })
        .collect();
    let engine = Engine::start::<Flex, _, _>(
        move || {
            Ok(Masked(mdm_models::MaskedTransformer::load_hf(
                &dir,
                &Default::default(),
            )?))
        },
        EngineConfig {
            batch_wait: std::time::Duration::from_millis(300),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let stats = engine.clone();
    let state = AppState::new(engine, None, ChatPrompt::plain(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let requests = prompts.iter().map(|prompt| {
        let body = json!({"prompt": prompt, "max_tokens": 16, "block_length": 8, "steps": 16, "cache": "dual", "threshold": 0.9});
        let (client, url) = (client.clone(), format!("{base}/v1/completions"));
        async move {
            let r: Value = client.post(url).json(&body).send().await.unwrap().json().await.unwrap();
            r
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (r, want) in answers.iter().zip(&want) {
        let got: Vec<usize> = serde_json::from_value(r["choices"][0]["token_ids"].clone()).unwrap();
        assert_eq!(&got, want, "{r}");
    }
    assert!(
        stats.stats().largest_batch > 1,
        "the requests shared a batch"
    );
}

/// A Dream folder as published (vocab.json + merges.txt tokenizer, chat template, shifted logits)
/// served: Fast-dLLM's Dream decoding as request fields gives the library's tokens, chat answers
/// in OpenAI's shapes through the folder's template, streaming sends the same text, and the
/// log-likelihood endpoint answers.
/// Block diffusion over HTTP: the LLaDA2 fixture (Mixture of Experts) with LLaDA2.1's decoding
/// (block-causal attention, the exact prefix cache, a threshold, token editing), prompts of
/// different lengths sent together: one batch, each row as the sampler gives it alone, the
/// edits reported in the step events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llada2_folder_is_served_with_block_diffusion_and_token_editing() {
    use mdm_samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/llada2-parity/model");
    let model = mdm_models::MaskedTransformer::<Flex>::load_hf(&dir, &Default::default()).unwrap();
    let prompts = [
        vec![5usize, 9, 17, 3],
        vec![8usize],
        vec![2usize, 4, 6, 8, 10, 12, 14],
    ];
    let mut options = DecodingOptions::default()
        .with_gen_length(12)
        .with_block_length(4)
        .with_steps(12)
        .with_threshold(0.9)
        .with_cache(CacheMode::Prefix);
    options.block_causal = true;
    options.edit_threshold = Some(0.8);
    let sampler = MaskedDiffusionSampler::new(&model, options);
    let want: Vec<Vec<usize>> = prompts
        .iter()
        .map(|p| {
            sampler
                .generate(std::slice::from_ref(p), |_| {})
                .unwrap()
                .remove(0)
        })
        .collect();
    let engine = Engine::start::<Flex, _, _>(
        move || {
            Ok(Masked(mdm_models::MaskedTransformer::load_hf(
                &dir,
                &Default::default(),
            )?))
        },
        EngineConfig {
            batch_wait: std::time::Duration::from_millis(300),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let stats = engine.clone();
    let state = AppState::new(engine, None, ChatPrompt::plain(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let fields = json!({"max_tokens": 12, "block_length": 4, "steps": 12, "threshold": 0.9,
        "cache": "prefix", "block_causal": true, "edit_threshold": 0.8});
    let requests = prompts.iter().map(|prompt| {
        let mut body = fields.clone();
        body["prompt"] = json!(prompt);
        let (client, url) = (client.clone(), format!("{base}/v1/completions"));
        async move {
            let r: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (r, want) in answers.iter().zip(&want) {
        let got: Vec<usize> = serde_json::from_value(r["choices"][0]["token_ids"].clone()).unwrap();
        assert_eq!(&got, want, "{r}");
    }
    assert!(
        stats.stats().largest_batch > 1,
        "the requests shared a batch"
    );
    // streamed with its steps: the same tokens, the canvas block by block
    let mut body = fields.clone();
    body["prompt"] = json!(prompts[0]);
    body["stream"] = json!(true);
    body["stream_steps"] = json!(true);
    let text = client
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let steps: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|e| e["object"] == "diffusion.step")
        .collect();
    assert!(!steps.is_empty());
    let blocks: std::collections::BTreeSet<u64> =
        steps.iter().map(|e| e["block"].as_u64().unwrap()).collect();
    assert!(blocks.len() >= 3, "12 tokens in blocks of 4: {blocks:?}");
    let last: Vec<Value> = steps.last().unwrap()["tokens"].as_array().unwrap().clone();
    let want0: Vec<Value> = want[0].iter().map(|&t| json!(t)).collect();
    assert_eq!(&last[..want0.len()], &want0[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dream_folder_is_served_with_its_tokenizer_and_template() {
    use mdm_samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler, Ties};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/dream-parity/model");
    let model = mdm_models::MaskedTransformer::<Flex>::load_hf(&dir, &Default::default()).unwrap();
    let tokenizer = Tokenizer::from_folder(&dir).unwrap();
    let chat = ChatPrompt::for_folder(&dir).unwrap();
    let prompt = vec![5usize, 9, 17, 3, 40];
    let options = DecodingOptions::default()
        .with_gen_length(16)
        .with_block_length(8)
        .with_steps(16)
        .with_threshold(0.9)
        .with_cache(CacheMode::Dual)
        .with_ties(Ties::Torch)
        .with_eos(tokenizer.eos_id() as usize);
    let want = MaskedDiffusionSampler::new(&model, options)
        .generate(std::slice::from_ref(&prompt), |_| {})
        .unwrap()
        .remove(0);
    let load_dir = dir.clone();
    let engine = Engine::start::<Flex, _, _>(
        move || {
            Ok(Masked(mdm_models::MaskedTransformer::load_hf(
                &load_dir,
                &Default::default(),
            )?))
        },
        EngineConfig::default(),
    )
    .unwrap();
    let state = AppState::new(engine, Some(tokenizer), chat, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let dream = json!({"max_tokens": 16, "block_length": 8, "steps": 16, "cache": "dual", "threshold": 0.9, "ties": "torch"});
    let with = |extra: Value| {
        let mut body = dream.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, text) = post("/v1/completions", with(json!({"prompt": prompt}))).await;
    assert_eq!(status, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    let got: Vec<usize> = serde_json::from_value(r["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(got, want, "{r}");

    let messages = json!([{"role": "user", "content": "What is 7 x 8?"}]);
    let (status, text) = post("/v1/chat/completions", with(json!({"messages": messages}))).await;
    assert_eq!(status, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let whole = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // the folder's template: a system turn, the user turn and the assistant's opening, 5 ids of
    // which are special tokens written as one id each
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 20, "{r}");

    let (status, text) = post(
        "/v1/chat/completions",
        with(json!({"messages": messages, "stream": true})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, whole);

    let (status, text) = post(
        "/v1/loglikelihood",
        json!({"context": [5, 9, 17], "continuation": [3, 40]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let ll: Value = serde_json::from_str(&text).unwrap();
    assert!(ll["loglikelihood"].as_f64().unwrap() < 0.0, "{ll}");
}

/// A network of its own (here a wrapper that only delegates, as a family with another
/// architecture would implement the seam): the server takes it through `MaskPredictor`.
struct OwnNetwork(mdm_models::MaskedTransformer<Flex>);

impl mdm_models::MaskPredictor<Flex> for OwnNetwork {
    type Cache = mdm_models::BlockCache<Flex>;
    fn mask_id(&self) -> usize {
        self.0.mask_id()
    }
    fn vocab_size(&self) -> usize {
        mdm_models::MaskPredictor::vocab_size(&self.0)
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn device(&self) -> burn::backend::flex::FlexDevice {
        mdm_models::MaskPredictor::device(&self.0)
    }
    fn shifts_logits(&self) -> bool {
        self.0.shifts_logits()
    }
    fn logits(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 3>, mdm_models::ModelError> {
        self.0.logits(ids)
    }
    fn logits_at(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        padding: Option<burn::tensor::Tensor<Flex, 2, burn::tensor::Bool>>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        mdm_models::MaskPredictor::logits_at(&self.0, ids, padding, index)
    }
    fn logits_caching(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        lengths: Option<&[usize]>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<(burn::tensor::Tensor<Flex, 2>, mdm_models::BlockCache<Flex>), mdm_models::ModelError>
    {
        self.0.logits_caching(ids, lengths, index)
    }
    fn logits_after_prefix(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        prefix: &mdm_models::BlockCache<Flex>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        self.0.logits_after_prefix(ids, prefix, index)
    }
    fn logits_in_window(
        &self,
        ids: burn::tensor::Tensor<Flex, 2, burn::tensor::Int>,
        starts: &[usize],
        cache: &mut mdm_models::BlockCache<Flex>,
        index: burn::tensor::Tensor<Flex, 1, burn::tensor::Int>,
    ) -> Result<burn::tensor::Tensor<Flex, 2>, mdm_models::ModelError> {
        self.0.logits_in_window(ids, starts, cache, index)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_of_its_own_is_served_through_the_seam() {
    use mdm_samplers::{CacheMode, DecodingOptions, MaskedDiffusionSampler};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/dream-parity/model");
    let model = mdm_models::MaskedTransformer::<Flex>::load_hf(&dir, &Default::default()).unwrap();
    let prompt = vec![5usize, 9, 17];
    let options = DecodingOptions::default()
        .with_gen_length(8)
        .with_block_length(4)
        .with_steps(8)
        .with_cache(CacheMode::Prefix);
    let want = MaskedDiffusionSampler::new(&model, options)
        .generate(std::slice::from_ref(&prompt), |_| {})
        .unwrap()
        .remove(0);
    let engine = Engine::start::<Flex, _, _>(
        move || {
            let net = mdm_models::MaskedTransformer::load_hf(&dir, &Default::default())?;
            Ok(Masked(OwnNetwork(net)))
        },
        EngineConfig::default(),
    )
    .unwrap();
    let state = AppState::new(engine, None, ChatPrompt::plain(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let body = json!({"prompt": prompt, "max_tokens": 8, "block_length": 4, "steps": 8, "cache": "prefix"});
    let r: Value = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<usize> = serde_json::from_value(r["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(got, want, "{r}");
}

/// The same request through the command line's parsing (`generate`'s flattened
/// `DecodingOptions`) and through the server's JSON: the same options and the same tokens, for
/// every option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_and_the_server_decode_a_request_the_same() {
    use clap::Parser;
    use mdm_samplers::{DecodingOptions, MaskedDiffusionSampler};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        decoding: DecodingOptions,
    }

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/llada-parity/model");
    let model = mdm_models::MaskedTransformer::<Flex>::load_hf(&dir, &Default::default()).unwrap();
    let engine = Engine::start::<Flex, _, _>(
        move || {
            Ok(Masked(mdm_models::MaskedTransformer::load_hf(
                &dir,
                &Default::default(),
            )?))
        },
        EngineConfig::default(),
    )
    .unwrap();
    let state = AppState::new(engine, None, ChatPrompt::plain(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let prompt = vec![5usize, 9, 17, 3];
    // (command line, JSON): every option, in the names each side takes
    let cases: Vec<(&str, Value)> = vec![
        ("", json!({})),
        (
            "--steps 8 --block-length 8",
            json!({"steps": 8, "block_length": 8}),
        ),
        (
            "--temperature 0.7 --top-p 0.9 --seed 3",
            json!({"temperature": 0.7, "top_p": 0.9, "seed": 3}),
        ),
        (
            "--temperature 1 --top-k 5 --seed 4",
            json!({"temperature": 1.0, "top_k": 5, "seed": 4}),
        ),
        (
            "--temperature 0.5 --min-p 0.2",
            json!({"temperature": 0.5, "min_p": 0.2}),
        ),
        ("--top-k 3", json!({"top_k": 3})),
        ("--remasking margin", json!({"remasking": "topk_margin"})),
        (
            "--rule entropy --alg-temp 0.5 --seed 2",
            json!({"alg": "entropy", "alg_temp": 0.5, "seed": 2}),
        ),
        (
            "--remasking maskgit_plus --alg-temp 0.1",
            json!({"remasking": "low_confidence", "alg_temp": 0.1}),
        ),
        (
            "--remasking random --seed 9",
            json!({"remasking": "random", "seed": 9}),
        ),
        (
            "--remasking origin --steps 32 --temperature 1",
            json!({"remasking": "ancestral", "steps": 32, "temperature": 1.0}),
        ),
        (
            "--remasking ancestral --steps 32 --no-reuse",
            json!({"remasking": "origin", "steps": 32, "no_reuse": true}),
        ),
        (
            "--schedule even --block-length 8 --steps 8",
            json!({"schedule": "even", "block_length": 8, "steps": 8}),
        ),
        (
            "--threshold 0.9 --block-length 8 --cache dual",
            json!({"threshold": 0.9, "block_length": 8, "cache": "dual"}),
        ),
        (
            "--factor 1 --block-length 8 --cache prefix",
            json!({"factor": 1.0, "block_length": 8, "cache": "prefix"}),
        ),
        (
            "--factor 1 --factor-as-stated",
            json!({"factor": 1.0, "factor_as_stated": true}),
        ),
        (
            "--cfg-scale 0.5 --steps 8",
            json!({"cfg_scale": 0.5, "steps": 8}),
        ),
        (
            "--joint-counting --temperature 0.9",
            json!({"joint_counting": true, "temperature": 0.9}),
        ),
        ("--eos 3", json!({"eos_id": 3})),
        (
            "--top-p 0.5 --eps 0.001 --ties torch --steps 8",
            json!({"top_p": 0.5, "eps": 0.001, "ties": "torch", "steps": 8}),
        ),
        (
            "--threshold 0.5 --threshold-carry --steps 4",
            json!({"threshold": 0.5, "threshold_carry": true, "steps": 4}),
        ),
        (
            "--mean-counting --remasking entropy --steps 6 --eps 0.001",
            json!({"mean_counting": true, "alg": "entropy", "steps": 6, "eps": 0.001}),
        ),
        (
            "--temperature 0.8 --tempered-confidence --top-k 9 --seed 5",
            json!({"temperature": 0.8, "tempered_confidence": true, "top_k": 9, "seed": 5}),
        ),
    ];
    for (line, fields) in cases {
        let args = format!("generate --gen-length 16 {line}");
        let cli = Cli::try_parse_from(args.split_whitespace())
            .expect(line)
            .decoding;
        let mut body = fields.clone();
        body["prompt"] = json!(prompt);
        body["max_tokens"] = json!(16);
        let mut from_json: DecodingOptions = serde_json::from_value(body.clone()).unwrap();
        from_json.gen_length = 16;
        assert_eq!(cli, from_json, "{line}");
        let want = MaskedDiffusionSampler::new(&model, cli)
            .generate(std::slice::from_ref(&prompt), |_| {})
            .unwrap()
            .remove(0);
        let r: Value = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<usize> = serde_json::from_value(r["choices"][0]["token_ids"].clone())
            .unwrap_or_else(|_| panic!("{line}: {r}"));
        assert_eq!(got, want, "{line}: {r}");
    }
}
