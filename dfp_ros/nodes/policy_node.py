"""`policy_node`: run an exported DFP model on a robot at control rate.

The node owns parameters (the `PARAMS` table), threads, QoS and callbacks; messages become arrays and
back through `ros_io`, and the policy loop itself — re-plan rule, time alignment, NaN guard, model
swap contract, safety filter, statistics — is the ROS-free `PolicyController` (runtime/controller.py,
see docs/architecture.md). It never imports torch (checked by a test; diagnostics key
`torch_imported`).

Topics: state sources (`state_topics`: Float32MultiArray or JointState) and the model's cameras
(`camera.<name>.topic`: Image or CompressedImage, sensor-data QoS) in; `~/action_chunk` (one
JointTrajectory per inference, stamped with its observation's stamp), `~/command` (`command_type`)
and `/diagnostics` out; `/estop` (Bool, latches a stop), `~/enable` (SetBool, the only way to clear
the latch), the episode topic (an episode's end clears the queue) and `/dfp/model_update`
(UInt8MultiArray, reliable + transient-local: the ONNX bytes, `layout.dim[0].label` = their sha256,
optionally prefixed "sha256:") in. A new model (that topic, or `model_path` set at run time) is
loaded and validated, then swapped between ticks; a refused one leaves the old model running and its
reason goes to the log, the diagnostics' `model_event` and (for `model_path`) the SetParametersResult.

Human takeover (runtime/takeover.py): `teleop_topic` (Float64MultiArray in the policy's action units)
drives the robot instead of the policy while `teleop_engaged_topic` (Bool, joy_teleop_node's dead-man)
or `~/intervene` (SetBool) says the human holds it; `~/executed` (a one-point JointTrajectory per
command published: frame_id policy | human | hold, stamp = the observation's) says who drove each tick.

Threads: inference on its own (ONNX Runtime releases the GIL), callbacks on one executor thread
(EventsExecutor or SingleThreadedExecutor: this rclpy's MultiThreadedExecutor delivered messages ~100 ms
late), so a slow inference does not delay a tick. A model pushed on the topic loads on a thread of its
own (runtime/model_loader.py; the newest model wins, a push older than a `model_path` set meanwhile is
refused), so the states keep flowing. One set as `model_path` loads in the parameter callback, on the
executor thread, because its answer says whether it was accepted: the control thread ticks on from the
queue meanwhile, but states wait, so on a loaded machine that swap may leave one tick without an action
(`ticks_without_action`).

Trigger "observation" (config/policy.yaml): each message of the first state source ticks once in its
callback, after a plan expected within `max_plan_wait_s` (a slower one runs early on the inference
thread; docs/realtime.md). A robot publishes a step's frame and other states before that state; the
subscriptions are made so that the executor takes those first. Trigger "timer": a deadline loop on its
own thread, phase-locked to the first state source (`align_ticks`). The GIL switch interval is lowered
to GIL_SWITCH_INTERVAL_S (the default 5 ms would let a callback delay a tick by 5 ms); the control
thread wakes SPIN_LEAD_S before each deadline and busy-waits the rest holding the GIL, then publishes a
pre-built message; `control_thread_priority` makes that thread (only) SCHED_FIFO.

Timing: freshness (watchdog, `max_obs_age_s`) is judged on the node's monotonic receipt time; chunk
stamps are the observation's stamp (header stamp, or the ROS clock at receipt for header-less messages).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from dfp_ros import contracts
from dfp_ros.contracts import ContractError
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import executor_from_env, freeze_heap, run_node
from dfp_ros.nodes.params import declare_params, watch_params
from dfp_ros.nodes.policy_params import (
    CONTROLLER_OPTIONS,
    MODEL_PARAMS,
    PARAMS,
    RUN_PARAMS,
    default_model_path,
    provider_options,
)
from dfp_ros.nodes.ros_io import ObservationError
from dfp_ros.runtime.controller import (
    DroppedChunk,
    PolicyController,
    acceptance_text,
    load_policy,
    model_bytes_mismatch,
)
from dfp_ros.runtime.model_loader import ModelLoader
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.scheduling import describe_scheduling, make_thread_realtime

NODE_NAME = "policy_node"
# The control thread sleeps until this long before a deadline, then busy-waits holding the GIL: the
# wake-up (timer slack, scheduler, taking the GIL back) costs ~0.05-0.3 ms here, and 0.3 ms of spinning
# per tick is 1.5% of a core at 50 Hz.
SPIN_LEAD_S = 0.0003
# Longest a thread that wants the GIL waits before the holder is asked to drop it (Python default 5 ms).
# Above SPIN_LEAD_S, so the control thread's final spin keeps the GIL it holds.
GIL_SWITCH_INTERVAL_S = 0.0005
EPISODE_ENDS = ("success", "failure", "timeout", "reset", contracts.EPISODE_DISCARD)
CONTROL_LOG = {"human": "human takeover: teleop commands drive the robot", "policy": "control back to the policy",
               "lost": "teleop silent while the human held the robot: watchdog ({action}) until released"}

class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        first = declare_params(self, MODEL_PARAMS, {"model_path": default_model_path()})
        self._device, self._num_samples = provider_options(first), first["num_samples"]
        self.get_logger().info(f"loading model {first['model_path']} (device {first['device']})")
        runtime = self._load(first["model_path"])  # raises ContractError: the node cannot start without one
        meta = runtime.meta
        p = declare_params(self, RUN_PARAMS + ros_io.camera_params(meta), {
            "control_rate_hz": float(meta.fps), "replan_every": int(meta.horizon),
            "action_low": [float(x) for x in meta.action_low], "action_high": [float(x) for x in meta.action_high]})
        self._ctrl = PolicyController(runtime, ros_io.state_sources(meta, p), rate_hz=p["control_rate_hz"],
                                      seed=first["seed"], model_source=first["model_path"],
                                      **{name: p[name] for name in CONTROLLER_OPTIONS})
        self._pending_model: PolicyRuntime | None = None  # validated by the on-set callback, swapped after
        self._control_priority = p["control_thread_priority"]
        self._control_scheduling = "none" if self._ctrl.lockstep else "other"  # until the thread says
        self._last_state = self._last_watchdog = ""
        self._last_control = "policy"

        # Separate groups keep these independent if the node is composed into a multi-threaded executor.
        obs_group, ops_group = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        # Deep: a learner lagging a few hundred ms behind a lock-step robot must not lose chunks.
        self._chunk_pub = self.create_publisher(JointTrajectory, "~/action_chunk", 100)
        self._chunk_msgs: tuple[PolicyRuntime, ros_io.ChunkMessage] | None = None  # built once per model
        self._cmd = ros_io.CommandMessage(p["command_type"], list(meta.action_names), self._ctrl.period)
        self._cmd_stamped = p["command_type"] != "float64_array"
        self._cmd_pub = self.create_publisher(ros_io.COMMAND_MSG[p["command_type"]], "~/command", 10)
        self._executed = ros_io.ExecutedMessage(list(meta.action_names))
        self._executed_pub = self.create_publisher(JointTrajectory, "~/executed", 100)  # one per tick: deeper
        self._diag_pub = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)
        # Cameras first and the first state source (which paces lock-step ticks) last: when several
        # messages are ready at once the executor takes them in this order, so a tick finds the frame and
        # the other states that came with its joint state.
        for cam, (topic, compressed) in ros_io.camera_topics(meta, p).items():
            # Sensor-data QoS (best effort, shallow): a late frame is worth less than the next one.
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     self._image_cb(cam, compressed), qos_profile_sensor_data,
                                     callback_group=obs_group)
            self.get_logger().info(f"camera {cam} <- {topic}{' (compressed)' if compressed else ''}")
        for i, src in reversed(list(enumerate(self._ctrl.sources))):
            joint = src.type == "joint_state"
            self.create_subscription(JointState if joint else Float32MultiArray, src.topic,
                                     self._joint_cb(i) if joint else self._array_cb(i), 10, callback_group=obs_group)
            self.get_logger().info(f"state source {src.topic} ({src.type}) -> {src.key}")
        self.create_subscription(Bool, contracts.TOPIC_ESTOP, self._on_estop, 10, callback_group=ops_group)
        self.create_service(SetBool, "~/enable", self._on_enable, callback_group=ops_group)
        if p["episode_topic"]:
            self.create_subscription(String, p["episode_topic"], self._on_episode, 10, callback_group=ops_group)
        self._loader = ModelLoader(self._load_pushed, self._swap, self._refused_push, refusals=(ContractError,),
                                   name="policy_model_loader")
        self.create_subscription(UInt8MultiArray, contracts.TOPIC_MODEL_UPDATE, self._on_model_update,
                                 ros_io.LATCHED, callback_group=MutuallyExclusiveCallbackGroup())
        self._teleop = p["teleop_topic"]
        if self._teleop:  # best effort: matches any device's writer; the newest command is what counts
            self.create_subscription(Float64MultiArray, self._teleop, self._on_teleop, qos_profile_sensor_data,
                                     callback_group=obs_group)
            if p["teleop_engaged_topic"]:  # volatile: matches any writer (joy_teleop_node repeats it)
                self.create_subscription(Bool, p["teleop_engaged_topic"], lambda m: self._ctrl.set_engaged(
                    m.data, time.monotonic()), 10, callback_group=ops_group)
        self.create_service(SetBool, "~/intervene", self._on_intervene, callback_group=ops_group)
        watch_params(self, PARAMS, self._apply_params, self._validate_params)

        self._stop, self._wake = threading.Event(), threading.Event()
        self._planning = threading.Lock()  # one planner at a time (the generator of eps is not shared)
        self._threads = [threading.Thread(target=self._inference_loop, name="policy_inference", daemon=True)]
        if not self._ctrl.lockstep:
            self._threads.append(threading.Thread(target=self._control_loop, name="policy_control", daemon=True))
        for t in self._threads:
            t.start()
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        commanding = "dry run" if p["dry_run"] else "enabled" if p["enabled"] else "disabled until ~/enable"
        self.get_logger().info(
            f"ready: model sha256 {runtime.sha256[:12]} on {runtime.providers[0]}, {meta.horizon}x{meta.action_dim} "
            f"chunks, trigger {p['trigger']} at {p['control_rate_hz']:g} Hz, merge {p['merge']}, commands as "
            f"{p['command_type']} ({commanding}), watchdog {p['watchdog_action']} after "
            f"{self._ctrl.max_obs_age_s:.3f} s")
        freeze_heap()

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # --- model updates (parameter: executor thread; topic: loader thread; swapped between ticks) ----------
    def _load(self, source: str | bytes) -> PolicyRuntime:
        runtime, load_s = load_policy(source, self._device, self._num_samples)
        fallback = f" ({runtime.provider_fallback})" if runtime.provider_fallback else ""
        self.get_logger().info(f"model {runtime.source} sha256 {runtime.sha256[:12]} on {runtime.providers[0]}"
                               f"{fallback}: {acceptance_text(runtime)}; load + warm-up {load_s * 1e3:.1f} ms")
        return runtime

    def _load_for_swap(self, source: str | bytes) -> PolicyRuntime:
        new = self._load(source)
        self._ctrl.check_swap(new)
        return new

    def _swap(self, new: PolicyRuntime, source: str) -> None:
        old = self._ctrl.swap(new, source)
        self.get_logger().info(f"model swapped: {old.sha256[:12]} -> {new.sha256[:12]} ({source})")

    def _refused(self, what: str, reason: str, event: str) -> None:
        self.get_logger().error(f"{what} refused, keeping {self._ctrl.runtime.sha256[:12]}: {reason}")
        self._ctrl.model_refused(event)

    def _validate_params(self, changed: dict) -> str | None:
        """On-set callback: a new model_path is loaded and validated here (a refusal changes nothing)."""
        self._pending_model = None
        if "model_path" in changed:
            try:
                self._pending_model = self._load_for_swap(changed["model_path"])
            except ContractError as e:
                self._refused("model swap", str(e), f"{changed['model_path']}: {e}")
                return f"model refused: {e}"
        return None

    def _apply_params(self, changed: dict) -> None:
        """Post-set callback: run-time options first, then the model validated above."""
        self._ctrl.set_options(**{k: v for k, v in changed.items() if k != "model_path"})
        if "model_path" in changed and self._pending_model is not None:
            new, self._pending_model = self._pending_model, None
            self._loader.hand_over_outside(lambda: self._swap(new, str(changed["model_path"])))  # newer than a push

    def _on_model_update(self, msg: UInt8MultiArray) -> None:
        data = bytes(msg.data)
        sha_label = msg.layout.dim[0].label if msg.layout.dim else ""
        self._loader.submit((data, sha_label), f"{contracts.TOPIC_MODEL_UPDATE} ({len(data)} bytes)")

    def _load_pushed(self, pushed: tuple[bytes, str]) -> PolicyRuntime:
        """Loader thread: the pushed bytes, checked against their label, loaded and checked for a swap."""
        data, sha_label = pushed
        if reason := model_bytes_mismatch(data, sha_label):
            raise ContractError(reason)
        return self._load_for_swap(data)

    def _refused_push(self, _description: str, reason: str) -> None:
        self._refused(f"model update on {contracts.TOPIC_MODEL_UPDATE}", reason, f"update: {reason}")

    # --- observations ------------------------------------------------------------------------------------
    def _observe(self, where: str, put: Callable[[int, float], bool]) -> None:
        """Hand one message's arrays to the controller with its receipt times (ROS clock ns, monotonic s);
        act when it says so, or count and log a bad one."""
        try:
            act = put(self._now_ns(), time.monotonic())
        except ObservationError as e:
            self._ctrl.reject(e)
            self.get_logger().warning(f"dropped a message from {where} ({e.kind}): {e}", throttle_duration_sec=1.0)
            return
        if act and self._ctrl.lockstep:
            self._step()
        elif act:
            self._wake.set()

    # Header-less messages are stamped at receipt (stamp == receipt: no stamp check).
    def _array_cb(self, index: int) -> Callable[[Float32MultiArray], None]:
        return lambda msg: self._observe(self._ctrl.sources[index].topic, lambda ns, now: self._ctrl.on_state_array(
            index, np.frombuffer(msg.data, dtype=np.float32), ns, now, ns))

    def _joint_cb(self, index: int) -> Callable[[JointState], None]:
        return lambda msg: self._observe(self._ctrl.sources[index].topic, lambda ns, now: self._ctrl.on_joint_state(
            index, list(msg.name), ros_io.joint_fields(msg), ros_io.stamp_ns(msg.header.stamp) or ns, now, ns))

    def _image_cb(self, cam: str, compressed: bool) -> Callable[[Image | CompressedImage], None]:
        # Decoding (the slow part) happens before the controller's lock is taken.
        return lambda msg: self._observe(f"camera {cam}", lambda ns, now: self._ctrl.on_image(
            cam, ros_io.image_rgb(msg, compressed), ros_io.stamp_ns(msg.header.stamp) or ns, now, ns))

    # --- operator inputs ---------------------------------------------------------------------------------
    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            if self._ctrl.estop():
                self.get_logger().error("E-STOP: commands stopped; call ~/enable (true) to resume")
        elif self._ctrl.estopped:
            self.get_logger().warning("e-stop released; still latched until ~/enable (true)",
                                      throttle_duration_sec=5.0)

    def _on_episode(self, msg: String) -> None:
        if msg.data in EPISODE_ENDS:
            self._ctrl.on_episode_end()

    def _on_teleop(self, msg: Float64MultiArray) -> None:
        try:
            self._ctrl.on_teleop(np.frombuffer(msg.data, np.float64), time.monotonic())
        except ObservationError as e:
            self._ctrl.reject(e)
            self.get_logger().warning(f"dropped a teleop command ({e.kind}): {e}", throttle_duration_sec=1.0)

    def _on_intervene(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if not self._teleop:
            response.success, response.message = False, "teleop_topic is '': no human commands to take over with"
            return response
        self._ctrl.intervene(bool(request.data), time.monotonic())
        response.success, response.message = True, f"control: {self._ctrl.control}"
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        message = self._ctrl.enable(bool(request.data))
        self.get_logger().info(f"~/enable({request.data}): {message}")
        response.success, response.message = True, message
        return response

    # --- inference ---------------------------------------------------------------------------------------
    def _plan(self) -> None:
        """Plan from the current observation and publish the chunk (one planning thread at a time)."""
        try:
            with self._planning:
                plan = self._ctrl.plan(time.monotonic())
        except DroppedChunk as e:
            self.get_logger().error(str(e), throttle_duration_sec=1.0)
            return
        if plan is None:
            return
        if self._chunk_msgs is None or self._chunk_msgs[0] is not plan.runtime:  # the model that planned it
            self._chunk_msgs = (plan.runtime, ros_io.ChunkMessage(plan.runtime.meta))
        msg = self._chunk_msgs[1].fill(plan.chunk, plan.stamp_ns)
        self._ctrl.published(plan, self._now_ns() - plan.stamp_ns)
        self._chunk_pub.publish(msg)

    def _step(self) -> None:
        """Trigger observation, in the pacing callback: plan when due (here or on the inference thread), tick."""
        try:
            if (what := self._ctrl.step_plan()) == "plan":
                self._plan()
            elif what == "wake":
                self._wake.set()
            self._tick()
        except Exception as e:  # keep the node alive; the log says what broke
            self.get_logger().error(f"lock-step tick: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _inference_loop(self) -> None:
        """Plan off the ticking thread whenever a tick or an observation asks for it."""
        while not self._stop.is_set():
            if not self._wake.wait(0.05):
                continue
            self._wake.clear()
            try:
                while self._ctrl.plan_due() and not self._stop.is_set():  # slow plans run back to back
                    self._plan()
            except Exception as e:  # keep the node alive; the log says what broke
                self.get_logger().error(f"inference thread: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    # --- control -----------------------------------------------------------------------------------------
    def _set_control_priority(self) -> str:
        """Run this (the control) thread under SCHED_FIFO when asked; returns the policy in effect."""
        if self._control_priority <= 0:
            return describe_scheduling()
        try:
            return make_thread_realtime(self._control_priority)  # this thread only, not the callbacks
        except (OSError, AttributeError) as e:  # no permission (PermissionError), or not Linux
            self.get_logger().warning(f"control_thread_priority {self._control_priority}: SCHED_FIFO refused "
                                      f"({e}); the control thread runs with ordinary scheduling")
            return describe_scheduling()

    def _control_loop(self) -> None:
        """Tick at control rate against absolute deadlines (no drift); a late tick is not made up twice."""
        self._control_scheduling = self._set_control_priority()
        period = self._ctrl.period
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline = self._ctrl.next_deadline(deadline + period)  # in phase with the robot's state stream
            delay = deadline - time.monotonic()
            if delay > SPIN_LEAD_S:
                self._stop.wait(delay - SPIN_LEAD_S)
            elif delay < -period:
                missed = int(-delay / period)
                self._ctrl.count_missed_ticks(missed)
                deadline += missed * period  # resynchronise instead of bursting
            if self._stop.is_set():
                break
            # The last SPIN_LEAD_S: busy-wait holding the GIL, so no other thread runs in between.
            while time.monotonic() < deadline:
                pass
            try:
                self._ctrl.wait_for_plan()  # a plan due before this tick: briefly
                self._tick()
            except Exception as e:  # a bug in one tick must not end control; the log says what broke
                self.get_logger().error(f"control tick: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _tick(self) -> None:
        # One thread ticks (the control thread, or the executor in lock-step): the command message is reused.
        tick = self._ctrl.tick(time.monotonic())
        if tick.plan_wanted:
            self._wake.set()
        if tick.command is not None:
            self._cmd_pub.publish(self._cmd.fill(tick.command, self._now_ns() if self._cmd_stamped else 0))
            self._executed_pub.publish(self._executed.fill(tick.command, tick.stamp_ns, tick.source))
        self._log_transitions(tick.safety_state, tick.watchdog)

    def _log_transitions(self, state: str, watchdog: str) -> None:
        if (control := self._ctrl.control) != self._last_control:
            text = CONTROL_LOG[control].format(action=self._ctrl.watchdog_action)
            if control == "lost":  # (rclpy wants one severity per call site)
                self.get_logger().error(text)
            else:
                self.get_logger().info(text)
            self._last_control = control
        if watchdog != self._last_watchdog:
            if watchdog == "stale":
                missing = ", ".join(self._ctrl.missing(time.monotonic())) or "-"
                self.get_logger().warning(f"watchdog: observations stale (> {self._ctrl.max_obs_age_s:.3f} s, or "
                                          f"missing: {missing}); {self._ctrl.watchdog_action}")
            elif self._last_watchdog:
                self.get_logger().info("watchdog: observations fresh again")
            self._last_watchdog = watchdog
        if state != self._last_state:
            self.get_logger().info(f"safety state: {state}")
            self._last_state = state

    # --- diagnostics -------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        values = self._ctrl.stats(time.monotonic())
        values["control_thread_scheduling"] = self._control_scheduling
        values["model_pushes_superseded"] = self._loader.superseded  # pushed faster than they loaded
        if values["estop"]:
            level, message = DiagnosticStatus.ERROR, "e-stop latched"
        elif values["control"] == "lost":
            level, message = DiagnosticStatus.ERROR, "teleop lost while the human held the robot"
        elif values["watchdog"] == "stale":
            level, message = DiagnosticStatus.WARN, "observations stale"
        else:
            level, message = DiagnosticStatus.OK, "running" if values["enabled"] else "disabled"
        self._diag_pub.publish(ros_io.diagnostics(f"{self.get_name()}: policy", self.get_fully_qualified_name(),
                                                  level, message, values, self._now_ns()))

    def destroy_node(self) -> None:
        # Also called on a node whose __init__ failed half-way (rclpy shuts its nodes down).
        if hasattr(self, "_stop"):
            self._stop.set()
            self._wake.set()
        if hasattr(self, "_loader") and not self._loader.close():
            self.get_logger().warning("a pushed model was still loading at shutdown (its thread is left to exit)")
        for t in getattr(self, "_threads", []):
            t.join(timeout=2.0)
        super().destroy_node()


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
