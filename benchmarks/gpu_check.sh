#!/usr/bin/env bash
# One prepared check for a GPU machine (about 9 minutes on one H100, at most 12), printing PASS/FAIL lines and tables:
#   0. benchmarks/gpu_paths.sh: PASS/FAIL for the GPU-only code paths;
#   1. a short training run on the synthetic task (benchmarks/train_synthetic.py, MedNeXt-S ratios,
#      base width 32, 64^3 patches, 4 epochs x 30 iterations, bf16 autocast via the trainer's amp=auto);
#   2. benchmarks/gpu_bench.py: S and B, k3 and k5, 128^3, batch 1 training steps: MONAI fp32 against
#      ours in fp32, bf16 autocast, bf16 + channels-last and (S only) bf16 + torch.compile, then
#      sliding-window inference of one 256^3 volume (S, k3/k5: MONAI fp32, ours fp32 and bf16).
# Usage:  bash benchmarks/gpu_check.sh            (PYTHON=... to pick the interpreter, OUT=... for files)
# Measured on one H100 80GB: benchmarks/results/gpu_h100_2026-11-27.md.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
BEGIN=$(date +%s)
echo "# gpu_check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available to $PYTHON: run this on the GPU machine')" || exit 2
# an offline GPU image may lack the package: use this checkout in place (monai and nibabel must be importable)
"$PYTHON" -c "import sys; sys.path.pop(0); import mednext_lite" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import mednext_lite, monai, nibabel; print('# torch', __import__('torch').__version__, \
'monai', monai.__version__, 'nibabel', nibabel.__version__)" || exit 3

# 0. the GPU-only code paths (nccl DDP under torchrun, fp16 + GradScaler, loader workers, resume,
#    predict and evaluate): PASS/FAIL lines, about 2-3 minutes
PYTHON="$PYTHON" bash benchmarks/gpu_paths.sh || echo "(gpu_paths: some checks failed, see above)"
START=$(date +%s)  # the budget of steps 1 and 2 counts from here

# 1. short training run (data synthesis runs on the CPU; the whole step is capped at 130 s)
timeout 130 "$PYTHON" benchmarks/train_synthetic.py --data-dir "$OUT/data" --run-dir "$OUT/run" \
    --base-width 32 --blocks 2 --patch 64 --batch 2 --epochs 4 --iters 30 --val-every 2 --threads 0 \
    --json "$OUT/train.json" > "$OUT/train.log" 2>&1 || echo "(training run failed or timed out: see $OUT/train.log)"

# 2. the comparison table, with whatever time is left (the budget guard skips rows it cannot afford)
LEFT=$(( 400 - ($(date +%s) - START) ))
timeout $(( LEFT + 100 )) "$PYTHON" benchmarks/gpu_bench.py --budget-s $(( LEFT > 60 ? LEFT - 60 : 30 )) \
    --infer --json "$OUT/gpu_bench.json" --train-json "$OUT/train.json"
echo "(gpu_check total $(( $(date +%s) - BEGIN )) s; files in $OUT)"
