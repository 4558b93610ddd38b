"""Export a trained DFPModel to the ONNX contract (dfp_ros.contracts), and prove parity.

The graph takes raw observations and caller-sampled noise, and returns raw-unit action chunks for
N candidates (plus `q` and the argmax-Q chunk `best` when the critic is included). After writing,
the file is checked with onnx.checker, opened through the runtime loader (so the contract check is
the one the robot will run), and compared with torch on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch
from torch import nn

from dfp_ros.contracts import (
    ACCEPTANCE_KEY,
    INPUT_NOISE,
    INPUT_STATE,
    METADATA_KEY,
    MODEL_WEIGHTS,
    OUTPUT_ACTIONS,
    OUTPUT_BEST,
    OUTPUT_Q,
    CameraSpec,
    ContractError,
    ModelMetadata,
    RewardModelMetadata,
    image_input_name,
)
from dfp_ros.learning.model import DFPModel
from dfp_ros.learning.networks import ObservationEncoder
from dfp_ros.runtime.acceptance import FLOAT32_TOLERANCE, INT8_TOLERANCE, AcceptanceTest, action_error
from dfp_ros.runtime.policy_runtime import PolicyRuntime

PARITY_TOLERANCE = 1e-4
OPSET = 17
ACCEPTANCE_BATCH = 2  # observations stored in the model's acceptance test (with all N noise samples each)
# ONNX Runtime's dynamic quantisation multiplies uint8 activations by int8 weights. On x86 CPUs without
# VNNI (AVX2-only, AVX-512 without VNNI) the kernel adds pairs of u8*s8 products in int16 and saturates
# when a pair exceeds 32767, so full-range weights give CPU-dependent actions (measured: 0.064 of the
# half-range on an AVX2-only CPU where a VNNI CPU gave 0.003). 7-bit weights (`reduce_range`) keep every
# pair below 2*255*64 = 32640: exact integer sums on every CPU. Per-channel scales win back the bit.
INT8_QUANTISATION = {"reduce_range": True, "per_channel": True}


MetadataT = TypeVar("MetadataT", ModelMetadata, RewardModelMetadata)
RuntimeT = TypeVar("RuntimeT")


class ExportError(ContractError):
    """The exported graph failed a check; no file is left behind."""


class _ExportGraph(nn.Module):
    def __init__(self, model: DFPModel, with_critic: bool):
        super().__init__()
        self.model = model
        self.with_critic = with_critic
        self.cameras = [c.name for c in model.meta.cameras]

    def forward(self, state: torch.Tensor, *rest: torch.Tensor):
        *images, noise = rest
        imgs = dict(zip(self.cameras, images, strict=True))
        m = self.model
        norm = m.actor(state, imgs, noise).clamp(-1.0, 1.0)  # [B, N, D]
        actions = m.denormalize_actions(norm).unflatten(-1, (m.meta.horizon, m.meta.action_dim))
        if not self.with_critic:
            return actions
        q = m.critic(state, imgs, norm).mean(0)  # [B, N]
        idx = q.argmax(dim=1, keepdim=True)  # [B, 1]
        flat = actions.flatten(2)
        best = torch.gather(flat, 1, idx.unsqueeze(-1).expand(-1, 1, flat.shape[-1])).squeeze(1)
        return actions, q, best.unflatten(-1, (m.meta.horizon, m.meta.action_dim))


def observation_examples(encoder: ObservationEncoder, cameras: list[CameraSpec], batch: int,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`state` around the data mean and random `image.<camera>` frames for `batch` observations."""
    mean, std = encoder.state_mean.cpu().numpy(), encoder.state_std.cpu().numpy()
    feeds = {INPUT_STATE: (mean + std * rng.standard_normal((batch, mean.size))).astype(np.float32)}
    for cam in cameras:
        feeds[image_input_name(cam.name)] = rng.integers(0, 256, (batch, cam.height, cam.width, 3), np.uint8)
    return feeds


