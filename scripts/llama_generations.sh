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
bash "$here/scripts/build_llama_diffusion_tokens.sh" "$llama" "$bin"

# LLaDA's, LLaDA-MoE's and RND1's prompts are text, tokenized by llama.cpp from the file's GPT-2
# vocabulary (the test checks ours encodes them to the same ids); Dream's file has a SentencePiece
# vocabulary, which we do not read from GGUF: its prompts are ids
texts=("In the beginning God created the heaven and the earth. And the earth was"
  $'<|endoftext|>Hello,  world!\n\t1234 caf\u00e9 \u00fcber 3.14 -- "quoted" it\'s DON\'T'
  "The quick brown fox")
dream_prompt=(1 512 278 6763 4177 2825 278 18356 322 278 8437 29889 1126 278 8437 471)

json_ids() { tr -s ' ' ',' <<< "$1"; }
case_json() { # family canvas steps block eps (text index | n prompt ids): one JSON object
  local family=$1 canvas=$2 steps=$3 block=$4 eps=$5 text="" out
  if [[ $family != dream ]]; then
    text=${texts[$6]}
    out=$("$bin" "$data/$family/model-f16.gguf" "$canvas" "$steps" "$block" "$eps" 1 --text "$text" 2>/dev/null)
  else
    out=$("$bin" "$data/$family/model-f16.gguf" "$canvas" "$steps" "$block" "$eps" 1 "${dream_prompt[@]:0:$6}" 2>/dev/null)
  fi
  printf '  {"family": "%s", "canvas": %d, "steps": %d, "block_length": %d, "eps": %s, "text": %s, "prompt": [%s], "output": [%s]}' \
    "$family" "$canvas" "$steps" "$block" "$eps" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]) if sys.argv[1] else "null")' "$text")" \
    "$(json_ids "$(sed -n 1p <<< "$out")")" "$(json_ids "$(sed -n 2p <<< "$out")")"
}

echo "["
case_json llada 64 16 16 0 0; echo ","
case_json llada 64 32 4 0 1; echo ","
case_json llada 45 18 5 0 2; echo ","
case_json dream 48 8 0 0.001 16; echo ","
case_json dream 40 24 0 0.001 8; echo ","
# the Mixture-of-Experts archs: LLaDA-MoE (unshifted, LLaDA's block schedule) and RND1 (shifted,
# the timestep schedule)
case_json lladamoe 45 18 5 0 0; echo ","
case_json lladamoe 40 20 4 0 2; echo ","
case_json rnd1 48 16 0 0.001 0; echo ","
case_json rnd1 40 24 0 0.001 2
echo
echo "]"
