"""`joy_teleop_node`: a gamepad or SpaceMouse (sensor_msgs/Joy from the standard `joy` /
`spacenav` drivers) as the robot's teleoperation command: for recording demonstrations, and for taking
over from the policy (policy_node's human takeover).

Publishes std_msgs/Float64MultiArray on `command_topic` (default policy_node/command, which
sim_robot_node steps on and collect_node records; teleop/command for a takeover) at `rate_hz`, mapped by
`dfp_ros.data.teleop.JoyMapping` from the newest Joy message: per action an axis (`axes`, -1 none) times
`scales` after a dead zone, plus buttons (`buttons_plus` / `buttons_minus` add +-`button_values`),
clipped to `action_low` / `action_high`. Nothing moves unless `deadman_button` is held (-1 = no
dead-man: not for real robots); released, it publishes `released` = zero (hold, for delta actions) or
none (nothing; what a takeover of a position-commanded robot wants). A Joy message that lacks a
configured axis/button is dropped with a throttled warning.

The takeover contract: `engaged_topic` (std_msgs/Bool, latched) says whether the dead-man is held (true
without a dead-man), at every change and then at `rate_hz`, after that tick's command. With no Joy
message for `joy_timeout_s` (the device is gone) nothing is published at all, neither commands nor a
release: a policy node the human held the robot through stops it (its `teleop_timeout_s`) and waits for
an explicit release (the dead-man seen released, or its ~/intervene false).

Episode buttons (`button_success`, `button_failure`, `button_discard`, `button_pause_resume`; -1 = none)
publish one word per press on `episode_topic` (success, failure, discard, and pause / resume by turns),
debounced by `button_debounce_s`; they need no dead-man and may not be buttons that move the robot.

Defaults: an Xbox-style pad (Linux `joy` layout) on the simulator's 5 end-effector deltas - left stick
up/down = x, left/right = y, right stick up/down = z, left/right = yaw, A / B = gripper close / open - with
LB (button 4) as the dead-man; Y / X = success / failure, Back = discard, Start = pause / resume;
config/collect.yaml lists them. Parameters: the table `PARAMS` below (read at start).
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64MultiArray, String

from dfp_ros import contracts
from dfp_ros.data.teleop import PAUSE_RESUME, EpisodeButtons, JoyMapping
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params

NODE_NAME = "joy_teleop_node"

PARAMS: list[Param] = [
    Param("joy_topic", "joy", "sensor_msgs/Joy from the joy (gamepad) or spacenav (SpaceMouse) driver"),
    Param("command_topic", contracts.TOPIC_POLICY_COMMAND, "commands out (std_msgs/Float64MultiArray)"),
    Param("rate_hz", 20.0, "command rate (> 0)"),
    Param("joy_timeout_s", 0.5, "no Joy message for this long = released", low=0.0),
    Param("axes", [1, 0, 4, 3, -1], "per action: the Joy axis (-1 = none)"),
    Param("scales", [1.0] * 5, "per action: the axis' scale"),
    Param("action_low", [-1.0] * 5, "per action: lower clip"),
    Param("action_high", [1.0] * 5, "per action: upper clip"),
    Param("buttons_plus", [-1, -1, -1, -1, 0], "per action: a button adding +button_values (-1 = none)"),
    Param("buttons_minus", [-1, -1, -1, -1, 1], "per action: a button adding -button_values (-1 = none)"),
    Param("button_values", [1.0] * 5, "per action: what a button adds"),
    Param("deadzone", 0.1, "axis values within this of 0 count as 0", low=0.0),
    Param("deadman_button", 4, "button to hold for any motion (-1 = none: not for real robots)"),
    Param("released", "zero", "released dead-man: zero (hold, for delta actions) or none (publish nothing)",
          choices=("zero", "none")),
    Param("engaged_topic", contracts.TOPIC_TELEOP_ENGAGED, "std_msgs/Bool, latched: the dead-man is held (the "
          "human takes over from policy_node); '' = off"),
    Param("episode_topic", contracts.TOPIC_EPISODE, "episode events from the buttons below ('' = off)"),
    Param("button_success", 3, "button publishing 'success' (-1 = none)"),
    Param("button_failure", 2, "button publishing 'failure' (-1 = none)"),
    Param("button_discard", 6, "button publishing 'discard': throw the episode away, re-record it (-1 = none)"),
    Param("button_pause_resume", 7, "button publishing 'pause' and 'resume' (learning) by turns (-1 = none)"),
    Param("button_debounce_s", 0.3, "a button fires again only this long after it last fired", low=0.0),
]


class JoyTeleopNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        if not p["rate_hz"] > 0:
            raise ValueError(f"rate_hz must be > 0, got {p['rate_hz']}")
        self.mapping = JoyMapping(axis=p["axes"], scale=p["scales"], low=p["action_low"], high=p["action_high"],
                                  plus=p["buttons_plus"], minus=p["buttons_minus"], button_value=p["button_values"],
                                  deadzone=p["deadzone"], deadman_button=p["deadman_button"], released=p["released"])
        episode_buttons = {"success": p["button_success"], "failure": p["button_failure"],
                           contracts.EPISODE_DISCARD: p["button_discard"], PAUSE_RESUME: p["button_pause_resume"]}
        self.buttons = EpisodeButtons(episode_buttons if p["episode_topic"] else {}, p["button_debounce_s"],
                                      taken=self.mapping.buttons_used,
                                      pause_resume=(contracts.EPISODE_PAUSE, contracts.EPISODE_RESUME))
        self.joy_timeout_s = p["joy_timeout_s"]
        self._last_joy: Joy | None = None
        self._last_joy_time = None
        self.commands = self.dropped = self.events = 0
        self._engaged: bool | None = None  # last published
        self.command = ros_io.CommandMessage("float64_array", [], 0.0)
        self.pub = self.create_publisher(Float64MultiArray, p["command_topic"],
                                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.engaged_pub = (self.create_publisher(Bool, p["engaged_topic"], ros_io.LATCHED)
                            if p["engaged_topic"] else None)
        self.episode_pub = (self.create_publisher(String, p["episode_topic"], ros_io.EVENTS)
                            if self.buttons.buttons else None)
        # The joy driver publishes with the default (reliable) QoS; best effort here matches it and any other.
        self.create_subscription(Joy, p["joy_topic"], self._on_joy,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.get_logger().info(f"{self.resolve_topic_name(p['joy_topic'])} -> {self.pub.topic_name} at "
                               f"{p['rate_hz']:g} Hz, dead-man button {self.mapping.deadman_button}")

    def _on_joy(self, msg: Joy) -> None:
        self._last_joy = msg
        self._last_joy_time = self.get_clock().now()
        if self.episode_pub is None:
            return
        # Every message, not every tick: a press shorter than a tick still counts.
        try:
            words = self.buttons.update(list(msg.buttons), self._last_joy_time.nanoseconds * 1e-9)
        except ValueError as err:
            self.get_logger().warning(f"episode buttons: {err}", throttle_duration_sec=2.0)
            return
        for word in words:
            self.episode_pub.publish(String(data=word))
            self.events += 1
            self.get_logger().info(f"episode event: {word}")

    def _on_tick(self) -> None:
        msg = self._last_joy
        if msg is None or (self.get_clock().now() - self._last_joy_time).nanoseconds * 1e-9 > self.joy_timeout_s:
            return  # the device is gone: no command and no release (see the module docstring)
        try:
            held = self.mapping.held(list(msg.buttons))
            action = self.mapping.map(list(msg.axes), list(msg.buttons))
        except ValueError as err:
            self.dropped += 1
            self.get_logger().warning(f"dropped a Joy message: {err}", throttle_duration_sec=2.0)
            return
        if action is not None:
            self.pub.publish(self.command.fill(action, 0))
            self.commands += 1
        if self.engaged_pub is not None:  # after the command: a takeover finds the human's first one there
            self.engaged_pub.publish(Bool(data=held))
            if held != self._engaged:
                self.get_logger().info("dead-man held: engaged" if held else "dead-man released")
                self._engaged = held


def _close(node: JoyTeleopNode, signalled: bool) -> None:
    rclpy.logging.get_logger(NODE_NAME).info(f"commands {node.commands}, episode events {node.events}, "
                                             f"dropped joy messages {node.dropped}")


def main(args: list[str] | None = None) -> int:
    return run_node(JoyTeleopNode, NODE_NAME, args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
