"""`oracle_teleop_node`: OGBench's scripted cube expert as a teleoperator of `sim_robot_node`.

It answers every state published on `state_topic` (std_msgs/Float32MultiArray, the simulator's
28-number state) with one command on `command_topic` (std_msgs/Float64MultiArray, the 5 action
values), so it works with the simulator in both modes: lock-step (the sim steps once per command
and publishes the next state) and real time (the sim publishes a state every tick and steps with
the newest command). With `collect_node` this records a whole dataset without a human.

Why it acts on the published state, and not on a private copy of the simulation: a teleoperator
must only use what the robot publishes, or the recorded (state, action) pairs could disagree with
what the robot really was in. OGBench's plan oracle needs the effector pose, gripper opening, cube
poses (all in the 28 numbers), the task's goal (fixed per OGBench task: read once from the task
definition) and a plan clock (advanced one control period per command). The reconstruction is in
`dfp_ros.data.state_oracle`; a replica simulation stepped in lock-step would also work but silently
diverges when a command is lost or the sim is reset from outside, and then acts on a world that is
not the published one.

Noise: OGBench's dataset noise (`noise` 0.1, `smoothing` 0.5 steps), from a private stream seeded by
`seed`. Episodes: an `episode` event `start` makes it plan afresh from the next state; after
`success`/`failure`/`timeout` it sends nothing until the next `start` (the simulator ignores
commands between episodes anyway). The episode subscription is created first, so an event and a
state that are ready together are handled in that order (rclpy's executor takes ready subscriptions
in creation order).

Role `operator` (a rehearsal of human-in-the-loop RL; `dfp_ros.data.scripted_operator` has the rules):
the policy drives; the oracle watches the same states and takes over when the next subgoal (cube
grasped, lifted, placed) was not reached for `takeover_after_s`, like a person grabbing the gamepad:
`teleop/engaged` true and its commands on `teleop/command`, one per state, which policy_node executes
through its safety filter (`~/executed` labels them `human`). It plans from the state of the takeover
and hands back after `hand_back_after_s` (`teleop/engaged` false). Interventions are counted and logged
per episode. Time is counted in states (one control period each), so the settings mean robot time in
lock-step and in real time alike. In lock-step policy_node may tick on a state before the operator's
answer to it arrives, and then runs the operator's previous command: OGBench's planner absorbs that
one-step lag (10/10 offline episodes with every command one step late, as with none).

Parameters: the table `PARAMS` below (read at start).
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, String

from dfp_ros import contracts
from dfp_ros.data.scripted_operator import HAND_BACK, TAKEOVER, OperatorStep, ScriptedOperator
from dfp_ros.data.state_oracle import StateOracle, TaskProgress
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params

NODE_NAME = "oracle_teleop_node"
ROLES = ("teleop", "operator")

PARAMS: list[Param] = [
    Param("env_name", "cube-single-v0", "the simulator's OGBench environment"),
    Param("task_id", 1, "the simulator's OGBench task", low=1, high=5),
    Param("seed", 0, "seed of the plan noise"),
    Param("noise", 0.1, "OGBench plan noise", low=0.0),
    Param("smoothing", 0.5, "noise smoothing sigma, steps", low=0.0),
    Param("state_topic", contracts.TOPIC_SIM_STATE, "the simulator's state (std_msgs/Float32MultiArray)"),
    Param("command_topic", contracts.TOPIC_POLICY_COMMAND, "commands out (std_msgs/Float64MultiArray)"),
    Param("episode_topic", contracts.TOPIC_EPISODE, "episode events; '' = plan from the first state only, "
                                                    "re-planning whenever the plan runs out"),
    Param("max_episodes", 0, "exit 0 after this many episode ends; 0 = run forever", low=0),
    Param("role", "teleop", "teleop: command every state on command_topic; operator: watch the policy, take over "
                            "on teleop_topic + engaged_topic when it makes no progress, hand back", choices=ROLES),
    Param("takeover_after_s", 2.0, "operator: take over when the next subgoal (grasped, lifted, placed) was not "
                                   "reached this long (robot time) after the last one, the episode's start or "
                                   "the last hand-back", low=0.05),
    Param("hand_back_after_s", 2.0, "operator: hand back after this long in control (robot time); 0 = keep "
                                    "control until the episode ends", low=0.0),
    Param("teleop_topic", contracts.TOPIC_TELEOP_COMMAND, "operator: commands out (std_msgs/Float64MultiArray, "
                                                          "policy_node's teleop_topic)"),
    Param("engaged_topic", contracts.TOPIC_TELEOP_ENGAGED, "operator: std_msgs/Bool, true while the operator "
                                                           "holds the robot (policy_node's teleop_engaged_topic)"),
    Param("wait_for_subscribers", 1, "act only once this many subscribers (robot, recorder, ...) listen to the "
                                     "commands, so no command of a recorded episode is lost", low=0),
]
# States and commands: reliable and volatile. A controller answers each state once, so a late joiner
# must not be handed the simulator's lock-step history (it would step the simulation once per old
# state); a lock-step simulator republishes its current state while nobody answers, which is how a
# late joiner gets it.
_RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


class OracleTeleopNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        self.max_episodes = p["max_episodes"]
        self.wait_for = p["wait_for_subscribers"]
        self.oracle = StateOracle(p["env_name"], task_id=p["task_id"], noise=p["noise"], smoothing=p["smoothing"],
                                  seed=p["seed"])
        operating = p["role"] == "operator"
        self.operator = (ScriptedOperator(self.oracle, p["takeover_after_s"], p["hand_back_after_s"])
                         if operating else None)
        self._states = 0  # operator: states handled; robot time is one control period each
        self.commands = 0
        self.episodes_ended = 0
        self.bad = 0
        self.finished = False
        self._active = True  # between an episode's end and the next start: send nothing
        self._held: tuple[int, np.ndarray] | None = None  # a state that came while inactive

        self.pub = self.create_publisher(Float64MultiArray, p["teleop_topic" if operating else "command_topic"],
                                         _RELIABLE)
        # Latched like joy_teleop_node's: a policy node that starts later learns who holds the robot.
        self.pub_engaged = self.create_publisher(Bool, p["engaged_topic"], ros_io.LATCHED) if operating else None
        if p["episode_topic"]:
            self.create_subscription(String, p["episode_topic"], self._on_episode, ros_io.EVENTS)
        self.create_subscription(Float32MultiArray, p["state_topic"], self._on_state, _RELIABLE)
        self._ready = False
        self.create_timer(0.05, self._check_ready)
        self.get_logger().info(f"oracle for {p['env_name']} task {p['task_id']} (noise {p['noise']}, smoothing "
                               f"{p['smoothing']}, seed {p['seed']}): {p['state_topic']} -> {self.pub.topic_name}"
                               + (f"; operator: takeover after {p['takeover_after_s']:g} s without progress, hand "
                                  f"back after {p['hand_back_after_s']:g} s" if operating else ""))

    def _on_episode(self, msg: String, info: dict) -> None:
        if msg.data == "start":
            self.oracle.reset()
            if self.operator is not None:
                self.release()  # a start without the end before it: the robot must not stay held
                self.operator.start_episode()
            self._active = True
            held, self._held = self._held, None
            # The episode's first state was handled before this event: answer it now (lock-step waits).
            if held is not None and held[0] >= ros_io.sent_ns(info):
                self._act(held[1])
        elif msg.data in ("success", "failure", "timeout"):
            self._active = False
            self.episodes_ended += 1
            self.get_logger().info(f"episode {self.episodes_ended} {msg.data} after {self.commands} commands"
                                   + self._episode_interventions())
            self.release()
            if self.max_episodes and self.episodes_ended >= self.max_episodes:
                self.finished = True

    def _on_state(self, msg: Float32MultiArray, info: dict) -> None:
        if self.finished:
            return
        state = np.frombuffer(msg.data, dtype=np.float32).copy() if len(msg.data) else np.zeros(0, np.float32)
        if not self._active or not self._ready:
            self._held = (ros_io.sent_ns(info), state)
            return
        self._act(state)

    def _check_ready(self) -> None:
        # A command sent before the recorder is matched would be lost to it (volatile QoS), and the
        # lock-step simulator would already have stepped: wait for every expected subscriber first.
        if self._ready or self.pub.get_subscription_count() < self.wait_for:
            return
        self._ready = True
        self.get_logger().info(f"{self.pub.get_subscription_count()} subscriber(s) on the commands: acting")
        held, self._held = self._held, None
        if held is not None and self._active:
            self._act(held[1])

    def _act(self, state: np.ndarray) -> None:
        try:
            if self.operator is None:
                self._command(self.oracle.act(state))
            else:
                self._states += 1
                self._operate(self.operator.on_state(state, self._states * self.oracle.dt))
        except ValueError as err:  # wrong length: not the simulator this oracle was built for
            self.bad += 1
            self.get_logger().warning(f"ignored a state: {err}", throttle_duration_sec=2.0)

    def _command(self, action: np.ndarray) -> None:
        self.pub.publish(Float64MultiArray(data=[float(x) for x in action]))
        self.commands += 1

    def _operate(self, step: OperatorStep) -> None:
        # The command before the dead-man: a policy node that sees engaged first would have no command to run.
        if step.command is not None:
            self._command(step.command)
        if step.engaged or step.event == HAND_BACK:
            self.pub_engaged.publish(Bool(data=step.engaged))
        op = self.operator
        if step.event == TAKEOVER:
            self.get_logger().info(
                f"episode {self.episodes_ended + 1}: takeover {op.interventions} after {op.takeover_after_s:g} s "
                f"without reaching the next subgoal ({_where(step.progress)})"
                + ("; carrying the held cube on" if self.oracle.carrying else "; planning from here"))
        elif step.event == HAND_BACK:
            self.get_logger().info(f"episode {self.episodes_ended + 1}: hand-back after {op.hand_back_after_s:g} s "
                                   f"({_where(step.progress)})")

    def release(self) -> None:
        """The episode ended (or the node stops): let go of the robot if the operator holds it."""
        if self.operator is not None and self.operator.end_episode():
            self.pub_engaged.publish(Bool(data=False))
            self.get_logger().info("released the robot")

    def _episode_interventions(self) -> str:
        if self.operator is None:
            return ""
        op = self.operator
        return f"; {op.interventions} intervention(s), {op.operator_states} state(s) answered by the operator"

    def summary(self) -> str:
        ops = f", interventions {self.operator.total_interventions}" if self.operator is not None else ""
        return f"commands {self.commands}, episodes {self.episodes_ended}, bad states {self.bad}{ops}"


def _where(p: TaskProgress | None) -> str:
    if p is None:
        return ""
    return (f"stage {p.stage}: pinch->cube {p.gripper_to_cube:.3f} m, cube height {p.cube_height:.3f} m, "
            f"cube->target {p.cube_to_target:.3f} m")


def _close(node: OracleTeleopNode, signalled: bool) -> None:
    if rclpy.ok():
        node.release()
    rclpy.logging.get_logger(NODE_NAME).info(node.summary())
    node.oracle.close()


def main(args: list[str] | None = None) -> int:
    return run_node(OracleTeleopNode, NODE_NAME, args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