def example_inputs(model: DFPModel, batch: int, num_samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible inputs for tracing and parity: states around the data mean, random images and noise."""
    rng = np.random.default_rng(seed)
    feeds = observation_examples(model.actor.encoder, model.meta.cameras, batch, rng)
    feeds[INPUT_NOISE] = rng.standard_normal((batch, num_samples, model.meta.noise_dim)).astype(np.float32)
    return feeds


def trace_to_onnx(graph: nn.Module, feeds: dict[str, np.ndarray], outputs: list[str],
                  dynamic: dict[str, dict[int, str]], path: Path) -> None:
    """Trace `graph` on `feeds` (in order: its inputs) into an ONNX file at `path`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, tuple(torch.from_numpy(v) for v in feeds.values()), str(path),
                          input_names=list(feeds), output_names=outputs, dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False)


@contextmanager
def checked_file(tmp: Path, path: Path) -> Iterator[None]:
    """The checks of a model written at `tmp`: it becomes `path` when they pass, and is deleted when one
    raises, so a failed export leaves no file behind."""
    try:
        yield
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def loader_check(load: Callable[..., RuntimeT], tmp: Path, path: Path) -> RuntimeT:
    """Open `tmp` with the runtime loader the robot runs (contract check, acceptance test) on the CPU;
    its refusal as an ExportError about `path`."""
    try:
        return load(tmp, device="cpu")
    except ContractError as e:
        raise ExportError(str(e).replace(str(tmp), str(path))) from e


def content_hash(proto: onnx.ModelProto) -> str:
    """sha256 of the graph and weights, metadata excluded (so it is stable across re-stamping)."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def export_onnx(model: DFPModel, path: Path | str, *, num_samples: int = 16, with_critic: bool | None = None,
                parity_batch: int = 4, weights: str = "float32") -> dict:
    """Write `path`; returns {"path", "metadata", "max_abs_error", "acceptance"} (+ "int8": its parity
    figures). The file carries its acceptance test (dfp_ros.runtime.acceptance), run here once on the CPU.

    `weights="int8"`: the float graph is checked first, then ONNX Runtime's dynamic quantisation stores
    MatMul/Gemm weights as int8 (about 4x smaller, ~2x faster on a CPU whose cache the float weights do
    not stay in); the quantised model must agree with torch within INT8_TOLERANCE. Raises ExportError.
    """
    path = Path(path)
    if weights not in MODEL_WEIGHTS:
        raise ExportError(f"weights must be one of {MODEL_WEIGHTS}, got {weights!r}")
    if with_critic is None:
        with_critic = model.critic is not None
    if with_critic and model.critic is None:
        raise ExportError("--critic asked for, but this checkpoint has no critic (train with --critic)")
    if num_samples < 1:
        raise ExportError(f"num_samples must be >= 1, got {num_samples}")
    model = model.to("cpu").eval()
    graph = _ExportGraph(model, with_critic).eval()
    feeds = example_inputs(model, 2, num_samples, seed=1)
    names = list(feeds)
    outputs = [OUTPUT_ACTIONS] + ([OUTPUT_Q, OUTPUT_BEST] if with_critic else [])
    dynamic = {n: {0: "batch"} for n in names + outputs}
    dynamic[INPUT_NOISE] = {0: "batch", 1: "samples"}
    dynamic[OUTPUT_ACTIONS] = {0: "batch", 1: "samples"}
    if with_critic:
        dynamic[OUTPUT_Q] = {0: "batch", 1: "samples"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trace_to_onnx(graph, feeds, outputs, dynamic, tmp)
    meta = replace(model.meta, num_samples=num_samples, has_critic=with_critic,
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    acceptance = acceptance_test(model, graph, num_samples, FLOAT32_TOLERANCE)
    result: dict = {"path": str(path)}
    with checked_file(tmp, path):
        meta = stamp_model(tmp, meta, acceptance)
        result["max_abs_error"] = check_parity(model, graph, tmp, parity_batch, num_samples)
        if weights == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            float_tmp = tmp.with_name(tmp.name + ".float")
            tmp.replace(float_tmp)
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # its advice to pre-process is for convolutional image models
            try:
                # Fully connected layers only: int8 convolutions are slower than float ones on a CPU.
                quantize_dynamic(str(float_tmp), str(tmp), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"], **INT8_QUANTISATION)
            finally:
                root.setLevel(level)
                float_tmp.unlink(missing_ok=True)
            acceptance = replace(acceptance, tolerance=INT8_TOLERANCE)
            # The quantised graph's own run of the acceptance inputs is checked at its first load below.
            meta = stamp_model(tmp, replace(meta, weights="int8"), acceptance)
            result["int8"] = check_int8_parity(model, graph, tmp, max(parity_batch, 16), num_samples)
        result["acceptance"] = vars(loader_check(PolicyRuntime, tmp, path).acceptance)
    result["metadata"] = meta.to_dict()
    return result


def acceptance_test(model: DFPModel, graph: _ExportGraph, num_samples: int, tolerance: float) -> AcceptanceTest:
    """Fixed inputs and torch's float32 actions for them: the test every loader of the file re-runs."""
    feeds = example_inputs(model, ACCEPTANCE_BATCH, num_samples, seed=4)
    with torch.no_grad():
        out = graph(*(torch.from_numpy(v) for v in feeds.values()))
    actions = (out[0] if isinstance(out, tuple) else out).numpy()
    return AcceptanceTest(inputs=feeds, actions=actions, tolerance=tolerance)


