"""Run an exported DFP model with ONNX Runtime — no torch.

`PolicyRuntime` opens a model file, checks that its inputs, outputs and metadata are the contract
this dfp_ros understands (refusing it with the difference named otherwise), and turns an
observation plus a numpy random generator into an action chunk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dfp_ros.contracts import (
    INPUT_NOISE,
    INPUT_STATE,
    METADATA_KEY,
    MODEL_FORMAT_VERSION,
    OUTPUT_ACTIONS,
    OUTPUT_BEST,
    OUTPUT_Q,
    ContractError,
    ModelMetadata,
    image_input_name,
)
from dfp_ros.runtime.acceptance import AcceptanceResult, read_acceptance, run_acceptance
from dfp_ros.runtime.providers import ProviderOptions, fallback_note, session_providers


@dataclass
class ActResult:
    chunk: np.ndarray  # [H, A] the chunk to execute (best-of-N when the model has a critic)
    candidates: np.ndarray  # [N, H, A]
    q: np.ndarray | None  # [N] critic scores, when the model has a critic


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_metadata(session: ort.InferenceSession, source: str) -> ModelMetadata:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ContractError(f"{source} is not a dfp_ros model: it has no {METADATA_KEY!r} metadata "
                            f"(metadata keys: {sorted(props)})")
    try:
        raw = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ContractError(f"{source}: the {METADATA_KEY!r} metadata is not JSON ({e})") from e
    version = raw.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ContractError(f"{source} has model format version {version}; this dfp_ros reads "
                            f"version {MODEL_FORMAT_VERSION}")
    return ModelMetadata.from_dict(raw)


def _check_io(session: ort.InferenceSession, meta: ModelMetadata, source: str) -> None:
    """The graph's inputs and outputs must be exactly what the metadata promises."""
    expected_in = {INPUT_STATE: ("tensor(float)", [meta.state_dim]),
                   INPUT_NOISE: ("tensor(float)", [None, meta.noise_dim])}
    for cam in meta.cameras:
        expected_in[image_input_name(cam.name)] = ("tensor(uint8)", [cam.height, cam.width, 3])
    actual_in = {i.name: i for i in session.get_inputs()}
    missing = sorted(set(expected_in) - set(actual_in))
    unexpected = sorted(set(actual_in) - set(expected_in))
    if missing or unexpected:
        raise ContractError(f"{source}: inputs do not match its metadata: missing {missing}, "
                            f"unexpected {unexpected}")
    for name, (dtype, tail) in expected_in.items():
        node = actual_in[name]
        shape = list(node.shape[1:])
        ok = node.type == dtype and len(shape) == len(tail) and all(
            t is None or s == t for s, t in zip(shape, tail, strict=True))
        if not ok:
            raise ContractError(f"{source}: input {name!r} is {node.type} {node.shape}, expected "
                                f"{dtype} [batch, {', '.join('N' if t is None else str(t) for t in tail)}]")
    want_out = [OUTPUT_ACTIONS] + ([OUTPUT_Q, OUTPUT_BEST] if meta.has_critic else [])
    got_out = [o.name for o in session.get_outputs()]
    if sorted(got_out) != sorted(want_out):
        raise ContractError(f"{source}: outputs are {got_out}, expected {want_out} "
                            f"(critic {'included' if meta.has_critic else 'not included'})")


