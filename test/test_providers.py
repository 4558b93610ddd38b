"""Execution providers configured like a robot needs them; what can be run with a CPU-only onnxruntime.

The GPU providers themselves are exercised by scripts/gpu_runtime_check.sh on a machine that has them."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from dfp_ros.contracts import ContractError
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.runtime.providers import CPU, CUDA, TENSORRT, ProviderOptions, session_providers

MODEL = Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx"
GPU_BUILD = [TENSORRT, CUDA, CPU]


def test_tensorrt_gets_a_persistent_engine_and_timing_cache_fp16_and_a_workspace(tmp_path):
    opts = ProviderOptions(device="auto", device_id=1, trt_cache_dir=str(tmp_path / "trt"), trt_fp16=True,
                           trt_workspace_gb=1.5, cuda_mem_limit_gb=2.0, cuda_arena="same_as_requested")
    (trt, trt_opts), (cuda, cuda_opts), (cpu, cpu_opts) = session_providers(opts, GPU_BUILD)
    assert (trt, cuda, cpu) == (TENSORRT, CUDA, CPU) and cpu_opts == {}
    assert trt_opts == {"device_id": 1, "trt_max_workspace_size": int(1.5 * 2**30), "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "trt"),
                        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path / "trt")}
    assert (tmp_path / "trt").is_dir()  # made before the first engine is built into it
    assert cuda_opts == {"device_id": 1, "gpu_mem_limit": 2 * 2**30, "arena_extend_strategy": "kSameAsRequested"}
    no_cache = session_providers(ProviderOptions(trt_cache_dir=""), GPU_BUILD)[0][1]
    assert "trt_engine_cache_enable" not in no_cache and "gpu_mem_limit" not in session_providers(
        ProviderOptions(), GPU_BUILD)[1][1]


def test_the_device_picks_the_providers_and_a_missing_one_asked_by_name_is_refused():
    assert [p for p, _ in session_providers(ProviderOptions(device="cuda"), GPU_BUILD)] == [CUDA, CPU]
    assert [p for p, _ in session_providers(ProviderOptions(device="cpu"), GPU_BUILD)] == [CPU]
    assert [p for p, _ in session_providers(ProviderOptions(device="auto"), [CPU])] == [CPU]
    with pytest.raises(ContractError, match="install onnxruntime-gpu"):
        session_providers(ProviderOptions(device="cuda"), [CPU])
    with pytest.raises(ContractError, match="no TensorrtExecutionProvider"):
        session_providers(ProviderOptions(device="tensorrt"), [CUDA, CPU])
    for bad in (ProviderOptions(device="gpu"), ProviderOptions(cuda_arena="grow"), ProviderOptions(trt_workspace_gb=0)):
        with pytest.raises(ContractError):
            session_providers(bad, GPU_BUILD)


def test_a_provider_that_cannot_start_falls_back_to_the_cpu_and_the_runtime_says_so(monkeypatch, tmp_path):
    """An onnxruntime that lists CUDA but cannot run it (here: a CPU build told otherwise; on a robot: a
    missing CUDA library) runs on the CPU; the runtime reports the fallback and the model still passes
    its acceptance test there."""
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA: the fallback is not what would happen")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    rt = PolicyRuntime(MODEL, device=ProviderOptions(device="cuda", trt_cache_dir=str(tmp_path)))
    assert rt.providers == [CPU]
    assert rt.provider_fallback == f"{CUDA} could not start here; running on {CPU}"
    assert rt.acceptance is not None and rt.acceptance.provider == CPU
    assert PolicyRuntime(MODEL, device="cpu").provider_fallback is None
