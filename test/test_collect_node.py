"""collect_node as a real process fed by this test over DDS: bad input and robustness.

One recorder (timer sampling at 10 fps, a JointState, a camera and a Float64MultiArray command, all
published here) goes through, in order: an episode during which the joint states stop for a while
and come back (frames not written and counted, warnings, recording resumes), saved by service; a
second episode interrupted by SIGINT (the rule: discarded; the saved one stays and the dataset
loads, video included). Then appending with other features is refused, naming the feature, with
nothing written; appending with the same features adds an episode.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
pytest.importorskip("lerobot", reason="lerobot is not installed (training profile)")

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

MODULE = "dfp_ros.nodes.collect_node"
JOINTS = ["j1", "j2"]
ACTIONS = ["a1", "a2"]
FPS = 10
MAX_AGE = 0.25
H, W = 24, 32
STARTUP_S = 60.0


def params(root: Path, **extra) -> dict:
    p = {"root": str(root), "repo_id": "local/robust", "fps": FPS, "sample_on": "timer", "max_age_s": MAX_AGE,
         "state_topics": ["joint_states"], "state_types": ["joint_state"],
         "joint_names": JOINTS, "action_topic": "teleop/command", "action_names": ACTIONS,
         "camera_names": ["front"], "camera.front.topic": "camera/image_raw", "camera.front.height": H,
         "camera.front.width": W, "episode_topic": "", "progress_period_s": 0.5, "task": "pick"}
    p.update(extra)
    return p


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def call(g: RosGraph, name: str) -> tuple[bool, str]:
    from std_srvs.srv import Trigger

    client = g.node.create_client(Trigger, name)
    assert client.wait_for_service(timeout_sec=STARTUP_S), f"{name} is not offered"
    future = client.call_async(Trigger.Request())
    assert g.spin_until(future.done, timeout=10.0), f"{name} did not answer"
    return future.result().success, future.result().message


class Feeder:
    """Publishes joint states (50 Hz), commands (50 Hz) and camera images (20 Hz) whose values encode
    their publishing time, so a frame tells which messages it was built from."""

    def __init__(self, g: RosGraph) -> None:
        self.g = g
        self.joints = g.publisher("joint_states", JointState)
        self.cmd = g.publisher("teleop/command", Float64MultiArray)
        self.cam = g.publisher("camera/image_raw", Image, qos_profile_sensor_data)
        self.t0 = time.monotonic()
        self.gaps: list[tuple[float, float]] = []

    def run(self, seconds: float, joints: bool = True) -> None:
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            t = time.monotonic() - self.t0
            if joints:
                self.joints.publish(JointState(name=["other", *JOINTS], position=[0.0, t, -t]))
            self.cmd.publish(Float64MultiArray(data=[t, 1.0]))
            if k % 5 == 0:  # every 100 ms: the camera runs at 10 Hz, slower than the others
                img = Image(height=H, width=W, encoding="rgb8", step=W * 3)
                img.data = bytes([int(t * 10) % 256]) * (H * W * 3)
                self.cam.publish(img)
            k += 1
            self.g.spin_for(0.02)

    def gap(self, seconds: float) -> None:
        start = time.monotonic() - self.t0
        self.run(seconds, joints=False)
        self.gaps.append((start, time.monotonic() - self.t0))


def summary(log: str) -> dict:
    m = re.search(r"collect summary (\{.*\})", log)
    assert m, log
    return json.loads(m.group(1))


def test_parameter_table_declares_empty_lists_by_type_and_cameras_by_name():
    """Empty list defaults take a YAML list of names (rclpy alone would type `[]` as bytes); each camera
    of camera_names gets camera.<name>.* parameters, its size required."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from dfp_ros.nodes.collect_node import PARAMS, camera_params
    from dfp_ros.nodes.params import declare_params

    rclpy.init(domain_id=domain_id(112))
    try:
        overrides = [Parameter("joint_names", value=JOINTS), Parameter("camera_names", value=["front"]),
                     Parameter("camera.front.height", value=H), Parameter("camera.front.width", value=W)]
        node = Node("collect_params", parameter_overrides=overrides)
        p = declare_params(node, PARAMS)
        assert p["joint_names"] == JOINTS and p["state_names"] == [] and p["action_joints"] == []
        p = declare_params(node, camera_params(p["camera_names"]))
        assert p == {"camera.front.topic": "camera/front/image_raw", "camera.front.compressed": False,
                     "camera.front.height": H, "camera.front.width": W}
        node.destroy_node()
        node = Node("collect_params_no_size", parameter_overrides=[Parameter("camera_names", value=["side"])])
        with pytest.raises(ValueError, match=r"camera\.side\.height"):
            declare_params(node, camera_params(["side"]))
        node.destroy_node()
    finally:
        rclpy.shutdown()


