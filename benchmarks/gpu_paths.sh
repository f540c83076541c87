#!/usr/bin/env bash
# The GPU code paths that the CPU test suite cannot reach, each run for real and reported PASS/FAIL:
#   1. training under torchrun, one process per GPU (nccl), fp16 autocast with its GradScaler,
#      data-loader worker processes with pinned memory, validation on the GPU;
#   2. --resume of that run for one more epoch (checkpoint, scaler and RNG state restored);
#   3. predict (sliding window under autocast) and evaluate the predictions.
# Usage:  bash benchmarks/gpu_paths.sh      (PYTHON=...; DEVICE=cpu AMP=off PATCH=32 dry-runs it on a CPU)
# About 2-3 minutes on one H100 (synthesis 28 s, each training run 33 s). Exit status: the number of
# failed checks.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c "import sys; sys.path.pop(0); import mednext_lite" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-fp16}
PATCH=${PATCH:-64}
if [ "$DEVICE" = cuda ]; then NPROC=$(nvidia-smi -L | wc -l); else NPROC=1; fi
W=$(mktemp -d)
FAILED=0

check() {  # check NAME COMMAND...: run it, print PASS with its time or FAIL with the end of its log
    local name=$1 t0
    shift
    t0=$(date +%s)
    if "$@" > "$W/$name.log" 2>&1; then
        echo "PASS $name ($(( $(date +%s) - t0 )) s)"
    else
        echo "FAIL $name (exit $?); end of its log:"
        tail -n 25 "$W/$name.log" | sed 's/^/    /'
        FAILED=$(( FAILED + 1 ))
    fi
}

TRAIN=(-m mednext_lite.cli train --data-dir "$W/data" --task synthetic --quickstart --patch "$PATCH" --batch 2
       --iters 10 --val-every 1 --amp "$AMP" --num-workers 2 --device "$DEVICE" --run-dir "$W/run" --no-progress)
check synthesize "$PYTHON" -m mednext_lite.cli data synthesize --data-dir "$W/data" --no-progress
check "train_torchrun_${NPROC}proc_${AMP}" "$PYTHON" -m torch.distributed.run --standalone \
    --nproc_per_node "$NPROC" "${TRAIN[@]}" --epochs 1
check resume "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "${TRAIN[@]}" \
    --epochs 2 --resume
check resumed_to_epoch_2 "$PYTHON" -c "import json, sys; h = json.load(open('$W/run/metrics.json'));
rows = h if isinstance(h, list) else h['history']; print(rows[-1]); sys.exit(rows[-1]['epoch'] != 2)"
PREDICT_AMP=(); [ "$AMP" != off ] && PREDICT_AMP=(--amp)
check predict "$PYTHON" -m mednext_lite.cli predict --checkpoint "$W/run/best.pt" --task synthetic \
    --data-dir "$W/data" --input "$W"/data/Task90_SyntheticMRI/imagesTr/*_000.nii.gz --output "$W/pred" \
    --device "$DEVICE" "${PREDICT_AMP[@]}"
check evaluate "$PYTHON" -m mednext_lite.cli evaluate --predictions "$W/pred" \
    --labels "$W"/data/Task90_SyntheticMRI/labelsTr/*_000.nii.gz
grep -h -i "mean" "$W/evaluate.log" | head -n 3 | sed 's/^/    /'
echo "gpu_paths: $FAILED failed (logs in $W)"
exit $FAILED
