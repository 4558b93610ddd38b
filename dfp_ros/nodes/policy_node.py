"""`policy_node`: run an exported DFP model on a robot at control rate (DESIGN.md §2, §3.2).

This file only translates messages to arrays and back and owns the timers, parameters, QoS and
threads; the work is done by the ROS-free runtime (`PolicyRuntime`, `ObservationAssembler`,
`ChunkQueue`, `SafetyFilter`). It never imports torch (checked by a test; reported as the
diagnostics key `torch_imported`).

Data flow: observation topics -> ObservationAssembler (newest message per source, validated; bad
messages dropped and counted) -> inference (PolicyRuntime.act, seeded numpy eps) ->
`~/action_chunk` + ChunkQueue -> control tick (one action per tick) -> SafetyFilter -> `~/command`.

Threads (timer trigger): control ticks run on their own thread (a deadline loop at `control_rate_hz`),
inference on another (ONNX Runtime releases the GIL), and the ROS callbacks (observations, e-stop, enable,
parameters, model updates, diagnostics) on one executor thread (node_main: EventsExecutor, or
SingleThreadedExecutor). So neither a slow inference nor loading a new model (in the parameter
callback) can delay a tick. Why not a timer in its own callback group on a MultiThreadedExecutor:
with this rclpy (Kilted, PyPI wheels) that executor was measured to deliver subscription messages
late (~100 ms, or only at the next timer event) and so tripped the 2-period watchdog; the
single-threaded executors deliver in < 1 ms.
Tick timing: the three threads share Python's GIL, so a tick that wakes while another thread runs
Python waits for it. Two things bound that wait: the process's GIL switch interval is lowered to
GIL_SWITCH_INTERVAL_S (Python's default 5 ms would let a callback delay a tick by up to 5 ms), and
the control thread wakes SPIN_LEAD_S before each deadline and busy-waits the rest holding the GIL
(shorter than the switch interval, so it is not taken away), then publishes a pre-built message.
What neither can help with is a machine whose cores are busy with other work: the kernel then decides
when the control thread runs. `control_thread_priority` makes that thread SCHED_FIFO (real-time),
as robot control loops usually are; the callbacks and inference keep ordinary scheduling.

Triggers (`trigger`):
- "timer": ticks at `control_rate_hz`; a re-plan is requested every `replan_every` ticks or when
  fewer than `queue_low` actions remain, and also as soon as an observation arrives while the
  queue is empty. Actions whose tick passed during inference are skipped (by the observation's age).
- "observation": every accepted message of the first state source triggers one tick (re-planning
  first, from that observation, when due) — lock-step evaluation with `sim_robot_node`, which
  steps once per command and publishes the next observation at once. The tick runs in that
  callback (handing it to another thread cost ~0.25 ms of a ~2 ms path); a robot publishes the
  step's frame (and other states) before the pacing state, and the subscriptions are made so that
  the executor takes those first when they are ready together.

Model updates (validated off the control path, swapped between ticks; the old model keeps running
when the new one is refused):
- parameter `model_path`: the SetParametersResult carries the reason of a refusal;
- topic `/dfp/model_update` (contracts.TOPIC_MODEL_UPDATE), `std_msgs/UInt8MultiArray`, reliable +
  transient-local (a late-joining node gets the latest model): `data` = the ONNX file's bytes,
  `layout.dim[0].label` = the sha256 hex digest of those bytes (optionally prefixed "sha256:"); a
  message whose bytes do not hash to the label is refused.
A new model must have the same state layout, cameras and action names as the running one (the
subscriptions and limits are built from them); otherwise restart the node with it.

Parameters (* = may be changed on a running node; the rest are read at start):
  model_path*            ONNX model (default: the bundled models/cube_single.onnx, from the package's
                         share dir under colcon, else the source tree)
  device                 auto | cpu | cuda          num_samples  candidates per inference (0 = model's)
  seed                   numpy generator for eps    control_rate_hz  (default: the model's fps)
  trigger                timer | observation        replan_every*  ticks (default: the model's H)
  queue_low*             re-plan when fewer actions remain (default 1: when empty)
  merge                  newest | ensemble          ensemble_k*  w_i = exp(-k i), i = 0 oldest chunk
  command_type           float64_array | joint_trajectory | joint_state
  action_low, action_high  per-action limits (default: the model's action range)
  max_delta*             max change per tick (0 = off)
  max_obs_age_s*         older observations are stale (0 = two control periods)
  watchdog_action*       stop (publish nothing) | hold (repeat the last command) while stale
  enabled*               start commanding (default false; ~/enable(true) also clears an e-stop)
  dry_run*               compute and publish chunks, never commands
  state_topics, state_types, state_keys   one entry per state source (types float32_array |
                         joint_state; key '' = the model's only state key); default one
                         Float32MultiArray source on sim/state (see runtime/observation.py for the mapping)
  camera.<name>.topic, camera.<name>.compressed   per model camera (Image or CompressedImage)
  episode_topic          std_msgs/String episode events; an episode's end clears the queue ('' = off)
  diagnostics_period_s
  control_thread_priority  SCHED_FIFO priority 1-99 of the control thread (trigger timer), 0 = ordinary
                         scheduling; needs CAP_SYS_NICE or an rtprio limit, else a warning and ordinary

Timing: message freshness (watchdog, `max_obs_age_s`) is judged on the node's monotonic receipt
time; chunk stamps are the observation's stamp (header stamp, or the ROS clock at receipt for
header-less messages like Float32MultiArray).
"""

