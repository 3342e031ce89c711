#!/usr/bin/env bash
# Learning-rate x batch sweep of the KJV MDM of docs/training.md at a fixed budget of tokens
# (1,228,800 = 600 steps of 8 x 256, the 20-minute run on 2 cores): the batch grows by gradient
# accumulation and the steps shrink to keep the tokens; warm-up is a sixth of the steps as in
# the reference run. Resumable: a finished setting is skipped, an interrupted one resumed from its
# newest checkpoint, so the sweep can span sessions. Results: runs/kjv-sweep/<setting>/.
#
#   bash scripts/kjv-recipe-sweep.sh [data dir, default data/kjv] [binary, default target/release/examples/pretrain]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data/kjv}
bin=${2:-target/release/examples/pretrain}
out=runs/kjv-sweep
tokens=1228800
mkdir -p "$out"
# batch (sequences per optimizer step) and peak learning rate; the first two ran in the session of
# 2026-12-02 (their figures are in docs/training.md), so they come last when the sweep restarts
for setting in "16 2e-3" "8 4e-3" "8 1e-3" "32 8e-3" "16 8e-3" "32 2e-3" "16 4e-3" "32 4e-3"; do
    read -r batch lr <<<"$setting"
    accum=$((batch / 8))
    steps=$((tokens / (batch * 256)))
    warmup=$((steps / 6))
    min_lr=$(python3 -c "print(f'{$lr / 10:g}')")
    run="$out/b$batch-lr$lr"
    if [ -d "$run/model" ]; then echo "done: $run"; continue; fi
    resume=()
    if [ -d "$run/checkpoints" ]; then resume=(--resume); fi
    echo "== $run: $steps steps of $batch x 256 (accumulation $accum), lr $lr -> $min_lr, warm-up $warmup"
    "$bin" --data "$data" --out "$run" --model mdm --n-layer 4 --n-head 4 --n-embd 256 \
        --steps "$steps" --micro-batch 8 --grad-accum "$accum" --seq-len 256 \
        --lr "$lr" --min-lr "$min_lr" --warmup-steps "$warmup" \
        --eval-every $((steps / 3)) --eval-blocks 64 --eval-mc 8 \
        --save-every 50 --keep-last 2 --no-progress "${resume[@]}" 2>&1 | tee -a "$run.log" | grep -E "validation|steps" || true
done
