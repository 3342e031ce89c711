//! The playground in a real browser: headless Chromium, driven through chromedriver (WebDriver),
//! types a prompt, presses Generate, and must show canvases with masks step by step and then the
//! final text, equal to the same request answered without streaming. A screenshot of the page is
//! written to `$MDM_SCREENSHOT` when that is set (docs/serving.md keeps one).
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`; CI
//! installs them). Without them the test says so in one line and passes, unless
//! `MDM_REQUIRE_BROWSER=1` (CI), where their absence fails it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use fantoccini::{ClientBuilder, Locator};
use mdm_data::chat::ChatPrompt;
use mdm_data::Tokenizer;
use mdm_models::ModelConfig;
use mdm_serve::engine::{Engine, EngineConfig};
use mdm_serve::server::{serve, AppState, ServerConfig};
use mdm_serve::Masked;
use serde_json::{json, Value};

const TEXT: &str = "In the beginning God created the heaven and the earth. And the earth was \
without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved \
upon the face of the waters. And God said, Let there be light: and there was light.";

/// chromedriver, killed when the test ends however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The served model's server, on a free port.
async fn start_server() -> String {
    let docs: Vec<String> = TEXT.split(". ").map(String::from).collect();
    let tok = Tokenizer::train_bpe(docs.iter(), 300).expect("tokenizer");
    let vocab = tok.vocab_size();
    let engine = Engine::start::<Flex, _, _>(
        move || {
            let config = ModelConfig::custom(vocab, 2, 2, 32, 64, 128);
            Ok(Masked(config.init_masked(1, &Default::default())?))
        },
        EngineConfig::default(),
    )
    .expect("engine");
    let state = AppState::new(
        engine,
        Some(tok),
        ChatPrompt::plain(),
        ServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_shows_the_canvas_unmasking_and_the_final_text() {
    let required = std::env::var("MDM_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    if !(found("chromedriver") && found("chromium")) {
        assert!(
            !required,
            "MDM_REQUIRE_BROWSER=1 but chromium or chromedriver is missing"
        );
        eprintln!("skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)");
        return;
    }
    let base = start_server().await;
    let port = free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1200,760"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let webdriver = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let browser = loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&webdriver)
            .await
        {
            Ok(c) => break c,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                panic!("chromedriver did not start a session: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    browser.goto(&format!("{base}/")).await.unwrap();
    let prompt = "And God said";
    browser
        .find(Locator::Id("prompt"))
        .await
        .unwrap()
        .send_keys(prompt)
        .await
        .unwrap();
    for (id, value) in [("max_tokens", "24"), ("steps", "12")] {
        let field = browser.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }
    browser
        .find(Locator::Id("generate"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let script = "return document.getElementById('final').dataset.done === 'true'";
    let started = Instant::now();
    while browser.execute(script, vec![]).await.unwrap() != json!(true) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no answer in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = browser
        .execute(
            "return document.getElementById('status').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        status.as_str().unwrap().starts_with("Done"),
        "the page reports: {status}"
    );
    // the canvas after every step: masks (`_`) at first, none at the end
    let steps = browser
        .execute("return window.mdmSteps", vec![])
        .await
        .unwrap();
    let steps: Vec<String> = serde_json::from_value(steps).unwrap();
    assert_eq!(steps.len(), 12, "one canvas per step: {steps:?}");
    assert!(steps[0].contains('_'), "{}", steps[0]);
    assert!(steps.iter().filter(|c| c.contains('_')).count() >= 2);
    // the canvas drawn on the page: one span per position, none masked at the end
    let drawn = browser
        .execute(
            "return [document.querySelectorAll('#canvas span').length, document.querySelectorAll('#canvas .mask').length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(drawn, json!([24, 0]));
    let shown = browser
        .execute(
            "return document.getElementById('final').textContent",
            vec![],
        )
        .await
        .unwrap();
    // the same request without streaming
    let body = json!({"prompt": prompt, "max_tokens": 24, "steps": 12, "temperature": 0,
        "remasking": "low_confidence", "cache": "none", "seed": 0});
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown, answer["choices"][0]["text"], "{answer}");
    if let Ok(path) = std::env::var("MDM_SCREENSHOT") {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
    }
    browser.close().await.unwrap();
}
