//! A bounded load test of a running server: `--requests` completions at `--concurrency` at a time,
//! then it stops and prints requests per second, latency percentiles and generated tokens per
//! second (a Markdown row with `--markdown`).
//!
//! ```text
//! cargo run --release -p mdm-serve -- --config 6M --tokenizer ../shared/data/tokenizers/llama2/tokenizer.json &
//! cargo run --release -p mdm-serve --example load_test -- --requests 64 --concurrency 8
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Bounded load test of an mdm-serve server")]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Tokens per completion.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Denoising steps (masked models).
    #[arg(long)]
    steps: Option<usize>,
    /// More request fields, a JSON object merged into every request (`'{"temperature": 0.8,
    /// "block_length": 32, "cache": "dual"}'`); each request's `seed` is its number.
    #[arg(long, value_parser = parse_object)]
    fields: Option<serde_json::Map<String, Value>>,
    /// Prompts are this text followed by the request's number (so rows differ in content).
    #[arg(
        long,
        default_value = "In the beginning God created the heaven and the earth, verse"
    )]
    prompt: String,
    /// API key.
    #[arg(long, env = "MDM_API_KEY")]
    api_key: Option<String>,
    /// A label for the Markdown row.
    #[arg(long, default_value = "")]
    label: String,
    /// Print one Markdown table row.
    #[arg(long)]
    markdown: bool,
}

fn parse_object(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("--fields must be a JSON object, got {other}")),
        Err(e) => Err(format!("--fields is not JSON: {e}")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    if args.concurrency == 0 || args.requests == 0 {
        return Err("--requests and --concurrency must be positive".into());
    }
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.min(args.requests) {
        let (client, next, args) = (client.clone(), next.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            let mut results: Vec<(Duration, Result<usize, String>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.requests {
                    return results;
                }
                let mut body = json!({
                    "prompt": format!("{} {i}", args.prompt),
                    "max_tokens": args.max_tokens,
                });
                if let Some(s) = args.steps {
                    body["steps"] = json!(s);
                }
                if let Some(fields) = &args.fields {
                    for (k, v) in fields {
                        body[k] = v.clone();
                    }
                    body["seed"] = json!(i);
                }
                let mut req = client
                    .post(format!("{}/v1/completions", args.url))
                    .json(&body);
                if let Some(k) = &args.api_key {
                    req = req.bearer_auth(k);
                }
                let t = Instant::now();
                let outcome = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.json::<Value>().await {
                            Ok(v) if status.is_success() => {
                                Ok(v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize)
                            }
                            Ok(v) => Err(format!("{status}: {v}")),
                            Err(e) => Err(format!("{status}: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                results.push((t.elapsed(), outcome));
            }
        }));
    }
    let mut latencies = Vec::new();
    let (mut tokens, mut failures) = (0, Vec::new());
    for w in workers {
        for (latency, outcome) in w.await? {
            match outcome {
                Ok(n) => {
                    latencies.push(latency);
                    tokens += n;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort();
    let ok = latencies.len();
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    if args.markdown {
        println!(
            "| {} | {} | {} | {ok} | {:.2} | {:.2} | {:.2} | {:.1} |",
            args.label,
            args.requests,
            args.concurrency,
            ok as f64 / wall,
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            tokens as f64 / wall
        );
    } else {
        println!(
            "{ok}/{} requests answered in {wall:.1} s: {:.2} requests/s, latency p50 {:.2} s, p99 {:.2} s, {:.1} generated tokens/s",
            args.requests,
            ok as f64 / wall,
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            tokens as f64 / wall
        );
    }
    if let Some(first) = failures.first() {
        eprintln!("{} requests failed; the first: {first}", failures.len());
        std::process::exit(1);
    }
    Ok(())
}
