#!/usr/bin/env bash
# Quantized weights: our integer dot products against our widened f32 path and llama.cpp's diffusion
# CLI, per forward pass on the same GGUF files, back to back (docs/benchmarks.md, "Integer dot
# products").
#
#   bash scripts/bench_integer_dot.sh DIR [LLAMA_BIN]
#
# DIR/llada holds the files of scripts/bench_llama_cpp.sh (hf/ and model-{q8_0,q4_k_m}.gguf, made
# there with llama-quantize). LLAMA_BIN (default /tmp/llama-diffusion/bin/llama-diffusion-cli).
# Each run: the 31-token prompt, 96 tokens in 3 blocks of 32, 8 steps per block (24 passes over
# 127 positions), then the same with the dual cache (passes over 32-position windows); llama.cpp:
# a 128-position canvas, 32 steps in blocks of 32 (its per-pass time).
set -euo pipefail
dir=$1
llama=${2:-/tmp/llama-diffusion/bin/llama-diffusion-cli}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
gen=${CARGO_TARGET_DIR:-$here/target}/release/examples/generate
prompt="In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep."
tok="$dir/llada/hf/tokenizer.json"
echo "date $(date -u +%F) machine $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)," \
  "$(grep -m1 -o -w 'avx512_vnni\|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for q in q8_0 q4_k_m; do
  file="$dir/llada/model-$q.gguf"
  "$llama" -m "$file" -p "$prompt" -ub 128 --diffusion-steps 32 --diffusion-block-length 32 \
    --temp 0 -t "$threads" 2>&1 | grep -o "time per step: [0-9.]*ms" | sed "s/^/llama.cpp $q: /"
  for product in integer widened; do
    for mode in "" "--cache dual"; do
      # shellcheck disable=SC2086
      MDM_QUANTIZED_PRODUCT=$product RAYON_NUM_THREADS=$threads "$gen" --hf "$file" \
        --tokenizer "$tok" --prompt "$prompt" --gen-length 96 --steps 24 --block-length 32 \
        --no-live $mode 2>&1 | grep -o "generated in [0-9.]*s" | sed "s/^/ours $q $product ${mode:-full canvas}: /"
    done
  done
done
