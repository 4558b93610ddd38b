"""The one bridge between ROS messages and numpy arrays, for every dfp_ros node.

Decoding raises `ObservationError` (one error type; its `kind` names the reason a node counts the
message under: wrong_size, non_finite, missing_joint, bad_names, unknown_encoding, decode, ...), so a
node's callback is: decode -> hand the arrays on, or count the kind and drop. Building the outgoing
messages (chunks, commands, diagnostics) lives here too, with the stamps, so that every node writes
them the same way. The observation parameters that several nodes share (state sources, cameras) are
declared from the tables below.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dfp_ros import contracts
from dfp_ros.contracts import ModelMetadata
from dfp_ros.nodes.params import Param
from dfp_ros.runtime.observation import (
    STATE_SOURCE_TYPES,
    ObservationError,
    StateSource,
    build_plans,
    command_values,
    decode_compressed,
    decode_raw_image,
    values_by_name,
)

__all__ = ["ObservationError", "command_values", "values_by_name"]


def message_array(values: np.ndarray, typecode: str = "d") -> array.array:
    """`values` as the array.array a float message field takes ("d" float64, "f" float32): built from
    bytes, it passes the message's type check at once; a list is checked element by element."""
    dtype = {"d": np.float64, "f": np.float32}[typecode]
    return array.array(typecode, np.ascontiguousarray(values, dtype).tobytes())

# --- QoS ---------------------------------------------------------------------------------------------
# Latched: a late joiner gets the last message (model updates, state names).
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Events a learner or recorder must not miss while it is busy for a moment (~1.6 s at lock-step speed).
EVENTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Camera frames: best effort (a best-effort reader matches any writer), deeper than the sensor-data
# default (5) so a reader busy for a moment keeps the frames its joins need; raw frames are large.
FRAMES = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)

COMMAND_TYPES = ("float64_array", "joint_trajectory", "joint_state")
COMMAND_MSG = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory, "joint_state": JointState}


# --- stamps ------------------------------------------------------------------------------------------
def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def set_stamp(stamp: Any, ns: int) -> None:
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)


def sent_ns(info: dict | None) -> int:
    """When the publisher sent a message (rmw message info's DDS source timestamp, ns); 0 when unknown.
    Header-less messages (rewards, episode events, Float32MultiArray states) are placed by it."""
    return int((info or {}).get("source_timestamp") or 0)


def duration(seconds: float) -> Duration:
    ns = round(seconds * 1e9)
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# --- messages -> arrays ------------------------------------------------------------------------------
def joint_fields(msg: JointState) -> dict[str, np.ndarray]:
    """position / velocity / effort of a JointState, in the message's name order."""
    return {"position": np.asarray(msg.position), "velocity": np.asarray(msg.velocity),
            "effort": np.asarray(msg.effort)}


def image_rgb(msg: Image | CompressedImage, compressed: bool) -> np.ndarray:
    """uint8 RGB [h, w, 3] from an Image (rgb8/bgr8/mono8) or a CompressedImage (jpeg/png)."""
    if compressed:
        return decode_compressed(msg.format, msg.data)
    return decode_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def chunk_values(msg: JointTrajectory, action_names: list[str]) -> np.ndarray:
    """A chunk message's actions [H, A] in `action_names` order."""
    names = list(msg.joint_names)
    rows = [values_by_name(names, pt.positions, action_names) for pt in msg.points]
    if not rows:
        raise ObservationError("wrong_size", "a chunk without points")
    return np.asarray(rows, np.float32)


# --- arrays -> messages ------------------------------------------------------------------------------
class ChunkMessage:
    """`~/action_chunk` for one model: point i at (i + 1) / fps, stamped with its observation.

    Building a JointTrajectory with its points costs ~0.15 ms of Python, so the message is built once
    and only the stamp and positions are written per chunk. Reuse is safe for one writer thread,
    because publish() serialises before it returns."""

    def __init__(self, meta: ModelMetadata):
        self.msg = JointTrajectory(joint_names=list(meta.action_names))
        self.msg.points = [JointTrajectoryPoint(time_from_start=duration((i + 1) / meta.fps))
                           for i in range(meta.horizon)]

    def fill(self, chunk: np.ndarray, stamp: int) -> JointTrajectory:
        set_stamp(self.msg.header.stamp, stamp)
        rows = np.ascontiguousarray(chunk, np.float64)
        for point, action in zip(self.msg.points, rows, strict=True):
            point.positions = message_array(action)
        return self.msg


class CommandMessage:
    """`~/command` as Float64MultiArray, a one-point JointTrajectory (reached in `period_s`) or a
    JointState; built once, a tick writes only the values and the stamp (same reuse rule as above)."""

    def __init__(self, command_type: str, action_names: list[str], period_s: float):
        if command_type not in COMMAND_TYPES:
            raise ValueError(f"command_type {command_type!r} is not one of {COMMAND_TYPES}")
        self.type = command_type
        if command_type == "float64_array":
            self.msg: Any = Float64MultiArray()
        elif command_type == "joint_trajectory":
            self.msg = JointTrajectory(joint_names=list(action_names),
                                       points=[JointTrajectoryPoint(time_from_start=duration(period_s))])
        else:
            self.msg = JointState(name=list(action_names))

    def fill(self, action: np.ndarray, stamp: int) -> Any:
        values = message_array(action)
        if self.type == "float64_array":
            self.msg.data = values
            return self.msg
        set_stamp(self.msg.header.stamp, stamp)
        if self.type == "joint_trajectory":
            self.msg.points[0].positions = values
        else:
            self.msg.position = values
        return self.msg


