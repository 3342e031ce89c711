#!/usr/bin/env bash
# Block diffusion on a full-size LLaDA2 folder (docs/benchmarks.md, "A LLaDA2.0-mini shape"): the
# model loaded once by mdm-serve (with QUANT, default q4_k, quantized on load), then the same blocks
# decoded with the exact cache of the earlier blocks (`cache: prefix`) and without it, each request
# timed; the server's peak resident memory (VmHWM) before it is stopped.
#
#   bash scripts/bench_block_diffusion.sh LLADA2_FOLDER [PROMPT_TOKENS] [GEN_TOKENS]
#
# The prompt is PROMPT_TOKENS (default 224) token ids, GEN_TOKENS (default 64) generated in blocks
# of 32 with 32 steps per block (one token a step: random weights reach no threshold).
set -euo pipefail
model=${1:?LLaDA2 folder}
prompt_len=${2:-224}
gen=${3:-64}
quant=${QUANT:-q4_k}
cd "$(dirname "$0")/.."
cargo build --release -q -p mdm-serve --bin mdm-serve
bin=${CARGO_TARGET_DIR:-target}/release/mdm-serve
port=18411
log=$(mktemp)
started=$(date +%s.%N)
"$bin" --hf "$model" --quant "$quant" --port "$port" --max-tokens "$gen" \
    --request-timeout 3600 2> "$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 2
done
echo "date $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "loaded ($quant) in $(echo "$(date +%s.%N) - $started" | bc) s"
prompt=$(seq -s, 1000 $((1000 + prompt_len - 1)))
# a first request, not timed: neither measured request pays what a first pass does once (a matrix
# read in place from a file is interleaved on its first product; one quantized on load is already)
# CACHES="prefix" times the exact cache alone (the load and the peak without the slow requests)
for cache in ${CACHES:-warm-up prefix none}; do
    body="{\"prompt\": [$prompt], \"max_tokens\": $gen, \"steps\": $gen, \"block_length\": 32,
           \"block_causal\": true, \"cache\": \"${cache/warm-up/none}\"}"
    t0=$(date +%s.%N)
    out=$(curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' -d "$body")
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    n=$(echo "$out" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["choices"][0]["token_ids"]))')
    echo "cache $cache: $n tokens in $t s ($(echo "scale=2; $n / $t" | bc) tokens/s)"
done
grep VmHWM "/proc/$pid/status" | awk '{print "server peak " int($2 / 1024) " MB"}'
kill -TERM "$pid"
wait "$pid" || true
