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
# (default 2); ours also from the f32 Hugging Face folder (its f32 matrices on the float kernels); ours: the same prompt (31 GPT-2 tokens; llama.cpp adds a BOS), 96 tokens in 3 blocks
# of 32 with llama.cpp's 8 steps per block (a canvas of 127); time per forward pass, peak memory (/usr/bin/time's maximum resident set) and load
# time (wall time minus the generation's own). Ours also with the dual cache, and with a threshold.
#
# FAMILY=lladamoe PRECISIONS="q8_0 q4_k_m" runs another family's folder the same way (`DIR/FAMILY/hf`
# and `DIR/FAMILY/model-f16.gguf` from `gguf_models.py --families lladamoe ...`; the dense Hugging
# Face run is LLaDA's only).
set -euo pipefail
dir=$1
family=${FAMILY:-llada}
precisions=${PRECISIONS:-f32 f16 q8_0 q4_k_m}
llama=${2:-/tmp/llama-diffusion}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
gen=${CARGO_TARGET_DIR:-$here/target}/release/examples/generate
canvas=128 steps=32 block=32
prompt="In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep."
f32="$dir/$family/model-f32.gguf"
[[ -f $f32 ]] || f32="$dir/$family/model-f16.gguf"
for q in F16 Q8_0 Q4_K_M; do
  out="$dir/$family/model-${q,,}.gguf"
  [[ -f $out ]] || "$llama/bin/llama-quantize" "$f32" "$out" "$q" > /dev/null 2>&1
done
tok="$dir/$family/hf/tokenizer.json"
# the prompt's length in the GPT-2 ids both tools use (llama.cpp adds a BOS; ours adds none)
n_prompt=$(RAYON_NUM_THREADS=1 "$gen" --hf "$f32" --tokenizer "$tok" --prompt "$prompt" --gen-length 1 \
  --steps 1 --no-live 2>/dev/null | grep -o "prompt tokens: [0-9]*" | grep -o "[0-9]*$" || true)
n_prompt=${n_prompt:-31}
# ours: whole blocks after the prompt (llama.cpp clips its last block at the canvas's end), the
# same steps per block as llama.cpp's (steps / (canvas / block))
gen_length=$(((canvas - n_prompt) / block * block))
our_steps=$((gen_length / block * steps / (canvas / block)))

measure() { # label, command...: prints label, wall s, peak MB, then the command's stdout/stderr
  local label=$1; shift
  /usr/bin/time -f "TIME %e %M" "$@" > /tmp/bench.out 2> /tmp/bench.err || { cat /tmp/bench.err; exit 1; }
  local wall peak
  read -r wall peak < <(grep "^TIME" /tmp/bench.err | awk '{print $2, $3}')
  echo "$label wall ${wall}s peak $((peak / 1024))MB"
}

echo "date $(date -u +%F) machine $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)," \
  "$(grep -m1 -o 'avx512f' /proc/cpuinfo || echo 'no avx512')"
if [[ $family == llada ]]; then
  measure "ours f32 HF folder" env RAYON_NUM_THREADS="$threads" "$gen" --hf "$dir/llada/hf" \
    --prompt "$prompt" --gen-length "$gen_length" --steps "$our_steps" --block-length $block --no-live
  grep -h "generated in\|loaded in" /tmp/bench.out /tmp/bench.err | head -2
fi
for q in $precisions; do
  file="$dir/$family/model-$q.gguf"
  measure "llama.cpp $q" "$llama/bin/llama-diffusion-cli" -m "$file" -p "$prompt" -ub $canvas \
    --diffusion-steps $steps --diffusion-block-length $block --temp 0 -t "$threads"
  grep -h "total time" /tmp/bench.out /tmp/bench.err | head -1
  # (a threshold adds nothing on random weights: no token reaches it, one is revealed per step)
  for mode in "" "--cache dual"; do
    # shellcheck disable=SC2086
    measure "ours $q ${mode:-no cache}" env RAYON_NUM_THREADS="$threads" "$gen" --hf "$file" \
      --tokenizer "$tok" --prompt "$prompt" --gen-length $gen_length --steps $our_steps \
      --block-length $block --no-live $mode
    grep -h "generated in\|loaded in" /tmp/bench.out /tmp/bench.err | head -2
  done
done