class ExecutedMessage:
    """`~/executed`: one tick's command as published (after the safety filter) in a one-point
    JointTrajectory; header.frame_id says who produced it (policy | human | hold) and header.stamp is the
    observation the tick acted on (as `~/action_chunk`'s). Built once (same reuse rule as above)."""

    def __init__(self, action_names: list[str]):
        self.msg = JointTrajectory(joint_names=list(action_names), points=[JointTrajectoryPoint()])

    def fill(self, command: np.ndarray, stamp: int, source: str) -> JointTrajectory:
        set_stamp(self.msg.header.stamp, stamp)
        self.msg.header.frame_id = source
        self.msg.points[0].positions = message_array(command)
        return self.msg


def format_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def diagnostics(name: str, hardware_id: str, level: int, message: str, values: dict[str, Any],
                stamp: int) -> DiagnosticArray:
    """One DiagnosticStatus (levels: DiagnosticStatus.OK / WARN / ERROR) in a stamped DiagnosticArray."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message)
    status.values = [KeyValue(key=k, value=format_value(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    set_stamp(msg.header.stamp, stamp)
    return msg


# --- the observation parameters several nodes share --------------------------------------------------
STATE_PARAMS = [
    Param("state_topics", [contracts.TOPIC_SIM_STATE], "state topics, one per state source"),
    Param("state_types", ["float32_array"], f"per state topic: {' | '.join(STATE_SOURCE_TYPES)}"),
    Param("state_keys", [""], "per state topic: the model state key it fills ('' = the model's only key; "
                              "one entry serves all topics)"),
]


def camera_params(meta: ModelMetadata) -> list[Param]:
    """camera.<name>.topic / camera.<name>.compressed for each camera the model names."""
    out = []
    for i, cam in enumerate(meta.cameras):
        default = contracts.TOPIC_SIM_CAMERA if i == 0 else f"camera/{cam.name}/image_raw"
        out += [Param(f"camera.{cam.name}.topic", default, f"camera {cam.name}: sensor_msgs/Image topic"),
                Param(f"camera.{cam.name}.compressed", False, f"camera {cam.name}: CompressedImage instead")]
    return out


def state_sources(meta: ModelMetadata, values: dict[str, Any]) -> list[StateSource]:
    """The state_* parameters -> StateSources; ValueError when they do not fit the model.

    The mapping onto the state vector is checked here (`build_plans`), so a bad configuration stops
    the node at start."""
    topics, types, keys = ([str(v) for v in values[k]] for k in ("state_topics", "state_types", "state_keys"))
    if not (len(topics) == len(types) and len(keys) in (len(topics), 1)) or not topics:
        raise ValueError(f"state_topics {topics}, state_types {types} and state_keys {keys} must be non-empty "
                         "lists of equal lengths (state_keys may hold one entry for all)")
    keys = keys * (len(topics) if len(keys) == 1 else 1)
    if any(k == "" for k in keys) and len(meta.state) != 1:
        raise ValueError(f"the model has state keys {[s.key for s in meta.state]}: name one per state topic in "
                         "state_keys")
    sources = [StateSource(t, ty, k or meta.state[0].key) for t, ty, k in zip(topics, types, keys, strict=True)]
    build_plans(meta, sources)
    return sources


def camera_topics(meta: ModelMetadata, values: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """camera name -> (topic, compressed) from the camera.* parameters."""
    return {c.name: (str(values[f"camera.{c.name}.topic"]), bool(values[f"camera.{c.name}.compressed"]))
            for c in meta.cameras}


def image_message(pixels: np.ndarray, encoding: str, frame_id: str, stamp: int) -> Image:
    """A sensor_msgs/Image of `pixels` ([h, w] or [h, w, c], row-major) in `encoding` (rgb8, 16UC1, ...)."""
    msg = Image(height=int(pixels.shape[0]), width=int(pixels.shape[1]), encoding=encoding, is_bigendian=0,
                step=int(pixels.strides[0]) if pixels.flags.c_contiguous else pixels[0].nbytes)
    msg.header.frame_id = frame_id
    set_stamp(msg.header.stamp, stamp)
    msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())  # raw bytes, whatever the encoding
    return msg


def joint_state_message(names: list[str], positions: np.ndarray, velocities: np.ndarray | None,
                        stamp: int) -> JointState:
    """A sensor_msgs/JointState stamped `stamp` (ns); no velocities when None."""
    msg = JointState(name=list(names))
    set_stamp(msg.header.stamp, stamp)
    msg.position = message_array(positions)
    if velocities is not None:
        msg.velocity = message_array(velocities)
    return msg


def state_array_message(values: np.ndarray, label: str = "state") -> Float32MultiArray:
    """A std_msgs/Float32MultiArray of one dimension named `label`."""
    n = int(np.asarray(values).shape[0])
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=n, stride=n)]
    msg.data = message_array(values, "f")
    return msg
