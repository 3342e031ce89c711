#!/usr/bin/env bash
# Ours against llama.cpp's diffusion CLI on the same GGUF files, back to back (docs/benchmarks.md,
# "Full-size models against llama.cpp").
#
#   bash scripts/bench_llama_cpp.sh DIR [LLAMA_DIR]
#
# DIR holds `llada/hf` (a Hugging Face LLaDA folder with a GPT-2 tokenizer.json) and
# `llada/model-f32.gguf` (llama.cpp's converter's output), both made by
#   python scripts/gguf_models.py --llama LLAMA_DIR --out DIR --families llada --d 2048 --layers 12 \
#       --heads 16 --kv 16 --hidden 5632 --dtype float32 --outtype f32 --untied
# LLAMA_DIR (default /tmp/llama-diffusion) is what ../shared/tools/build-llama-diffusion.sh builds.
# The other precisions are made from the f32 file with llama.cpp's llama-quantize. Each run: a
# 128-position canvas (llama.cpp's -ub), 32 steps in blocks of 32, temperature 0, THREADS threads
# (default 2); time per forward pass, peak memory (/usr/bin/time's maximum resident set) and load
# time (wall time minus the generation's own). Ours also with the dual cache, and with a threshold.
set -euo pipefail
dir=$1
llama=${2:-/tmp/llama-diffusion}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
gen=${CARGO_TARGET_DIR:-$here/target}/release/examples/generate
canvas=128 steps=32 block=32
prompt="The capital of France is a city that"
f32="$dir/llada/model-f32.gguf"
for q in F16 Q8_0 Q4_K_M; do
  out="$dir/llada/model-${q,,}.gguf"
  [[ -f $out ]] || "$llama/bin/llama-quantize" "$f32" "$out" "$q" > /dev/null 2>&1
done
tok="$dir/llada/hf/tokenizer.json"
# the prompt's length in the GPT-2 ids both tools use (llama.cpp adds a BOS; ours adds none)
n_prompt=$(RAYON_NUM_THREADS=1 "$gen" --hf "$f32" --tokenizer "$tok" --prompt "$prompt" --gen-length 1 \
  --steps 1 --no-live 2>/dev/null | grep -o "prompt tokens: [0-9]*" | grep -o "[0-9]*$" || true)
n_prompt=${n_prompt:-8}

measure() { # label, command...: prints label, wall s, peak MB, then the command's stdout/stderr
  local label=$1; shift
  /usr/bin/time -f "TIME %e %M" "$@" > /tmp/bench.out 2> /tmp/bench.err || { cat /tmp/bench.err; exit 1; }
  local wall peak
  read -r wall peak < <(grep "^TIME" /tmp/bench.err | awk '{print $2, $3}')
  echo "$label wall ${wall}s peak $((peak / 1024))MB"
}

echo "date $(date -u +%F) machine $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for q in f32 f16 q8_0 q4_k_m; do
  file="$dir/llada/model-$q.gguf"
  measure "llama.cpp $q" "$llama/bin/llama-diffusion-cli" -m "$file" -p "$prompt" -ub $canvas \
    --diffusion-steps $steps --diffusion-block-length $block --temp 0 -t "$threads"
  grep -h "total time" /tmp/bench.out /tmp/bench.err | head -1
  for mode in "" "--cache dual" "--cache dual --threshold 0.9"; do
    # shellcheck disable=SC2086
    measure "ours $q ${mode:-no cache}" env RAYON_NUM_THREADS="$threads" "$gen" --hf "$file" \
      --tokenizer "$tok" --prompt "$prompt" --gen-length $((canvas - n_prompt)) --steps $steps \
      --block-length $block --no-live $mode
    grep -h "generated in" /tmp/bench.out /tmp/bench.err | head -1
  done
done
