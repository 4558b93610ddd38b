"""Assemble a model's input from the newest message of each source (no ROS).

The node turns messages into plain arrays and calls the `put_*` methods; each validates the message
and raises `ObservationError` (with a `kind` the node counts under) instead of storing a bad one, so
a bad message never replaces a good one and never reaches the model.

State mapping (one `StateSource` per subscribed topic, each bound to one StateSpec key):
- a "joint_state" source fills the names of its key's block that look like `<joint>.pos`,
  `<joint>.vel` or `<joint>.eff`, taking each joint by name from the message (any order); at most
  one joint_state source per key;
- a "float32_array" source fills the remaining positions of its key's block, in order (the whole
  block when the key has no joint_state source); at most one per key.
Images: raw `sensor_msgs/Image` encodings rgb8, bgr8, mono8 (and rgba8/bgra8), or compressed
jpeg/png bytes, converted to RGB uint8 and resized (OpenCV) to the model's camera size.

Timing: each stored message keeps its `stamp` (header time, ns; the receipt time for header-less
messages) and its `received` time on the node's clock (s). Freshness is judged on `received`, so
a source's clock (sim time, a camera's own clock) cannot make stale data look fresh; the
observation's stamp is the oldest `stamp` among its parts (what its chunk is stamped with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from dfp_ros.contracts import ModelMetadata

STATE_SOURCE_TYPES = ("float32_array", "joint_state")
JOINT_FIELDS = {"pos": "position", "vel": "velocity", "eff": "effort"}
RAW_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")


class ObservationError(ValueError):
    """A message that cannot be part of an observation; `kind` names the reason for counting."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "non_finite" | "wrong_size" | "unknown_encoding" | "missing_joint" | "decode"


@dataclass
class StateSource:
    topic: str
    type: str  # one of STATE_SOURCE_TYPES
    key: str  # the StateSpec key whose block it fills


@dataclass
class Observation:
    state: np.ndarray  # float32 [S]
    images: dict[str, np.ndarray]  # camera -> uint8 [h, w, 3] RGB
    stamp_ns: int  # the oldest stamp among its parts
    stamp_skew_ns: int  # newest minus oldest part stamp: 0 when every part was stamped for one instant
    age_s: float  # now - the oldest receipt among its parts
    seq: int  # increases with every accepted message (tells a new observation from a reused one)


@dataclass
class _Slot:
    value: np.ndarray
    stamp_ns: int
    received: float


@dataclass
class _Plan:
    """Where one source's values go in the state vector."""

    index: np.ndarray  # positions in the full state vector
    joints: list[tuple[str, str]] = field(default_factory=list)  # (joint, message field) per index


def _joint_name(name: str) -> tuple[str, str] | None:
    joint, _, suffix = name.rpartition(".")
    if joint and suffix in JOINT_FIELDS:
        return joint, JOINT_FIELDS[suffix]
    return None


def build_plans(meta: ModelMetadata, sources: list[StateSource]) -> list[_Plan]:
    """Map each source to positions of the state vector; raise ValueError if the mapping is not exact."""
    offsets, off = {}, 0
    for spec in meta.state:
        offsets[spec.key] = (off, spec)
        off += spec.dim
    plans: list[_Plan] = []
    for src in sources:
        if src.type not in STATE_SOURCE_TYPES:
            raise ValueError(f"state source {src.topic}: type {src.type!r} is not one of {STATE_SOURCE_TYPES}")
        if src.key not in offsets:
            raise ValueError(f"state source {src.topic}: key {src.key!r} is not a model state key "
                             f"({list(offsets)})")
    covered = np.zeros(meta.state_dim, dtype=int)
    for src in sources:
        start, spec = offsets[src.key]
        names = spec.names if len(spec.names) == spec.dim else [f"{spec.key}[{i}]" for i in range(spec.dim)]
        same_key = [s for s in sources if s.key == src.key]
        if sum(s.type == src.type for s in same_key) > 1:
            raise ValueError(f"state key {src.key!r} has more than one {src.type} source")
        has_js = any(s.type == "joint_state" for s in same_key)
        joint_pos = [i for i, n in enumerate(names) if _joint_name(n)]
        if src.type == "joint_state":
            if not joint_pos:
                raise ValueError(f"state source {src.topic}: key {src.key!r} has no '<joint>.pos/.vel/.eff' names")
            plan = _Plan(np.array([start + i for i in joint_pos]), [_joint_name(names[i]) for i in joint_pos])
        else:
            own = [i for i in range(spec.dim) if not (has_js and i in joint_pos)]
            plan = _Plan(np.array([start + i for i in own], dtype=int))
        covered[plan.index] += 1
        plans.append(plan)
    if (covered != 1).any():
        missing = np.flatnonzero(covered == 0).tolist()
        raise ValueError(f"state sources do not fill the model's state exactly once: positions {missing} "
                         f"unfilled (keys {[s.key for s in meta.state]})")
    return plans