@pytest.mark.realtime  # frames counted in wall-clock windows: run alone, not beside other tests
def test_stream_gap_sigint_and_append(tmp_path):
    dom = domain_id(110)
    env = ros_env(dom)
    root = tmp_path / "ds"
    proc = start_node(MODULE, params(root), env, log_dir=tmp_path)
    try:
        with RosGraph(dom) as g:
            feed = Feeder(g)
            assert proc.wait_for_log("recording to", STARTUP_S), proc.log()
            assert call(g, "/collect_node/start")[0]
            assert not call(g, "/collect_node/start")[0]  # already recording: refused, says why
            feed.run(1.0)
            feed.gap(1.0)  # joint states stop; commands and camera go on
            assert proc.wait_for_log("frame not written: stream state:joint_states is stale", 2.0), proc.log()
            feed.run(1.0)
            assert proc.wait_for_log("stream state:joint_states is back", 2.0), proc.log()
            ok, msg = call(g, "/collect_node/save")
            assert ok, msg
            assert proc.wait_for_log("episode 0 on disk", 30.0), proc.log()
            # Episode 1 is interrupted: Ctrl-C in the middle of it.
            assert call(g, "/collect_node/start")[0]
            feed.run(0.6)
        rc = stop(proc, timeout=30.0)
    finally:
        stop(proc)
    log = proc.log()
    assert rc == 0, log
    s = summary(log)
    assert s["episodes_saved"] == 1 and s["episodes_discarded"] == 1, s
    gap_frames = s["stale"].get("state:joint_states", 0) + s["missing"].get("state:joint_states", 0)
    assert 6 <= gap_frames <= 12, s  # ~1 s gap at 10 fps (plus up to max_age of grace)

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/robust", root=root, video_backend="pyav")
    assert ds.num_episodes == 1 and ds.meta.total_episodes == 1
    assert s["saved_lengths"] == [ds.num_frames]
    assert 14 <= ds.num_frames <= 24, ds.num_frames  # ~2 s of live joint states at 10 fps
    state = np.stack([np.asarray(x) for x in ds.hf_dataset["observation.state"]])
    action = np.stack([np.asarray(x) for x in ds.hf_dataset["action"]])
    np.testing.assert_allclose(state[:, 1], -state[:, 0], atol=1e-6)  # joints picked by name, in order
    # No frame was built from old data: each frame's joint state is no older than max_age than its command.
    assert np.all(np.abs(action[:, 0] - state[:, 0]) <= MAX_AGE + 0.02), np.c_[state[:, 0], action[:, 0]]
    (g0, g1), = feed.gaps
    assert not np.any((state[:, 0] > g0 + 0.03) & (state[:, 0] < g1)), "a frame used joint states from the gap"
    item = ds[0]
    img = item["observation.images.front"]
    assert tuple(img.shape) == (3, H, W)  # the video decodes (LeRobot returns CHW float)

    # --- append with other features: refused, naming them; nothing written ---------------------
    before = tree_hash(root)
    bad = start_node(MODULE, params(root, append=True, joint_names=["j1", "j2", "j3"]), env, log_dir=tmp_path)
    try:
        assert bad.wait(timeout=STARTUP_S) == 2, bad.log()
    finally:
        stop(bad)
    assert "refusing to append" in bad.log() and "observation.state" in bad.log(), bad.log()
    assert "shape" in bad.log() and "names" in bad.log(), bad.log()
    assert tree_hash(root) == before

    # --- append with the same features: one more episode ------------------------------------------
    good = start_node(MODULE, params(root, append=True, task="place"), env, log_dir=tmp_path)
    try:
        with RosGraph(dom) as g:
            feed = Feeder(g)
            assert good.wait_for_log("appending to 1 episodes", STARTUP_S), good.log()
            assert call(g, "/collect_node/start")[0]
            feed.run(0.8)
            assert call(g, "/collect_node/save")[0]
            assert good.wait_for_log("episode 1 on disk", 30.0), good.log()
        assert stop(good, timeout=30.0) == 0, good.log()
    finally:
        stop(good)
    ds = LeRobotDataset("local/robust", root=root, video_backend="pyav")
    assert ds.num_episodes == 2
    assert sorted(ds.meta.tasks.index.tolist()) == ["pick", "place"]


