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

Parameters: the table `PARAMS` below (read at start).
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String

from dfp_ros import contracts
from dfp_ros.data.state_oracle import StateOracle
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params

NODE_NAME = "oracle_teleop_node"

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
        self.commands = 0
        self.episodes_ended = 0
        self.bad = 0
        self.finished = False
        self._active = True  # between an episode's end and the next start: send nothing
        self._held: tuple[int, np.ndarray] | None = None  # a state that came while inactive

        self.pub = self.create_publisher(Float64MultiArray, p["command_topic"], _RELIABLE)
        if p["episode_topic"]:
            self.create_subscription(String, p["episode_topic"], self._on_episode, ros_io.EVENTS)
        self.create_subscription(Float32MultiArray, p["state_topic"], self._on_state, _RELIABLE)
        self._ready = False
        self.create_timer(0.05, self._check_ready)
        self.get_logger().info(f"oracle for {p['env_name']} task {p['task_id']} (noise {p['noise']}, smoothing "
                               f"{p['smoothing']}, seed {p['seed']}): {p['state_topic']} -> {self.pub.topic_name}")

    def _on_episode(self, msg: String, info: dict) -> None:
        if msg.data == "start":
            self.oracle.reset()
            self._active = True
            held, self._held = self._held, None
            # The episode's first state was handled before this event: answer it now (lock-step waits).
            if held is not None and held[0] >= ros_io.sent_ns(info):
                self._act(held[1])
        elif msg.data in ("success", "failure", "timeout"):
            self._active = False
            self.episodes_ended += 1
            self.get_logger().info(f"episode {self.episodes_ended} {msg.data} after {self.commands} commands")
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
            action = self.oracle.act(state)
        except ValueError as err:  # wrong length: not the simulator this oracle was built for
            self.bad += 1
            self.get_logger().warning(f"ignored a state: {err}", throttle_duration_sec=2.0)
            return
        self.pub.publish(Float64MultiArray(data=[float(x) for x in action]))
        self.commands += 1

    def summary(self) -> str:
        return f"commands {self.commands}, episodes {self.episodes_ended}, bad states {self.bad}"


def _close(node: OracleTeleopNode, signalled: bool) -> None:
    rclpy.logging.get_logger(NODE_NAME).info(node.summary())
    node.oracle.close()


def main(args: list[str] | None = None) -> int:
    return run_node(OracleTeleopNode, NODE_NAME, args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
