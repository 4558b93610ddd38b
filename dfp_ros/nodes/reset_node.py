"""`reset_node`: between two episodes, take the robot home through policy_node, then start the next one.

A thin shell over `dfp_ros.runtime.reset_phase.ResetPhase` (the rules and the two home controllers are
documented there). On an episode's end on `episode_topic` (success, failure, timeout, discard) it
publishes `reset`, sends a first command on `teleop_topic` and switches policy_node's
`intervene_service` (std_srvs/SetBool) on, so its commands pass the policy node's safety filter (limits,
max_delta, watchdog, e-stop) like any human's. It answers every state on `state_topic` with one command
(the robot's state stream paces it, in lock-step and in real time) until the robot has been home for
`settle_s`, then switches the intervention off and, once policy_node confirmed, publishes `start`.
(Hand-back first, so the episode's first tick is the policy's. With a lock-step simulator the policy may
still drive a step or two before the simulator acts on the `start`; those steps belong to no episode.)

`command_kind`:
  effector_delta  a delta-commanded robot like sim_robot_node (reset_mode external): a proportional
                  controller on the effector pose read from a Float32MultiArray state (`state_indices`:
                  x, y, z, yaw cos, yaw sin, gripper; `home`, `tolerance` in the state's units, yaw in rad),
                  action = `gains` * (home - pose), clipped to `action_low` / `action_high`.
  joint_position  a position-commanded robot: the commanded joint positions (in the policy's action order)
                  walk to `home` by at most `max_joint_step` per state; the measured positions come from a
                  JointState (`joint_names`) or a Float32MultiArray (`state_indices`).

Not home within `home_timeout_s`: `reset_failed` on `episode_topic`, an error line and an ERROR
diagnostic; the robot stays taken over and held where it stopped (the policy stays out) until the
operator calls `~/retry` (std_srvs/Trigger: home again) or publishes `start` themselves (the robot is
handed back as it is). While a reset runs, another episode end (a success button pressed during it) is
ignored with a log line: no `start` until the reset is done, so a learner sees the reset's steps in no
episode. /diagnostics every second: phase, resets, failures, ignored events, last reset's duration.

Parameters: the table `PARAMS` below (read at start; config/reset.yaml is the simulator's setup).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from dfp_ros import contracts
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import EmptyList, Param, declare_params
from dfp_ros.runtime.reset_phase import (
    BEGIN,
    FAILED,
    FAILED_NOW,
    IDLE,
    IGNORED,
    OVERRIDDEN,
    RELEASING,
    SETTLED,
    EffectorHoming,
    Homing,
    JointHoming,
    ResetPhase,
    effector_pose,
)

NODE_NAME = "reset_node"
COMMAND_KINDS = ("effector_delta", "joint_position")
STATE_TYPES = ("float32_array", "joint_state")

PARAMS: list[Param] = [
    Param("command_kind", "effector_delta", "effector_delta: P control of effector deltas from a pose in the state; "
                                            "joint_position: joint targets stepped to home", choices=COMMAND_KINDS),
    Param("state_topic", contracts.TOPIC_SIM_STATE, "the robot's state (paces the commands: one per state)"),
    Param("state_type", "float32_array", "std_msgs/Float32MultiArray or sensor_msgs/JointState", choices=STATE_TYPES),
    Param("state_indices", [12, 13, 14, 15, 16, 17], "float32_array: effector_delta: the indices of x, y, z, yaw "
                                                     "cos, yaw sin, gripper (sim/state's); joint_position: one "
                                                     "index per joint"),
    Param("joint_names", EmptyList(str), "joint_state: the joints, in the command's order"),
    Param("home", [0.0, 0.0, 2.5, 0.0, 0.0], "the home pose: effector x, y, z, yaw (rad), gripper in the state's "
                                             "units (sim/state: (m - (0.425, 0, 0)) x 10, opening x 3), or joint "
                                             "positions"),
    Param("tolerance", [0.1, 0.1, 0.1, 0.1, 0.15], "per home value: home when every |measured - home| is within"),
    Param("gains", [1.0, 1.0, 1.0, 1.5, 0.15], "effector_delta: action per unit of pose error (the simulator moves "
                                               "0.5 state units of x/y/z, 0.3 rad, 1 opening per action unit)"),
    Param("action_low", [-1.0] * 5, "effector_delta: lower clip of each action"),
    Param("action_high", [1.0] * 5, "effector_delta: upper clip of each action"),
    Param("max_joint_step", 0.02, "joint_position: largest change of a joint target per state (rad)", low=0.0),
    Param("home_timeout_s", 10.0, "not home this long after the episode's end: reset_failed", low=0.0),
    Param("settle_s", 0.5, "time to stay home before the policy gets the robot back", low=0.0),
    Param("episode_topic", contracts.TOPIC_EPISODE, "episode events in; reset, start, reset_failed out"),
    Param("teleop_topic", contracts.TOPIC_TELEOP_COMMAND, "commands out (std_msgs/Float64MultiArray, policy_node's "
                                                          "teleop_topic)"),
    Param("intervene_service", "policy_node/intervene", "policy_node's ~/intervene (std_srvs/SetBool)"),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages (0 = none)", low=0.0),
]
# Volatile: a node answering states must not be handed the lock-step simulator's history when it joins.
_STATES = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def make_phase(p: dict[str, Any]) -> ResetPhase:
    """The ResetPhase the parameters describe; ValueError naming a bad combination."""
    n = len(p["home"])
    homing: Homing
    if p["command_kind"] == "effector_delta":
        if p["state_type"] != "float32_array" or len(p["state_indices"]) != 6 or n != 5:
            raise ValueError("command_kind effector_delta needs state_type float32_array, 6 state_indices (x, y, z, "
                             f"yaw cos, yaw sin, gripper) and 5 home values; got {p['state_type']}, "
                             f"{len(p['state_indices'])}, {n}")
        homing = EffectorHoming(p["home"], p["gains"], p["action_low"], p["action_high"])
    else:
        names = p["joint_names"] if p["state_type"] == "joint_state" else p["state_indices"]
        if len(names) != n:
            raise ValueError(f"command_kind joint_position: {n} home values but {len(names)} "
                             f"{'joint_names' if p['state_type'] == 'joint_state' else 'state_indices'}")
        homing = JointHoming(p["home"], p["max_joint_step"])
    return ResetPhase(homing, p["tolerance"], p["home_timeout_s"], p["settle_s"])


class ResetNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        self.phase = make_phase(p)
        self._kind, self._indices, self._joints = p["command_kind"], list(p["state_indices"]), list(p["joint_names"])
        self._measured: np.ndarray | None = None  # the newest state, in the units of `home`
        self._pending_intervene: bool | None = None  # an ~/intervene call waiting for the service
        self.bad_states = 0
        self.pub_command = self.create_publisher(Float64MultiArray, p["teleop_topic"], 10)
        self.pub_episode = self.create_publisher(String, p["episode_topic"], ros_io.EVENTS)
        self.pub_diag = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)
        self.intervene = self.create_client(SetBool, p["intervene_service"])
        self.create_subscription(String, p["episode_topic"], self._on_episode, ros_io.EVENTS)
        if p["state_type"] == "joint_state":
            self.create_subscription(JointState, p["state_topic"], self._on_joint_state, _STATES)
        else:
            self.create_subscription(Float32MultiArray, p["state_topic"], self._on_array, _STATES)
        self.create_service(Trigger, "~/retry", self._on_retry)
        if p["diagnostics_period_s"] > 0:
            self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"{p['command_kind']} reset to home {p['home']} (tolerance {p['tolerance']}) within "
            f"{p['home_timeout_s']:g} s, settle {p['settle_s']:g} s: {p['state_topic']} -> "
            f"{self.pub_command.topic_name} via {self.intervene.srv_name}")

    # --- episode events ---------------------------------------------------------------------------------
    def _on_episode(self, msg: String) -> None:
        before = self.phase.phase
        what = self.phase.on_event(msg.data, time.monotonic())
        if what == BEGIN:
            self._publish_event("reset")
            self.get_logger().info(f"episode ended ({msg.data}): reset {self.phase.resets + 1} to the home pose")
            if self._measured is not None:  # a command waiting, so policy_node's first human tick has one
                self._answer(self._measured)
            self._call_intervene(True)
        elif what == IGNORED:
            self.get_logger().warning(f"ignored '{msg.data}' during the reset ({before}): the reset's steps belong "
                                      f"to no episode; no start until the reset is done")
        elif what == OVERRIDDEN:
            self.get_logger().warning(f"an episode was started during the reset ({before}): handing the robot back")
            self._call_intervene(False)

    def _publish_event(self, event: str) -> None:
        self.pub_episode.publish(String(data=event))

    def _call_intervene(self, on: bool) -> None:
        if not self.intervene.service_is_ready():  # not discovered (yet): ask again at the next state
            self._pending_intervene = on
            self.get_logger().warning(f"{self.intervene.srv_name} is not available (is policy_node running?); "
                                      f"asking again", throttle_duration_sec=2.0)
            return
        self._pending_intervene = None
        self.intervene.call_async(SetBool.Request(data=on)).add_done_callback(lambda f: self._intervened(on, f))

    def _intervened(self, on: bool, future: Any) -> None:
        try:
            response = future.result()
            ok, message = bool(response.success), response.message
        except Exception as err:  # the call itself failed (the server went away)
            ok, message = False, str(err)
        if not ok:
            self._failed(f"{self.intervene.srv_name}({on}) refused: {message}")
        elif not on and self.phase.phase == RELEASING:
            self.phase.released(time.monotonic())
            self._publish_event("start")
            self.get_logger().info(f"reset {self.phase.resets} done in {self.phase.last_reset_s:.2f} s: robot "
                                   f"handed back, episode started")

    def _failed(self, reason: str) -> None:
        if self.phase.phase in (IDLE, FAILED):
            self.get_logger().error(reason)
            return
        self.phase.fail(reason, self._measured)
        self._report_failure()

    def _report_failure(self) -> None:
        self._publish_event(contracts.EPISODE_RESET_FAILED)
        self.get_logger().error(f"reset failed: {self.phase.failure_reason}; holding the robot (policy stays out) "
                                f"until ~/retry or a start on the episode topic")

    def _on_retry(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = self.phase.retry(time.monotonic())
        response.message = "homing again" if response.success else f"nothing to retry (phase {self.phase.phase})"
        self.get_logger().info(f"~/retry: {response.message}")
        return response

    # --- states -----------------------------------------------------------------------------------------
    def _on_array(self, msg: Float32MultiArray) -> None:
        values = np.frombuffer(msg.data, np.float32) if len(msg.data) else np.zeros(0, np.float32)
        if max(self._indices, default=-1) >= values.size:
            self._bad(f"state has {values.size} values; state_indices need {max(self._indices) + 1}")
            return
        self._on_measured(effector_pose(values, self._indices) if self._kind == "effector_delta"
                          else values[self._indices].astype(np.float64))

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions = ros_io.values_by_name(list(msg.name), np.asarray(msg.position), self._joints)
        except ros_io.ObservationError as err:
            self._bad(str(err))
            return
        self._on_measured(positions)

    def _bad(self, why: str) -> None:
        self.bad_states += 1
        self.get_logger().warning(f"dropped a state: {why}", throttle_duration_sec=2.0)

    def _on_measured(self, measured: np.ndarray) -> None:
        if not np.isfinite(measured).all():
            self._bad("NaN or inf in the measured pose")
            return
        self._measured = measured
        self._answer(measured)

    def _answer(self, measured: np.ndarray) -> None:
        step = self.phase.on_state(measured, time.monotonic())
        if self._pending_intervene is not None:
            self._call_intervene(self._pending_intervene)
        if step.command is not None:
            self.pub_command.publish(Float64MultiArray(data=[float(x) for x in step.command]))
        if step.event == SETTLED:
            self.get_logger().info("home and settled: handing the robot back")
            self._call_intervene(False)
        elif step.event == FAILED_NOW:
            self._report_failure()

    # --- diagnostics ------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        stats = self.phase.stats(time.monotonic())
        level = DiagnosticStatus.ERROR if stats["phase"] == FAILED else DiagnosticStatus.OK
        self.pub_diag.publish(ros_io.diagnostics(f"{NODE_NAME}: reset", self.get_fully_qualified_name(), level,
                                                 str(stats["phase"]), {**stats, "bad_states": self.bad_states},
                                                 self.get_clock().now().nanoseconds))

    def summary(self) -> str:
        return (f"resets {self.phase.resets}, failures {self.phase.failures}, ignored events {self.phase.ignored}, "
                f"bad states {self.bad_states}")


def _close(node: ResetNode, signalled: bool) -> None:
    rclpy.logging.get_logger(NODE_NAME).info(node.summary())


def main(args: list[str] | None = None) -> int:
    return run_node(ResetNode, NODE_NAME, args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
