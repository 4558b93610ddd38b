"""ONNX Runtime execution providers configured the way a robot needs them.

A robot cannot wait for TensorRT to rebuild its engine at every start and every model swap (tens of
seconds to minutes on a Jetson), so the TensorRT provider gets an engine cache and a timing cache in
a folder that survives restarts (the engine is keyed by the model, so a hot-swapped model builds its
own once, off the control thread, during its load and warm-up). CUDA gets a device and, optionally,
a memory limit, so the policy can share the GPU with a learner. `device` picks the set:

- "auto": TensorRT, then CUDA, then CPU — whichever this onnxruntime build has;
- "cuda": CUDA then CPU; "tensorrt": TensorRT, CUDA, CPU — refused when the build has neither;
- "cpu": CPU only.

ONNX Runtime itself falls back to the next provider when one cannot start (a missing CUDA or
TensorRT library), with only a log line of its own; `PolicyRuntime` compares what it asked for with
the provider the session really uses and says so (`provider_fallback`), and the policy node shows it
on /diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfp_ros.contracts import ContractError

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CUDA_ARENA = ("next_power_of_two", "same_as_requested")
DEFAULT_TRT_CACHE = str(Path("~/.cache/dfp_ros/tensorrt").expanduser())


@dataclass(frozen=True)
class ProviderOptions:
    """How to run a model: which providers, and their options (defaults suit a robot computer)."""

    device: str = "auto"
    device_id: int = 0
    trt_cache_dir: str = DEFAULT_TRT_CACHE  # engine + timing cache; "" = no cache (rebuild at every load)
    trt_fp16: bool = False  # half precision engines: faster on Jetson/RTX; the acceptance test guards accuracy
    trt_workspace_gb: float = 2.0
    cuda_mem_limit_gb: float = 0.0  # 0 = no limit
    cuda_arena: str = "next_power_of_two"

    def check(self) -> None:
        if self.device not in DEVICES:
            raise ContractError(f"device {self.device!r} is not one of {DEVICES}")
        if self.cuda_arena not in CUDA_ARENA:
            raise ContractError(f"cuda_arena {self.cuda_arena!r} is not one of {CUDA_ARENA}")
        if self.device_id < 0 or self.trt_workspace_gb <= 0 or self.cuda_mem_limit_gb < 0:
            raise ContractError("device_id >= 0, trt_workspace_gb > 0 and cuda_mem_limit_gb >= 0 are required, "
                                f"got {self.device_id}, {self.trt_workspace_gb}, {self.cuda_mem_limit_gb}")


def _gib(x: float) -> int:
    return int(x * (1 << 30))


def tensorrt_options(opts: ProviderOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"device_id": opts.device_id, "trt_max_workspace_size": _gib(opts.trt_workspace_gb),
                           "trt_fp16_enable": opts.trt_fp16}
    if opts.trt_cache_dir:
        out.update(trt_engine_cache_enable=True, trt_engine_cache_path=opts.trt_cache_dir,
                   trt_timing_cache_enable=True, trt_timing_cache_path=opts.trt_cache_dir)
    return out


def cuda_options(opts: ProviderOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"device_id": opts.device_id,
                           "arena_extend_strategy": "kNextPowerOfTwo" if opts.cuda_arena == "next_power_of_two"
                           else "kSameAsRequested"}
    if opts.cuda_mem_limit_gb > 0:
        out["gpu_mem_limit"] = _gib(opts.cuda_mem_limit_gb)
    return out


def session_providers(opts: ProviderOptions, available: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The (provider, options) list for an InferenceSession, best first, CPU always last.

    Raises ContractError when a GPU device is asked for by name and this build has none of it."""
    opts.check()
    wanted = {"cpu": [], "cuda": [CUDA], "tensorrt": [TENSORRT, CUDA], "auto": [TENSORRT, CUDA]}[opts.device]
    chosen = [p for p in wanted if p in available]
    if opts.device in ("cuda", "tensorrt") and not chosen:
        raise ContractError(f"device {opts.device!r} asked for, but this onnxruntime has only {available} "
                            "(install onnxruntime-gpu, and TensorRT for 'tensorrt')")
    if opts.device == "tensorrt" and TENSORRT not in chosen:
        raise ContractError(f"device 'tensorrt' asked for, but this onnxruntime has no {TENSORRT} ({available})")
    if TENSORRT in chosen and opts.trt_cache_dir:
        Path(opts.trt_cache_dir).mkdir(parents=True, exist_ok=True)
    build = {TENSORRT: tensorrt_options, CUDA: cuda_options}
    return [(p, build[p](opts)) for p in chosen] + [(CPU, {})]


def fallback_note(asked: list[tuple[str, dict[str, Any]]], used: list[str]) -> str | None:
    """Why the session runs on another provider than the first one asked for (None when it does not)."""
    first = asked[0][0]
    if used and used[0] == first:
        return None
    return f"{first} could not start here; running on {used[0] if used else 'nothing'}"
