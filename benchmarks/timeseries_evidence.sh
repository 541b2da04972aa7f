#!/usr/bin/env bash
# The time-series evidence of issue 11: five archive problems x {FPT pretrained, frozen random, LSTM}
# x the experiment's learning rates x 3 seeds, then one report with the published numbers.
#
#   bash benchmarks/timeseries_evidence.sh [REPORT_DIR]        (default docs/reports/timeseries)
#
# Environment: SWEEPS (default runs/sweeps/timeseries), PARALLEL (trials at a time, default 1),
# EXTRA (more `fpt sweep` arguments, e.g. EXTRA="--lr 1e-3" for one learning rate).
# Every trial runs with one CPU thread; re-running skips finished trials and resumes interrupted ones.
# Offline: the five problems ship in the aeon wheel (pip install --no-deps aeon).
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-docs/reports/timeseries}
SWEEPS=${SWEEPS:-runs/sweeps/timeseries}
PARALLEL=${PARALLEL:-1}
FPT=${FPT:-python3 -m fpt.cli}  # e.g. FPT=".venv/bin/python -m fpt.cli"
for problem in gunpoint italypowerdemand basicmotions japanesevowels covid3month; do
  # shellcheck disable=SC2086
  $FPT sweep "timeseries-$problem" --experiment timeseries --threads 1 --parallel "$PARALLEL" \
    --sweep-dir "$SWEEPS/$problem" ${EXTRA:-}
done
$FPT report "$SWEEPS" --out "$REPORT" --no-attention
