"""`sim_robot_node`: the embedded default robot, a thin ROS 2 shell over `dfp_ros.sim.cube_env.CubeSim`.

An OGBench cube scene (UR5e + Robotiq gripper in MuJoCo) that looks like a robot on the ROS graph.
All simulation lives in CubeSim; this module owns parameters, timers and QoS, and turns messages
into arrays and back through `dfp_ros.nodes.ros_io` (see docs/architecture.md).

Parameters: the table `PARAMS` below (all read at start; docs/parameters.md lists them).

Stepping:
  realtime  a robot's controller: a steady-clock timer at rate_hz steps once per tick with the newest
            command not yet used. Actions are end-effector deltas, so a command is consumed once: a tick
            without a fresh one steps a zero action, i.e. holds (`holds`; hold_on_missing_command false
            skips the step), and a command replaced before a tick is never applied (`superseded_commands`).
            Every tick publishes the state (freshly stamped, stepped or not), so a policy paced by it answers
            in phase.
  lockstep  one step per received command, the new observation published at once: an evaluation runs as
            fast as the policy answers. /clock carries simulated time (1/fps per step), and stamps follow it.

Topics published (contracts.py names; docs/architecture.md, "Topics"): /joint_states (JointState), /sim/state
(Float32MultiArray) + latched /sim/state_names (JSON), /sim/camera/image_raw and /sim/wrist_camera/image_raw
(Image rgb8, sensor-data QoS; lock-step: reliable), /reward (Float32, one per step), /episode ("start" after
each reset, "success" or "timeout" at the end, then "reset"; reset_mode external: only the ends), /clock
(lock-step), /diagnostics (steps, holds, superseded and dropped commands, episodes, successes, command phase).
/joint_states, /sim/state and the camera images of one observation carry the same stamp: the cameras are
rendered with the observation of every k-th step (lockstep) or tick (realtime), see camera_rate_hz. The two
observation topics are reliable and transient-local: depth 1 in real time (a late joiner gets the current
observation), LOCKSTEP_DEPTH in lock-step (below; controllers subscribe volatile and get the republish).

success_ends_episode false (a robot without a reward oracle): the simulator's own success ends nothing; it
is logged as the episode's true outcome and the arm steps on (reward 0) until a "success" or "failure" on
/episode from another node (a learned detector's) or the time limit ("timeout") ends the episode.

reset_mode external (a robot's way; teleport resets arm and cube at once): after an episode's end the arm moves
with the commands (no reward, no time limit) until a "start" on /episode (reset_node's) places the cube anew.
Lock-step drops the one command answering the last state before "start" (two would be in flight then).

Commands: Float64MultiArray (action order), a one-point JointTrajectory or a JointState named by action
(any order, extra names ignored; none: action order). Bad ones (wrong length, NaN/inf, missing names, not one
point) are dropped and counted per kind, never stepped. At shutdown or max_episodes: "episodes N, successes K,
success rate X", exit 0.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, String

from dfp_ros import contracts
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params
from dfp_ros.sim.cube_env import CAMERAS, CubeSim, check_cameras

TOPIC_CLOCK = "/clock"  # fixed by ROS (use_sim_time listens here), so not a contract of ours

MODES = ("realtime", "lockstep")
RESET_MODES = ("teleport", "external")

PARAMS: list[Param] = [
    Param("env_name", "cube-single-v0", "OGBench state-based cube environment"),
    Param("task_id", 1, "OGBench task", low=1, high=5),
    Param("seed", 0, "seed of the first reset"),
    Param("mode", "realtime", "realtime: a wall-clock timer steps with the newest command; lockstep: one step "
                              "per command, simulated time on /clock", choices=MODES),
    Param("rate_hz", 20.0, "realtime: wall-clock step rate (> 0)"),
    Param("camera_rate_hz", 0.0, "camera frames per second, 0 = no camera; rendered with the observation (same "
                                 "stamp) of every round(rate_hz / camera_rate_hz)-th tick (realtime) or "
                                 "round(fps / camera_rate_hz)-th step (lockstep); software EGL blocks stepping ~5 ms a "
                                 "frame and camera", low=0.0),
    Param("cameras", ["front"], f"cameras rendered when camera_rate_hz > 0, any of {list(CAMERAS)}: front on "
                                f"{contracts.TOPIC_SIM_CAMERA}, wrist (on the gripper) on "
                                f"{contracts.TOPIC_SIM_WRIST_CAMERA}"),
    Param("image_size", 96, "square camera image size in pixels", low=1),
    Param("command_topic", contracts.TOPIC_POLICY_COMMAND, "per-tick command topic"),
    Param("command_type", "float64_array", "the per-tick command message", choices=ros_io.COMMAND_TYPES),
    Param("max_episodes", 0, "exit (code 0) after this many episodes; 0 = run forever", low=0),
    Param("reset_mode", "teleport", "teleport: reset arm and cube at an episode's end; external: the arm stays, "
                                    "moves with the commands until a 'start' on /episode places the cube anew",
          choices=RESET_MODES),
    Param("hold_on_missing_command", True, "realtime: step a zero action (hold) when no fresh command arrived "
                                           "since the last tick; false = do not step that tick"),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages (0 = none)", low=0.0),
    Param("lockstep_republish_s", 1.0, "lockstep: republish the current observation (same stamp) after this long "
                                       "without a command, so a policy that missed one cannot deadlock; 0 = never",
          low=0.0),
    Param("success_ends_episode", True, "false: only a 'success'/'failure' on /episode from another node (a "
                                        "learned detector) or the time limit ends an episode; the simulator's "
                                        "own success is logged as its true outcome"),
    Param("wait_for_subscribers", 0, "publish the first observation only once this many nodes subscribe to "
                                     f"{contracts.TOPIC_SIM_STATE}: every participant of a lock-step rehearsal "
                                     "(an operator, a recorder) sees the first episode from its first step", low=0),
]

# Lock-step observations: a reliable KEEP_LAST writer drops a step a passive reader (learner, recorder) has not
# acknowledged once `depth` newer exist, at ~600 steps/s. DDS delivery to one process pauses ~300 ms now and
# then (README, Performance): 1000 steps (~1.6 s) ride that out; 100 did not. Rewards and events keep as many.
LOCKSTEP_DEPTH = ros_io.EVENTS.depth
_LOCKSTEP_STATES = QoSProfile(depth=LOCKSTEP_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Lock-step frames reliable: a recorder (reliable or best effort: both match) must not lose a step's frame.
_LOCKSTEP_IMAGES = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# ros2_control's controllers subscribe commands reliably; lock-step must not lose one.
_COMMANDS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

_WARN_THROTTLE_S = 2.0


class SimRobotNode(Node):
    """ROS interface of one CubeSim; see the module docstring for parameters and topics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_robot_node", **kwargs)
        p = declare_params(self, PARAMS)
        if not p["rate_hz"] > 0:
            raise ValueError(f"parameter rate_hz must be > 0, got {p['rate_hz']}")
        self.mode: str = p["mode"]
        self.reset_mode: str = p["reset_mode"]
        self._ended_ns = 0  # external reset: when the episode ended (wall ns); 0 while one runs
        self._start_next = False  # lock-step external reset: start at the next command (see the docstring)
        self.max_episodes: int = p["max_episodes"]
        self.hold_on_missing: bool = p["hold_on_missing_command"]
        self.own_success: bool = p["success_ends_episode"]
        self._true_success = False  # success_ends_episode false: the simulator's success came; steps on
        self._steps_after = 0  # ... steps since then
        self._started_ns = 0  # wall time of the episode's start: older outside verdicts are not for it
        cameras = check_cameras(p["cameras"])  # a misspelt name is refused even while the cameras are off
        if p["camera_rate_hz"] > 0 and not cameras:
            raise ValueError(f"parameter cameras is empty; name some of {CAMERAS} or set camera_rate_hz 0")
        cameras = cameras if p["camera_rate_hz"] > 0 else []

        self.sim = CubeSim(p["env_name"], task_id=p["task_id"], seed=p["seed"],
                           render=bool(cameras), image_size=p["image_size"])
        self.action_names = self.sim.action_names
        self.joint_names = self.sim.joint_names
        self._step_ns = round(1e9 / self.sim.fps)

        # Counters (also reported in the summary line).
        self.episodes = 0
        self.successes = 0
        self.total_steps = 0
        self.dropped: Counter[str] = Counter()  # bad commands per ObservationError kind
        self.holds = 0
        self.superseded = 0
        self._last_tick = 0.0  # realtime: monotonic time of the last timer tick
        self._command_phase: deque[float] = deque(maxlen=400)  # command arrival - last tick, s
        self.finished = False  # max_episodes reached: main() stops spinning
        self._pending: np.ndarray | None = None  # realtime: newest command not yet stepped
        self._got_command = False
        self._camera_ok = bool(cameras)
        self._ticks = 0  # realtime: timer ticks so far (a camera frame every _camera_every-th)
        self._last_images: dict[str, Image] = {}  # camera -> its newest image, for re-publishing
        self._last_obs: tuple[np.ndarray, Time] | None = None  # for re-publishing without a step

        # Publishers.
        states_qos = _LOCKSTEP_STATES if self.mode == "lockstep" else ros_io.LATCHED
        self.pub_joints = self.create_publisher(JointState, contracts.TOPIC_JOINT_STATES, states_qos)
        self.pub_state = self.create_publisher(Float32MultiArray, contracts.TOPIC_SIM_STATE, states_qos)
        self.pub_state_names = self.create_publisher(String, contracts.TOPIC_SIM_STATE_NAMES, ros_io.LATCHED)
        self.pub_reward = self.create_publisher(Float32, contracts.TOPIC_REWARD, ros_io.EVENTS)
        self.pub_episode = self.create_publisher(String, contracts.TOPIC_EPISODE, ros_io.EVENTS)
        images_qos = _LOCKSTEP_IMAGES if self.mode == "lockstep" else qos_profile_sensor_data
        self.pub_images = {c: self.create_publisher(Image, contracts.sim_camera_topic(c), images_qos) for c in cameras}
        self.pub_clock = (self.create_publisher(ClockMsg, TOPIC_CLOCK, ros_io.LATCHED)
                          if self.mode == "lockstep" else None)
        self.pub_diag = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)

        self.sub_command = self.create_subscription(
            ros_io.COMMAND_MSG[p["command_type"]], p["command_topic"], self._on_command, _COMMANDS)
        if self.reset_mode == "external" or not self.own_success:
            self.create_subscription(String, contracts.TOPIC_EPISODE, self._on_episode, ros_io.EVENTS)

        # Timers run on the steady clock: realtime means wall time whatever use_sim_time says.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._steady = steady
        self._last_command_time = steady.now()
        if p["diagnostics_period_s"] > 0:
            self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics, clock=steady)
        # Frames go with observations (one stamp): every k-th tick (realtime) or step (lock-step, sim time).
        frame_rate = p["rate_hz"] if self.mode == "realtime" else self.sim.fps
        self._camera_every = max(1, round(frame_rate / p["camera_rate_hz"])) if self._camera_ok else 0
        if self.mode == "realtime":
            self.create_timer(1.0 / p["rate_hz"], self._on_tick, clock=steady)
        else:
            if p["lockstep_republish_s"] > 0:
                self._republish_after = Duration(seconds=p["lockstep_republish_s"])
                self.create_timer(min(0.25, p["lockstep_republish_s"]), self._on_idle_check, clock=steady)

        self.pub_state_names.publish(String(data=json.dumps(self.sim.state_names)))
        self.get_logger().info(
            f"{self.sim.env_id} ({self.sim.task}), seed {self.sim.seed}, mode {self.mode}"
            + (f" at {p['rate_hz']:g} Hz" if self.mode == "realtime" else f", {self.sim.fps:g} steps per sim second")
            + f"; commands: {p['command_type']} on {self.sub_command.topic_name}"
            + (f"; cameras {', '.join(cameras)} {p['image_size']}px at {p['camera_rate_hz']:g} Hz" if self._camera_ok
               else "; no camera")
            + (f"; stopping after {self.max_episodes} episodes" if self.max_episodes else "")
            + ("; episodes start on 'start' (external reset)" if self.reset_mode == "external" else ""))
        if self.mode == "realtime":
            self.get_logger().info("waiting for the first command before stepping")
        if self.pub_clock is not None:  # sim time starts at 0, latched for nodes that start later
            self.pub_clock.publish(ClockMsg(clock=self._stamp().to_msg()))
        self._wait_for = p["wait_for_subscribers"]
        if self._wait_for:
            self.get_logger().info(f"waiting for {self._wait_for} subscriber(s) on {contracts.TOPIC_SIM_STATE}")
            self._wait_timer = self.create_timer(0.05, self._start_when_subscribed, clock=steady)
        else:
            self._start_episode(self.sim.reset())

    def _start_when_subscribed(self) -> None:
        if self.pub_state.get_subscription_count() >= self._wait_for:
            self._wait_timer.cancel()
            self._start_episode(self.sim.reset())

    # --- commands -------------------------------------------------------------------------------
    def _on_command(self, msg: Any) -> None:
        if self.finished or self._last_obs is None:  # nothing to answer yet (waiting for subscribers)
            return
        try:
            action = self.sim.check_action(ros_io.command_values(msg, self.action_names))
        except ros_io.ObservationError as err:
            self.dropped[err.kind] += 1
            self.get_logger().warning(f"dropped command #{self.dropped.total()} ({err.kind}): {err}",
                                      throttle_duration_sec=_WARN_THROTTLE_S)
            return
        self._last_command_time = self._steady.now()
        if not self._got_command:
            self._got_command = True
            self.get_logger().info("first command received")
        if self.mode == "lockstep" and self._start_next:
            self._start_next = False
            self._start_episode(self.sim.reset(keep_arm=True), announce=False)
        elif self.mode == "lockstep":
            self._step(action)
        else:
            if self._last_tick:
                self._command_phase.append(time.monotonic() - self._last_tick)
            if self._pending is not None:
                self.superseded += 1
            self._pending = action

    def _on_tick(self) -> None:
        if self.finished:
            return
        self._last_tick = time.monotonic()
        self._ticks += 1
        if self._pending is not None:
            action, self._pending = self._pending, None
        elif self._got_command and self.hold_on_missing:
            action = np.zeros(len(self.action_names), dtype=np.float32)
            self.holds += 1
        else:
            # Not stepping this tick, but a robot's state stays live: a policy whose watchdog wants
            # fresh observations (before its first command, say) must not stall on us.
            if self._last_obs is not None:
                self._publish_observation(self._last_obs[0], self.get_clock().now())
            return
        self._step(action)

    # --- stepping and episodes ---------------------------------------------------------------------
    def _stamp(self) -> Time:
        if self.mode == "lockstep":
            return Time(nanoseconds=self.total_steps * self._step_ns)
        return self.get_clock().now()

    def _step(self, action: np.ndarray) -> None:
        if self._ended_ns:  # external reset: between episodes, the robot moves on its way home
            self.total_steps += 1
            self._publish_observation(self.sim.step_outside_episode(action), self._tick_stamp())
            return
        if self._true_success:  # past the simulator's own success, waiting for a verdict from outside
            state, reward, terminated, info = self.sim.step_outside_episode(action), 0.0, False, {}
            self._steps_after += 1
            truncated = self.sim.elapsed_steps + self._steps_after >= self.sim.max_episode_steps
        else:
            state, reward, terminated, truncated, info = self.sim.step(action)
        self.total_steps += 1
        stamp = self._tick_stamp()
        self.pub_reward.publish(Float32(data=float(reward)))
        if terminated and not self.own_success:
            self._true_success, terminated = True, False
        if not (terminated or truncated):
            self._publish_observation(state, stamp)
            return
        success = bool(info.get("success", False)) or terminated
        self._end_episode("success" if success else "timeout", success or self._true_success, state, stamp)

    def _end_episode(self, event: str, success: bool, state: np.ndarray, stamp: Time, verdict: bool = False) -> None:
        """Count and announce the end (`verdict`: another node's event, not re-published), then reset."""
        steps = self.sim.elapsed_steps + self._steps_after
        self.episodes += 1
        self.successes += int(success)
        if not verdict:
            self._publish_event(event)
        self._true_success, self._steps_after = False, 0
        self.get_logger().info(
            f"episode {self.episodes} {event}{' (from another node)' if verdict else ''} after {steps} steps"
            + ("" if self.own_success else f", true outcome {'success' if success else 'no success'}")
            + f"; successes {self.successes}/{self.episodes} (rate {self.successes / self.episodes:.2f})")
        if self.max_episodes and self.episodes >= self.max_episodes:
            self.finished = True
            return
        if self.reset_mode == "external":  # the arm stays; the state keeps coming for whoever takes it home
            self._ended_ns = time.time_ns()
            self._publish_observation(state, stamp)
            return
        self._publish_event("reset")
        self._start_episode(self.sim.reset())

    def _tick_stamp(self) -> Time:
        stamp = self._stamp()
        if self.pub_clock is not None:
            self.pub_clock.publish(ClockMsg(clock=stamp.to_msg()))
        return stamp

    def _on_episode(self, msg: String, info: dict) -> None:
        if (msg.data in ("success", "failure") and not self.own_success and not self._ended_ns and not self.finished
                and self._last_obs is not None and ros_io.sent_ns(info) > self._started_ns):
            self._end_episode(msg.data, self._true_success, *self._last_obs, verdict=True)
            return
        # Only a start sent after the episode's end (DDS source times are wall clock): not our own at boot.
        if msg.data != "start" or not self._ended_ns or self.finished or ros_io.sent_ns(info) < self._ended_ns:
            return
        self._ended_ns = 0
        if self.mode == "lockstep":
            self._start_next = True
        else:
            self._start_episode(self.sim.reset(keep_arm=True), announce=False)

    def _start_episode(self, state: np.ndarray, announce: bool = True) -> None:
        self._pending = None  # a command meant for the old episode must not move the new one
        self._started_ns = time.time_ns()
        if announce:
            self._publish_event("start")
        self.get_logger().info(f"episode {self.episodes + 1} start" + ("" if announce else " (external reset)"))
        self._publish_observation(state, self._stamp(), force_image=True)

    def _publish_event(self, event: str) -> None:
        assert event in contracts.EPISODE_EVENTS
        self.pub_episode.publish(String(data=event))

    # --- observations ------------------------------------------------------------------------------
    def _publish_observation(self, state: np.ndarray, stamp: Time, force_image: bool = False) -> None:
        self._last_obs = (state, stamp)
        # Images first: a policy pairing by arrival then finds them when the state arrives.
        frame = self.total_steps if self.mode == "lockstep" else self._ticks
        if self._camera_ok and (force_image or frame % self._camera_every == 0):
            self._publish_images(stamp)
        info = self.sim.info
        # OGBench's gripper velocity is that of the same driver joint we publish as the last joint.
        velocity = (np.concatenate([info["proprio/joint_vel"], info["proprio/gripper_vel"]])
                    if "proprio/joint_vel" in info and "proprio/gripper_vel" in info else None)
        js = ros_io.joint_state_message(self.joint_names, self.sim.joint_positions(), velocity, stamp.nanoseconds)
        msg = ros_io.state_array_message(state)
        self.pub_state.publish(msg)
        self.pub_joints.publish(js)

    def _publish_images(self, stamp: Time) -> None:
        try:
            images = {camera: self.sim.render(camera) for camera in self.pub_images}
        except RuntimeError as err:
            # No EGL here: say why once and run on without cameras rather than die.
            self._camera_ok = False
            self.get_logger().error(f"cameras disabled: {err}")
            return
        for camera, pixels in images.items():
            msg = ros_io.image_message(pixels, "rgb8", f"{camera}_camera", stamp.nanoseconds)
            self._last_images[camera] = msg
            self.pub_images[camera].publish(msg)

    def _on_idle_check(self) -> None:
        if self.finished or self._steady.now() - self._last_command_time < self._republish_after:
            return
        # Nothing happened for a while: re-send the current observation (same stamp) and time.
        self._last_command_time = self._steady.now()
        if self._start_next:  # no command came to drop: start the episode now
            self._start_next = False
            self._start_episode(self.sim.reset(keep_arm=True), announce=False)
            return
        if self._last_obs is None:
            return
        state, stamp = self._last_obs
        if self.pub_clock is not None:
            self.pub_clock.publish(ClockMsg(clock=stamp.to_msg()))
        for camera, msg in self._last_images.items():
            self.pub_images[camera].publish(msg)
        self._publish_observation(state, stamp)

    # --- diagnostics -------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        phase = np.asarray(self._command_phase, np.float64) * 1e3
        return {
            "mode": self.mode, "episodes": self.episodes, "successes": self.successes, "steps": self.total_steps,
            "holds": self.holds, "superseded_commands": self.superseded, "dropped_commands": self.dropped.total(),
            **{f"dropped_{k}": n for k, n in sorted(self.dropped.items())},
            "command_after_tick_p50_ms": float(np.percentile(phase, 50)) if phase.size else float("nan"),
            "command_after_tick_p99_ms": float(np.percentile(phase, 99)) if phase.size else float("nan"),
        }

    def _publish_diagnostics(self) -> None:
        self.pub_diag.publish(ros_io.diagnostics(f"{self.get_name()}: robot", self.get_fully_qualified_name(),
                                                 DiagnosticStatus.OK, self.mode, self.counters(),
                                                 self.get_clock().now().nanoseconds))

    # --- end ---------------------------------------------------------------------------------------
    def summary(self) -> str:
        rate = f"{self.successes / self.episodes:.3f}" if self.episodes else "n/a"
        kinds = f" ({', '.join(f'{k} {n}' for k, n in sorted(self.dropped.items()))})" if self.dropped else ""
        return (f"episodes {self.episodes}, successes {self.successes}, success rate {rate}; "
                f"steps {self.total_steps}, dropped commands {self.dropped.total()}{kinds}, holds {self.holds}, "
                f"superseded commands {self.superseded}")

    def flush(self, timeout_s: float = 0.25) -> None:
        """Before exiting, a moment for subscribers to acknowledge (or get resent) the last reward/episode messages."""
        try:
            for pub in (self.pub_reward, self.pub_episode):
                pub.wait_for_all_acked(Duration(seconds=timeout_s))
        except Exception:  # a signal may shut the context down meanwhile; we are exiting anyway
            pass


def _close(node: SimRobotNode, signalled: bool) -> None:
    summary = node.summary()
    if rclpy.ok():  # finished by max_episodes: the summary also reaches /rosout
        node.flush()
        node.get_logger().info(summary)
    else:  # stopped by a signal: the context is gone, so log without /rosout
        rclpy.logging.get_logger("sim_robot_node").info(summary)
    node.sim.close()


def main(args: list[str] | None = None) -> int:
    return run_node(SimRobotNode, "sim_robot_node", args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
