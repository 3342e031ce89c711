#!/usr/bin/env bash
# Compiles scripts/llama_diffusion_tokens.cpp against a llama.cpp build:
#   bash scripts/build_llama_diffusion_tokens.sh [LLAMA_DIR] OUT
# LLAMA_DIR (default /tmp/llama-diffusion) is what ../shared/tools/build-llama-diffusion.sh builds.
set -euo pipefail
llama=${1:-/tmp/llama-diffusion}
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
c++ -O2 -std=c++17 "$here/scripts/llama_diffusion_tokens.cpp" -I"$llama/src/include" \
  -I"$llama/src/ggml/include" -I"$llama/src/examples/diffusion" -I"$llama/src/common" \
  "$llama/build/examples/diffusion/libllama-diffusion.a" -L"$llama/build/bin" -lllama-common \
  -lllama -lggml -lggml-base -Wl,-rpath,"$llama/build/bin" -o "$out"
