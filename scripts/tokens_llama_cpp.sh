#!/usr/bin/env bash
# Our tokens against llama.cpp's on the benchmark's GGUF files (docs/benchmarks.md, "Tokens"):
#
#   bash scripts/tokens_llama_cpp.sh DIR [LLAMA_DIR]
#
# DIR as for scripts/bench_llama_cpp.sh (DIR/llada/model-{f32,f16,q8_0,q4_k_m}.gguf). Each file: the
# benchmark's 31-token prompt after a BOS (32 ids, tokenized by the file's own vocabulary), a
# 64-position canvas, one block of 32, 8 steps; llama.cpp's `--temp 0 --top-k 1` decoding through
# scripts/llama_diffusion_tokens.cpp, ours through `generate` with the options that compute the
# same (top-1 candidate drawn at temperature 1, tempered confidence: every confidence 1, so slots
# are revealed left to right; LLaDA's even schedule; a pass at every step).
set -euo pipefail
dir=$1
llama=${2:-/tmp/llama-diffusion}
here=$(cd "$(dirname "$0")/.." && pwd)
gen=${CARGO_TARGET_DIR:-$here/target}/release/examples/generate
bin=$(mktemp -d)/llama_diffusion_tokens
bash "$here/scripts/build_llama_diffusion_tokens.sh" "$llama" "$bin"
prompt="In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep."
for q in f32 f16 q8_0 q4_k_m; do
  file="$dir/llada/model-$q.gguf"
  out=$("$bin" "$file" 64 16 32 0 1 --text "$prompt" 2>/dev/null)
  ids=$(sed -n 1p <<< "$out")
  theirs=$(sed -n 2p <<< "$out")
  # ours encodes the text with the file's vocabulary too (the ids are compared); no EOS stop
  # (llama.cpp has none): the last padding row of the vocabulary as the EOS id
  ours=$(RAYON_NUM_THREADS=${THREADS:-2} "$gen" --hf "$file" --prompt "$prompt" --gen-length 32 \
    --steps 8 --block-length 32 --schedule even --temperature 1 --top-k 1 --tempered-confidence \
    --no-reuse --no-live --eos 50303 --show-ids 2>/dev/null)
  python3 - "$q" "$theirs" "$ours" "$ids" <<'PY'
import sys
q, a, out, ids = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
lines = dict(l.split(": ", 1) for l in out.splitlines() if l.startswith(("prompt ids: ", "output ids: ")))
assert lines["prompt ids"] == ids, ("prompts differ", lines["prompt ids"], ids)
b = lines["output ids"].split()
same = sum(x == y for x, y in zip(a, b))
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"{q}: {same} of {len(a)} tokens equal" + ("" if first is None else f", first difference at token {first}"))
PY
done
