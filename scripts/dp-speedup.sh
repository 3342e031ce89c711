#!/usr/bin/env bash
# Two CPU peers (--devices cpu:2) against one device, the same run, interleaved: 1, 2, 1, 2.
# Prints the throughput of each (tokens of the global batch per second of training).
# Usage: bash scripts/dp-speedup.sh [data folder] [steps]   (data from `prepare`, default data/kjv)
set -euo pipefail
data=${1:-data/kjv}
steps=${2:-30}
cargo build --release --example pretrain -q
ex=${CARGO_TARGET_DIR:-target}/release/examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in 1 2; do
  for devices in cpu cpu:2; do
    out="$work/$devices-$round"
    "$ex"/pretrain --data "$data" --out "$out" --model mdm --n-layer 4 --n-head 4 \
        --n-embd 256 --seq-len 256 --micro-batch 4 --grad-accum 2 --steps "$steps" \
        --warmup-steps 5 --eval-blocks 0 --save-every 0 --no-progress --log-every 1000 \
        --devices "$devices" > "$out.log"
    elapsed=$(tail -1 "$out/metrics.csv" | awk -F, '{print $7}')
    tokens=$(tail -1 "$out/metrics.csv" | awk -F, '{print $2}')
    printf '%-6s round %d: %s tokens in %.1f s = %.0f tokens/s\n' "$devices" "$round" "$tokens" \
        "$elapsed" "$(echo "$tokens / $elapsed" | bc -l)"
  done
done
