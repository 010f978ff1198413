#!/usr/bin/env bash
# The GPU pool measured in one run (under 8 minutes): ORT CUDA FP16 vs CUDA fp32 vs the CPU INT8
# pool, through the real server, on SST-2 and BoolQ-length inputs (sentences/s at batch 1 and at
# the best batch, p99 at a fixed rate, SST-2 dev accuracy), and each layout's capacity at the SLO
# on a mix of the two, hybrid routing included. Results: runs/gpu-check/results.md.
#
#   deploy/gpu-check.sh [ARTIFACT]          (default: models/sst2, made by `make demo`)
#   PROVIDER=cpu deploy/gpu-check.sh        dry run: the GPU pool on ORT's CPU provider
#
# Sets up what is missing: the venv (make setup), then onnxruntime-gpu (the `gpu` extra) in place
# of onnxruntime. Extra arguments for python -m deploy.checks.gpu_check go in GPU_CHECK_ARGS.
set -euo pipefail

cd "$(dirname "$0")/.."
PROVIDER=${PROVIDER:-cuda}
ARTIFACT=${1:-models/sst2}
OUT=${OUT:-runs/gpu-check}
# The check itself is sized for ~5 minutes; this bounds it whatever happens.
LIMIT_S=${LIMIT_S:-470}
python=.venv/bin/python

if [ ! -x "$python" ]; then
    make setup
fi
if [ "$PROVIDER" = cuda ]; then
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L; then
        echo "no NVIDIA GPU visible (nvidia-smi); PROVIDER=cpu runs the dry run instead" >&2
        exit 2
    fi
    if ! "$python" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
        # Both wheels install the same `onnxruntime` module: replace, never add.
        gpu_wheel=$("$python" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu'][0])")
        .venv/bin/pip uninstall -q -y onnxruntime
        .venv/bin/pip install -q "$gpu_wheel" || {
            echo "could not install $gpu_wheel (no package index reachable?); install it and rerun" >&2
            exit 2
        }
    fi
fi
if [ ! -f "$ARTIFACT/manifest.json" ]; then
    echo "no artifact at $ARTIFACT: building the demo one first (make demo; not part of the check's time)"
    make demo
fi

read -r -a extra <<< "${GPU_CHECK_ARGS:-}"
timeout "$LIMIT_S" "$python" -m deploy.checks.gpu_check --artifact "$ARTIFACT" --provider "$PROVIDER" \
    --out "$OUT" "${extra[@]}"
