#!/usr/bin/env bash
# The seed corpus of every fuzz target in fuzz/corpus/<target>/ (ignored by git): generated models
# and shards (examples/seed.rs), the repository's fixtures and docs, and, when ../shared is beside
# the repository, a few lines of its evaluation sets.
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus
sep=$'\n\x00--8<--\x00\n'
cargo run --quiet --example seed -- "$corpus"
mkdir -p "$corpus"/{hf_folder,jsonl_readers,train_config,scaling_grid,tokenizer,gguf_file}
cp ../crates/mdm-models/tests/data/gguf/reference.gguf "$corpus/gguf_file/reference"
llada=../tests/data/llada-parity/model
{
  cat "$llada/config.json"; printf '%s' "$sep"
  cat "$llada/model.safetensors.index.json"
  for shard in "$llada"/model-0000*-of-*.safetensors; do printf '%s' "$sep"; cat "$shard"; done
} > "$corpus/hf_folder/llada"
printf '%s\n' '{"prompt": "The model", "completion": " learns."}' \
  '{"prompt": "Q", "response": "A"}' > "$corpus/jsonl_readers/sft"
printf '%s\n' '{"context": "a", "choices": ["b", "c"], "gold": 1}' > "$corpus/jsonl_readers/choice"
printf '%s\n' '{"question": "1+1?", "answer": "#### 2"}' > "$corpus/jsonl_readers/math"
if [ -d ../../shared/data/eval ]; then
  for f in ../../shared/data/eval/*.jsonl; do head -n 2 "$f" > "$corpus/jsonl_readers/$(basename "$f")"; done
fi
cp ../docs/scaling.toml "$corpus/scaling_grid/grid"
printf '%s\n' 'seq_len = 64' 'micro_batch = 4' 'lr = 2e-3' 'steps = 100' 'objective = "mdm"' > "$corpus/train_config/toml"
printf '%s\n' '{"seq_len": 64, "micro_batch": 4, "lr": 0.002, "steps": 100}' > "$corpus/train_config/json"
find .. -maxdepth 4 -name tokenizer.json -size -300k -not -path "*/target/*" | head -n 3 | while read -r t; do
  cp "$t" "$corpus/tokenizer/$(echo "$t" | tr '/.' '__')"
done
ls "$corpus"/* | head -n 40
