"""policy_node with a camera model and JointState proprioception, as a real process over DDS.

A tiny image model is exported here (torch is in the test environment), so the node's image path
runs end to end: decoding, resizing, bad frames dropped and counted.
"""

from __future__ import annotations

import contextlib
import math
import time
import types

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticArray
from ros_graph import RosGraph, domain_id, ros_env, running_node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.export import export_onnx
from dfp_ros.learning.model import DFPModel

STATE_NAMES = ["elbow.pos", "wrist.pos", "wrist.vel"]


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    torch.manual_seed(0)
    meta = ModelMetadata(state=[StateSpec("observation.state", 3, STATE_NAMES)],
                         cameras=[CameraSpec("front", "observation.images.front", 32, 32)], action_key="action",
                         action_names=["a0", "a1"], horizon=4, action_dim=2, fps=20.0, num_samples=1,
                         has_critic=False, action_low=[-1.0, -1.0], action_high=[1.0, 1.0])
    cfg = ModelConfig(horizon=4, actor_hidden=(32, 32), image_channels=(8, 8), image_feature_dim=16)
    path = tmp_path_factory.mktemp("img_model") / "img.onnx"
    export_onnx(DFPModel(meta, cfg), path, num_samples=1)
    return path


def _image(encoding: str, h: int = 48, w: int = 64, short: bool = False) -> Image:
    channels = 1 if encoding == "mono8" else 3
    data = np.random.default_rng(0).integers(0, 256, h * w * channels, np.uint8).tobytes()
    if short:
        data = data[: len(data) // 2]
    return Image(height=h, width=w, encoding=encoding, step=w * channels, data=data)


def _joints(drop_wrist: bool = False) -> JointState:
    # Joints in another order than the model's names, plus one the model does not use.
    msg = JointState(name=["wrist", "gripper", "elbow"], position=[0.2, 0.0, -0.1], velocity=[0.5, 0.0, 0.0])
    if drop_wrist:
        msg = JointState(name=["gripper", "elbow"], position=[0.0, -0.1], velocity=[0.0, 0.0])
    return msg


@contextlib.contextmanager
def _camera_robot(image_model, tmp_path, offset: int, **params):
    """policy_node on the image model, and a graph publishing its joint states and camera and reading its output."""
    params = {"model_path": str(image_model), "enabled": True, "state_topics": ["/arm/joint_states"],
              "state_types": ["joint_state"], "camera.front.topic": "/cam/image_raw", **params}
    dom = domain_id(offset=offset)
    with running_node("dfp_ros.nodes.policy_node", params, ros_env(dom), log_dir=tmp_path) as proc, \
            RosGraph(dom) as graph:
        robot = types.SimpleNamespace(
            proc=proc, graph=graph, joints=graph.publisher("/arm/joint_states", JointState),
            cam=graph.publisher("/cam/image_raw", Image),
            chunks=graph.collect("/policy_node/action_chunk", JointTrajectory),
            commands=graph.collect("/policy_node/command", Float64MultiArray),
            diag=graph.collect("/diagnostics", DiagnosticArray))
        assert graph.wait_matched(robot.joints) and graph.wait_matched(robot.cam)
        yield robot


def test_camera_model_runs_and_bad_frames_are_dropped_and_counted(image_model, tmp_path):
    with _camera_robot(image_model, tmp_path, 71, max_obs_age_s=0.5) as robot:
        proc, graph, joints, cam = robot.proc, robot.graph, robot.joints, robot.cam
        chunks, commands, diag = robot.chunks, robot.commands, robot.diag

        def feed(seconds: float, image: Image, joint_msg: JointState) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                stamp = graph.node.get_clock().now().to_msg()
                image.header.stamp = joint_msg.header.stamp = stamp
                joints.publish(joint_msg)
                cam.publish(image)
                graph.spin_for(0.05)

        for enc in ("rgb8", "bgr8", "mono8"):  # every raw encoding is accepted and resized to 32x32
            before = chunks.count
            feed(1.0, _image(enc), _joints())
            assert chunks.count > before, (enc, proc.log()[-2000:])
        good_chunks = chunks.count
        feed(1.0, _image("yuv422"), _joints())
        feed(1.0, _image("rgb8", short=True), _joints())
        feed(1.0, _image("rgb8"), _joints(drop_wrist=True))
        feed(1.5, _image("rgb8"), _joints())  # and it recovers
        assert chunks.count > good_chunks
        assert graph.spin_until(lambda: diag.count > 0, 3.0)
        values = {}
        for msg in diag.messages[-3:]:
            for status in msg.status:
                values.update({kv.key: kv.value for kv in status.values})
        assert int(values["dropped_unknown_encoding"]) > 0
        assert int(values["dropped_wrong_size"]) > 0
        assert int(values["dropped_missing_joint"]) > 0
        # The oldest camera frame an inference used, per diagnostics period: never older than max_obs_age_s.
        ages = [float(kv.value) for msg in diag.messages for status in msg.status for kv in status.values
                if kv.key == "camera_front_max_age_ms"]
        used = [a for a in ages if math.isfinite(a)]  # nan: no inference in that period
        assert used and all(0 <= a <= 500 for a in used), ages
        assert commands.count > 0 and all(math.isfinite(v) and -1 <= v <= 1 for m in commands.messages for v in m.data)
        assert proc.poll() is None
    log = proc.log()
    assert "yuv422" in log and "lacks joints" in log


def test_no_action_without_fresh_frames_missing_camera_named_and_stale_frames_stop_it(image_model, tmp_path):
    """Joint states alone never make a command for a camera model; frames that stop make the watchdog stop it."""
    with _camera_robot(image_model, tmp_path, 76, max_obs_age_s=0.3, watchdog_action="stop") as robot:
        proc, graph, joints, cam = robot.proc, robot.graph, robot.joints, robot.cam
        chunks, commands, diag = robot.chunks, robot.commands, robot.diag
        image, joint_msg = _image("rgb8"), _joints()

        def feed(seconds: float, with_frames: bool, until=lambda: False) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end and not until():
                image.header.stamp = joint_msg.header.stamp = graph.node.get_clock().now().to_msg()
                if with_frames:
                    cam.publish(image)
                joints.publish(joint_msg)
                graph.spin_for(0.05)

        feed(2.0, with_frames=False)  # the camera driver is not up
        assert chunks.count == 0 and commands.count == 0, "acted without a camera frame"
        assert graph.spin_until(lambda: diag.count > 0, 3.0)
        assert "front" in _diagnostics(diag)["missing"], _diagnostics(diag)
        feed(1.0, with_frames=True)
        assert commands.count > 0, proc.log()[-2000:]
        # The camera stops; joint states go on. The node's word (not this process's clock) says when the
        # frame went stale: counted from then.
        n = diag.count

        def stale() -> bool:
            return any(_stale_front(m) for m in diag.messages[n:])

        feed(10.0, with_frames=False, until=stale)
        assert stale(), _diagnostics(diag)
        settled = time.monotonic()
        chunks_then, commands_then = chunks.count, len([a for a in commands.arrivals if a <= settled])
        feed(1.5, with_frames=False)
        assert chunks.count == chunks_then, "planned from a stale frame"
        assert len([a for a in commands.arrivals if a <= time.monotonic()]) == commands_then, \
            "commanded after its frames went stale"
        graph.spin_for(1.2)
        values = _diagnostics(diag)
        assert values["watchdog"] == "stale" and "front" in values["missing"], values


def _stale_front(msg) -> bool:
    """A policy_node diagnostics message saying its observations are stale, the front camera missing."""
    for status in msg.status:
        if "policy_node" in status.name:
            values = {kv.key: kv.value for kv in status.values}
            return values.get("watchdog") == "stale" and "front" in values.get("missing", "")
    return False


def _diagnostics(diag) -> dict[str, str]:
    """The newest policy_node diagnostics values."""
    values: dict[str, str] = {}
    for msg in diag.messages[-2:]:
        for status in msg.status:
            values.update({kv.key: kv.value for kv in status.values})
    return values


def test_bad_configuration_refuses_to_start_with_one_clear_line(image_model, tmp_path):
    from ros_graph import start_node

    cases = [({"model_path": str(image_model), "state_topics": "/just/a/string"}, "state_topics"),
             ({"model_path": str(tmp_path / "missing.onnx")}, "does not exist"),
             ({"model_path": str(image_model), "merge": "average"}, "merge"),
             ({"model_path": str(image_model), "control_thread_priority": 120}, "control_thread_priority")]
    for params, message in cases:
        proc = start_node("dfp_ros.nodes.policy_node", params, ros_env(domain_id(offset=72)), log_dir=tmp_path)
        assert proc.wait(timeout=60) == 1
        log = proc.log()
        assert "cannot start" in log and message in log and "Traceback" not in log, log


@pytest.mark.parametrize("executor", ["events", "single"])
def test_lockstep_tick_uses_the_frame_published_just_before_its_joint_state(image_model, tmp_path, executor):
    """A lock-step robot publishes a step's frame, then at once its joint state (one stamp): the tick the
    joint state triggers must see that frame, with either executor, so each chunk carries that stamp."""
    dom = domain_id(offset=73 if executor == "events" else 75)
    env = {**ros_env(dom), "DFP_ROS_EXECUTOR": executor}
    params = {"model_path": str(image_model), "enabled": True, "trigger": "observation", "replan_every": 1,
              "state_topics": ["/arm/joint_states"], "state_types": ["joint_state"],
              "camera.front.topic": "/cam/image_raw", "max_obs_age_s": 5.0}
    with running_node("dfp_ros.nodes.policy_node", params, env, log_dir=tmp_path) as proc, RosGraph(dom) as graph:
        joints = graph.publisher("/arm/joint_states", JointState)
        cam = graph.publisher("/cam/image_raw", Image)
        chunks = graph.collect("/policy_node/action_chunk", JointTrajectory)
        assert graph.wait_matched(joints) and graph.wait_matched(cam), proc.log()
        assert graph.spin_until(lambda: chunks.subscription.get_publisher_count() >= 1, 30.0), proc.log()
        graph.spin_for(0.5)
        image, joint_msg = _image("rgb8"), _joints()
        stamps = []
        for step in range(20):
            stamp = graph.node.get_clock().now().to_msg()
            image.header.stamp = joint_msg.header.stamp = stamp
            cam.publish(image)
            joints.publish(joint_msg)
            stamps.append(stamp.sec * 10**9 + stamp.nanosec)
            assert chunks.wait_for(step + 1, timeout=5.0), f"no chunk for step {step}:\n{proc.log()}"
        got = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in chunks.messages]
        assert got == stamps, "a tick used an older frame than the one published with its joint state"
