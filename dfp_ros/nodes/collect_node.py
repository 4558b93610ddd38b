"""`collect_node`: record teleoperated demonstrations from ROS topics into a LeRobot v3 dataset.

A ROS shell over the ROS-free recorder parts in `dfp_ros.data` (stream_sampling, episode_control,
dataset_writer, writer_process) and `terminal_keys`: this file owns parameters (`PARAMS`), services,
timers, QoS and the callbacks; messages become arrays through `ros_io`.

Features: `observation.state` = the state sources concatenated in order (Float32MultiArray blocks,
and/or the positions of chosen joints of a JointState, named `<joint>.pos`); `action` = the
teleoperation command topic (Float64MultiArray, one-point JointTrajectory, or JointState - the last is
the leader-arm option: a second arm's joint states recorded as the action);
`observation.images.<name>` = one video per camera in `camera_names`, from `camera.<name>.topic`
(sensor_msgs/Image rgb8/bgr8/mono8/rgba8/bgra8, or CompressedImage with `camera.<name>.compressed`),
resized to `camera.<name>.height` x `camera.<name>.width`. The task text of an episode is the `task`
parameter when the episode starts (`ros2 param set` between episodes).

Human in the loop (`executed_topic`, the policy node's `~/executed`): a session where the policy drives
and a person takes over is kept as a dataset. Each executed message is then the command (the action, as
published, the policy's or the human's) and `intervention` (bool per frame) is its frame_id == human;
`action_topic` is not read. Why that topic rather than `teleop/engaged`: it is the command and who
produced it in one message, so a frame's flag is its own action's (the dead-man's Bool is not: it is
published on change, misses `~/intervene`, and the human keeps the robot until the next observation
after a release).

Sampling, one clock (see data/stream_sampling.py): every message keeps its source timestamp
(`time_source: received` uses the arrival time instead, for publishers on another machine without
synchronised clocks). A frame at time T takes the newest message of every stream published at or
before T and no older than `max_age_s`; a frame with a stream missing or stale is not written and is
counted per stream, with a throttled warning, and recording goes on by itself when the stream is back.
T is
  sample_on: timer   a wall-clock tick at `fps` (a robot; the action is a stream like the others), or
  sample_on: action  each command message (one frame per command, paired with the state published
                     before it: a lock-step simulator running faster than real time).
Commands and episode events are handled in source-time order, at least `settle_s` after they were
published, and a command only once every stream has a message newer than it (at most
min(max_age_s, 1 s) is waited for that). So an episode's end event cannot overtake its last command,
nor a busy recorder pair a command with an older state. Lock-step: the state is current until the next
command, however long the teleoperator takes, so give `max_age_s` a few seconds there.

Episodes: services `~/start`, `~/save`, `~/discard` (std_srvs/Trigger); keys when run in a terminal
(space: start, `n` or right arrow: save and record the next, `r` or left arrow: discard and record
again, `q` or Esc: save the episode in progress and stop); `auto_episodes: true` follows `/episode`
events (start -> record, success/failure/timeout -> save, reset without an end -> discard). The
operator's `discard` on `/episode` (joy_teleop_node's button) acts like the re-record key, with or
without `auto_episodes`.
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
reliable too, as realsense-ros and realsense_node are). Queue depths depend on the sampling mode (`_qos`).

Video: `use_videos`, `vcodec` (default h264: a third less CPU than lerobot's default libsvtav1, which
on 2 cores still lost a few frames of the recording bench; libsvtav1 gives smaller files),
`streaming_encoding` (default true: encode while recording, no PNG files, an episode is on disk well
under a second after save). Measured on 2 cores, 2 x 640x480 at 30 fps, CPU per frame: streaming
16 ms (h264) / 24 ms (libsvtav1); PNG files plus encoding at save 30-37 ms, which does not keep up
there. An encoder that falls behind makes frames wait in the writer process, never dropped; should
lerobot still drop one (its queue of `encoder_queue_maxsize` full), the episode is discarded with an
error, never saved shorter than its data. lerobot's writer runs in a child process
(data/writer_process.py, at a lower CPU priority), so it never holds this process's GIL while camera
images arrive; it finishes and finalizes the dataset even if this process is killed.

Progress: a log line every `progress_period_s` (episodes, frames, frame rate, frames not written per
stream, writer backlog); at exit one line `collect summary {json}`.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dfp_ros import contracts
from dfp_ros.data.dataset_writer import IMAGE_PREFIX, FeatureMismatch, StateBlock, build_features, state_layout
from dfp_ros.data.recording_session import ACTION_STREAM, RecordingSession, camera_stream, state_stream
from dfp_ros.data.writer_process import ProcessWriter
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import EmptyList, Param, declare_params, watch_params
from dfp_ros.nodes.ros_io import ObservationError
from dfp_ros.nodes.terminal_keys import EPISODE_KEYS_HELP, KeyThread
from dfp_ros.runtime.observation import resize_to
from dfp_ros.runtime.takeover import HUMAN

NODE_NAME = "collect_node"
STATE_MSG = {"float32_array": Float32MultiArray, "joint_state": JointState}
# Base profiles by name; only their reliability and durability count, the depth comes from `_qos`.
# "reliable" matches reliable publishers (robot drivers, joint_state_broadcaster); "latched" (transient
# local) also gets a latched publisher's current value on joining - sim_robot_node's first lock-step
# state - but matches only transient-local publishers; "sensor_data" (best effort) matches everything.
STATE_QOS = {"reliable": ros_io.EVENTS, "latched": ros_io.LATCHED, "sensor_data": ros_io.FRAMES}
# Cameras: "sensor_data" (best effort) matches every publisher, but large images sent best effort are
# lost when the receiver falls behind for a moment (measured here with Fast DDS: 2 x 640x480 at 30 Hz, a
# third to two thirds lost). "reliable" loses none when the publisher is reliable too (realsense-ros'
# default QoS; our realsense_node) - and, with Fast DDS on one machine, config/fastdds_shm_large.xml in
# both processes (FASTDDS_DEFAULT_PROFILES_FILE): Fast DDS's default 512 KB shared-memory segment cannot
# hold a 640x480 image, and LARGE_DATA then sends it over TCP, late (measured ~12 ms p50, often >100 ms).
CAMERA_QOS = {"sensor_data": ros_io.FRAMES, "reliable": ros_io.EVENTS}

PARAMS = [
    Param("root", "", "dataset folder (required): new, or an existing dataset with append"),
    Param("repo_id", "local/dfp_demos", "the dataset's repo id"),
    Param("fps", 20, "dataset fps (timer mode: the sampling rate)", low=1),
    Param("task", "demonstration", "task text of each episode, read when it starts", runtime=True),
    Param("append", False, "add episodes to the dataset at root if its fps and features match"),
    Param("robot_type", "", "robot type written into the dataset"),
    Param("use_videos", True, "cameras as video (lerobot's encoder)"),
    Param("vcodec", "h264", "video codec (libsvtav1: smaller files, more CPU)"),
    Param("parallel_encoding", False, "lerobot's process per camera at save (forking a DDS process is unsafe)"),
    Param("streaming_encoding", True, "encode videos while recording (no PNG files; save is near-instant)"),
    Param("encoder_queue_maxsize", 120, "streaming: lerobot's frame queue per camera", low=1),
    Param("state_topics", [contracts.TOPIC_SIM_STATE], "state sources, in order"),
    Param("state_types", ["float32_array"], "per state topic: float32_array or joint_state"),
    Param("state_dims", [28], "per float32_array source: its length"),
    Param("state_names", EmptyList(str), "names of all float32_array values (default <topic>.<i>)"),
    Param("joint_names", EmptyList(str), "joints recorded from joint_state sources (<joint>.pos)"),
    Param("state_qos", "reliable", "QoS of the state subscriptions", choices=tuple(STATE_QOS)),
    Param("action_topic", contracts.TOPIC_POLICY_COMMAND, "the teleoperation command topic"),
    Param("action_type", "float64_array", "command message type (joint_state: a leader arm)",
          choices=ros_io.COMMAND_TYPES),
    Param("action_names", ["effector_dx", "effector_dy", "effector_dz", "effector_dyaw", "gripper_delta"],
          "action names"),
    Param("action_joints", EmptyList(str), "joint_state action: the joints to read (default action_names)"),
    Param("executed_topic", "", "a policy node's ~/executed: the action it published and an intervention column "
                                "(human or policy); replaces action_topic ('' = off)"),
    Param("camera_names", EmptyList(str), "cameras (observation.images.<name>), each set by camera.<name>.topic, "
                                          ".compressed, .height and .width"),
    Param("camera_qos", "sensor_data", "sensor_data matches any publisher; reliable loses no frame of a reliable "
                                       "publisher", choices=tuple(CAMERA_QOS)),
    Param("sample_on", "timer", "timer: a frame per 1/fps of wall clock; action: a frame per command",
          choices=("timer", "action")),
    Param("max_age_s", 0.1, "a stream whose newest message is older is stale: the frame is not written"),
    Param("settle_s", 0.02, "wait at least this long before using a message time", low=0.0),
    Param("time_source", "source", "message time: the publisher's clock (source) or the arrival (received)",
          choices=("source", "received")),
    Param("episode_topic", contracts.TOPIC_EPISODE, "episode events ('' = none)"),
    Param("auto_episodes", False, "follow episode events: start -> record, success/failure/timeout -> save"),
    Param("max_episodes", 0, "stop after this many episodes saved (0 = until stopped)", low=0),
    Param("start_on_first_command", False, "start the first episode at the first command (a lock-step sim "
                                           "waits for it)"),
    Param("keyboard", True, "episode keys, when stdin is a terminal"),
    Param("on_shutdown", "discard", "the episode in progress at Ctrl-C / SIGTERM", choices=("discard", "save")),
    Param("progress_period_s", 2.0, "a progress line this often (0 = none)"),
]


def camera_params(names: list[str]) -> list[Param]:
    """camera.<name>.topic / .compressed / .height / .width for each recorded camera."""
    out = []
    for name in names:
        out += [Param(f"camera.{name}.topic", f"camera/{name}/image_raw", f"camera {name}: sensor_msgs/Image topic"),
                Param(f"camera.{name}.compressed", False, f"camera {name}: CompressedImage instead"),
                Param(f"camera.{name}.height", 0, f"camera {name}: recorded height (required)", low=1),
                Param(f"camera.{name}.width", 0, f"camera {name}: recorded width (required)", low=1)]
    return out


class CollectNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        cams = p["camera_names"]
        p.update(declare_params(self, camera_params(cams)))
        if not p["root"]:
            raise ValueError("parameter root (the dataset folder) is required")
        self.fps, self.sample_on, self.time_source = p["fps"], p["sample_on"], p["time_source"]
        self.blocks, names = state_layout(p["state_topics"], p["state_types"], p["state_dims"], p["state_names"],
                                          p["joint_names"])
        self.joint_names = list(p["joint_names"])
        self.action_names = list(p["action_names"])
        # The names the command message is read by: a leader arm's joints may be named otherwise.
        self.command_names = (p["action_joints"] or self.action_names if p["action_type"] == "joint_state"
                              else self.action_names)
        if len(self.command_names) != len(self.action_names):
            raise ValueError(f"action_joints {self.command_names} needs one joint per action name "
                             f"{self.action_names}")
        self.cameras = {c: (p[f"camera.{c}.height"], p[f"camera.{c}.width"]) for c in cams}
        self.executed_topic = p["executed_topic"]
        self.features = build_features(names, self.action_names, self.cameras, intervention=bool(self.executed_topic))

        # --- dataset (opened by the writer process; a refusal ends the node before it subscribes) ----
        root_path = Path(p["root"]).expanduser()
        self._writer = ProcessWriter(
            dict(root=root_path, repo_id=p["repo_id"], fps=int(self.fps), features=self.features,
                 append=p["append"], robot_type=p["robot_type"], use_videos=p["use_videos"], vcodec=p["vcodec"],
                 parallel_encoding=p["parallel_encoding"], streaming_encoding=p["streaming_encoding"],
                 encoder_queue_maxsize=p["encoder_queue_maxsize"]),
            images={IMAGE_PREFIX + c: (h, w, 3) for c, (h, w) in self.cameras.items()},
            # Two seconds of frames in flight between the processes (the writer copies each out at once).
            slots=max(8, 2 * int(self.fps)), on_saved=self._on_saved)
        writer = self._writer.wait_ready()  # raises FeatureMismatch / FileExistsError: main() exits 2
        opened = f"appending to {writer.episodes_at_open} episodes" if writer.appended else "new dataset"
        source = (f"{self.executed_topic} (executed commands, with the intervention column)" if self.executed_topic
                  else f"{p['action_topic']} ({p['action_type']})")
        self.get_logger().info(
            f"recording to {root_path} ({opened}), {self.fps} fps, sample_on {self.sample_on}; state {len(names)} "
            f"values from {list(p['state_topics'])}, action {self.action_names} from {source}, cameras "
            f"{list(self.cameras)}")

        self.session = RecordingSession(
            self._writer, state_topics=[b.topic for b in self.blocks], cameras=list(self.cameras), fps=self.fps,
            sample_on=self.sample_on, max_age_s=p["max_age_s"], settle_s=p["settle_s"],
            auto_episodes=p["auto_episodes"], max_episodes=p["max_episodes"],
            start_on_first_command=p["start_on_first_command"], first_episode=writer.total_episodes,
            task=p["task"], log=self.get_logger(), intervention=bool(self.executed_topic))
        self.on_shutdown = p["on_shutdown"]
        self._lags: deque[int] = deque(maxlen=5000)  # the recent ones, for the median
        self._lag_max = 0  # over the whole run: one stall is what loses frames

        # --- interfaces -----------------------------------------------------------------------
        # Episode events first: when an event and a state are ready together, the event is handled first.
        if p["episode_topic"]:
            self.create_subscription(String, p["episode_topic"], self._on_episode, ros_io.EVENTS)
        for block in self.blocks:
            self.create_subscription(STATE_MSG[block.type], block.topic, self._state_cb(block),
                                     self._qos(STATE_QOS[p["state_qos"]]))
        for cam in cams:
            compressed = p[f"camera.{cam}.compressed"]
            self.create_subscription(CompressedImage if compressed else Image, p[f"camera.{cam}.topic"],
                                     self._camera_cb(cam, compressed),
                                     self._qos(CAMERA_QOS[p["camera_qos"]], big=True))
        if self.executed_topic:
            self.create_subscription(JointTrajectory, self.executed_topic, self._on_executed, self._qos(ros_io.EVENTS))
        else:
            self.create_subscription(ros_io.COMMAND_MSG[p["action_type"]], p["action_topic"], self._on_action,
                                     self._qos(ros_io.EVENTS))
        for what in ("start", "save", "discard"):
            self.create_service(Trigger, f"~/{what}", self._srv(what))
        if self.sample_on == "timer":
            self.create_timer(1.0 / self.fps, self.session.tick)
        # Action mode turns commands into frames here (fast: a lock-step sim runs at hundreds of Hz); in
        # timer mode only episode events and keys come through, and a slower pump leaves the CPU to the data.
        self.create_timer(0.005 if self.sample_on == "action" else 0.05, self.session.pump)
        if p["progress_period_s"] > 0:
            self.create_timer(p["progress_period_s"], lambda: self.get_logger().info(self.session.progress_line()))
        self._keys: KeyThread | None = None
        if p["keyboard"] and sys.stdin.isatty():
            self._keys = KeyThread(self.session.post, sys.stdin.fileno())
            self._keys.start()
            self.get_logger().info(EPISODE_KEYS_HELP)
        watch_params(self, PARAMS, self._on_params)

    def _on_params(self, changed: dict[str, Any]) -> None:
        self.session.task = changed.get("task", self.session.task)

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

    def _t(self, info: Any) -> int:
        """A message's time in ns (see the module doc); the wall clock when rmw gives none."""
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
    def _state_cb(self, block: StateBlock):
        stream = state_stream(block.topic)

        def cb(msg: Any, info: Any) -> None:
            try:
                if block.type == "float32_array":
                    value = np.frombuffer(msg.data, np.float32) if len(msg.data) else np.zeros(0, np.float32)
                else:
                    value = ros_io.values_by_name(list(msg.name), msg.position, self.joint_names)
                if value.shape != (block.size,):
                    raise ObservationError("wrong_size", f"{value.size} values, expected {block.size}")
                if not np.isfinite(value).all():
                    raise ObservationError("non_finite", "NaN or inf")
            except ObservationError as err:
                self.session.count_bad(stream, err.kind, str(err))
                return
            self.session.add(stream, self._t(info), np.array(value, np.float32))
        return cb

    def _camera_cb(self, cam: str, compressed: bool):
        h, w = self.cameras[cam]
        stream = camera_stream(cam)

        def cb(msg: Any, info: Any) -> None:
            try:
                img = ros_io.image_rgb(msg, compressed)
            except ObservationError as err:
                self.session.count_bad(stream, err.kind, str(err))
                return
            self.session.add(stream, self._t(info), resize_to(img, h, w))
        return cb

    def _on_action(self, msg: Any, info: Any) -> None:
        try:
            action = ros_io.command_values(msg, self.command_names).astype(np.float32)
        except ObservationError as err:
            self.session.count_bad(ACTION_STREAM, err.kind, str(err))
            return
        self.session.on_command(self._t(info), action)

    def _on_executed(self, msg: JointTrajectory, info: Any) -> None:
        try:
            action = ros_io.chunk_values(msg, self.action_names)[0]  # one point: the command published
        except ObservationError as err:
            self.session.count_bad(ACTION_STREAM, err.kind, str(err))
            return
        self.session.on_command(self._t(info), action, intervention=msg.header.frame_id == HUMAN)

    def _on_episode(self, msg: String, info: Any) -> None:
        if msg.data in (contracts.EPISODE_PAUSE, contracts.EPISODE_RESUME):  # for the learner, not the recorder
            return
        if msg.data not in (*contracts.EPISODE_EVENTS, contracts.EPISODE_DISCARD):
            self.session.count_bad("episode", "unknown_event", f"unknown event {msg.data!r}")
            return
        self.session.on_event(self._t(info), msg.data)

    def _srv(self, what: str):
        def cb(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            self.session.pump(flush=True)  # what happened before the call belongs to the episode it ends
            response.success, response.message = self.session.request(what)
            return response
        return cb

    def _on_saved(self, index: int, frames: int, latency_s: float) -> None:
        # On the thread that reads the writer process's reports: only log.
        self.get_logger().info(f"episode {index} on disk: {frames} frames, {latency_s:.2f} s after save")

    @property
    def finished(self) -> bool:  # run_node stops spinning when True
        return self.session.finished

    def stats(self) -> dict[str, Any]:
        lags = {"handling_lag_ms_p50": round(float(np.median(self._lags)) / 1e6, 2) if self._lags else None,
                "handling_lag_ms_max": round(self._lag_max / 1e6, 2) if self._lags else None}
        return {**self.session.stats(), **lags}

    def close(self, signalled: bool) -> dict[str, Any]:
        """Finish: the episode in progress by the documented rule, then finalize. Never raises."""
        if self._keys is not None:
            self._keys.stop()
        self.session.close(signalled, self.on_shutdown)
        return self.stats()


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
