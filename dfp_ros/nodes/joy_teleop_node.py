"""`joy_teleop_node`: a gamepad or SpaceMouse (sensor_msgs/Joy from the standard `joy` /
`spacenav` drivers) as the robot's teleoperation command, for recording demonstrations.

Publishes std_msgs/Float64MultiArray on `command_topic` (default policy_node/command, which
sim_robot_node steps on and collect_node records) at `rate_hz`, mapped by `dfp_ros.data.teleop.JoyMapping`
from the newest Joy message: per action an axis (`axes`, -1 none) times `scales` after a dead zone,
plus buttons (`buttons_plus` / `buttons_minus` add +-`button_values`), clipped to `action_low` /
`action_high`. Nothing moves unless `deadman_button` is held (-1 = no dead-man: not for real robots);
released, or with no Joy message for `joy_timeout_s`, it publishes `released` = zero (hold, for
delta actions) or none (nothing). A Joy message that lacks a configured axis/button is dropped with
a throttled warning. Defaults: an Xbox-style pad (Linux `joy` layout) on the simulator's 5
end-effector deltas - left stick up/down = x, left/right = y, right stick up/down = z, left/right =
yaw, A / B = gripper close / open - with LB (button 4) as the dead-man; config/collect.yaml lists them.
Parameters: the table `PARAMS` below (read at start).
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from std_msgs.msg import Float64MultiArray

from dfp_ros import contracts
from dfp_ros.data.teleop import JoyMapping
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
    Param("released", "zero", "released dead-man or no Joy: zero (hold, for delta actions) or none (publish "
                              "nothing)", choices=("zero", "none")),
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
        self.joy_timeout_s = p["joy_timeout_s"]
        self._last_joy: Joy | None = None
        self._last_joy_time = None
        self.commands = 0
        self.dropped = 0
        self.command = ros_io.CommandMessage("float64_array", [], 0.0)
        self.pub = self.create_publisher(Float64MultiArray, p["command_topic"],
                                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        # The joy driver publishes with the default (reliable) QoS; best effort here matches it and any other.
        self.create_subscription(Joy, p["joy_topic"], self._on_joy,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.get_logger().info(f"{self.resolve_topic_name(p['joy_topic'])} -> {self.pub.topic_name} at "
                               f"{p['rate_hz']:g} Hz, dead-man button {self.mapping.deadman_button}")

    def _on_joy(self, msg: Joy) -> None:
        self._last_joy = msg
        self._last_joy_time = self.get_clock().now()

    def _on_tick(self) -> None:
        msg = self._last_joy
        fresh = (msg is not None and
                 (self.get_clock().now() - self._last_joy_time).nanoseconds * 1e-9 <= self.joy_timeout_s)
        if not fresh:
            action = self.mapping.released_action()
        else:
            try:
                action = self.mapping.map(list(msg.axes), list(msg.buttons))
            except ValueError as err:
                self.dropped += 1
                self.get_logger().warning(f"dropped a Joy message: {err}", throttle_duration_sec=2.0)
                return
        if action is None:
            return
        self.pub.publish(self.command.fill(action, 0))
        self.commands += 1


def _close(node: JoyTeleopNode, signalled: bool) -> None:
    rclpy.logging.get_logger(NODE_NAME).info(f"commands {node.commands}, dropped joy messages {node.dropped}")


def main(args: list[str] | None = None) -> int:
    return run_node(JoyTeleopNode, NODE_NAME, args=args, close=_close)


if __name__ == "__main__":
    sys.exit(main())
