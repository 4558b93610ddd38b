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

Parameters: env_name, task_id (the sim's task), seed, noise, smoothing, state_topic, command_topic,
episode_topic ('' = plan from the first state only, re-planning whenever the plan runs out),
max_episodes (0 = forever; exit 0 after that many episode ends), wait_for_subscribers (act only once
that many subscriptions match the command topic: the robot, and the recorder when one is used, so
no command of a recorded episode is lost to a late-matched subscriber).
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String

from dfp_ros import contracts
from dfp_ros.data.state_oracle import StateOracle
from dfp_ros.nodes.node_main import run_node

NODE_NAME = "oracle_teleop_node"
# Volatile: a controller answers each state once, so a late joiner must not be handed the simulator's
# lock-step history (it would step the simulation once per old state); a lock-step simulator republishes
# its current state while nobody answers, which is how a late joiner gets it.
_STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_EVENTS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def _source_ns(info: dict | None) -> int:
    """The publisher's timestamp of a message (rmw message info), 0 when unknown."""
    return int((info or {}).get("source_timestamp") or 0)


class OracleTeleopNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        d = self.declare_parameter
        env_name = d("env_name", "cube-single-v0").value
        task_id = d("task_id", 1).value
        seed = d("seed", 0).value
        noise = d("noise", 0.1, ParameterDescriptor(description="OGBench plan noise")).value
        smoothing = d("smoothing", 0.5, ParameterDescriptor(description="noise smoothing sigma, steps")).value
        state_topic = d("state_topic", contracts.TOPIC_SIM_STATE).value
        command_topic = d("command_topic", contracts.TOPIC_POLICY_COMMAND).value
        episode_topic = d("episode_topic", contracts.TOPIC_EPISODE).value
        self.max_episodes = d("max_episodes", 0).value
        self.wait_for = d("wait_for_subscribers", 1, ParameterDescriptor(
            description="act only once this many subscribers (robot, recorder, ...) listen to the commands")).value

        self.oracle = StateOracle(env_name, task_id=task_id, noise=noise, smoothing=smoothing, seed=seed)
        self.commands = 0
        self.episodes_ended = 0
        self.bad = 0
        self.finished = False
        self._active = True  # between an episode's end and the next start: send nothing
        self._held: tuple[int, np.ndarray] | None = None  # a state that came while inactive

        self.pub = self.create_publisher(Float64MultiArray, command_topic, _COMMAND_QOS)
        if episode_topic:
            self.create_subscription(String, episode_topic, self._on_episode, _EVENTS)
        self.create_subscription(Float32MultiArray, state_topic, self._on_state, _STATE_QOS)
        self._ready = False
        self.create_timer(0.05, self._check_ready)
        self.get_logger().info(f"oracle for {env_name} task {task_id} (noise {noise}, smoothing {smoothing}, "
                               f"seed {seed}): {state_topic} -> {self.pub.topic_name}")

    def _on_episode(self, msg: String, info: dict) -> None:
        if msg.data == "start":
            self.oracle.reset()
            self._active = True
            held, self._held = self._held, None
            # The episode's first state was handled before this event: answer it now (lock-step waits).
            if held is not None and held[0] >= _source_ns(info):
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
            self._held = (_source_ns(info), state)
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
