#!/usr/bin/env bash
# The policy runtime (ONNX Runtime, as policy_node runs it) on a lent accelerator machine: every model in
# $MODELS (default outputs/gpu_models) back to back and once per 50 Hz period, on the CPU and, where this
# python's onnxruntime has them, the CUDA and TensorRT execution providers (for those also the load +
# warm-up time cold and from the engine cache, and the acceptance test on that provider). JSON lines.
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
devices += ["tensorrt"] if "TensorrtExecutionProvider" in providers else []
if "cuda" not in devices:
    print("this onnxruntime has no CUDA execution provider: the GPU path is not checked")
for model in sorted(pathlib.Path(sys.argv[1]).glob("*.onnx")):
    for device in devices:
        try:
            figures = inference_at_rate(model, 50.0, runs=200, device=device)
        except Exception as e:  # one model failing on one provider is a finding, not the end of the check
            figures = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps({"model": model.name, "device": device, **figures}))
        if device == "cpu":
            continue
        # Load + warm-up twice: the first builds TensorRT's engine into the cache, the second reads it;
        # the acceptance test runs on the provider in use each time.
        import tempfile
        import time

        import numpy as np

        from dfp_ros.runtime.policy_runtime import PolicyRuntime
        from dfp_ros.runtime.providers import ProviderOptions
        cache = tempfile.mkdtemp(prefix="trt_cache_")
        for attempt in ("cold", "cached"):
            try:
                t0 = time.perf_counter()
                rt = PolicyRuntime(model, device=ProviderOptions(device=device, trt_cache_dir=cache))
                meta = rt.meta
                images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in meta.cameras}
                rt.act(np.zeros(meta.state_dim, np.float32), images, np.random.default_rng(0))
                row = {"load_and_warm_up_s": round(time.perf_counter() - t0, 2), "providers": rt.providers,
                       "fallback": rt.provider_fallback,
                       "acceptance_error": rt.acceptance.max_action_error if rt.acceptance else None}
            except Exception as e:
                row = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(json.dumps({"model": model.name, "device": device, "load": attempt, **row}))
PY
