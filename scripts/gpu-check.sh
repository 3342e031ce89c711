#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU: for cuda, then wgpu, the backend suites CI
# runs on lavapipe (SMDM, sampler, LLaDA + Fast-dLLM, estimator and training parity; every
# remasking rule, CFG, block caches in ragged batches, training with resume), then the model,
# sampler and training benchmarks, a generation in f32 / f16 / bf16; one summary table at the end (also in $OUT/summary.md).
#   bash scripts/gpu-check.sh              # cuda then wgpu
#   BACKENDS=cuda bash scripts/gpu-check.sh
# Needs only what a fresh GPU machine has besides crates: the NVIDIA driver (cuda loads the
# driver and NVRTC at run time), a Vulkan loader for wgpu. Each backend builds first (its own
# summary row), then runs; not yet run on a GPU, so no timing is known.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/gpu-check}
mkdir -p "$out"
summary="$out/summary.md"
# the backend suites: the modules of tests/suite/ whose names hold `parity` or `backend::`
suites=(--test suite)
suite_filter=(-- parity backend::)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
{
  echo "| backend | step | result | seconds | figures |"
  echo "|---|---|---|---|---|"
} > "$summary"
status=0

# run LABEL CMD...: the command's output goes to $out/$backend-LABEL.log, its row to the summary
run() {
  local label=$1
  shift
  local log="$out/$backend-$label.log" t0=$SECONDS result=ok
  echo "==== $backend: $label"
  if ! "$@" > "$log" 2>&1; then
    result=FAILED
    status=1
  fi
  # the test counts, or the benchmarks' medians (criterion's middle estimate)
  local figures
  figures=$(grep -E "^test result" "$log" | awk '{p+=$4; f+=$6} END {if (NR) printf "%d passed, %d failed", p, f}')
  if [ -z "$figures" ]; then
    figures=$(awk '/^[A-Za-z]/ && !/^(Benchmarking|Found|Warning|test|running|Running|Compiling|Finished|Gnuplot)/ {name=$1}
      /time:/ {for (i = 1; i <= NF; i++) if ($i == "time:") {if (i > 1) name = $1; printf "%s %s %s; ", name, $(i+3), $(i+4)}}' "$log")
  fi
  echo "| $backend | $label | $result | $((SECONDS - t0)) | ${figures:-see $log} |" >> "$summary"
  tail -n 5 "$log"
}

for backend in ${BACKENDS:-cuda wgpu}; do
  features=(--no-default-features --features "$backend")
  run build cargo test --release "${features[@]}" "${suites[@]}" --no-run
  run suites cargo test --release "${features[@]}" "${suites[@]}" "${suite_filter[@]}"
  run bench-model cargo bench "${features[@]}" --bench model -- --noplot
  run bench-sampler cargo bench "${features[@]}" --bench sampler -- --noplot \
    "mdm_steps_64|mdm_steps_16|arm_kv_cache|block_32|forward_at_256"
  run bench-train cargo bench "${features[@]}" --bench train -- --noplot
  # half precision: the same greedy generation (random Diff_LLaMA_6M) in f32, f16 and bf16
  for dtype in f32 f16 bf16; do
    run "generate-$dtype" cargo run --release "${features[@]}" --example generate -- \
      --gen-length 256 --steps 64 --no-live --profile --dtype "$dtype"
  done
done
echo
cat "$summary"
exit $status