def stamp_model(onnx_path: Path, meta: MetadataT, acceptance: AcceptanceTest) -> MetadataT:
    """Write `meta` (with this graph's content hash) and the acceptance test into the file; check it.
    A policy's or a reward model's metadata alike."""
    proto = onnx.load(str(onnx_path))
    meta = replace(meta, content_hash=content_hash(proto))
    del proto.metadata_props[:]
    for key, value in ((METADATA_KEY, json.dumps(meta.to_dict())), (ACCEPTANCE_KEY, acceptance.to_json())):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "dfp_ros"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(onnx_path))
    return meta


def _both_outputs(model: DFPModel, graph: _ExportGraph, onnx_path: Path, batch: int, num_samples: int,
                  seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The outputs of the ONNX file (through the robot's runtime loader) and of torch, on the same inputs."""
    runtime = PolicyRuntime(onnx_path, device="cpu", verify=False)  # the comparison below says more
    feeds = example_inputs(model, batch, num_samples, seed=seed)
    ort_out = runtime.run(feeds[INPUT_STATE], {c: feeds[image_input_name(c)] for c in runtime.camera_names},
                          feeds[INPUT_NOISE])
    with torch.no_grad():
        torch_out = graph(*(torch.from_numpy(feeds[n]) for n in feeds))
    torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
    return list(ort_out), [t.numpy() for t in torch_out]


def check_parity(model: DFPModel, graph: _ExportGraph, onnx_path: Path, batch: int, num_samples: int) -> float:
    """Max abs difference torch vs ONNX Runtime over all outputs; raises ExportError past tolerance."""
    ort_out, torch_out = _both_outputs(model, graph, onnx_path, batch, num_samples, seed=2)
    err = max(float(np.abs(o - t).max()) for o, t in zip(ort_out, torch_out, strict=True))
    if not err <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from torch by {err:.3g} (tolerance {PARITY_TOLERANCE})")
    return err


def check_int8_parity(model: DFPModel, graph: _ExportGraph, onnx_path: Path, batch: int,
                      num_samples: int) -> dict[str, float]:
    """A quantised model against torch: action error in half-ranges and, with a critic, how often the
    best-of-N pick is the same candidate. Raises ExportError past INT8_TOLERANCE."""
    ort_out, torch_out = _both_outputs(model, graph, onnx_path, batch, num_samples, seed=3)
    err = action_error(ort_out[0], torch_out[0], model.meta)
    figures = {"max_action_error": err}
    if len(ort_out) > 1:
        same = ort_out[1].argmax(1) == torch_out[1].argmax(1)
        figures["same_best_pick"] = float(same.mean())
    if not err <= INT8_TOLERANCE:
        raise ExportError(f"the int8 model's actions differ from torch by {err:.3f} of the action half-range "
                          f"(tolerance {INT8_TOLERANCE}): export float32 weights for this model")
    return figures
