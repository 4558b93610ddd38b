"""Joystick teleoperation: the mapping (ROS-free) and joy_teleop_node over DDS."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.data.teleop import JoyMapping


def pad(**kw) -> JoyMapping:
    args = dict(axis=[1, 0, -1], scale=[0.5, -2.0, 1.0], low=[-1.0, -1.0, -0.3], high=[1.0, 1.0, 0.3],
                plus=[-1, -1, 0], minus=[-1, -1, 1], button_value=[1.0, 1.0, 0.25], deadzone=0.1,
                deadman_button=4)
    args.update(kw)
    return JoyMapping(**args)


HELD = [0, 0, 0, 0, 1]


def test_axes_scale_deadzone_and_limits():
    m = pad()
    np.testing.assert_allclose(m.map([0.05, -0.05], HELD), [0, 0, 0])  # inside the dead zone
    np.testing.assert_allclose(m.map([0.0, 1.0], HELD), [0.5, 0, 0])  # full stick: scale
    # Rescaled past the dead zone: 0.55 -> (0.55 - 0.1) / 0.9 = 0.5, times -2 = -1 (and clipped there).
    np.testing.assert_allclose(m.map([0.55, 0.0], HELD), [0, -1.0, 0])
    np.testing.assert_allclose(m.map([-1.0, 0.0], HELD), [0, 1.0, 0])  # -1 * -2 = 2, clipped to 1
    np.testing.assert_allclose(m.map([0.0, 0.0], [1, 0, 0, 0, 1]), [0, 0, 0.25])  # gripper close button
    np.testing.assert_allclose(m.map([0.0, 0.0], [1, 1, 0, 0, 1]), [0, 0, 0])  # both: cancel
    big = pad(button_value=[1.0, 1.0, 2.0])
    np.testing.assert_allclose(big.map([0.0, 0.0], [0, 1, 0, 0, 1]), [0, 0, -0.3])  # clipped to low


def test_deadman_release_and_bad_messages():
    m = pad()
    np.testing.assert_allclose(m.map([1.0, 1.0], [1, 0, 0, 0, 0]), [0, 0, 0])  # not held: zeros
    assert pad(released="none").map([1.0, 1.0], [0] * 5) is None
    free = pad(deadman_button=-1, plus=[-1] * 3, minus=[-1] * 3)
    assert free.map([0.0, 1.0], [])[0] == 0.5  # no dead-man and no buttons used: none needed
    with pytest.raises(ValueError, match="axes"):
        m.map([0.0], HELD)
    with pytest.raises(ValueError, match="buttons"):
        m.map([0.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match="nan"):
        m.map([float("nan"), 0.0], HELD)
    with pytest.raises(ValueError, match="one per action"):
        JoyMapping(axis=[0, 1], scale=[1.0], low=[-1, -1], high=[1, 1])
    with pytest.raises(ValueError, match="deadzone"):
        pad(deadzone=1.0)
    with pytest.raises(ValueError, match="exceed"):
        pad(low=[2.0, -1.0, -1.0])


def test_joy_teleop_node_publishes_only_with_the_deadman_held(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from ros_graph import RosGraph, domain_id, ros_env, running_node
    from sensor_msgs.msg import Joy
    from std_msgs.msg import Float64MultiArray

    dom = domain_id(130)
    with RosGraph(dom) as g, running_node("dfp_ros.nodes.joy_teleop_node", {"rate_hz": 50.0, "released": "none"},
                                          ros_env(dom), log_dir=tmp_path) as proc:
        cmds = g.collect("/policy_node/command", Float64MultiArray)
        joy = g.publisher("/joy", Joy)
        assert g.wait_matched(joy, timeout=30.0), proc.log()
        joy.publish(Joy(axes=[0.0, 1.0, 0.0, 0.0, 0.0], buttons=[0] * 8))  # dead-man not held
        g.spin_for(0.3)
        assert cmds.count == 0
        for _ in range(10):
            joy.publish(Joy(axes=[0.0, 1.0, 0.0, 0.0, 0.0], buttons=[1, 0, 0, 0, 1, 0, 0, 0]))
            g.spin_for(0.03)
        assert cmds.wait_for(3, timeout=5.0), proc.log()
        np.testing.assert_allclose(cmds.last.data, [1.0, 0.0, 0.0, 0.0, 1.0])  # up = +x, A = close
        g.spin_for(0.7)  # no Joy for longer than joy_timeout_s (0.5 s): released -> nothing is sent
        n = cmds.count
        g.spin_for(0.4)
        assert cmds.count == n
