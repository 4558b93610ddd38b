"""The simulated robot's cameras as a robot's: joint_states and two camera frames stamped alike, joined by stamp.

Real processes over DDS, the simulator in real time (the wall-clock stamps a robot's drivers give):
sim_robot_node publishes joint_states + front and wrist frames with one stamp per step; policy_node runs a
tiny two-camera model on joint positions + both cameras (no privileged state) and stamps each chunk with
its observation's stamp; finetune_node (`join: stamp`) assembles the same observations from the same
topics. Every chunk must find its observation — no frame carries another step's stamp.
"""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("torch", reason="the learner needs torch (training profile)")

from diagnostic_msgs.msg import DiagnosticArray
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop
from test_finetune_node import _diag, finetune_params

from dfp_ros import contracts

SIZE = 16
CAMERAS = ("front", "wrist")
JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
          "wrist_3_joint", "robotiq_right_driver_joint"]
ACTIONS = ["effector_dx", "effector_dy", "effector_dz", "effector_dyaw", "gripper_delta"]


def _two_camera_checkpoint(folder):
    import torch

    from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import DFPModel, save_checkpoint

    meta = ModelMetadata(
        state=[StateSpec("observation.state", len(JOINTS), [f"{j}.pos" for j in JOINTS])],
        cameras=[CameraSpec(c, f"observation.images.{c}", SIZE, SIZE) for c in CAMERAS], action_key="action",
        action_names=ACTIONS, horizon=4, action_dim=5, fps=20.0, num_samples=1, has_critic=True,
        action_low=[-1.0] * 5, action_high=[1.0] * 5)
    torch.manual_seed(0)
    model = DFPModel(meta, ModelConfig(horizon=4, actor_hidden=(32,), critic_hidden=(32,), use_critic=True,
                                       image_channels=(8,), image_feature_dim=8))
    save_checkpoint(folder / "ckpt", model, {"step": 0})
    export_onnx(model, folder / "model.onnx", num_samples=4, with_critic=True)
    return folder / "ckpt", folder / "model.onnx"


def _camera_graph(tmp_path) -> tuple[dict, dict, dict, dict]:
    """Parameters of the learner, the policy and the real-time simulator (and the camera topics) for a
    two-camera model on joint states, in `tmp_path`."""
    ckpt, onnx_path = _two_camera_checkpoint(tmp_path)
    cams = {f"camera.{c}.topic": contracts.sim_camera_topic(c) for c in CAMERAS}
    learner = {**finetune_params(ckpt, tmp_path / "out"), "join": "stamp", "state_topics": ["joint_states"],
               "state_types": ["joint_state"], "reward_mode": "sum", **cams, "warmup_steps": 10_000}
    policy = {"model_path": str(onnx_path), "enabled": True, "trigger": "observation", "replan_every": 4,
              "state_topics": ["joint_states"], "state_types": ["joint_state"], **cams}
    sim = {"mode": "realtime", "camera_rate_hz": 20.0, "cameras": list(CAMERAS), "image_size": SIZE}
    return learner, policy, sim, cams


def test_simulator_joint_states_and_two_cameras_are_joined_by_stamp_in_the_learner(tmp_path):
    learner, policy, sim, _ = _camera_graph(tmp_path)
    dom = domain_id(offset=231)
    env = ros_env(dom)
    procs = {}
    with RosGraph(dom) as graph:
        diag = graph.collect("/diagnostics", DiagnosticArray)
        try:
            procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", learner, env, log_dir=tmp_path)
            assert procs["finetune"].wait_for_log("learner started", timeout=90), procs["finetune"].log()
            procs["sim"] = start_node("dfp_ros.nodes.sim_robot_node", sim, env, log_dir=tmp_path)
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", policy, env, log_dir=tmp_path)

            def joined() -> int:
                return int(_diag(diag, "finetune_node").get("joined", "0"))

            assert graph.spin_until(lambda: joined() >= 8, 120), (procs["policy"].log()[-1500:],
                                                                    procs["finetune"].log()[-1500:])
            for p in procs.values():
                assert p.poll() is None, p.log()[-2000:]
        finally:
            for p in procs.values():
                stop(p, timeout=30)
    fin = _diag(diag, "finetune_node")
    # Every chunk found its observation (three parts under one stamp). A part that arrives before the others
    # of its step is only an incomplete observation for a moment (`unpaired_stamps`), never a join with
    # another step's part.
    assert fin.get("dropped_chunk_without_observation", "0") == "0", fin
    assert int(fin["joined"]) >= 8, fin


def test_the_learner_learns_from_the_detectors_reward_and_ends_not_the_simulators(tmp_path):
    """reward:=detector in processes: the simulator's rewards moved aside (sim/reward) and its own success
    ending nothing; reward_node (a detector that calls every frame a success) publishes the rewards and, after
    3 positive frames, the success that ends each episode. The learner's episodes are the detector's: each a
    success with return 0, where the simulator's rewards would have been -1 per step and no success."""
    from model_files import constant_reward_model
    from std_msgs.msg import Float32
    from test_finetune_node import _curve

    learner, policy, sim, cams = _camera_graph(tmp_path)
    sim["success_ends_episode"] = False
    detector = constant_reward_model(tmp_path / "always.onnx", list(CAMERAS), SIZE, 20.0)
    reward = {"model_path": str(detector), "debounce_frames": 3, "event_topic": "episode", **cams}
    dom = domain_id(offset=232)
    env = ros_env(dom)
    procs = {}
    with RosGraph(dom) as graph:
        rewards = graph.collect(contracts.TOPIC_REWARD, Float32)
        try:
            procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", learner, env, log_dir=tmp_path)
            assert procs["finetune"].wait_for_log("learner started", timeout=90), procs["finetune"].log()
            procs["reward"] = start_node("dfp_ros.nodes.reward_node", reward, env, log_dir=tmp_path)
            assert procs["reward"].wait_for_log("ready", timeout=60), procs["reward"].log()
            procs["sim"] = start_node("dfp_ros.nodes.sim_robot_node", sim, env, log_dir=tmp_path,
                                      remap={"reward": "sim/reward"})
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", policy, env, log_dir=tmp_path)

            def detector_episodes() -> list[dict[str, str]]:
                # After the first joined episode: the detector may have been discovered after the first start
                # (events are volatile), and an episode it never opened ends at the time limit.
                return [r for r in _curve(tmp_path / "out") if int(r["joined"]) > 0][1:]

            assert graph.spin_until(lambda: len(detector_episodes()) >= 3, 120), (
                procs["sim"].log()[-1500:], procs["reward"].log()[-1500:], procs["finetune"].log()[-1500:])
            for p in procs.values():
                assert p.poll() is None, p.log()[-2000:]
        finally:
            for p in procs.values():
                stop(p, timeout=30)
    rows = detector_episodes()
    assert all(r["success"] == "1" and float(r["episode_return"]) == 0.0 and int(r["steps"]) <= 10 for r in rows), rows
    assert rewards.count >= 9 and {m.data for m in rewards.messages} == {0.0}  # the detector's, never -1
    sim_log = procs["sim"].log()
    assert "success (from another node) after" in sim_log and "true outcome no success" in sim_log, sim_log[-1500:]
