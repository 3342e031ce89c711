#!/usr/bin/env bash
# Two MPI ranks (mpirun -np 2 ... --mpi, one core each) against one process (every core), the same
# run, interleaved: 1, 2, 1, 2. Prints the throughput of each (tokens of the global batch per
# second of training, from rank 0's metrics.csv).
# Usage: bash scripts/mpi-speedup.sh [data folder] [steps]   (data from `prepare`, default data/kjv)
# Needs Open MPI or MPICH and libclang (Debian: openmpi-bin libopenmpi-dev libclang-dev).
set -euo pipefail
data=${1:-data/kjv}
steps=${2:-30}
cargo build --release --features mpi --example pretrain -q
ex=${CARGO_TARGET_DIR:-target}/release/examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--data "$data" --model mdm --n-layer 4 --n-head 4 --n-embd 256 --seq-len 256
    --micro-batch 4 --grad-accum 2 --steps "$steps" --warmup-steps 5 --eval-blocks 0
    --save-every 0 --no-progress --log-every 1000)
as_root=()
[ "$(id -u)" = 0 ] && as_root=(--allow-run-as-root)
for round in 1 2; do
  for ranks in 1 2; do
    out="$work/$ranks-$round"
    if [ "$ranks" = 1 ]; then
      "$ex"/pretrain "${args[@]}" --out "$out" > "$out.log"
    else
      RAYON_NUM_THREADS=1 mpirun "${as_root[@]}" -np "$ranks" --bind-to core \
          "$ex"/pretrain --mpi "${args[@]}" --out "$out" > "$out.log"
    fi
    elapsed=$(tail -1 "$out/metrics.csv" | awk -F, '{print $7}')
    tokens=$(tail -1 "$out/metrics.csv" | awk -F, '{print $2}')
    printf '%s rank(s) round %d: %s tokens in %.1f s = %.0f tokens/s\n' "$ranks" "$round" \
        "$tokens" "$elapsed" "$(echo "$tokens / $elapsed" | bc -l)"
  done
done
