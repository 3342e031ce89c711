#!/usr/bin/env bash
# The server under load on a real-size model (docs/serving.md, "Load"): batching on (--max-batch 8)
# and off (--max-batch 1), greedy and sampled requests, concurrency 1 / 4 / 16, each run a bounded
# number of completions through examples/load_test.rs; one Markdown row per run.
#
#   bash scripts/serve_load.sh MODEL.gguf TOKENIZER.json [MAX_TOKENS]
#
# MODEL: e.g. the 0.82 B LLaDA of docs/benchmarks.md at Q8_0. Decoding: Fast-dLLM's dual cache,
# one block of MAX_TOKENS (default 32) in MAX_TOKENS steps.
set -euo pipefail
model=${1:?model file or folder}
tokenizer=${2:?tokenizer.json}
tokens=${3:-32}
cd "$(dirname "$0")/.."
cargo build --release -q -p mdm-serve --bin mdm-serve --example load_test
bin=${CARGO_TARGET_DIR:-target}/release
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for batch in 8 1; do
    port=$((18300 + batch))
    "$bin"/mdm-serve --hf "$model" --tokenizer "$tokenizer" --port "$port" --max-batch "$batch" \
        --batch-wait-ms 20 --max-tokens "$tokens" 2>/dev/null &
    pids+=($!)
done
for port in 18301 18308; do
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done
done
echo "| decoding | batching | requests | concurrency | answered | requests/s | p50 latency, s | p99 latency, s | generated tokens/s |"
echo "|---|---|---|---|---|---|---|---|---|"
for kind in greedy sampled; do
    fields="{\"block_length\": $tokens, \"cache\": \"dual\"}"
    [ "$kind" = sampled ] && fields="{\"block_length\": $tokens, \"cache\": \"dual\", \"temperature\": 0.8}"
    for conc in 1 4 16; do
        requests=$(( conc == 1 ? 6 : conc ))
        for batch in 1 8; do
            label="$kind | $([ "$batch" = 1 ] && echo off || echo on)"
            "$bin"/examples/load_test --url "http://127.0.0.1:$((18300 + batch))" --requests "$requests" \
                --concurrency "$conc" --max-tokens "$tokens" --steps "$tokens" --fields "$fields" \
                --label "$label" --markdown
        done
    done
done
