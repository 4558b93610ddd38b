"""Joystick teleoperation: the mapping and the episode buttons (ROS-free), and joy_teleop_node over DDS."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.data.teleop import PAUSE_RESUME, EpisodeButtons, JoyMapping


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


def test_episode_buttons_fire_once_per_press():
    b = EpisodeButtons({"success": 3, "failure": 2, PAUSE_RESUME: 7, "discard": -1}, debounce_s=0.3)
    pressed = [0, 0, 0, 1, 0, 0, 0, 0]
    assert b.update([0] * 8, 0.0) == []
    assert b.update(pressed, 0.1) == ["success"]
    assert b.update(pressed, 0.15) == [], "held (a driver repeating the state): no second event"
    assert b.update([0] * 8, 0.2) == [] and b.update(pressed, 0.25) == [], "a bounce within debounce_s"
    assert b.update([0] * 8, 0.5) == [] and b.update(pressed, 0.6) == ["success"], "a second press"
    both = [0, 0, 1, 0, 0, 0, 0, 1]
    assert b.update(both, 1.0) == ["failure", "pause"]
    assert b.update([0] * 8, 1.1) == [] and b.update(both, 1.5) == ["failure", "resume"], "pause, resume by turns"
    with pytest.raises(ValueError, match="has 4 buttons; episode button 7"):
        b.update([0] * 4, 2.0)
    with pytest.raises(ValueError, match="both success and failure"):
        EpisodeButtons({"success": 3, "failure": 3})
    with pytest.raises(ValueError, match=r"\[4\] also move the robot"):
        EpisodeButtons({"success": 4}, taken=pad().buttons_used)


def test_joy_teleop_node_deadman_engaged_and_episode_buttons(tmp_path):
    """Commands and `engaged` true only with the dead-man held, false when released, nothing at all once the
    device is gone; an episode button publishes one event per press."""
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from ros_graph import RosGraph, domain_id, latched_qos, ros_env, running_node
    from sensor_msgs.msg import Joy
    from std_msgs.msg import Bool, Float64MultiArray, String

    dom = domain_id(130)
    with RosGraph(dom) as g, running_node("dfp_ros.nodes.joy_teleop_node", {"rate_hz": 50.0, "released": "none"},
                                          ros_env(dom), log_dir=tmp_path) as proc:
        cmds = g.collect("/policy_node/command", Float64MultiArray)
        engaged = g.collect("/teleop/engaged", Bool, latched_qos(depth=100))
        events = g.collect("/episode", String)
        joy = g.publisher("/joy", Joy)
        assert g.wait_matched(joy, timeout=30.0), proc.log()
        # Every stream matched before the first Joy (a message sent before its match would be lost to us).
        assert g.spin_until(lambda: all(c.subscription.get_publisher_count() >= 1 for c in (cmds, engaged, events)),
                            10.0)

        def send(buttons: list[int], times: int = 1, axes: tuple = (0.0, 1.0, 0.0, 0.0, 0.0)) -> None:
            for _ in range(times):  # at the joy driver's autorepeat rate
                joy.publish(Joy(axes=list(axes), buttons=buttons))
                g.spin_for(0.03)

        send([0] * 8, 10)  # dead-man not held
        assert cmds.count == 0
        assert engaged.wait_for(3, timeout=5.0) and not any(m.data for m in engaged.messages), proc.log()
        send([1, 0, 0, 0, 1, 0, 0, 0], 10)
        assert cmds.wait_for(3, timeout=5.0), proc.log()
        np.testing.assert_allclose(cmds.last.data, [1.0, 0.0, 0.0, 0.0, 1.0])  # up = +x, A = close
        assert engaged.last.data is True
        send([0] * 8, 5)
        g.spin_for(0.1)
        assert engaged.last.data is False, "released: an explicit release"
        g.spin_for(0.7)  # no Joy for longer than joy_timeout_s (0.5 s): the device is gone
        n, m = cmds.count, engaged.count
        g.spin_for(0.4)
        assert (cmds.count, engaged.count) == (n, m), "a gone device publishes neither commands nor a release"

        success = [0, 0, 0, 1, 0, 0, 0, 0]
        send(success, 8)  # held for 0.24 s: one press
        send([0] * 8, 12)
        send(success, 3)  # a second press
        send([0] * 8, 1)
        send([0, 0, 0, 0, 0, 0, 0, 1], 2)  # Start: pause
        g.spin_for(0.3)
        assert [e.data for e in events.messages] == ["success", "success", "pause"], proc.log()