def decode_raw_image(encoding: str, height: int, width: int, step: int, data: bytes | np.ndarray) -> np.ndarray:
    """A sensor_msgs/Image payload -> RGB uint8 [height, width, 3]."""
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding)
    if channels is None:
        raise ObservationError("unknown_encoding", f"image encoding {encoding!r} is not one of {RAW_ENCODINGS}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    step = step or width * channels
    if height <= 0 or width <= 0 or step < width * channels or buf.size != height * step:
        raise ObservationError("wrong_size", f"image {width}x{height} {encoding} step {step} has {buf.size} "
                                             f"bytes, expected {height * max(step, width * channels)}")
    # Rows may be padded to `step`; drop the padding.
    img = buf.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if encoding == "rgb8":
        return img
    conv = {"bgr8": cv2.COLOR_BGR2RGB, "mono8": cv2.COLOR_GRAY2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
            "bgra8": cv2.COLOR_BGRA2RGB}[encoding]
    return cv2.cvtColor(img[..., 0] if channels == 1 else img, conv)


def decode_compressed(fmt: str, data: bytes | np.ndarray) -> np.ndarray:
    """A sensor_msgs/CompressedImage payload (jpeg / png) -> RGB uint8 [h, w, 3]."""
    f = fmt.lower()
    if f and not any(x in f for x in ("jpeg", "jpg", "png")):
        raise ObservationError("unknown_encoding", f"compressed format {fmt!r} is not jpeg or png")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None  # BGR, always 3 channels
    if img is None:
        raise ObservationError("decode", f"compressed image ({fmt!r}, {buf.size} bytes) does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return np.ascontiguousarray(img)
    # INTER_AREA when shrinking (no aliasing), linear when growing.
    shrink = img.shape[0] > height or img.shape[1] > width
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class ObservationAssembler:
    def __init__(self, meta: ModelMetadata, sources: list[StateSource], max_age_s: float):
        self.meta = meta
        self.sources = list(sources)
        self.plans = build_plans(meta, self.sources)
        self.cameras = {c.name: c for c in meta.cameras}
        self.max_age_s = float(max_age_s)
        self._state: list[_Slot | None] = [None] * len(self.sources)
        self._images: dict[str, _Slot | None] = dict.fromkeys(self.cameras)
        self.seq = 0

    # --- inputs (each validates first, stores only a good message) -------------------------
    def put_array(self, source: int, values: np.ndarray, stamp_ns: int, received: float) -> None:
        plan = self.plans[source]
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        if v.size != plan.index.size:
            raise ObservationError("wrong_size", f"{self.sources[source].topic}: {v.size} numbers, "
                                                 f"expected {plan.index.size}")
        if not np.isfinite(v).all():
            raise ObservationError("non_finite", f"{self.sources[source].topic}: NaN or inf at positions "
                                                 f"{np.flatnonzero(~np.isfinite(v)).tolist()[:8]}")
        self._store_state(source, v, stamp_ns, received)

    def put_joint_state(self, source: int, names: list[str], fields: dict[str, np.ndarray], stamp_ns: int,
                        received: float) -> None:
        """fields: "position" / "velocity" / "effort" -> values in the message's name order."""
        plan = self.plans[source]
        where = {n: i for i, n in enumerate(names)}
        out = np.empty(plan.index.size, dtype=np.float32)
        missing = sorted({j for j, _ in plan.joints if j not in where})
        if missing:
            raise ObservationError("missing_joint", f"{self.sources[source].topic}: JointState lacks joints "
                                                    f"{missing} (has {list(names)})")
        for k, (joint, fld) in enumerate(plan.joints):
            arr = fields.get(fld)
            if arr is None or len(arr) != len(names):
                raise ObservationError("wrong_size", f"{self.sources[source].topic}: JointState {fld} has "
                                                     f"{0 if arr is None else len(arr)} values for {len(names)} names")
            out[k] = arr[where[joint]]
        if not np.isfinite(out).all():
            raise ObservationError("non_finite", f"{self.sources[source].topic}: NaN or inf in joint values")
        self._store_state(source, out, stamp_ns, received)

    def put_image(self, camera: str, rgb: np.ndarray, stamp_ns: int, received: float) -> None:
        cam = self.cameras[camera]
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ObservationError("wrong_size", f"camera {camera}: image {rgb.dtype} {rgb.shape} is not RGB uint8")
        self._images[camera] = _Slot(resize_to(rgb, cam.height, cam.width), stamp_ns, received)
        self.seq += 1

    def put_raw_image(self, camera: str, encoding: str, height: int, width: int, step: int, data: bytes,
                      stamp_ns: int, received: float) -> None:
        self.put_image(camera, decode_raw_image(encoding, height, width, step, data), stamp_ns, received)

    def put_compressed_image(self, camera: str, fmt: str, data: bytes, stamp_ns: int, received: float) -> None:
        self.put_image(camera, decode_compressed(fmt, data), stamp_ns, received)

    def _store_state(self, source: int, v: np.ndarray, stamp_ns: int, received: float) -> None:
        self._state[source] = _Slot(v, int(stamp_ns), float(received))
        self.seq += 1

    # --- output ---------------------------------------------------------------------------------
    def age(self, now: float) -> float | None:
        """Age of the oldest part (None while some source has never delivered)."""
        slots = [*self._state, *self._images.values()]
        if any(s is None for s in slots):
            return None
        return now - min(s.received for s in slots)

    def camera_ages(self, now: float) -> dict[str, float | None]:
        """Age of each camera's newest frame in seconds (None while a camera has delivered none)."""
        return {n: None if s is None else now - s.received for n, s in self._images.items()}

    def missing(self, now: float) -> list[str]:
        """Sources that are absent or stale, for a log line saying why there is no observation."""
        out = []
        for src, s in zip(self.sources, self._state, strict=True):
            if s is None or now - s.received > self.max_age_s:
                out.append(src.topic)
        out += [f"camera {n}" for n, s in self._images.items() if s is None or now - s.received > self.max_age_s]
        return out

    def ready(self, now: float) -> Observation | None:
        """The observation when every source is fresh, else None."""
        age = self.age(now)
        if age is None or age > self.max_age_s:
            return None
        state = np.empty(self.meta.state_dim, dtype=np.float32)
        for plan, slot in zip(self.plans, self._state, strict=True):
            state[plan.index] = slot.value
        slots = [*self._state, *self._images.values()]
        stamps = [s.stamp_ns for s in slots]
        return Observation(state=state, images={n: s.value for n, s in self._images.items()},
                           stamp_ns=min(stamps), stamp_skew_ns=max(stamps) - min(stamps), age_s=age, seq=self.seq)


# --- names and commands (any message object with the ROS fields; also rosbags' decoded messages) -------
def values_by_name(names: list[str], values: Any, wanted: list[str]) -> np.ndarray:
    """`values` (in `names` order) in `wanted` order; empty `names` means already in that order.

    Extra names are ignored; a wanted name that is missing, or names and values of different lengths,
    raise ObservationError("bad_names")."""
    vals = np.asarray(values, dtype=np.float64)
    if not names:
        return vals
    if len(names) != len(vals):
        raise ObservationError("bad_names", f"{len(names)} names but {len(vals)} values")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing or len(index) != len(names):
        raise ObservationError("bad_names", f"names {list(names)} do not cover {list(wanted)} (missing {missing})")
    return vals[[index[n] for n in wanted]]


def command_values(msg: Any, action_names: list[str]) -> np.ndarray:
    """The action a command message carries, in `action_names` order (float64): a Float64MultiArray
    (`data`), a one-point JointTrajectory (`joint_names`, `points`) or a JointState (`name`, `position`)."""
    if hasattr(msg, "data"):
        values = np.asarray(msg.data, dtype=np.float64)
    elif hasattr(msg, "points"):
        if len(msg.points) != 1:
            raise ObservationError("wrong_size", f"a JointTrajectory command must hold one point, "
                                                 f"got {len(msg.points)}")
        values = values_by_name(list(msg.joint_names), msg.points[0].positions, action_names)
    else:
        values = values_by_name(list(msg.name), msg.position, action_names)
    if values.shape != (len(action_names),):
        raise ObservationError("wrong_size", f"{values.size} action values, expected {len(action_names)}")
    if not np.isfinite(values).all():
        raise ObservationError("non_finite", "NaN or inf in the command")
    return values
