#!/usr/bin/env bash
# One prepared check for a GPU machine (sections 0-2 about 9 minutes on one H100, at most 12; section 3 under 8),
# printing PASS/FAIL lines and tables:
#   0. benchmarks/gpu_paths.sh: PASS/FAIL for the GPU-only code paths;
#   1. a short training run on the synthetic task (benchmarks/train_synthetic.py, MedNeXt-S ratios,
#      base width 32, 64^3 patches, 4 epochs x 30 iterations, bf16 autocast via the trainer's amp=auto);
#   2. benchmarks/gpu_bench.py: S and B, k3 and k5, 128^3, batch 1 training steps: MONAI fp32 against
#      ours in fp32, bf16 autocast, bf16 + channels-last and (S only) bf16 + torch.compile, then
#      sliding-window inference of one 256^3 volume (S, k3/k5: MONAI fp32, ours fp32 and bf16);
#   3. the Triton depthwise kernels (under 8 minutes): benchmarks/triton_check.py (equality and per-op,
#      per-direction timings vs PyTorch, k3/k5, bf16/fp32, both layouts), then benchmarks/gpu_kernels.py
#      (profiler share of the depthwise kernels; training steps MONAI vs ours on PyTorch's kernels vs
#      ours on Triton's at 128^3, S and B, k3 and k5, bf16 and fp32, L k5 if it fits; the M preset's
#      checkpointing policies; the AUTO_TRITON entry the numbers support). JSON in $OUT.
# Usage:  bash benchmarks/gpu_check.sh [SECTION...]   (SECTION: paths, train, bench, kernels; default all;
#         PYTHON=... to pick the interpreter, OUT=... for files). "kernels" alone fits one 10-minute slot.
# Measured on one H100 80GB: benchmarks/results/gpu_h100_2026-11-27.md.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SECTIONS=" ${*:-paths train bench kernels} "
want() { case "$SECTIONS" in *" $1 "*) return 0 ;; esac; return 1; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
BEGIN=$(date +%s)
echo "# gpu_check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available to $PYTHON: run this on a CUDA machine')" || exit 2
# an offline GPU image may lack the package: use this checkout in place (monai and nibabel must be importable)
"$PYTHON" -c "import sys; sys.path.pop(0); import mednext_lite" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import mednext_lite, monai, nibabel; print('# torch', __import__('torch').__version__, \
'monai', monai.__version__, 'nibabel', nibabel.__version__)" || exit 3

# 0. the GPU-only code paths (nccl DDP under torchrun, fp16 + GradScaler, loader workers, resume,
#    predict and evaluate): PASS/FAIL lines, about 2-3 minutes
if want paths; then
    PYTHON="$PYTHON" bash benchmarks/gpu_paths.sh || echo "(gpu_paths: some checks failed, see above)"
fi
START=$(date +%s)  # the budget of steps 1 and 2 counts from here

# 1. short training run (data synthesis runs on the CPU; the whole step is capped at 130 s)
if want train; then
    timeout 130 "$PYTHON" benchmarks/train_synthetic.py --data-dir "$OUT/data" --run-dir "$OUT/run" \
        --base-width 32 --blocks 2 --patch 64 --batch 2 --epochs 4 --iters 30 --val-every 2 --threads 0 \
        --json "$OUT/train.json" > "$OUT/train.log" 2>&1 || echo "(training run failed or timed out: see $OUT/train.log)"
fi

# 2. the comparison table, with whatever time is left (the budget guard skips rows it cannot afford)
if want bench; then
    LEFT=$(( 400 - ($(date +%s) - START) ))
    timeout $(( LEFT + 100 )) "$PYTHON" benchmarks/gpu_bench.py --budget-s $(( LEFT > 60 ? LEFT - 60 : 30 )) \
        --infer --json "$OUT/gpu_bench.json" --train-json "$OUT/train.json"
fi

# 3. the Triton kernels: per op (at most 150 s), then inside the network (at most 320 s)
if want kernels; then
    timeout 150 "$PYTHON" benchmarks/triton_check.py --kernels 3 5 --dtypes bf16 fp32 --repeats 10 \
        --budget-s 110 --json "$OUT/triton_check.json" || echo "(triton_check: failures or time-out, see above)"
    timeout 320 "$PYTHON" benchmarks/gpu_kernels.py --budget-s 240 --ops-json "$OUT/triton_check.json" \
        --json "$OUT/gpu_kernels.json" || echo "(gpu_kernels failed or timed out: rows so far in $OUT/gpu_kernels.json)"
fi
echo "(gpu_check total $(( $(date +%s) - BEGIN )) s; files in $OUT)"