def test_keyboard_in_a_terminal_starts_saves_and_stops(tmp_path):
    """Keys when run in a terminal: space = start, n = save + next, q = save + stop (the process ends)."""
    import os
    import pty
    import subprocess
    import sys

    from ros_graph import _param_arg

    dom = domain_id(111)
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", MODULE, "--ros-args"]
    for k, v in params(tmp_path / "kb", progress_period_s=0.0).items():
        cmd += ["-p", _param_arg(k, v)]
    log_path = tmp_path / "keyboard.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=ros_env(dom), stdin=slave, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    os.close(slave)

    def wait_log(text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in log_path.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        return False

    try:
        assert wait_log("keys: n/right", STARTUP_S), log_path.read_text()
        with RosGraph(dom) as g:
            feed = Feeder(g)
            # Keys only once the node hears every stream: an episode without frames is not saved.
            assert g.spin_until(lambda: min(p.get_subscription_count() for p in (feed.joints, feed.cmd, feed.cam)) >= 1,
                                STARTUP_S), log_path.read_text()
            feed.run(0.3)
            os.write(master, b" ")
            assert wait_log("episode 0 recording", 5.0), log_path.read_text()
            feed.run(0.6)
            os.write(master, b"n")
            assert wait_log("episode 1 recording", 5.0), log_path.read_text()
            feed.run(0.6)
            os.write(master, b"q")
            feed.run(0.3)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        stop(proc)
        os.close(master)
    s = summary(log_path.read_text())
    assert s["episodes_saved"] == 2 and all(n >= 3 for n in s["saved_lengths"]), s


def test_a_takeover_session_records_each_executed_command_with_its_intervention_flag_and_discard_rerecords(tmp_path):
    """A human-in-the-loop session kept as a dataset: the action is the command the policy node published
    (`~/executed`), the intervention column its frame_id == human; the operator's discard throws the
    frames so far away and records again."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    dom = domain_id(111)
    root = tmp_path / "hil"
    p = {"root": str(root), "repo_id": "local/hil", "fps": FPS, "sample_on": "action", "max_age_s": 5.0,
         "state_topics": ["joint_states"], "state_types": ["joint_state"], "joint_names": JOINTS,
         "action_names": ACTIONS, "executed_topic": "policy_node/executed", "episode_topic": "episode",
         "auto_episodes": True, "progress_period_s": 0.0, "task": "hil"}
    proc = start_node(MODULE, p, ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as g:
            joints = g.publisher("joint_states", JointState)
            executed = g.publisher("policy_node/executed", JointTrajectory)
            episode = g.publisher("episode", String)
            assert proc.wait_for_log("recording to", STARTUP_S), proc.log()
            assert all(g.wait_matched(pub) for pub in (joints, executed, episode))

            def publish(k: int, who: str | None) -> None:
                joints.publish(JointState(name=JOINTS, position=[float(k), 0.0]))
                g.spin_for(0.01)
                if who is not None:  # the command that followed this state (the lock-step order)
                    msg = JointTrajectory(joint_names=ACTIONS[::-1],  # by name: another order than the dataset's
                                          points=[JointTrajectoryPoint(positions=[-1.0, float(k)])])
                    msg.header.frame_id = who
                    executed.publish(msg)
                    g.spin_for(0.01)

            episode.publish(String(data="start"))
            for k in range(3):
                publish(k, "policy")
            episode.publish(String(data="discard"))  # the operator's button: these three frames are not kept
            for k, who in enumerate(["policy", "human", "human", "hold", "policy"], start=10):
                publish(k, who)
            publish(99, None)  # a newer state: the last command is paired with its own
            episode.publish(String(data="success"))
            assert proc.wait_for_log("episode 0 on disk", 30.0), proc.log()
        assert stop(proc, timeout=30.0) == 0, proc.log()
    finally:
        stop(proc)
    s = summary(proc.log())
    assert s["episodes_saved"] == 1 and s["episodes_discarded"] == 1 and s["intervention_frames"] == 2, s
    ds = LeRobotDataset("local/hil", root=root, video_backend="pyav")
    action = np.stack([np.asarray(x) for x in ds.hf_dataset["action"]])
    state = np.stack([np.asarray(x) for x in ds.hf_dataset["observation.state"]])
    flags = [bool(np.asarray(x).reshape(-1)[0]) for x in ds.hf_dataset["intervention"]]
    np.testing.assert_array_equal(action, [[k, -1.0] for k in range(10, 15)])
    np.testing.assert_array_equal(state[:, 0], np.arange(10, 15))  # each command with the state it followed
    assert flags == [False, True, True, False, False]
    assert ds.meta.features["intervention"]["dtype"] == "bool"
