"""`collect_node`: record teleoperated demonstrations from ROS topics into a LeRobot v3 dataset.

A thin ROS shell over `dfp_ros.data.recorder` (sampling, episode state machine, dataset writer):
this file turns messages into arrays, owns parameters, services, timers and the keyboard.

Features (from parameters): `observation.state` = the configured state sources concatenated in
order (Float32MultiArray blocks, and/or the positions of chosen joints of a JointState, named
`<joint>.pos`); `action` = the teleoperation command topic (Float64MultiArray, one-point
JointTrajectory, or JointState - the last is the leader-arm option: a second arm's joint states
recorded as the action); `observation.images.<name>` = one video per camera (sensor_msgs/Image
rgb8/bgr8/mono8/rgba8/bgra8, or CompressedImage; resized to the configured size). The task text of
an episode is the `task` parameter when the episode starts (`ros2 param set` between episodes).

Sampling, one clock (see recorder.py): every message keeps its source timestamp (the publisher's
system clock, from rmw's message info; `time_source: received` uses the arrival time instead, for
publishers on another machine without synchronised clocks). A frame at time T takes the newest
message of every stream published at or before T and no older than `max_age_s`; a frame with a
stream missing or stale is not written and is counted per stream, with a throttled warning, and
recording goes on by itself when the stream is back. T is
  sample_on: timer   a wall-clock tick at `fps` (a robot; the action is a stream like the others), or
  sample_on: action  each command message (one frame per command, paired with the state published
                     before it: a lock-step simulator running faster than real time).
Commands and episode events are handled in source-time order, at least `settle_s` after they were
published, and a command only once every stream has a message newer than it (DDS keeps each topic
in order, so nothing older can still come; at most min(max_age_s, 1 s) is waited for that). So an
episode's end event cannot overtake its last command, nor a busy recorder pair a command with an
older state. Lock-step: the state is current until the next command, however long the teleoperator
takes, so give `max_age_s` a few seconds there.

Episodes: services `~/start`, `~/save`, `~/discard` (std_srvs/Trigger); keys when run in a terminal
(`n` or right arrow: save and record the next, `r` or left arrow: discard and record again, `q` or
Esc: save the episode in progress and stop); `auto_episodes: true` follows `/episode` events (start
-> record, success/failure/timeout -> save, reset without an end -> discard).
`max_episodes` > 0 stops after that many episodes saved by this run. `start_on_first_command` (action
mode) starts the first episode at the first command: a lock-step simulator waits for that command, so
its first episode - whose `start` event the recorder may have missed while it was being discovered -
is recorded whole (on a running robot it would record a partial first episode: leave it off there).

Stopping: `q` (and max_episodes) save the episode in progress; Ctrl-C / SIGTERM follow
`on_shutdown` - `discard` by default (an interrupted demonstration is usually incomplete), or
`save`. Either way the queued writes finish, the dataset is finalised, and every saved episode
stays: the dataset always loads.

Appending: `append: true` adds episodes to the dataset at `root` if its fps and features (keys,
dtypes, shapes, names) are identical; otherwise the node refuses at start, naming each mismatched
feature, writes nothing and exits with code 2.

QoS: states `state_qos` (reliable | latched - sim_robot_node's lock-step first state - | sensor_data),
cameras `camera_qos` (sensor_data matches any publisher; reliable loses no frame when the publisher is
reliable too, as realsense-ros and realsense_node are). In timer mode queues are shallow (2, best effort;
reliable cameras 10): only the newest message matters, and a recorder that fell behind skips ahead
instead of working through a backlog older than max_age_s. Action mode keeps deep reliable queues:
every command and state counts.

Video: `use_videos`, `vcodec` (default h264: a third less CPU than lerobot's default libsvtav1, which
on 2 cores still lost a few frames of the recording bench; libsvtav1 gives smaller files),
`streaming_encoding` (default true: encode while recording, no PNG files, an episode is on disk well
under a second after save). Measured on 2 cores, 2 x 640x480 at 30 fps, CPU per frame: streaming
16 ms (h264) / 24 ms (libsvtav1); PNG files plus encoding at save 30-37 ms, which does not keep up
there. An encoder that falls behind makes frames wait in the writer process, never dropped; should
lerobot still drop one (its queue of `encoder_queue_maxsize` full),
the episode is discarded with an error, never saved shorter than its data.

Writer process: lerobot's writer (LeRobotDataset.create / add_frame / save_episode / finalize) runs in a
child process (recorder.ProcessWriter, at a lower CPU priority), so PNG writing and video encoding never hold
this process's GIL while camera images arrive; frames go to it through shared memory. It finishes and
finalizes the dataset even if this process is killed.

Progress: a log line every `progress_period_s` (episodes, frames, frame rate, frames not written per
stream, writer backlog); at exit one line `collect summary {json}`.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dfp_ros import contracts
from dfp_ros.data.recorder import (
    IDLE,
    IMAGE_PREFIX,
    RECORDING,
    EpisodeControl,
    FeatureMismatch,
    FrameSampler,
    ProcessWriter,
    TriggerQueue,
    build_features,
    to_frame,
)
from dfp_ros.nodes.node_main import run_node
from dfp_ros.runtime.observation import ObservationError, decode_compressed, decode_raw_image, resize_to

NODE_NAME = "collect_node"
STATE_TYPES = {"float32_array": Float32MultiArray, "joint_state": JointState}
ACTION_TYPES = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory, "joint_state": JointState}
SAMPLE_ON = ("timer", "action")
ON_SHUTDOWN = ("discard", "save")
ACTION_STREAM = "action"

_EVENTS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# State QoS (`state_qos`): "reliable" matches reliable publishers (robot drivers, joint_state_broadcaster);
# "latched" (transient local) also gets a latched publisher's current value on joining - sim_robot_node's
# first lock-step state - but matches only transient-local publishers; "sensor_data" (best effort) matches
# everything. Deep queues: a recorder busy for a moment must not lose states. Cameras: sensor-data QoS.
_STATE_QOS = {
    "reliable": QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE),
    "latched": QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL),
    "sensor_data": QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT,
                              durability=DurabilityPolicy.VOLATILE),
}
_COMMAND_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_WARN_THROTTLE_S = 2.0
_MAX_CATCH_UP_S = 0.25  # timer mode: how far back due frames are still sampled (within the streams' history)
# Camera QoS (`camera_qos`): "sensor_data" (best effort) matches every publisher, but large images sent best
# effort are lost when the receiver falls behind for a moment (measured here with Fast DDS: 2 x 640x480 at
# 30 Hz, a third to two thirds lost). "reliable" loses none when the publisher is reliable too (realsense-ros'
# default QoS; our realsense_node) - and, with Fast DDS on one machine, config/fastdds_shm_large.xml in both
# processes (FASTDDS_DEFAULT_PROFILES_FILE): Fast DDS's default 512 KB shared-memory segment cannot hold a
# 640x480 image, and LARGE_DATA then sends it over TCP, late (measured ~12 ms p50, one camera often >100 ms).


def _str_array(desc: str) -> ParameterDescriptor:
    return ParameterDescriptor(type=ParameterType.PARAMETER_STRING_ARRAY, description=desc)


def _int_array(desc: str) -> ParameterDescriptor:
    return ParameterDescriptor(type=ParameterType.PARAMETER_INTEGER_ARRAY, description=desc)


_LIST_TYPES = {ParameterType.PARAMETER_STRING_ARRAY: Parameter.Type.STRING_ARRAY,
               ParameterType.PARAMETER_INTEGER_ARRAY: Parameter.Type.INTEGER_ARRAY,
               ParameterType.PARAMETER_BOOL_ARRAY: Parameter.Type.BOOL_ARRAY}


def _declare_list(node: Node, name: str, default: list, descriptor: ParameterDescriptor) -> list:
    """A list parameter; an empty default is declared by type (rclpy would type `[]` as a byte array)."""
    if default:
        return list(node.declare_parameter(name, default, descriptor).value)
    kind = _LIST_TYPES[descriptor.type]
    descriptor = ParameterDescriptor(description=descriptor.description)
    value = node.declare_parameter(name, kind, descriptor).value
    return list(value) if value is not None else []


class BadMessage(ValueError):
    """A message that cannot become part of a frame; dropped and counted."""


class CollectNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        d = self.declare_parameter
        root = d("root", "", ParameterDescriptor(description="dataset folder (new, or existing with append)")).value
        repo_id = d("repo_id", "local/dfp_demos").value
        self.fps = d("fps", 20).value
        self.task = d("task", "demonstration").value  # read again at each episode start
        append = d("append", False).value
        robot_type = d("robot_type", "").value
        use_videos = d("use_videos", True).value
        vcodec = d("vcodec", "h264").value
        parallel_encoding = d("parallel_encoding", False).value
        streaming = d("streaming_encoding", True, ParameterDescriptor(
            description="encode videos while recording (no PNG files; save is near-instant)")).value
        encoder_queue = d("encoder_queue_maxsize", 120).value
        state_topics = d("state_topics", [contracts.TOPIC_SIM_STATE], _str_array("state sources, in order")).value
        state_types = d("state_types", ["float32_array"], _str_array("per source: float32_array | joint_state")).value
        state_dims = d("state_dims", [28], _int_array("per float32_array source: its length")).value
        lst = _declare_list
        state_names = lst(self, "state_names", [], _str_array("names of all float32_array values (default topic.i)"))
        joint_names = lst(self, "joint_names", [], _str_array("joints recorded from joint_state sources (.pos)"))
        action_topic = d("action_topic", contracts.TOPIC_POLICY_COMMAND).value
        action_type = d("action_type", "float64_array", ParameterDescriptor(
            description="float64_array | joint_trajectory | joint_state (leader arm)")).value
        self.action_names = lst(self, "action_names", ["effector_dx", "effector_dy", "effector_dz", "effector_dyaw",
                                                       "gripper_delta"], _str_array("action names"))
        self.action_joints = lst(self, "action_joints", [], _str_array(
            "joint_state action: joints to read (default action_names)")) or self.action_names
        camera_names = lst(self, "camera_names", [], _str_array("camera names (features observation.images.<name>)"))
        camera_topics = lst(self, "camera_topics", [], _str_array("per camera: Image or CompressedImage topic"))
        camera_heights = lst(self, "camera_heights", [], _int_array("per camera: recorded height"))
        camera_widths = lst(self, "camera_widths", [], _int_array("per camera: recorded width"))
        camera_compressed = lst(self, "camera_compressed", [], ParameterDescriptor(
            type=ParameterType.PARAMETER_BOOL_ARRAY, description="per camera: CompressedImage"))
        self.sample_on = d("sample_on", "timer", ParameterDescriptor(description="timer | action")).value
        max_age = d("max_age_s", 0.1, ParameterDescriptor(description="older messages are stale")).value
        settle = d("settle_s", 0.02, ParameterDescriptor(description="wait before using a message time")).value
        camera_qos = d("camera_qos", "sensor_data", ParameterDescriptor(
            description="sensor_data (matches any publisher) | reliable (lossless; needs a reliable publisher)")).value
        state_qos = d("state_qos", "reliable", ParameterDescriptor(
            description="reliable | latched | sensor_data (QoS of the state subscriptions)")).value
        self.time_source = d("time_source", "source", ParameterDescriptor(description="source | received")).value
        episode_topic = d("episode_topic", contracts.TOPIC_EPISODE).value
        self.auto = d("auto_episodes", False, ParameterDescriptor(description="follow /episode events")).value
        self.max_episodes = d("max_episodes", 0).value
        self.start_on_first_command = d("start_on_first_command", False, ParameterDescriptor(
            description="start the first episode at the first command (a lock-step sim waits for it)")).value
        keyboard = d("keyboard", True, ParameterDescriptor(description="keys, when stdin is a terminal")).value
        self.on_shutdown = d("on_shutdown", "discard", ParameterDescriptor(
            description="the episode in progress at Ctrl-C / SIGTERM: discard | save")).value
        progress_period = d("progress_period_s", 2.0).value

        # --- check the configuration ---------------------------------------------------------------
        if not root:
            raise ValueError("parameter root (the dataset folder) is required")
        for name, value, allowed in (("sample_on", self.sample_on, SAMPLE_ON),
                                     ("action_type", action_type, ACTION_TYPES),
                                     ("on_shutdown", self.on_shutdown, ON_SHUTDOWN),
                                     ("time_source", self.time_source, ("source", "received")),
                                     ("state_qos", state_qos, tuple(_STATE_QOS)),
                                     ("camera_qos", camera_qos, ("sensor_data", "reliable"))):
            if value not in allowed:
                raise ValueError(f"parameter {name}={value!r} is not one of {tuple(allowed)}")
        if len(state_types) != len(state_topics) or any(t not in STATE_TYPES for t in state_types):
            raise ValueError(f"state_types {state_types} needs one of {tuple(STATE_TYPES)} per state topic")
        n_float = state_types.count("float32_array")
        if n_float and len(state_dims) != n_float:  # ignored when every source is a joint_state
            raise ValueError(f"state_dims {state_dims} needs one length per float32_array source ({n_float})")
        if "joint_state" in state_types and not joint_names:
            raise ValueError("joint_state state sources need joint_names (the joints to record)")
        cams = [camera_names, camera_topics, camera_heights, camera_widths]
        if len({len(c) for c in cams}) != 1 or (camera_compressed and len(camera_compressed) != len(camera_names)):
            raise ValueError("camera_names, camera_topics, camera_heights, camera_widths (and camera_compressed) "
                             "need one entry per camera")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

        # --- features ------------------------------------------------------------------------------
        names: list[str] = []
        self._sources: list[tuple[str, str, int]] = []  # (stream, type, dim)
        float_names = list(state_names)
        total_float = sum(state_dims)
        if float_names and len(float_names) != total_float:
            raise ValueError(f"state_names has {len(float_names)} names for {total_float} float32_array values")
        dims = iter(state_dims)
        offset = 0
        for topic, ty in zip(state_topics, state_types, strict=True):
            if ty == "float32_array":
                dim = next(dims)
                base = topic.strip("/").replace("/", ".")
                names += float_names[offset:offset + dim] if float_names else [f"{base}.{i}" for i in range(dim)]
                offset += dim
            else:
                dim = len(joint_names)
                names += [f"{j}.pos" for j in joint_names]
            self._sources.append((f"state:{topic}", ty, dim))
        self.joint_names = list(joint_names)
        self.cameras = {n: (int(h), int(w))
                        for n, h, w in zip(camera_names, camera_heights, camera_widths, strict=True)}
        self.features = build_features(names, self.action_names, self.cameras)

        # --- dataset (opened by the writer process; a refusal ends the node before it subscribes) ----
        root_path = Path(root).expanduser()
        self._writer = ProcessWriter(
            dict(root=root_path, repo_id=repo_id, fps=int(self.fps), features=self.features, append=append,
                 robot_type=robot_type, use_videos=use_videos, vcodec=vcodec, parallel_encoding=parallel_encoding,
                 streaming_encoding=streaming, encoder_queue_maxsize=encoder_queue),
            images={IMAGE_PREFIX + c: (h, w, 3) for c, (h, w) in self.cameras.items()},
            # Two seconds of frames in flight between the processes (the writer copies each out at once).
            slots=max(8, 2 * int(self.fps)), on_saved=self._on_saved)
        writer = self._writer.wait_ready()  # raises FeatureMismatch / FileExistsError: main() exits 2
        opened = f"appending to {writer.episodes_at_open} episodes" if writer.appended else "new dataset"
        self.get_logger().info(
            f"recording to {root_path} ({opened}), "
            f"{self.fps} fps, sample_on {self.sample_on}; state {len(names)} values from {list(state_topics)}, "
            f"action {self.action_names} from {action_topic} ({action_type}), cameras {list(self.cameras)}")

        # --- sampling and control ----------------------------------------------------------------
        streams = [s for s, _, _ in self._sources] + [f"camera:{c}" for c in self.cameras]
        if self.sample_on == "timer":
            streams.append(ACTION_STREAM)
        self.sampler = FrameSampler(streams, max_age)
        # A command waits until every stream has moved past it (see TriggerQueue), at most this long.
        self.triggers = TriggerQueue(settle, timeout_s=min(max_age, 1.0))
        self.control = EpisodeControl()
        self._requests: list[str] = []  # from the keyboard thread
        self._req_lock = threading.Lock()
        self.finished = False
        self.saved_this_run = 0
        self.episode_frames = 0
        self.episode_index = writer.total_episodes
        self.bad: dict[str, int] = {}
        self._last_warn: dict[str, float] = {}
        self._unhealthy: set[str] = set()
        self._dropped_at_progress = 0
        self._frames_at_progress = 0
        self._t_progress = time.monotonic()
        self._episode_task = self.task
        self._lags: deque[int] = deque(maxlen=5000)  # the recent ones, for the median
        self._lag_max = 0  # over the whole run: one stall is what loses frames
        self._period_ns = round(1e9 / self.fps)
        self._next_tick_ns = 0
        self.late_ticks = 0
        self.writer_refused = 0
        self._started_once = False

        # --- interfaces -----------------------------------------------------------------------
        # Episode events first: when an event and a state are ready together, the event is handled first.
        if episode_topic:
            self.create_subscription(String, episode_topic, self._on_episode, _EVENTS)
        for (stream, ty, _), topic in zip(self._sources, state_topics, strict=True):
            self.create_subscription(STATE_TYPES[ty], topic, self._state_cb(stream, ty),
                                     self._qos(_STATE_QOS[state_qos]))
        for i, (cam, topic) in enumerate(zip(camera_names, camera_topics, strict=True)):
            compressed = bool(camera_compressed[i]) if camera_compressed else False
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     self._camera_cb(cam, compressed),
                                     self._qos(qos_profile_sensor_data if camera_qos == "sensor_data"
                                               else _STATE_QOS["reliable"], big=True))
        self._action_type = action_type
        self.create_subscription(ACTION_TYPES[action_type], action_topic, self._on_action, self._qos(_COMMAND_QOS))
        self.create_service(Trigger, "~/start", self._srv("start"))
        self.create_service(Trigger, "~/save", self._srv("save"))
        self.create_service(Trigger, "~/discard", self._srv("discard"))
        if self.sample_on == "timer":
            self.create_timer(1.0 / self.fps, self._on_sample_tick)
        # Action mode turns commands into frames here (fast: a lock-step sim runs at hundreds of Hz); in
        # timer mode only episode events and keys come through, and a slower pump leaves the CPU to the data.
        self.create_timer(0.005 if self.sample_on == "action" else 0.05, self._pump)
        if progress_period > 0:
            self.create_timer(progress_period, self._progress)
        self._keys: KeyboardThread | None = None
        if keyboard and sys.stdin.isatty():
            self._keys = KeyboardThread(self._post_request)
            self._keys.start()
            self.get_logger().info("keys: n/right = save + next episode, r/left = re-record, q/Esc = save + stop")

    def _qos(self, base: QoSProfile, big: bool = False) -> QoSProfile:
        """Queue depth by sampling mode. Action mode: every state and command counts (deep queues). Timer
        mode: only the newest message at each tick counts, so shallow queues let a recorder that fell behind
        (rclpy handles a few thousand messages a second) skip to the newest instead of working through a
        backlog that grows older than max_age_s - measured: 200 Hz joint states + two 640x480 cameras."""
        if self.sample_on == "action":
            return QoSProfile(depth=100, reliability=base.reliability, durability=base.durability)
        # A reliable reader with a 2-deep queue makes Fast DDS pace deliveries by its repair heartbeats
        # (measured: 10 of 100 commands a second); best effort matches reliable publishers too.
        if big and base.reliability == ReliabilityPolicy.RELIABLE:
            return QoSProfile(depth=10, reliability=base.reliability, durability=base.durability)
        return QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT, durability=base.durability)

    # --- time ----------------------------------------------------------------------------------------
    def _t(self, info: Any) -> int:
        # Callbacks take (msg, info) with no default: rclpy passes message info only to callbacks
        # that cannot be called with the message alone.
        now = time.time_ns()
        if isinstance(info, dict):
            t = info.get("source_timestamp" if self.time_source == "source" else "received_timestamp") or 0
            if t > 0:
                # How late messages are handled (published -> callback): the recorder's own lag.
                self._lags.append(now - int(t))
                self._lag_max = max(self._lag_max, now - int(t))
                return int(t)
        return now

    # --- callbacks --------------------------------------------------------------------------------------
    def _state_cb(self, stream: str, ty: str):
        def cb(msg: Any, info: Any) -> None:
            try:
                value = self._state_value(msg, ty, stream)
            except BadMessage as err:
                self._count_bad(stream, str(err))
                return
            self.sampler.add(stream, self._t(info), value)
        return cb

    def _state_value(self, msg: Any, ty: str, stream: str) -> np.ndarray:
        if ty == "float32_array":
            v = np.frombuffer(msg.data, dtype=np.float32) if len(msg.data) else np.zeros(0, np.float32)
            dim = next(d for s, _, d in self._sources if s == stream)
            if v.shape != (dim,):
                raise BadMessage(f"{len(v)} values, expected {dim}")
        else:
            index = {n: i for i, n in enumerate(msg.name)}
            missing = [j for j in self.joint_names if j not in index]
            if missing or len(msg.position) != len(msg.name):
                raise BadMessage(f"joint state lacks {missing or 'positions'}")
            v = np.asarray([msg.position[index[j]] for j in self.joint_names], dtype=np.float32)
        if not np.isfinite(v).all():
            raise BadMessage("NaN or inf")
        return v.copy()

    def _camera_cb(self, cam: str, compressed: bool):
        h, w = self.cameras[cam]

        def cb(msg: Any, info: Any) -> None:
            try:
                img = (decode_compressed(msg.format, msg.data) if compressed
                       else decode_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data))
            except ObservationError as err:
                self._count_bad(f"camera:{cam}", str(err))
                return
            self.sampler.add(f"camera:{cam}", self._t(info), resize_to(img, h, w))
        return cb

    def _on_action(self, msg: Any, info: Any) -> None:
        try:
            action = self._action_value(msg)
        except BadMessage as err:
            self._count_bad(ACTION_STREAM, str(err))
            return
        t = self._t(info)
        if self.sample_on == "timer":
            self.sampler.add(ACTION_STREAM, t, action)
        else:
            self.triggers.push(t, "action", action)

    def _action_value(self, msg: Any) -> np.ndarray:
        if self._action_type == "float64_array":
            v = np.asarray(msg.data, dtype=np.float64)
        elif self._action_type == "joint_trajectory":
            if len(msg.points) != 1:
                raise BadMessage(f"a command trajectory needs one point, got {len(msg.points)}")
            v = self._by_name(list(msg.joint_names), msg.points[0].positions, self.action_names)
        else:
            v = self._by_name(list(msg.name), msg.position, self.action_joints)
        if v.shape != (len(self.action_names),):
            raise BadMessage(f"{v.size} action values, expected {len(self.action_names)}")
        if not np.isfinite(v).all():
            raise BadMessage("NaN or inf in the action")
        return v.astype(np.float32)

    @staticmethod
    def _by_name(names: list[str], values: Any, wanted: list[str]) -> np.ndarray:
        vals = np.asarray(values, dtype=np.float64)
        if not names:  # no names: already in order
            return vals
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in wanted if n not in index]
        if missing or len(vals) != len(names):
            raise BadMessage(f"names {names} lack {missing}" if missing else "names and values differ in length")
        return vals[[index[n] for n in wanted]]

    def _on_episode(self, msg: String, info: Any) -> None:
        if msg.data not in contracts.EPISODE_EVENTS:
            self._count_bad("episode", f"unknown event {msg.data!r}")
            return
        self.triggers.push(self._t(info), "event", msg.data)

    def _srv(self, what: str):
        def cb(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            self._pump(flush=True)  # what happened before the call belongs to the episode it ends
            ok, message = self._request(what)
            response.success, response.message = ok, message
            return response
        return cb

    def _post_request(self, what: str) -> None:
        with self._req_lock:
            self._requests.append(what)

    # --- frames and episodes -------------------------------------------------------------------------
    def _on_sample_tick(self) -> None:
        if self.control.state != RECORDING:
            return
        # Frames are due at fixed times t0 + k / fps. A timer callback that runs late (a busy process) does
        # not lose them: every due time up to now - settle is sampled from the streams' history, so the
        # dataset keeps one frame per period. Only times further back than the history reaches (more than
        # _MAX_CATCH_UP_S) are given up, and counted as not written ("late").
        limit = time.time_ns() - self.triggers.settle_ns
        if limit - self._next_tick_ns > _MAX_CATCH_UP_S * 1e9:
            skipped = int((limit - self._next_tick_ns) // self._period_ns)
            self.sampler.dropped += skipped
            self.late_ticks += skipped
            self._warn("late", f"recorder {skipped / self.fps:.1f} s behind: {skipped} frames not written")
            self._next_tick_ns += skipped * self._period_ns
        while self._next_tick_ns <= limit:
            self._sample(self._next_tick_ns, None)
            self._next_tick_ns += self._period_ns

    def _pump(self, flush: bool = False) -> None:
        with self._req_lock:
            requests, self._requests = self._requests, []
        for what in requests:
            self._request(what)

        def ready(t: int, kind: str) -> bool:
            return kind != "action" or self.sampler.seen_after(t)

        for t, kind, payload in self.triggers.pop_ready(time.time_ns(), flush=flush, ready=ready):
            if kind == "event":
                ops, why = self.control.on_event(payload, self.auto)
                self._apply(ops, f"/episode {payload}: {why}")
            else:
                if self.start_on_first_command and not self._started_once and self.control.state == IDLE:
                    self._request("start")
                if self.control.state == RECORDING:
                    self._sample(t, {ACTION_STREAM: payload})

    def _sample(self, t_ns: int, extra: dict[str, Any] | None) -> None:
        res = self.sampler.sample(t_ns, extra)
        if res.values is None:
            for s in res.missing + res.stale:
                self._unhealthy.add(s)
                self._warn(s, f"frame not written: stream {s} is {'missing' if s in res.missing else 'stale'} "
                              f"(frames not written so far: {self.sampler.dropped})")
            return
        for s in list(self._unhealthy):
            self._unhealthy.discard(s)
            self.get_logger().info(f"stream {s} is back; recording frames again")
        v = res.values
        state = np.concatenate([v[s] for s, _, _ in self._sources])
        images = {c: v[f"camera:{c}"] for c in self.cameras}
        if not self._writer.add_frame(to_frame(state, v[ACTION_STREAM], images), self._episode_task):
            # The writer process is gone or starved for seconds: this frame is lost, and counted.
            self.sampler.dropped += 1
            self.writer_refused += 1
            self._warn("writer", f"frame not written: the dataset writer is behind ({self.writer_refused} so far; "
                                 f"{self._writer.stats.error or 'ring full'})")
            return
        self.episode_frames += 1

    def _request(self, what: str) -> tuple[bool, str]:
        ops, why = self.control.request(what)
        self._apply(ops, why)
        return bool(ops), why

    def _apply(self, ops: list[str], why: str) -> None:
        for op in ops:
            if op == "start":
                self._started_once = True
                self._next_tick_ns = time.time_ns() - self.triggers.settle_ns  # the episode's frame clock
                self._episode_task = self.get_parameter("task").value
                self.episode_frames = 0
                self.get_logger().info(f"episode {self.episode_index} recording (task {self._episode_task!r})")
            elif op == "save":
                if self.episode_frames == 0:
                    self.get_logger().warning("episode has no frames; nothing saved")
                    continue
                self._writer.save()
                self.get_logger().info(f"episode {self.episode_index} saving ({self.episode_frames} frames)")
                self.episode_index += 1
                self.saved_this_run += 1
                if self.max_episodes and self.saved_this_run >= self.max_episodes:
                    self.control.request("stop_discard")
                    self.finished = True
            elif op == "discard":
                self._writer.discard()
                self.get_logger().info(f"episode {self.episode_index} discarded ({self.episode_frames} frames)")
            self.episode_frames = 0 if op != "start" else self.episode_frames
        if self.control.state == "stopped":
            self.finished = True
        if not ops and why:
            self.get_logger().debug(why)

    def _on_saved(self, index: int, frames: int, latency_s: float) -> None:
        # On the thread that reads the writer process's reports: only log.
        self.get_logger().info(f"episode {index} on disk: {frames} frames, {latency_s:.2f} s after save")

    # --- reporting ------------------------------------------------------------------------------------
    def _count_bad(self, stream: str, why: str) -> None:
        self.bad[stream] = self.bad.get(stream, 0) + 1
        self._warn("bad:" + stream, f"dropped a bad message on {stream}: {why} ({self.bad[stream]} so far)")

    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= _WARN_THROTTLE_S:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def stats(self) -> dict[str, Any]:
        w = self._writer.stats
        lat = sorted(w.save_latency_s)
        return {
            "episodes_saved": w.episodes_saved, "episodes_discarded": w.episodes_discarded,
            "saved_lengths": w.saved_lengths, "frames_sampled": self.sampler.frames,
            "frames_added": w.frames_written, "frames_not_written": self.sampler.dropped,
            "late_frames": self.late_ticks, "writer_refused": self.writer_refused,
            "missing": {k: v for k, v in self.sampler.missing.items() if v},
            "stale": {k: v for k, v in self.sampler.stale.items() if v},
            "handling_lag_ms_p50": round(float(np.median(self._lags)) / 1e6, 2) if self._lags else None,
            "handling_lag_ms_max": round(self._lag_max / 1e6, 2) if self._lags else None,
            "received": self.sampler.received, "bad_messages": self.bad, "writer_backlog": self._writer.backlog,
            "writer_busy_s": round(w.write_s, 3), "writer_cpu_s": round(w.cpu_s, 2),
            "save_latency_s_max": round(lat[-1], 3) if lat else None,
            "save_latency_s_p50": round(lat[len(lat) // 2], 3) if lat else None,
            "writer_error": w.error,
        }

    def _progress(self) -> None:
        now = time.monotonic()
        frames = self.sampler.frames
        rate = (frames - self._frames_at_progress) / max(now - self._t_progress, 1e-6)
        self._frames_at_progress, self._t_progress = frames, now
        state = self.control.state
        self.get_logger().info(
            f"{state}: episode {self.episode_index} frames {self.episode_frames}; saved {self.saved_this_run} "
            f"this run; frame rate {rate:.1f} Hz; not written {self.sampler.dropped} "
            f"(missing {dict((k, v) for k, v in self.sampler.missing.items() if v)}, "
            f"stale {dict((k, v) for k, v in self.sampler.stale.items() if v)}); backlog {self._writer.backlog}")

    # --- end ---------------------------------------------------------------------------------------
    def close(self, signalled: bool) -> dict[str, Any]:
        """Finish: the episode in progress by the documented rule, then finalize. Never raises."""
        if self._keys is not None:
            self._keys.stop()
        try:
            self._pump(flush=True)
        except Exception:  # the context may be gone after a signal; the queue is ours and still valid
            pass
        if self.control.state == RECORDING:
            rule = self.on_shutdown if signalled else "save"
            self._apply(self.control.request(f"stop_{rule}")[0], "")
        self._writer.close()
        return self.stats()


class KeyboardThread(threading.Thread):
    """Single keys from a terminal (cbreak mode; the terminal is restored at stop)."""

    KEYS: ClassVar[dict[str, str]] = {"n": "next", "\x1b[C": "next", "r": "rerecord", "\x1b[D": "rerecord",
                                      "q": "stop_save", "\x1b": "stop_save", " ": "start"}

    def __init__(self, post) -> None:
        super().__init__(name="keyboard", daemon=True)
        self._post = post
        self._halt = threading.Event()  # not _stop: Thread uses that name
        self._saved: Any = None

    def run(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except termios.error:
            return
        try:
            while not self._halt.is_set():
                if not select.select([fd], [], [], 0.1)[0]:
                    continue
                key = os.read(fd, 1).decode(errors="ignore")
                if key == "\x1b" and select.select([fd], [], [], 0.03)[0]:
                    key += os.read(fd, 2).decode(errors="ignore")
                if key in self.KEYS:
                    self._post(self.KEYS[key])
        finally:
            self.restore()

    def restore(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=0.5)
        self.restore()


def _describe_error(err: BaseException) -> tuple[str, int]:
    kind = "refusing to append" if isinstance(err, FeatureMismatch) else "bad configuration"
    return f"{kind}: {err}", 2


def _close(node: CollectNode, signalled: bool) -> int:
    stats = node.close(signalled)
    rclpy.logging.get_logger(NODE_NAME).info("collect summary " + json.dumps(stats))
    return 1 if stats["writer_error"] else 0


def main(args: list[str] | None = None) -> int:
    # FeatureMismatch is a ValueError.
    return run_node(CollectNode, NODE_NAME, args=args, config_errors=(ValueError, FileExistsError, ParameterException),
                    describe_error=_describe_error, close=_close)


if __name__ == "__main__":
    sys.exit(main())
