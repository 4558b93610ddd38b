#!/usr/bin/env bash
# The policy runtime (ONNX Runtime, as policy_node runs it) on a lent accelerator machine: every model in
# $MODELS (default outputs/gpu_models) back to back and once per 50 Hz period, on the CPU and, where this
# python's onnxruntime has it, the CUDA execution provider. One JSON line per model and device.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
MODELS=${MODELS:-outputs/gpu_models}
python3 - "$MODELS" <<'PY' 2>&1 | tee "$OUT/policy_runtime.txt"
import json, pathlib, sys

import onnxruntime as ort

from dfp_ros.tools.latency_bench import inference_at_rate

providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in providers else [])
if "cuda" not in devices:
    print("this onnxruntime has no CUDA execution provider: the GPU path is not checked")
for model in sorted(pathlib.Path(sys.argv[1]).glob("*.onnx")):
    for device in devices:
        try:
            figures = inference_at_rate(model, 50.0, runs=200, device=device)
        except Exception as e:  # one model failing on one provider is a finding, not the end of the check
            figures = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps({"model": model.name, "device": device, **figures}))
PY
