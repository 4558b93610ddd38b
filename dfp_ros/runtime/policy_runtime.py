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
    RewardModelMetadata,
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


def read_metadata_dict(session: ort.InferenceSession, source: str) -> dict:
    """The model's `METADATA_KEY` JSON (policy or reward model), format version checked."""
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
    return raw


def read_metadata(session: ort.InferenceSession, source: str) -> ModelMetadata:
    raw = read_metadata_dict(session, source)
    try:
        return ModelMetadata.from_dict(raw)
    except ContractError as e:
        raise ContractError(f"{source}: {e}") from e


def check_io(session: ort.InferenceSession, expected_in: dict[str, tuple[str, list[int | None]]],
             want_out: list[str], source: str, out_note: str = "") -> None:
    """The graph's inputs (name -> (type, shape after the batch axis; None = any)) and outputs must be
    exactly these."""
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
    got_out = [o.name for o in session.get_outputs()]
    if sorted(got_out) != sorted(want_out):
        raise ContractError(f"{source}: outputs are {got_out}, expected {want_out}{out_note}")


def observation_inputs(meta: ModelMetadata | RewardModelMetadata) -> dict[str, tuple[str, list[int | None]]]:
    """The `state` and `image.<camera>` inputs a model's metadata promises."""
    expected = {INPUT_STATE: ("tensor(float)", [meta.state_dim])}
    for cam in meta.cameras:
        expected[image_input_name(cam.name)] = ("tensor(uint8)", [cam.height, cam.width, 3])
    return expected


def _check_io(session: ort.InferenceSession, meta: ModelMetadata, source: str) -> None:
    """The graph's inputs and outputs must be exactly what the metadata promises."""
    expected_in = {**observation_inputs(meta), INPUT_NOISE: ("tensor(float)", [None, meta.noise_dim])}
    want_out = [OUTPUT_ACTIONS] + ([OUTPUT_Q, OUTPUT_BEST] if meta.has_critic else [])
    check_io(session, expected_in, want_out, source,
             f" (critic {'included' if meta.has_critic else 'not included'})")


def check_observation(meta: ModelMetadata | RewardModelMetadata, state: np.ndarray,
                      images: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming what is wrong with one observation (unbatched) for this model."""
    if state.shape != (meta.state_dim,):
        raise ValueError(f"state has shape {state.shape}, expected ({meta.state_dim},)")
    if not np.isfinite(state).all():
        raise ValueError("state holds NaN or inf")
    for cam in meta.cameras:
        if cam.name not in images:
            raise ValueError(f"no image for camera {cam.name!r}")
        img = images[cam.name]
        if img.shape != (cam.height, cam.width, 3) or img.dtype != np.uint8:
            raise ValueError(f"image {cam.name!r} is {img.dtype} {img.shape}, expected uint8 "
                             f"({cam.height}, {cam.width}, 3)")


def observation_feeds(meta: ModelMetadata | RewardModelMetadata, state: np.ndarray,
                      images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of observations (state [B, S], camera -> [B, h, w, 3]) as ONNX feeds."""
    feeds = {INPUT_STATE: np.ascontiguousarray(state, np.float32)}
    for cam in meta.cameras:
        feeds[image_input_name(cam.name)] = np.ascontiguousarray(images[cam.name], np.uint8)
    return feeds


@dataclass
class ModelSession:
    """A model file's bytes opened in an ONNX Runtime session on the providers asked for."""

    session: ort.InferenceSession
    source: str
    sha256: str
    providers: list[str]  # what the session really runs on, best first
    provider_fallback: str | None  # why that is not the first provider asked for (None when it is)


def open_session(model: str | Path | bytes, device: str | ProviderOptions, threads: int) -> ModelSession:
    """Open a model file (or its bytes); ContractError when it is missing or not loadable ONNX."""
    if isinstance(model, bytes):
        data, source = model, "model bytes"
    else:
        path = Path(model)
        if not path.is_file():
            raise ContractError(f"model file {path} does not exist")
        data, source = path.read_bytes(), str(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # latency over throughput on a robot computer
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    options = device if isinstance(device, ProviderOptions) else ProviderOptions(device=device)
    asked = session_providers(options, ort.get_available_providers())
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=[p for p, _ in asked],
                                       provider_options=[o for _, o in asked])
    except Exception as e:
        raise ContractError(f"{source} is not a loadable ONNX model ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:200]})") from e
    providers = session.get_providers()
    return ModelSession(session, source, file_sha256(data), providers, fallback_note(asked, providers))


class PolicyRuntime:
    """An exported DFP model in an ONNX Runtime session."""

    def __init__(self, model: str | Path | bytes, *, device: str | ProviderOptions = "auto",
                 num_samples: int | None = None, threads: int = 1, verify: bool = True):
        """Raises ContractError when the model does not fit the contract or, `verify`, fails its own
        acceptance test on this provider (`self.acceptance`: the figures; None if it carries none).

        `device`: "auto" | "cpu" | "cuda" | "tensorrt", or ProviderOptions with the providers' options
        (dfp_ros.runtime.providers). `self.providers` is what the session really runs on, and
        `self.provider_fallback` says why, when that is not the first provider asked for."""
        opened = open_session(model, device, threads)
        self.session, self.source, self.sha256 = opened.session, opened.source, opened.sha256
        self.meta = read_metadata(self.session, self.source)
        _check_io(self.session, self.meta, self.source)
        self.num_samples = num_samples or self.meta.num_samples
        if self.num_samples < 1:
            raise ContractError(f"num_samples must be >= 1, got {self.num_samples}")
        self.providers, self.provider_fallback = opened.providers, opened.provider_fallback
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
        check_observation(self.meta, state, images)

    def run(self, state: np.ndarray, images: dict[str, np.ndarray], noise: np.ndarray) -> list[np.ndarray]:
        """Batched raw call: state [B, S], images camera -> [B, h, w, 3], noise [B, N, H*A]."""
        feeds = observation_feeds(self.meta, state, images)
        feeds[INPUT_NOISE] = np.ascontiguousarray(noise, np.float32)
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
