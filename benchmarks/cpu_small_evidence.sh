#!/usr/bin/env bash
# The -small evidence of docs/experiments.md ("Measured on a 2-core CPU"): four offline -small presets x
# {FPT (pretrained, frozen), frozen random, fully trained 3-layer LSTM}, seed 0, one CPU thread per run,
# one run at a time; then the report in docs/reports/cpu-small, rendered from the committed run files.
#
#   bash benchmarks/cpu_small_evidence.sh [RUNS_DIR]      (default runs/cpu-small)
#
# Each run's results.json, config.yaml and metrics.csv (and, for the Bit XOR and Bit Memory transformers, the trained
# weights model.safetensors that the attention figures need) are copied to docs/reports/cpu-small/runs/,
# so `fpt report docs/reports/cpu-small/runs --out docs/reports/cpu-small` re-renders the report without
# training. Re-running skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/cpu-small}
FPT=${FPT:-python3 -m fpt.cli}  # e.g. FPT=".venv/bin/python -m fpt.cli"
KEEP=docs/reports/cpu-small/runs
for task in bit-xor listops fashion-mnist bit-memory; do
  for setting in pretrained random lstm; do
    dir="$RUNS/$task/$setting"
    case $setting in
      pretrained) args=() ;;
      random) args=(--init random) ;;
      lstm) args=(--backbone lstm --init random --freeze full --layers 3) ;;
    esac
    if [ ! -f "$dir/results.json" ]; then
      # shellcheck disable=SC2086
      nice -n 10 $FPT fit --config "$task-small" --seed 0 --num-threads 1 "${args[@]}" --run-dir "$dir"
    fi
    mkdir -p "$KEEP/$task/$setting"
    cp "$dir/results.json" "$dir/config.yaml" "$dir/metrics.csv" "$KEEP/$task/$setting/"
    case $task in bit-xor|bit-memory) [ "$setting" = lstm ] || cp "$dir/model.safetensors" "$KEEP/$task/$setting/" ;; esac
  done
done
$FPT report "$KEEP" --out docs/reports/cpu-small
