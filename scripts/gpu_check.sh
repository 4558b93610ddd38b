#!/usr/bin/env bash
# GPU checks, run on a lent accelerator machine (its python3 has torch; nothing is installed here):
# training throughput at the reference configuration on CUDA, and which ONNX Runtime providers exist.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
python3 -m dfp_ros.tools.cli bench train --device cuda --seconds 4 | tee "$OUT/bench_train_cuda.txt"
python3 -m dfp_ros.tools.cli bench train --device cuda --seconds 4 --batch-size 1024 | tee "$OUT/bench_train_cuda_b1024.txt"
bash scripts/gpu_runtime_check.sh
