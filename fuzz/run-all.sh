#!/usr/bin/env bash
# Runs fuzz targets one after another: bash fuzz/run-all.sh SECONDS TARGET...
# (logs in fuzz/logs/<target>.log, crashes in fuzz/artifacts/<target>/). CI: 10 s each, dev build.
set -uo pipefail
cd "$(dirname "$0")"
seconds=$1
shift
mkdir -p logs
status=0
for t in "$@"; do
  mkdir -p "corpus/$t"
  ${FUZZ_CARGO:-cargo +nightly fuzz run} "$t" "corpus/$t" -- -max_total_time="$seconds" \
    -rss_limit_mb=3072 -timeout=30 -print_final_stats=1 > "logs/$t.log" 2>&1 || status=1
  echo "$t: $(grep -E '^Done|stat::number_of_executed_units' "logs/$t.log" | tr '\n' ' ')"
  ls "artifacts/$t" 2>/dev/null | sed "s/^/  finding: /"
done
exit $status
