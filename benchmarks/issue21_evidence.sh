#!/usr/bin/env bash
# Issue 21's CPU -small evidence: the new experiments and presets, seed 0, one thread per run, one run at a time,
# then one report in docs/reports/issue21, rendered from the committed run files (docs/reports/issue21/runs).
#
#   bash benchmarks/issue21_evidence.sh [RUNS_DIR]      (default runs/i21)
#
# Re-running skips finished runs; the report re-renders without training:
#   fpt report docs/reports/issue21/runs --out docs/reports/issue21
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/i21}
FPT=${FPT:-python3 -m fpt.cli}  # e.g. FPT=".venv/bin/python -m fpt.cli"
KEEP=docs/reports/issue21/runs
# shellcheck disable=SC2086
nice -n 10 $FPT sweep bit-xor-small --experiment groups --threads 1 --sweep-dir "$RUNS/groups"
[ -f "$RUNS/bit-xor-256-small/results.json" ] || \
  nice -n 10 $FPT fit --config bit-xor-256-small --seed 0 --num-threads 1 --run-dir "$RUNS/bit-xor-256-small"
[ -f "$RUNS/bit-xor-statistics/results.json" ] || \
  nice -n 10 $FPT fit --config bit-xor-small --init statistics --seed 0 --num-threads 1 --run-dir "$RUNS/bit-xor-statistics"
nice -n 10 $FPT sweep bit-xor-small --experiment lstm --threads 1 --set steps=300 --sweep-dir "$RUNS/lstm"
for results in $(find "$RUNS" -name results.json -not -path "*.old-*"); do
  run=$(dirname "$results"); keep="$KEEP/${run#"$RUNS"/}"
  mkdir -p "$keep"
  cp "$run/results.json" "$run/config.yaml" "$run/metrics.csv" "$keep/"
  [ -f "$run/model.safetensors" ] && grep -q '"backbone": "smollm2' "$results" && cp "$run/model.safetensors" "$keep/"
done
$FPT report "$KEEP" --out docs/reports/issue21
