#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU: the SMDM parity tests and the model
# benchmarks under `--features cuda`, then under `--features wgpu`, printing the figures.
#   bash scripts/gpu-check.sh            # cuda then wgpu
#   BACKENDS=cuda bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
status=0
for backend in ${BACKENDS:-cuda wgpu}; do
  echo "==== $backend: parity tests"
  cargo test --release --features "$backend" --test parity --test parity_sampler -- --nocapture 2>&1 \
    | grep -E "diff|loss|test result|panicked|error" || status=1
  echo "==== $backend: benchmarks (Diff_LLaMA_6M)"
  for bench in model sampler; do
    cargo bench --features "$backend" --bench "$bench" -- --noplot "$backend" 2>&1 \
      | grep -E "^(forward|train|sample)|time:" || status=1
  done
done
exit $status