from __future__ import annotations

import array
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dfp_ros import contracts
from dfp_ros.contracts import ContractError
from dfp_ros.nodes.node_main import executor_from_env, freeze_heap, run_node
from dfp_ros.runtime.chunk_queue import MERGE_RULES, ChunkQueue
from dfp_ros.runtime.observation import (
    STATE_SOURCE_TYPES,
    ObservationAssembler,
    ObservationError,
    StateSource,
    decode_compressed,
    decode_raw_image,
)
from dfp_ros.runtime.policy_runtime import PolicyRuntime, file_sha256
from dfp_ros.runtime.safety import WATCHDOG_ACTIONS, SafetyFilter
from dfp_ros.scheduling import describe_scheduling, make_thread_realtime

NODE_NAME = "policy_node"
BUNDLED_MODEL = "cube_single.onnx"
COMMAND_TYPES = ("float64_array", "joint_trajectory", "joint_state")
TRIGGERS = ("timer", "observation")
# The control thread sleeps until this long before a deadline, then busy-waits holding the GIL: the
# wake-up (timer slack, scheduler, taking the GIL back) costs ~0.05-0.3 ms here, and 0.3 ms of spinning
# per tick is 1.5% of a core at 50 Hz.
SPIN_LEAD_S = 0.0003
# Longest a thread that wants the GIL waits before the holder is asked to drop it (Python default 5 ms).
# Above SPIN_LEAD_S, so the control thread's final spin keeps the GIL it holds.
GIL_SWITCH_INTERVAL_S = 0.0005
# Parameters a running node accepts; changing any other is refused ("read at start only").
RUNTIME_CHANGEABLE = {"use_sim_time", "model_path", "enabled", "dry_run", "watchdog_action", "max_obs_age_s",
                      "max_delta", "ensemble_k", "replan_every", "queue_low"}


def _acceptance_text(runtime: PolicyRuntime) -> str:
    a = runtime.acceptance
    if a is None:
        return "no acceptance test in the model (exported by an older dfp_ros)"
    return f"acceptance test passed on {a.provider} (error {a.max_action_error:.2g} <= {a.tolerance:g})"


