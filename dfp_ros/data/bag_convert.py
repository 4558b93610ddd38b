"""rosbag2 recordings (sqlite3 or MCAP) to LeRobot v3 datasets, without a ROS install (ROS-free).

The bag is read with the pure-Python `rosbags` package. Every message goes through the same
`RecordingSession` as `collect_node`'s (frames only when every stream is fresh, `max_age_s`; the
not-written frames counted per stream and reason; `/episode` events start, save and discard
episodes), on a clock that is the bag's own time. Without an episode topic, a pause longer than
`gap_s` on all the mapped topics ends one episode and starts the next.

A conversion writes into a hidden folder next to `out` and renames it only when the whole bag was
read: a failure leaves nothing behind, and an episode that has no end event in the bag is discarded.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dfp_ros.contracts import TOPIC_EPISODE, ContractError
from dfp_ros.data.dataset_writer import DatasetWriter, build_features, state_layout
from dfp_ros.data.episode_control import RECORDING
from dfp_ros.data.recording_session import RecordingSession, camera_stream, state_stream
from dfp_ros.data.writer_process import WriterStats
from dfp_ros.runtime.observation import (
    ObservationError,
    command_values,
    decode_compressed,
    decode_raw_image,
    resize_to,
    values_by_name,
)

JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
# The message types each role accepts, and the state source type (dataset_writer.STATE_SOURCE_TYPES) of each.
STATE_TYPES = {FLOAT32_ARRAY: "float32_array", JOINT_STATE: "joint_state"}
CAMERA_TYPES = (IMAGE, COMPRESSED)
ACTION_TYPES = (FLOAT64_ARRAY, TRAJECTORY, JOINT_STATE)
STAMP_SOURCES = ("bag", "header")
SAMPLE_ON = ("timer", "action")
TIMER_STEP_NS = 1_000_000  # timer sampling: the clock's step between two messages


class BagError(ContractError):
    """The bag, or the mapping asked of it, cannot be converted; the message names what is wrong."""


@dataclass
class BagMapping:
    """Which topics become which dataset features, and the sampling rules (see the module doc)."""

    state_topics: list[str]
    action_topic: str
    fps: int
    cameras: dict[str, str] = field(default_factory=dict)  # camera name -> topic
    joint_names: list[str] = field(default_factory=list)  # JointState states: the joints (default: all)
    state_names: list[str] = field(default_factory=list)  # float32_array states (default: <topic>.<i>)
    action_names: list[str] = field(default_factory=list)  # default: the command's joint names or <topic>.<i>
    image_size: tuple[int, int] | None = None  # (height, width); default: each camera's first frame
    episode_topic: str = TOPIC_EPISODE  # used when the bag has it
    sample_on: str = "timer"  # timer: a frame every 1/fps | action: one frame per command
    max_age_s: float = 0.1
    settle_s: float = 0.02
    gap_s: float = 1.0
    stamps: str = "bag"  # bag: the recorder's receipt time | header: header stamps where messages have one
    task: str = ""
    repo_id: str = "local/converted_bag"
    robot_type: str = ""
    vcodec: str = "h264"

    def __post_init__(self) -> None:
        self.state_topics = [topic_name(t) for t in self.state_topics]
        self.action_topic = topic_name(self.action_topic)
        self.cameras = {str(k): topic_name(v) for k, v in self.cameras.items()}
        self.episode_topic = topic_name(self.episode_topic) if self.episode_topic else ""
        if not self.state_topics or not self.action_topic:
            raise BagError("a conversion needs at least one state topic and an action topic")
        if self.fps <= 0:
            raise BagError(f"fps must be > 0, got {self.fps}")
        if self.sample_on not in SAMPLE_ON:
            raise BagError(f"sample_on {self.sample_on!r} is not one of {SAMPLE_ON}")
        if self.stamps not in STAMP_SOURCES:
            raise BagError(f"stamps {self.stamps!r} is not one of {STAMP_SOURCES}")
        if self.max_age_s <= 0 or self.gap_s <= 0:
            raise BagError(f"max_age_s and gap_s must be > 0, got {self.max_age_s} and {self.gap_s}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> BagMapping:
        """A mapping file: the fields of this class as YAML keys (`cameras: {front: /camera/image_raw}`)."""
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise BagError(f"mapping {path}: {e}") from e
        if not isinstance(raw, dict):
            raise BagError(f"mapping {path}: expected a YAML mapping of fields, got {type(raw).__name__}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise BagError(f"mapping {path}: unknown fields {unknown} (known: {sorted(cls.__dataclass_fields__)})")
        if raw.get("image_size") is not None:
            raw["image_size"] = tuple(int(x) for x in raw["image_size"])
        try:
            return cls(**raw)
        except TypeError as e:
            raise BagError(f"mapping {path}: {e}") from e


def topic_name(name: str) -> str:
    """Absolute topic name: bags store `/joint_states`, users often write `joint_states`."""
    return "/" + name.strip().lstrip("/") if name and name.strip() else ""


@dataclass
class ConvertReport:
    bag: str
    out: str
    episodes: int
    episodes_discarded: int
    frames: int
    episode_lengths: list[int]
    frames_not_written: int
    missing: dict[str, int]
    stale: dict[str, int]
    bad_messages: dict[str, int]
    gaps: int  # pauses longer than gap_s that split episodes (no episode topic)
    messages: int
    seconds: float

    def summary(self) -> str:
        return (f"convert-bag: {self.episodes} episodes ({self.episodes_discarded} discarded), {self.frames} frames "
                f"from {self.messages} messages in {self.seconds:.1f} s; not written {self.frames_not_written} "
                f"(missing {self.missing}, stale {self.stale}); bad messages {self.bad_messages}; gaps {self.gaps}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# --- rosbags messages -> arrays --------------------------------------------------------------------
def header_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def command_names(msgtype: str, msg: Any) -> list[str]:
    """The names a command message carries (empty for arrays)."""
    if msgtype == TRAJECTORY:
        return list(msg.joint_names)
    if msgtype == JOINT_STATE:
        return list(msg.name)
    return []


def state_array(msgtype: str, msg: Any, size: int, joint_names: list[str]) -> np.ndarray:
    if msgtype == JOINT_STATE:
        values = values_by_name(list(msg.name), msg.position, joint_names)
    else:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.size != size:
            raise ObservationError("wrong_size", f"{values.size} numbers, expected {size}")
    if not np.isfinite(values).all():
        raise ObservationError("non_finite", "NaN or inf in the state")
    return values.astype(np.float32)


def image_array(msgtype: str, msg: Any) -> np.ndarray:
    if msgtype == COMPRESSED:
        return decode_compressed(msg.format, msg.data)
    return decode_raw_image(msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data)


# --- the bag ----------------------------------------------------------------------------------------
class Bag:
    """A rosbag2 opened with rosbags' AnyReader; every read failure becomes a one-line BagError."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        try:
            self.reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_KILTED))
            self.reader.open()
        except Exception as e:  # rosbags raises several types (ReaderError, sqlite, MCAP, zstd ...)
            raise BagError(f"{self.path}: cannot open the bag ({_one_line(e)})") from e
        self.topics: dict[str, str] = {c.topic: c.msgtype for c in self.reader.connections}

    def close(self) -> None:
        self.reader.close()

    def describe(self) -> str:
        return ", ".join(f"{t} ({ty})" for t, ty in sorted(self.topics.items())) or "none"

    def require(self, topic: str, role: str, accepted: tuple[str, ...]) -> str:
        """The topic's message type, checked to be one `role` accepts."""
        if topic not in self.topics:
            raise BagError(f"{self.path}: no {role} topic {topic} in the bag (topics: {self.describe()})")
        msgtype = self.topics[topic]
        if msgtype not in accepted:
            raise BagError(f"{self.path}: {role} topic {topic} has message type {msgtype}; {role} topics must be "
                           f"one of {list(accepted)}")
        return msgtype

    def count(self, topics: list[str]) -> int:
        return sum(c.msgcount for c in self.reader.connections if c.topic in topics)

    def messages(self, topics: list[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, bag time ns, message) in bag-time order."""
        conns = [c for c in self.reader.connections if c.topic in topics]
        it = self.reader.messages(connections=conns)
        n = 0
        while True:
            try:
                item = next(it, None)
                if item is None:
                    return
                conn, t_ns, raw = item
                msg = self.reader.deserialize(raw, conn.msgtype)
            except Exception as e:
                raise BagError(f"{self.path}: the bag is truncated or corrupted after {n} messages "
                               f"({_one_line(e)})") from e
            n += 1
            yield conn.topic, int(t_ns), msg

    def first(self, topic: str) -> Any:
        for _, _, msg in self.messages([topic]):
            return msg
        raise BagError(f"{self.path}: topic {topic} has no messages")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# --- the writer the session drives ------------------------------------------------------------------
class InProcessWriter:
    """recording_session.Writer on a DatasetWriter in this process (a bag does not need a real-time loop)."""

    backlog = 0

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer
        self.stats = WriterStats()

    def add_frame(self, frame: dict[str, Any], task: str) -> bool:
        self.writer.add_frame(frame, task)
        self.stats.frames_written += 1
        return True

    def save(self) -> None:
        n = self.writer.save_episode()
        self.stats.episodes_saved += 1
        self.stats.saved_lengths.append(n)

    def discard(self) -> None:
        self.writer.discard_episode()
        self.stats.episodes_discarded += 1

    def close(self, timeout: float | None = None) -> bool:
        self.writer.finalize()
        return True


class _Log:
    """The session's logger: warnings to `warn`, the rest dropped (the summary has the counts)."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warning = warn

    def info(self, text: str) -> None:
        pass

    debug = info


# --- conversion ---------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What the bag's first messages say about the dataset: message types, sizes and names."""

    state_types: dict[str, str]  # topic -> msgtype
    state_sizes: dict[str, int]
    joint_names: list[str]
    state_names: list[str]
    camera_types: dict[str, str]  # camera name -> msgtype
    image_sizes: dict[str, tuple[int, int]]
    action_type: str
    action_names: list[str]
    episode_topic: str  # "" when the bag has none


def plan_conversion(bag: Bag, m: BagMapping) -> _Plan:
    state_types = {t: bag.require(t, "state", tuple(STATE_TYPES)) for t in m.state_topics}
    camera_types = {name: bag.require(t, "camera", CAMERA_TYPES) for name, t in m.cameras.items()}
    action_type = bag.require(m.action_topic, "action", ACTION_TYPES)
    episode_topic = ""
    if m.episode_topic and m.episode_topic in bag.topics:
        episode_topic = m.episode_topic
        bag.require(episode_topic, "episode", (STRING,))
    joint_names = list(m.joint_names)
    sizes: dict[str, int] = {}
    for topic, msgtype in state_types.items():
        first = bag.first(topic)
        if msgtype == JOINT_STATE:
            joint_names = joint_names or list(first.name)
        else:
            sizes[topic] = len(first.data)
    types = [STATE_TYPES[state_types[t]] for t in m.state_topics]
    try:
        _, state_names = state_layout(m.state_topics, types, [sizes[t] for t in m.state_topics if t in sizes],
                                      m.state_names, joint_names)
    except ValueError as e:
        raise BagError(f"{bag.path}: {e}") from e
    image_sizes: dict[str, tuple[int, int]] = {}
    for name, topic in m.cameras.items():
        if m.image_size is not None:
            image_sizes[name] = (int(m.image_size[0]), int(m.image_size[1]))
            continue
        try:
            image_sizes[name] = tuple(image_array(camera_types[name], bag.first(topic)).shape[:2])
        except ObservationError as e:
            raise BagError(f"{bag.path}: camera {name} ({topic}): the first image does not decode: {e}") from e
    action_names = list(m.action_names) or command_names(action_type, bag.first(m.action_topic))
    if not action_names:
        base = m.action_topic.strip("/").replace("/", ".")
        action_names = [f"{base}.{i}" for i in range(len(bag.first(m.action_topic).data))]
    return _Plan(state_types, sizes, joint_names, state_names, camera_types, image_sizes, action_type,
                 action_names, episode_topic)


def convert_bag(bag_path: str | Path, out: str | Path, mapping: BagMapping, progress: bool = True,
                warn: Callable[[str], None] = print) -> ConvertReport:
    """Convert one bag into a new dataset at `out` (see the module doc); BagError names what is wrong."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BagError(f"{out} exists and is not empty; choose a new folder")
    t_start = time.monotonic()
    bag = Bag(bag_path)
    tmp = out.parent / f".{out.name}.partial"
    try:
        plan = plan_conversion(bag, mapping)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a conversion that was killed
        tmp.parent.mkdir(parents=True, exist_ok=True)
        features = build_features(plan.state_names, plan.action_names, plan.image_sizes)
        writer = InProcessWriter(DatasetWriter(tmp, mapping.repo_id, mapping.fps, features,
                                               robot_type=mapping.robot_type, vcodec=mapping.vcodec))
        try:
            report = _run(bag, mapping, plan, writer, progress, warn)
        except BaseException:
            writer.writer.discard_episode()
            raise
        finally:
            writer.close()
        if report.episodes == 0:
            raise BagError(f"{bag.path}: no complete episode with frames in the bag ({report.summary()})")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        bag.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report.out = str(out)
    report.seconds = round(time.monotonic() - t_start, 2)
    return report


def _run(bag: Bag, m: BagMapping, plan: _Plan, writer: InProcessWriter, progress: bool,
         warn: Callable[[str], None]) -> ConvertReport:
    now = [0]  # the session's clock: the time of the message being handled
    session = RecordingSession(writer, state_topics=m.state_topics, cameras=list(m.cameras), fps=m.fps,
                               sample_on=m.sample_on, max_age_s=m.max_age_s, settle_s=m.settle_s,
                               auto_episodes=bool(plan.episode_topic), max_episodes=0,
                               start_on_first_command=False, first_episode=0, task=m.task, log=_Log(warn),
                               clock=lambda: now[0])
    camera_of = {t: name for name, t in m.cameras.items()}
    topics = [*m.state_topics, *m.cameras.values(), m.action_topic] + ([plan.episode_topic] if plan.episode_topic
                                                                       else [])
    last_t: dict[str, int] = {}
    last_any: int | None = None
    gaps = 0

    timer = m.sample_on == "timer"

    def advance(t: int) -> None:
        """Move the clock to t. Timer frames and events are handled in their time order (to within a
        millisecond): an episode's end event must stop its frames even when no message follows for a while."""
        while timer and now[0] + TIMER_STEP_NS < t:
            now[0] += TIMER_STEP_NS
            session.pump()
            session.tick()
        now[0] = max(now[0], t)
        session.pump()
        if timer:
            session.tick()

    from tqdm import tqdm

    bar = tqdm(total=bag.count(topics), unit="msg", disable=not progress, desc="convert-bag", leave=False)
    n = 0
    for topic, t_bag, msg in bag.messages(topics):
        n += 1
        bar.update()
        stamp = header_ns(msg) if m.stamps == "header" else None
        t = t_bag if stamp is None else stamp
        if t < last_t.get(topic, t):
            raise BagError(f"{bag.path}: stamps on {topic} go back in time at message {n} "
                           f"({(last_t[topic] - t) / 1e9:.3f} s earlier than the one before)")
        last_t[topic] = t
        if last_any is None:
            now[0] = t
            if not plan.episode_topic:
                session.request("start")
        elif t - last_any > m.gap_s * 1e9:
            advance(last_any + int(m.settle_s * 1e9) + TIMER_STEP_NS)  # what was settling before the pause
            session.pump(flush=True)
            if plan.episode_topic and session.control.state == RECORDING:
                raise BagError(f"{bag.path}: no message for {(t - last_any) / 1e9:.2f} s (> gap_s {m.gap_s}) "
                               f"inside an episode at {t / 1e9:.3f} s; raise --gap-s to accept it")
            if not plan.episode_topic:
                gaps += 1
                session.request("save")
                now[0] = t
                session.request("start")
        last_any = max(t, last_any or t)
        advance(t)
        try:
            if topic == plan.episode_topic:
                session.on_event(t, str(msg.data).strip())
            elif topic == m.action_topic:
                session.on_command(t, command_values(msg, plan.action_names).astype(np.float32))
            elif topic in camera_of:
                name = camera_of[topic]
                h, w = plan.image_sizes[name]
                session.add(camera_stream(name), t, resize_to(image_array(plan.camera_types[name], msg), h, w))
            else:
                session.add(state_stream(topic), t, state_array(plan.state_types[topic], msg,
                                                                plan.state_sizes.get(topic, 0), plan.joint_names))
        except ObservationError as e:
            session.count_bad(topic, e.kind, str(e))
    bar.close()
    if n:  # the bag is over: what was still settling is due now
        advance(now[0] + int(m.settle_s * 1e9) + TIMER_STEP_NS)
    session.pump(flush=True)
    # The bag's end ends a gap-split episode; with an episode topic, an episode without its end event is partial.
    session.request("stop_discard" if plan.episode_topic else "stop_save")
    stats = session.stats()
    return ConvertReport(bag=str(bag.path), out="", episodes=stats["episodes_saved"],
                         episodes_discarded=stats["episodes_discarded"], frames=sum(stats["saved_lengths"]),
                         episode_lengths=stats["saved_lengths"], frames_not_written=stats["frames_not_written"],
                         missing=stats["missing"], stale=stats["stale"], bad_messages=stats["bad_messages"],
                         gaps=gaps, messages=n, seconds=0.0)