class PolicyRuntime:
    """An exported DFP model in an ONNX Runtime session."""

    def __init__(self, model: str | Path | bytes, *, device: str | ProviderOptions = "auto",
                 num_samples: int | None = None, threads: int = 1, verify: bool = True):
        """Raises ContractError when the model does not fit the contract or, `verify`, fails its own
        acceptance test on this provider (`self.acceptance`: the figures; None if it carries none).

        `device`: "auto" | "cpu" | "cuda" | "tensorrt", or ProviderOptions with the providers' options
        (dfp_ros.runtime.providers). `self.providers` is what the session really runs on, and
        `self.provider_fallback` says why, when that is not the first provider asked for."""
        if isinstance(model, bytes):
            data, self.source = model, "model bytes"
        else:
            path = Path(model)
            if not path.is_file():
                raise ContractError(f"model file {path} does not exist")
            data, self.source = path.read_bytes(), str(path)
        self.sha256 = file_sha256(data)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # latency over throughput on a robot computer
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        options = device if isinstance(device, ProviderOptions) else ProviderOptions(device=device)
        asked = session_providers(options, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=[p for p, _ in asked],
                                                provider_options=[o for _, o in asked])
        except Exception as e:
            raise ContractError(f"{self.source} is not a loadable ONNX model ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0][:200]})") from e
        self.meta = read_metadata(self.session, self.source)
        _check_io(self.session, self.meta, self.source)
        self.num_samples = num_samples or self.meta.num_samples
        if self.num_samples < 1:
            raise ContractError(f"num_samples must be >= 1, got {self.num_samples}")
        self.providers = self.session.get_providers()
        self.provider_fallback = fallback_note(asked, self.providers)
        self.acceptance: AcceptanceResult | None = None
        test = read_acceptance(self.session.get_modelmeta().custom_metadata_map, self.source)
        self.has_acceptance_test = test is not None
        if verify and test is not None:
            all_outputs = [o.name for o in self.session.get_outputs()]
            self.acceptance = run_acceptance(
                test, lambda feeds: dict(zip(all_outputs, self.session.run(all_outputs, feeds), strict=True)),
                self.meta, self.providers[0], self.source)
        self._outputs = [OUTPUT_ACTIONS] + ([OUTPUT_Q, OUTPUT_BEST] if self.meta.has_critic else [])

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.meta.cameras]

    def check_observation(self, state: np.ndarray, images: dict[str, np.ndarray]) -> None:
        """Raise ValueError naming what is wrong with one observation (unbatched)."""
        if state.shape != (self.meta.state_dim,):
            raise ValueError(f"state has shape {state.shape}, expected ({self.meta.state_dim},)")
        if not np.isfinite(state).all():
            raise ValueError("state holds NaN or inf")
        for cam in self.meta.cameras:
            if cam.name not in images:
                raise ValueError(f"no image for camera {cam.name!r}")
            img = images[cam.name]
            if img.shape != (cam.height, cam.width, 3) or img.dtype != np.uint8:
                raise ValueError(f"image {cam.name!r} is {img.dtype} {img.shape}, expected uint8 "
                                 f"({cam.height}, {cam.width}, 3)")

    def run(self, state: np.ndarray, images: dict[str, np.ndarray], noise: np.ndarray) -> list[np.ndarray]:
        """Batched raw call: state [B, S], images camera -> [B, h, w, 3], noise [B, N, H*A]."""
        feeds = {INPUT_STATE: np.ascontiguousarray(state, np.float32),
                 INPUT_NOISE: np.ascontiguousarray(noise, np.float32)}
        for name in self.camera_names:
            feeds[image_input_name(name)] = np.ascontiguousarray(images[name], np.uint8)
        return self.session.run(self._outputs, feeds)

    def act(self, state: np.ndarray, images: dict[str, np.ndarray] | None, rng: np.random.Generator) -> ActResult:
        """One observation -> the chunk to execute; eps is drawn from `rng` so runs are reproducible."""
        images = images or {}
        state = np.asarray(state, np.float32)
        self.check_observation(state, images)
        noise = rng.standard_normal((1, self.num_samples, self.meta.noise_dim), dtype=np.float32)
        out = self.run(state[None], {k: v[None] for k, v in images.items()}, noise)
        candidates = out[0][0]
        if self.meta.has_critic:
            return ActResult(chunk=out[2][0], candidates=candidates, q=out[1][0])
        return ActResult(chunk=candidates[0], candidates=candidates, q=None)
