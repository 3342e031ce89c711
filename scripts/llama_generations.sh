#!/usr/bin/env bash
# llama.cpp's diffusion decoding on the gguf-parity models, as token ids, for
# tests/suite/parity_gguf.rs (`*_generations_equal_llamas`):
#
#   bash scripts/llama_generations.sh [LLAMA_DIR] > tests/data/gguf-parity/llama-generations.json
#
# LLAMA_DIR (default /tmp/llama-diffusion) is what ../shared/tools/build-llama-diffusion.sh builds;
# scripts/llama_diffusion_tokens.cpp is compiled against its library. Every case uses llama.cpp's
# `--temp 0 --top-k 1` sampler chain (top-k 1, top-p 0.95, a draw at temperature 1 from the one
# token left: the argmax), the confidence algorithm (every confidence is then 1: slots revealed
# left to right), and the model file's `diffusion.shift_logits`.
set -euo pipefail
llama=${1:-/tmp/llama-diffusion}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$here/tests/data/gguf-parity
bin=$(mktemp -d)/llama_diffusion_tokens
c++ -O2 -std=c++17 "$here/scripts/llama_diffusion_tokens.cpp" -I"$llama/src/include" \
  -I"$llama/src/ggml/include" -I"$llama/src/examples/diffusion" -I"$llama/src/common" \
  "$llama/build/examples/diffusion/libllama-diffusion.a" -L"$llama/build/bin" -lllama-common \
  -lllama -lggml -lggml-base -Wl,-rpath,"$llama/build/bin" -o "$bin"

llada_prompt=(50256 818 262 3726 1793 2727 262 9538 290 262 4534 13 843 262 4534 373 1231 1296 11
  290 7951 26 290 11854 373 2402 262 1986 286 262 2769 13)
dream_prompt=(1 512 278 6763 4177 2825 278 18356 322 278 8437 29889 1126 278 8437 471)

case_json() { # family canvas steps block eps n_prompt: one JSON object
  local family=$1 canvas=$2 steps=$3 block=$4 eps=$5 n=$6 prompt out
  if [[ $family == llada ]]; then prompt=("${llada_prompt[@]:0:n}"); else prompt=("${dream_prompt[@]:0:n}"); fi
  out=$("$bin" "$data/$family/model-f16.gguf" "$canvas" "$steps" "$block" "$eps" 1 "${prompt[@]}" 2>/dev/null | head -1)
  printf '  {"family": "%s", "canvas": %d, "steps": %d, "block_length": %d, "eps": %s, "prompt": [%s], "output": [%s]}' \
    "$family" "$canvas" "$steps" "$block" "$eps" "$(IFS=,; echo "${prompt[*]}")" "$(echo "$out" | tr ' ' ',')"
}

echo "["
case_json llada 64 16 16 0 16; echo ","
case_json llada 64 32 32 0 32; echo ","
case_json llada 48 24 8 0 8; echo ","
case_json dream 48 8 0 0.001 16; echo ","
case_json dream 40 24 0 0.001 8
echo
echo "]"