def default_model_path() -> str:
    """The bundled model: the package's share dir under colcon, else the source tree's models/."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("dfp_ros")) / "models" / BUNDLED_MODEL
        if shared.is_file():
            return str(shared)
    except Exception:  # not installed with colcon (pip / source checkout): fall through
        pass
    return str(Path(__file__).resolve().parents[2] / "models" / BUNDLED_MODEL)


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _warm_up(runtime: PolicyRuntime) -> float:
    """One inference on a zero observation (first-run allocations happen here, not on a tick)."""
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in runtime.meta.cameras}
    t0 = time.perf_counter()
    runtime.act(np.zeros(runtime.meta.state_dim, np.float32), images, np.random.default_rng(0))
    return time.perf_counter() - t0


def _same_contract(old: PolicyRuntime, new: PolicyRuntime) -> str | None:
    """Why `new` cannot replace `old` on a running node (None when it can)."""
    o, n = old.meta, new.meta
    if [(s.key, s.dim) for s in o.state] != [(s.key, s.dim) for s in n.state]:
        return (f"its state layout {[(s.key, s.dim) for s in n.state]} differs from the running model's "
                f"{[(s.key, s.dim) for s in o.state]}")
    if [(c.name, c.height, c.width) for c in o.cameras] != [(c.name, c.height, c.width) for c in n.cameras]:
        return "its cameras differ from the running model's"
    if o.action_names != n.action_names:
        return f"its action names {n.action_names} differ from the running model's {o.action_names}"
    return None


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self._lock = threading.RLock()  # queue, assembler, safety filter, model reference
        self._tick_lock = threading.Lock()  # one tick at a time, whichever thread triggers it

        # --- parameters (model first: the other defaults come from it) ----------------------
        model_path = self.declare_parameter("model_path", default_model_path()).value
        device = self.declare_parameter("device", "auto", ParameterDescriptor(
            description="auto | cpu | cuda (ONNX Runtime execution provider)")).value
        num_samples = self.declare_parameter("num_samples", 0, ParameterDescriptor(
            description="candidates per inference; 0 = the model's")).value
        seed = self.declare_parameter("seed", 0).value
        self._device, self._num_samples = device, num_samples
        self.get_logger().info(f"loading model {model_path} (device {device})")
        runtime = self._load_model(model_path)  # raises ContractError: the node cannot start without one
        meta = runtime.meta

        rate = self.declare_parameter("control_rate_hz", float(meta.fps)).value
        self._replan_every = self.declare_parameter("replan_every", int(meta.horizon), ParameterDescriptor(
            description="re-plan every this many ticks")).value
        self._queue_low = self.declare_parameter("queue_low", 1, ParameterDescriptor(
            description="re-plan when fewer than this many actions remain")).value
        merge = self.declare_parameter("merge", "newest", ParameterDescriptor(
            description="newest | ensemble")).value
        ensemble_k = self.declare_parameter("ensemble_k", 0.01).value
        command_type = self.declare_parameter("command_type", "float64_array", ParameterDescriptor(
            description="float64_array | joint_trajectory | joint_state")).value
        low = self.declare_parameter("action_low", [float(x) for x in meta.action_low]).value
        high = self.declare_parameter("action_high", [float(x) for x in meta.action_high]).value
        max_delta = self.declare_parameter("max_delta", 0.0, ParameterDescriptor(
            description="max change per tick per action; 0 = off")).value
        max_age = self.declare_parameter("max_obs_age_s", 0.0, ParameterDescriptor(
            description="older observations are stale; 0 = two control periods")).value
        watchdog_action = self.declare_parameter("watchdog_action", "stop", ParameterDescriptor(
            description="hold (repeat last command) | stop (publish nothing) when stale")).value
        enabled = self.declare_parameter("enabled", False).value
        self._dry_run = self.declare_parameter("dry_run", False).value
        self._trigger = self.declare_parameter("trigger", "timer", ParameterDescriptor(
            description="timer | observation (one tick per new observation: lock-step)")).value
        state_topics = self.declare_parameter("state_topics", [contracts.TOPIC_SIM_STATE]).value
        state_types = self.declare_parameter("state_types", ["float32_array"], ParameterDescriptor(
            description=f"per state topic: {' | '.join(STATE_SOURCE_TYPES)}")).value
        state_keys = self.declare_parameter("state_keys", [""], ParameterDescriptor(
            description="per state topic: the model state key it fills ('' = the model's only key)")).value
        cam_cfg = {}
        for i, cam in enumerate(meta.cameras):
            default_topic = contracts.TOPIC_SIM_CAMERA if i == 0 else f"/camera/{cam.name}/image_raw"
            topic = self.declare_parameter(f"camera.{cam.name}.topic", default_topic).value
            compressed = self.declare_parameter(f"camera.{cam.name}.compressed", False).value
            cam_cfg[cam.name] = (topic, compressed)
        diag_period = self.declare_parameter("diagnostics_period_s", 1.0).value
        self._control_priority = self.declare_parameter("control_thread_priority", 0, ParameterDescriptor(
            description="SCHED_FIFO priority 1-99 of the control thread; 0 = ordinary scheduling")).value
        episode_topic = self.declare_parameter("episode_topic", contracts.TOPIC_EPISODE, ParameterDescriptor(
            description="std_msgs/String episode events; an episode's end clears the queue ('' = off)")).value

        # --- check the configuration before building anything ---------------------------------
        for name, value, allowed in (("merge", merge, MERGE_RULES), ("command_type", command_type, COMMAND_TYPES),
                                     ("watchdog_action", watchdog_action, WATCHDOG_ACTIONS),
                                     ("trigger", self._trigger, TRIGGERS)):
            if value not in allowed:
                raise ValueError(f"parameter {name}={value!r} is not one of {allowed}")
        if rate <= 0:
            raise ValueError(f"control_rate_hz must be > 0, got {rate}")
        if not 0 <= self._control_priority <= 99:
            raise ValueError(f"control_thread_priority must be 0 (off) or 1-99, got {self._control_priority}")
        if not (len(state_topics) == len(state_types) and len(state_keys) in (len(state_topics), 1)):
            raise ValueError(f"state_topics {state_topics}, state_types {state_types} and state_keys "
                             f"{state_keys} must have equal lengths")
        keys = list(state_keys) * (len(state_topics) if len(state_keys) == 1 else 1)
        if any(k == "" for k in keys) and len(meta.state) != 1:
            raise ValueError(f"the model has state keys {[s.key for s in meta.state]}: name one per state "
                             "topic in state_keys")
        sources = [StateSource(t, ty, k or meta.state[0].key)
                   for t, ty, k in zip(state_topics, state_types, keys, strict=True)]

        self._period = 1.0 / rate
        self._max_age = max_age if max_age > 0 else 2.0 * self._period
        self._runtime = runtime
        self._model_source = model_path
        self._rng = np.random.default_rng(seed)
        self._asm = ObservationAssembler(meta, sources, self._max_age)
        self._queue = ChunkQueue(meta.action_dim, self._period, merge=merge, ensemble_k=ensemble_k)
        if len(low) != meta.action_dim or len(high) != meta.action_dim:
            raise ValueError(f"action_low / action_high need {meta.action_dim} values, got {len(low)} / {len(high)}")
        self._safety = SafetyFilter(low, high, max_delta=max_delta, max_obs_age_s=self._max_age,
                                    watchdog_action=watchdog_action, enabled=enabled)
        self._command_type = command_type

        # --- bookkeeping for diagnostics ----------------------------------------------------
        self._dropped: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=500)  # inference alone (runtime.act), s
        # Observation stamp -> chunk handed to the publisher, ns (in the ROS clock, like the stamps): inference
        # plus waiting for the inference thread, the lock and message building; the transport is not in it.
        self._obs_to_chunk: deque[int] = deque(maxlen=500)
        # Per camera, the oldest frame an inference used since the last diagnostics (s): a camera that
        # lags behind the state shows here, while observation_age_s only shows the oldest part right now.
        self._camera_max_age: dict[str, float] = {}
        self._tick_times: deque[float] = deque(maxlen=100)
        self._ticks = self._commands = self._chunks = self._missed_ticks = 0
        self._ticks_since_plan = 10**9  # plan at the first chance
        self._plan_due = False
        self._last_state = ""
        self._last_watchdog = ""
        self._last_model_event = "started"
        self._control_scheduling = "none" if self._trigger == "observation" else "other"  # until the thread says

        # --- interfaces -------------------------------------------------------------------------
        # Separate groups keep these independent if the node is composed into a multi-threaded executor.
        self._obs_group = MutuallyExclusiveCallbackGroup()
        self._ops_group = MutuallyExclusiveCallbackGroup()  # e-stop, enable: never behind observations
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._model_group = MutuallyExclusiveCallbackGroup()

        self._chunk_pub = self.create_publisher(JointTrajectory, "~/action_chunk", 10)
        msg_type = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory,
                    "joint_state": JointState}[command_type]
        self._cmd_pub = self.create_publisher(msg_type, "~/command", 10)
        self._cmd_msg = self._new_command_msg()
        self._chunk_template: tuple[PolicyRuntime, JointTrajectory] | None = None  # see _fill_chunk_msg
        self._diag_pub = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)

        # Cameras first and the first state source (which paces lock-step ticks) last: when several
        # messages are ready at once the single-threaded executor takes them in this order, so a tick
        # finds the frame and the other states that came with its joint state.
        for cam, (topic, compressed) in cam_cfg.items():
            # Sensor-data QoS (best effort, shallow): a late frame is worth less than the next one.
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     self._make_image_cb(cam, compressed), qos_profile_sensor_data,
                                     callback_group=self._obs_group)
            self.get_logger().info(f"camera {cam} <- {topic}{' (compressed)' if compressed else ''}")
        for i, src in reversed(list(enumerate(sources))):
            if src.type == "float32_array":
                cb = self._make_array_cb(i)
                self.create_subscription(Float32MultiArray, src.topic, cb, 10, callback_group=self._obs_group)
            else:
                cb = self._make_joint_cb(i)
                self.create_subscription(JointState, src.topic, cb, 10, callback_group=self._obs_group)
            self.get_logger().info(f"state source {src.topic} ({src.type}) -> {src.key}")

        self.create_subscription(Bool, contracts.TOPIC_ESTOP, self._on_estop, 10, callback_group=self._ops_group)
        self.create_service(SetBool, "~/enable", self._on_enable, callback_group=self._ops_group)
        if episode_topic:
            self.create_subscription(String, episode_topic, self._on_episode, 10, callback_group=self._ops_group)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(UInt8MultiArray, contracts.TOPIC_MODEL_UPDATE, self._on_model_update, latched,
                                 callback_group=self._model_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._worker = self._control = None
        if self._trigger == "timer":
            self._worker = threading.Thread(target=self._work, name="policy_inference", daemon=True)
            self._worker.start()
            self._control = threading.Thread(target=self._control_loop, name="policy_control", daemon=True)
            self._control.start()
        self._diag_timer = self.create_timer(diag_period, self._publish_diagnostics, callback_group=self._diag_group)
        self.get_logger().info(
            f"ready: model sha256 {runtime.sha256[:12]} on {runtime.providers[0]}, {meta.horizon}x{meta.action_dim} "
            f"chunks, trigger {self._trigger} at {rate:g} Hz, merge {merge}, commands as {command_type} "
            f"({'dry run' if self._dry_run else 'enabled' if enabled else 'disabled until ~/enable'}), "
            f"watchdog {watchdog_action} after {self._max_age:.3f} s")
        freeze_heap()

    # --- model loading -------------------------------------------------------------------------------
    def _load_model(self, source: str | bytes) -> PolicyRuntime:
        """Load, validate and warm up a model; raises ContractError with the reason."""
        runtime = PolicyRuntime(source, device=self._device, num_samples=self._num_samples or None)
        try:
            dt = _warm_up(runtime)
        except Exception as e:
            raise ContractError(f"{runtime.source}: warm-up inference failed ({type(e).__name__}: {e})") from e
        self.get_logger().info(f"model {runtime.source} sha256 {runtime.sha256[:12]}: {_acceptance_text(runtime)}; "
                               f"warm-up {dt * 1e3:.1f} ms")
        return runtime

    def _validate_swap(self, source: str | bytes) -> PolicyRuntime:
        new = self._load_model(source)
        why = _same_contract(self._runtime, new)
        if why:
            raise ContractError(f"{new.source}: {why}; restart the node to run it")
        return new

    def _swap(self, new: PolicyRuntime, source: str) -> None:
        # A reference swap under the lock: a tick or an inference in progress finishes with the old
        # model, the next one uses the new model; queued actions stay (they are still valid commands).
        with self._lock:
            old = self._runtime
            self._runtime = new
            self._model_source = source
            self._last_model_event = f"swapped to {new.sha256[:12]} from {source}"
        self.get_logger().info(f"model swapped: {old.sha256[:12]} -> {new.sha256[:12]} ({source})")

    # --- parameters at runtime ---------------------------------------------------------------------
    def _on_set_parameters(self, params: list) -> SetParametersResult:
        # Validate everything first, then apply, so a refused batch changes nothing.
        new_model = None
        for p in params:
            if p.name not in RUNTIME_CHANGEABLE:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name} is read at start only; restart the node to change it")
            if p.name == "model_path":
                try:
                    new_model = self._validate_swap(str(p.value))
                except ContractError as e:
                    self.get_logger().error(f"model swap refused, keeping {self._runtime.sha256[:12]}: {e}")
                    with self._lock:
                        self._last_model_event = f"refused {p.value}: {e}"
                    return SetParametersResult(successful=False, reason=f"model refused: {e}")
            elif p.name == "watchdog_action" and p.value not in WATCHDOG_ACTIONS:
                return SetParametersResult(successful=False,
                                           reason=f"watchdog_action must be one of {WATCHDOG_ACTIONS}")
            elif p.name in ("max_obs_age_s", "max_delta") and float(p.value) < 0:
                return SetParametersResult(successful=False, reason=f"{p.name} must be >= 0")
            elif p.name in ("replan_every", "queue_low") and int(p.value) < (1 if p.name == "replan_every" else 0):
                return SetParametersResult(successful=False, reason=f"{p.name} out of range")
        with self._lock:
            for p in params:
                if p.name == "enabled":
                    # The parameter enables / disables; only the ~/enable service clears an e-stop latch.
                    self._safety.enabled = bool(p.value)
                elif p.name == "dry_run":
                    self._dry_run = bool(p.value)
                elif p.name == "watchdog_action":
                    self._safety.watchdog_action = p.value
                elif p.name == "max_obs_age_s":
                    self._max_age = p.value if p.value > 0 else 2.0 * self._period
                    self._safety.max_obs_age_s = self._asm.max_age_s = self._max_age
                elif p.name == "max_delta":
                    self._safety.max_delta[:] = float(p.value)
                elif p.name == "ensemble_k":
                    self._queue.ensemble_k = float(p.value)
                elif p.name == "replan_every":
                    self._replan_every = int(p.value)
                elif p.name == "queue_low":
                    self._queue_low = int(p.value)
        if new_model is not None:
            self._swap(new_model, str(next(p.value for p in params if p.name == "model_path")))
        return SetParametersResult(successful=True)

    def _on_model_update(self, msg: UInt8MultiArray) -> None:
        data = bytes(msg.data)
        label = msg.layout.dim[0].label if msg.layout.dim else ""
        want = label.removeprefix("sha256:").strip().lower()
        got = file_sha256(data)
        if want != got:
            reason = f"sha256 label {want[:12] or '(none)'} does not match the bytes' {got[:12]}"
        else:
            try:
                self._swap(self._validate_swap(data), f"{contracts.TOPIC_MODEL_UPDATE} ({len(data)} bytes)")
                return
            except ContractError as e:
                reason = str(e)
        self.get_logger().error(f"model update on {contracts.TOPIC_MODEL_UPDATE} refused, keeping "
                                f"{self._runtime.sha256[:12]}: {reason}")
        with self._lock:
            self._last_model_event = f"refused update: {reason}"

    # --- observations ---------------------------------------------------------------------------------
    def _drop(self, e: ObservationError, where: str) -> None:
        with self._lock:
            self._dropped[e.kind] = self._dropped.get(e.kind, 0) + 1
        self.get_logger().warning(f"dropped a message from {where} ({e.kind}): {e}", throttle_duration_sec=1.0)

    def _accepted(self, source_index: int | None) -> None:
        """After a good message: tick (observation trigger), or wake the inference thread when a plan is due."""
        if self._trigger == "observation":
            if source_index == 0:  # the first state source paces lock-step ticks
                self._step_on_observation()
            return
        with self._lock:
            if self._queue.remaining() == 0:
                # Nothing queued (start-up, or after a stale stretch): plan now, not at the next re-plan tick.
                self._plan_due = True
                self._wake.set()

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _make_array_cb(self, index: int):
        topic = self._asm.sources[index].topic

        def cb(msg: Float32MultiArray) -> None:
            try:
                with self._lock:
                    self._asm.put_array(index, np.frombuffer(msg.data, dtype=np.float32), self._now_ns(),
                                        time.monotonic())
            except ObservationError as e:
                self._drop(e, topic)
                return
            self._accepted(index)

        return cb

    def _make_joint_cb(self, index: int):
        topic = self._asm.sources[index].topic

        def cb(msg: JointState) -> None:
            stamp = _stamp_ns(msg.header.stamp) or self._now_ns()
            fields = {"position": np.asarray(msg.position), "velocity": np.asarray(msg.velocity),
                      "effort": np.asarray(msg.effort)}
            try:
                with self._lock:
                    self._asm.put_joint_state(index, list(msg.name), fields, stamp, time.monotonic())
            except ObservationError as e:
                self._drop(e, topic)
                return
            self._accepted(index)

        return cb

    def _make_image_cb(self, cam: str, compressed: bool):
        def decode(msg: Image | CompressedImage) -> np.ndarray:
            if compressed:
                return decode_compressed(msg.format, msg.data)
            return decode_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)

        def cb(msg: Image | CompressedImage) -> None:
            stamp = _stamp_ns(msg.header.stamp) or self._now_ns()
            try:
                # Decoding happens outside the lock: it is the slow part and touches no shared state.
                rgb = decode(msg)
                with self._lock:
                    self._asm.put_image(cam, rgb, stamp, time.monotonic())
            except ObservationError as e:
                self._drop(e, f"camera {cam}")
                return
            self._accepted(None)

        return cb

    # --- operator inputs ----------------------------------------------------------------------------
    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            with self._lock:
                already = self._safety.estopped
                self._safety.estop()
                self._queue.clear()
            if not already:
                self.get_logger().error("E-STOP: commands stopped; call ~/enable (true) to resume")
        else:
            with self._lock:
                latched = self._safety.estopped
            if latched:
                self.get_logger().warning("e-stop released; still latched until ~/enable (true)",
                                       throttle_duration_sec=5.0)

    def _on_episode(self, msg: String) -> None:
        # Actions planned in the episode that just ended are meaningless after the reset: drop them
        # and plan from the next observation (what the offline evaluator does with a chunk's rest).
        if msg.data in ("success", "failure", "timeout", "reset"):
            with self._lock:
                self._queue.clear()
                self._ticks_since_plan = 10**9

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._lock:
            message = self._safety.enable(bool(request.data))
            self._queue.clear()  # start from a fresh plan, not actions computed before the pause
            self._ticks_since_plan = 10**9
        self.get_logger().info(f"~/enable({request.data}): {message}")
        response.success = True
        response.message = message
        return response

    # --- inference ------------------------------------------------------------------------------------
    def _step_on_observation(self) -> None:
        try:
            with self._lock:
                plan = self._plan_needed()
            if plan:
                self._plan(lockstep=True)
            self._tick()
        except Exception as e:  # keep the node alive; the log says what broke
            self.get_logger().error(f"lock-step tick: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _work(self) -> None:
        """Timer trigger: plan off the control thread, whenever a tick or an observation asks for it."""
        while not self._stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            try:
                with self._lock:
                    # A request that came while a plan was running is served by that plan.
                    plan = self._plan_due and self._plan_needed()
                    self._plan_due = False
                if plan:
                    self._plan(lockstep=False)
            except Exception as e:  # keep the node alive; the log says what broke
                self.get_logger().error(f"inference thread: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _plan_needed(self) -> bool:
        return self._ticks_since_plan >= self._replan_every or self._queue.remaining() < self._queue_low

    def _plan(self, lockstep: bool) -> None:
        now = time.monotonic()
        with self._lock:
            runtime = self._runtime
            obs = self._asm.ready(now)
            if obs is None:
                return  # stale or incomplete; the watchdog handles commands, a fresh message re-plans
            for cam, age in self._asm.camera_ages(now).items():  # all set: the observation is ready
                self._camera_max_age[cam] = max(age, self._camera_max_age.get(cam, 0.0))
        t0 = time.perf_counter()
        result = runtime.act(obs.state, obs.images, self._rng)
        latency = time.perf_counter() - t0
        chunk = result.chunk
        if not np.isfinite(chunk).all():
            with self._lock:
                self._dropped["non_finite_chunk"] = self._dropped.get("non_finite_chunk", 0) + 1
            self.get_logger().error("the model produced NaN/inf: chunk dropped", throttle_duration_sec=1.0)
            return
        with self._lock:
            if lockstep:
                self._queue.push(chunk, 0.0, 0.0)  # ticks are counted by observations: nothing has passed
            else:
                self._queue.push(chunk, now - obs.age_s, time.monotonic())
            self._ticks_since_plan = 0
            self._chunks += 1
        msg = self._fill_chunk_msg(runtime, chunk, obs.stamp_ns)
        obs_to_chunk = self._now_ns() - obs.stamp_ns
        with self._lock:  # both figures of one chunk together, so diagnostics compare like with like
            self._latencies.append(latency)
            self._obs_to_chunk.append(obs_to_chunk)
        self._chunk_pub.publish(msg)

    def _fill_chunk_msg(self, runtime: PolicyRuntime, chunk: np.ndarray, stamp_ns: int) -> JointTrajectory:
        """The chunk message for `runtime`'s model (the one this inference used, even after a swap).

        Building a JointTrajectory with its points costs ~0.15 ms of Python on each inference, so it is
        built once per model (names, time_from_start) and only the stamp and positions are written here.
        Only one thread plans (the inference thread, or the callback in lock-step), and publish()
        serialises before returning: reuse is safe.
        """
        if self._chunk_template is None or self._chunk_template[0] is not runtime:
            meta = runtime.meta
            msg = JointTrajectory(joint_names=list(meta.action_names))
            for i in range(meta.horizon):
                t = (i + 1) / meta.fps
                msg.points.append(JointTrajectoryPoint(
                    time_from_start=Duration(sec=int(t), nanosec=round((t - int(t)) * 1e9))))
            self._chunk_template = (runtime, msg)
        msg = self._chunk_template[1]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        rows = np.ascontiguousarray(chunk, np.float64)
        for point, action in zip(msg.points, rows, strict=True):
            # array('d') passes the message's type check at once; a list is checked element by element.
            point.positions = array.array("d", action.tobytes())
        return msg

    # --- control ---------------------------------------------------------------------------------------
    def _set_control_priority(self) -> str:
        """Run this (the control) thread under SCHED_FIFO when asked; returns the policy in effect."""
        if self._control_priority <= 0:
            return describe_scheduling()
        try:
            # Only the control thread becomes real-time, not the callbacks.
            return make_thread_realtime(self._control_priority)
        except (OSError, AttributeError) as e:  # no permission (PermissionError), or not Linux
            self.get_logger().warning(f"control_thread_priority {self._control_priority}: SCHED_FIFO refused "
                                      f"({e}); the control thread runs with ordinary scheduling")
            return describe_scheduling()

    def _control_loop(self) -> None:
        """Tick at control rate against absolute deadlines (no drift); a late tick is not made up twice."""
        scheduling = self._set_control_priority()
        with self._lock:
            self._control_scheduling = scheduling
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self._period
            delay = deadline - time.monotonic()
            if delay > SPIN_LEAD_S:
                self._stop.wait(delay - SPIN_LEAD_S)
            elif delay < -self._period:
                missed = int(-delay / self._period)
                with self._lock:
                    self._missed_ticks += missed
                deadline += missed * self._period  # resynchronise instead of bursting
            if self._stop.is_set():
                break
            # The last SPIN_LEAD_S: busy-wait holding the GIL, so no other thread runs in between.
            while time.monotonic() < deadline:
                pass
            try:
                self._tick()
            except Exception as e:  # a bug in one tick must not end control; the log says what broke
                self.get_logger().error(f"control tick: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _tick(self) -> None:
        with self._tick_lock:
            now = time.monotonic()
            with self._lock:
                self._tick_times.append(now)
                self._ticks += 1
                action = self._queue.pop()
                self._ticks_since_plan += 1
                cmd = self._safety.filter(action, self._asm.age(now))
                state, watchdog = self._safety.state, self._safety.watchdog
                if self._trigger == "timer" and self._plan_needed():
                    self._plan_due = True
                    self._wake.set()
                publish = cmd is not None and not self._dry_run
                if publish:
                    self._commands += 1
            if publish:
                self._cmd_pub.publish(self._command_msg(cmd))
            self._log_transitions(state, watchdog)

    def _log_transitions(self, state: str, watchdog: str) -> None:
        if watchdog != self._last_watchdog:
            if watchdog == "stale":
                self.get_logger().warning(f"watchdog: observations stale (> {self._max_age:.3f} s, or missing: "
                                       f"{', '.join(self._asm.missing(time.monotonic())) or '-'}); "
                                       f"{self._safety.watchdog_action}")
            elif self._last_watchdog:
                self.get_logger().info("watchdog: observations fresh again")
            self._last_watchdog = watchdog
        if state != self._last_state:
            self.get_logger().info(f"safety state: {state}")
            self._last_state = state

    def _new_command_msg(self) -> Float64MultiArray | JointTrajectory | JointState:
        """The command message, built once: a tick only writes the values and the stamp into it.

        Action names cannot change on a running node (a model swap keeps them), so they are fixed here.
        """
        names = list(self._runtime.meta.action_names)
        if self._command_type == "float64_array":
            return Float64MultiArray()
        if self._command_type == "joint_trajectory":
            ns = int(self._period * 1e9)
            return JointTrajectory(joint_names=names, points=[JointTrajectoryPoint(
                time_from_start=Duration(sec=ns // 10**9, nanosec=ns % 10**9))])
        return JointState(name=names)

    def _command_msg(self, cmd: np.ndarray) -> Float64MultiArray | JointTrajectory | JointState:
        # Only the tick (under _tick_lock) writes and publishes this message, and publish() serialises it
        # before returning, so reusing it is safe. array('d') skips the per-element type check of a list.
        values = array.array("d", np.ascontiguousarray(cmd, np.float64).tobytes())
        msg = self._cmd_msg
        if self._command_type == "float64_array":
            msg.data = values
            return msg
        msg.header.stamp = self.get_clock().now().to_msg()
        if self._command_type == "joint_trajectory":
            msg.points[0].positions = values
        else:
            msg.position = values
        return msg

    # --- diagnostics -----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            ticks = list(self._tick_times)
            lat = np.array(self._latencies) * 1e3 if self._latencies else None
            o2c = np.array(self._obs_to_chunk) / 1e6 if self._obs_to_chunk else None
            camera_ages = {f"camera_{c.name}_max_age_ms": self._camera_max_age.get(c.name, float("nan")) * 1e3
                           for c in self._runtime.meta.cameras}
            self._camera_max_age.clear()
            age = self._asm.age(now)
            stale = age is None or age > self._max_age
            if self._trigger == "observation":
                # No ticks without observations: report the watchdog from the observation age.
                self._safety.watchdog = "stale" if stale else "ok"
            values = {
                "control_rate_hz": (len(ticks) - 1) / (ticks[-1] - ticks[0])
                if len(ticks) > 1 and now - ticks[-1] < 2 * self._period + 0.5 else 0.0,
                "inference_latency_p50_ms": float(np.percentile(lat, 50)) if lat is not None else float("nan"),
                "inference_latency_p99_ms": float(np.percentile(lat, 99)) if lat is not None else float("nan"),
                "obs_to_chunk_p50_ms": float(np.percentile(o2c, 50)) if o2c is not None else float("nan"),
                "obs_to_chunk_p99_ms": float(np.percentile(o2c, 99)) if o2c is not None else float("nan"),
                "observation_age_s": age if age is not None else float("inf"),
                **camera_ages,
                "model_sha256": self._runtime.sha256,
                "model_source": self._model_source,
                "model_event": self._last_model_event,
                "model_acceptance": _acceptance_text(self._runtime),
                "providers": ",".join(self._runtime.providers),
                "watchdog": self._safety.watchdog,
                "watchdog_action": self._safety.watchdog_action,
                "safety_state": self._safety.state,
                "enabled": self._safety.enabled,
                "estop": self._safety.estopped,
                "dry_run": self._dry_run,
                "trigger": self._trigger,
                "control_thread_scheduling": self._control_scheduling,
                "ticks": self._ticks,
                "missed_ticks": self._missed_ticks,
                "commands_published": self._commands,
                "chunks_published": self._chunks,
                "actions_skipped": self._queue.skipped,
                "commands_rejected_non_finite": self._safety.non_finite_count,
                "dropped_total": sum(self._dropped.values()),
                **{f"dropped_{k}": v for k, v in sorted(self._dropped.items())},
                "torch_imported": "torch" in sys.modules,
            }
            estop, enabled, watchdog = self._safety.estopped, self._safety.enabled, self._safety.watchdog
        status = DiagnosticStatus(name=f"{self.get_name()}: policy", hardware_id=self.get_fully_qualified_name())
        if estop:
            status.level, status.message = DiagnosticStatus.ERROR, "e-stop latched"
        elif watchdog == "stale":
            status.level, status.message = DiagnosticStatus.WARN, "observations stale"
        elif not enabled:
            status.level, status.message = DiagnosticStatus.OK, "disabled"
        else:
            status.level, status.message = DiagnosticStatus.OK, "running"
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        # Also called on a node whose __init__ failed half-way (rclpy shuts its nodes down).
        if hasattr(self, "_stop"):
            self._stop.set()
            self._wake.set()
        if getattr(self, "_worker", None) is not None:
            self._worker.join(timeout=2.0)
        if getattr(self, "_control", None) is not None:
            self._control.join(timeout=2.0)
        super().destroy_node()


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _cannot_start(err: BaseException) -> tuple[str, int]:
    # A node without a valid model or configuration must not start half-way.
    return f"cannot start: {err}", 1


def main(args: list[str] | None = None) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # see the module docstring (tick timing)
    return run_node(PolicyNode, NODE_NAME, args=args,
                    config_errors=(ContractError, ValueError, InvalidParameterTypeException),
                    describe_error=_cannot_start, executor=executor_from_env("events"))


if __name__ == "__main__":
    sys.exit(main())
