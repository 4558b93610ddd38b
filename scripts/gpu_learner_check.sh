#!/usr/bin/env bash
# The graphed learner on a lent GPU machine, in one go (at most 7 minutes: each part has its timeout): the CUDA
# tests of test/test_graphed_step.py (graphed == eager, fresh noise per replay, resume, the device replay sampling
# inside a graph), then `dfp bench learner --device cuda` with --mode eager and --mode graphed. Outputs under $OUT; the benches' JSON
# lines are printed again at the end. Uses .venv's python when its torch sees the GPU, else the machine's python3.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_learner_check}; mkdir -p "$OUT"
SECONDS_PER_MEASUREMENT=${SECONDS_PER_MEASUREMENT:-6}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

PY=""
for candidate in .venv/bin/python python3; do
    command -v "$candidate" >/dev/null 2>&1 || { echo "no $candidate here" | tee -a "$OUT/gpu.txt"; continue; }
    if report=$("$candidate" -c "import torch, numpy, safetensors; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())" 2>&1); then
        echo "$candidate: torch, CUDA build, CUDA available: $report" | tee -a "$OUT/gpu.txt"
        if [ "${report##* }" = "True" ]; then PY=$candidate; break; fi
    else
        echo "$candidate cannot import what the learner needs: $(echo "$report" | tail -n 1)" | tee -a "$OUT/gpu.txt"
    fi
done
if [ -z "$PY" ]; then
    echo "NOT RUN: no python here has a torch that sees a CUDA device (needs torch with CUDA, numpy, safetensors;" \
         "a CPU-only torch prints 'None False' above, a missing driver 'False')" | tee -a "$OUT/gpu.txt"
    exit 2
fi
echo "using $PY" | tee -a "$OUT/gpu.txt"

if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 120 "$PY" -m pytest -q -rs -p no:cacheprovider test/test_graphed_step.py -k cuda 2>&1 | tee "$OUT/cuda_tests.txt"
    echo "cuda tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/cuda_tests.txt"
else
    echo "NOT RUN: $PY has no pytest, so the CUDA tests were skipped" | tee "$OUT/cuda_tests.txt"
fi

for mode in eager graphed; do
    timeout 150 "$PY" -m dfp_ros.tools.cli bench learner --device cuda --mode "$mode" \
        --seconds "$SECONDS_PER_MEASUREMENT" 2>&1 | tee "$OUT/bench_learner_$mode.txt"
    echo "bench learner --mode $mode exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_learner_$mode.txt"
done

echo "--- JSON lines ---"
for mode in eager graphed; do grep '^{' "$OUT/bench_learner_$mode.txt" | tail -n 1; done
