"""finetune_node over DDS with real processes: lock-step simulator + policy node + learner.

One scenario (module-scoped graph, tests in order): transitions are joined and counted against what
the simulator did (its own log), the learner updates, an exported model is validated and swapped
into the running policy node, the control rate holds; then the learner is killed (policy keeps
running with its model) and restarted (resumes from its checkpoint); the operator's words discard an
episode and pause / resume learning; then a person takes the robot over for a while (this process, as
teleop) and the learner's replay holds the human's steps as flagged transitions.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("torch", reason="the learner needs torch (training profile)")

from diagnostic_msgs.msg import DiagnosticArray
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop
from std_msgs.msg import String

pytestmark = pytest.mark.realtime  # the policy's control rate while the learner trains: run alone

H = 5
FPS = 20.0
MIN_CONTROL_RATE_HZ = FPS  # lock-step runs as fast as the policy answers; it must never fall below real time


def make_sim_checkpoint(folder: Path, hidden: tuple[int, ...] = (64, 64), seed: int = 0) -> tuple[Path, Path]:
    """An untrained DFP model + critic with the simulator's contract: (checkpoint folder, exported ONNX)."""
    import torch

    from dfp_ros.contracts import ModelMetadata, StateSpec
    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import DFPModel, save_checkpoint
    from dfp_ros.sim.cube_env import CubeSim

    with CubeSim("cube-single-v0", task_id=1, seed=0) as sim:
        meta = ModelMetadata(
            state=[StateSpec("observation.state", sim.state_dim, sim.state_names)], cameras=[], action_key="action",
            action_names=sim.action_names, horizon=H, action_dim=sim.action_dim, fps=sim.fps, num_samples=1,
            has_critic=True, action_low=sim.action_low.tolist(), action_high=sim.action_high.tolist())
    torch.manual_seed(seed)
    model = DFPModel(meta, ModelConfig(horizon=H, actor_hidden=hidden, critic_hidden=hidden, use_critic=True))
    ckpt = folder / "init"
    save_checkpoint(ckpt, model, {"step": 0})
    onnx_path = folder / "init.onnx"
    export_onnx(model, onnx_path, num_samples=16, with_critic=True)
    return ckpt, onnx_path


def make_robot_checkpoint(folder: Path, state_names: list[str], action_names: list[str], camera_size: int | None = 16,
                          horizon: int = H, seed: int = 0) -> tuple[Path, Path]:
    """An untrained model + critic for a robot's named state (and one camera "front" of `camera_size` px,
    None for none): (checkpoint folder, exported ONNX)."""
    import torch

    from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import DFPModel, save_checkpoint

    a = len(action_names)
    cameras = [] if camera_size is None else [CameraSpec("front", "observation.images.front", camera_size, camera_size)]
    meta = ModelMetadata(
        state=[StateSpec("observation.state", len(state_names), state_names)], cameras=cameras,
        action_key="action", action_names=action_names, horizon=horizon, action_dim=a, fps=FPS, num_samples=1,
        has_critic=True, action_low=[-1.0] * a, action_high=[1.0] * a)
    torch.manual_seed(seed)
    model = DFPModel(meta, ModelConfig(horizon=horizon, actor_hidden=(32,), critic_hidden=(32,), use_critic=True,
                                       image_channels=(8,), image_feature_dim=8))
    ckpt = folder / "init_robot"
    save_checkpoint(ckpt, model, {"step": 0})
    onnx_path = folder / "init_robot.onnx"
    export_onnx(model, onnx_path, num_samples=8, with_critic=True)
    return ckpt, onnx_path


def finetune_params(ckpt: Path, out: Path) -> dict:
    return {"init_checkpoint": str(ckpt), "output_dir": str(out), "warmup_steps": 300,
            "updates_per_step": 0.1, "batch_size": 32, "num_gen": 4, "num_candidates": 8, "top_k": 2,
            "critic_samples": 4, "export_every": 15, "checkpoint_every": 15, "export_num_samples": 8,
            "share_filesystem": True, "join_grace_s": 0.3}


def _diag(graph_diag, hardware_suffix: str) -> dict[str, str]:
    for msg in reversed(graph_diag.messages):
        for st in msg.status:
            if st.hardware_id.endswith(hardware_suffix):
                return {kv.key: kv.value for kv in st.values}
    return {}


def _sim_episodes(log: str) -> list[tuple[str, int]]:
    return [(m.group(2), int(m.group(3))) for m in
            re.finditer(r"episode (\d+) (success|timeout) after (\d+) steps", log)]


def _curve(out: Path) -> list[dict[str, str]]:
    path = out / "learning_curve.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _joinable(curve: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows after the first episode with chunks (earlier ones ran before the chunk topic was discovered)."""
    first = next((i for i, r in enumerate(curve) if int(r["chunks"]) > 0), len(curve))
    return curve[first + 1:]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    ckpt, onnx_path = make_sim_checkpoint(tmp)
    dom = domain_id(offset=211)
    env = ros_env(dom)
    out = tmp / "out"
    procs: dict = {}
    with RosGraph(dom) as graph:
        diag = graph.collect("/diagnostics", DiagnosticArray)
        events = graph.collect("/episode", String)
        try:
            procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", finetune_params(ckpt, out), env,
                                           log_dir=tmp)
            assert procs["finetune"].wait_for_log("learner started", timeout=60), procs["finetune"].log()
            procs["sim"] = start_node("dfp_ros.nodes.sim_robot_node", {"mode": "lockstep", "seed": 3}, env,
                                      log_dir=tmp)
            assert graph.spin_until(lambda: graph.node.count_publishers("/episode") >= 1, 30)
            time.sleep(0.5)
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", {
                "model_path": str(onnx_path), "enabled": True, "trigger": "observation", "seed": 1,
                "teleop_timeout_s": 2.0}, env, log_dir=tmp)  # (the takeover test's teleop: a busy test process)
            yield {"graph": graph, "diag": diag, "events": events, "procs": procs, "out": out, "env": env,
                   "ckpt": ckpt, "tmp": tmp, "initial_sha": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
        finally:
            for p in procs.values():
                stop(p, timeout=15)


def _spin_collect_rates(world, seconds: float, until=None) -> list[float]:
    """Spin up to `seconds` (or until `until()`), returning the policy's control rates seen meanwhile."""
    graph, diag = world["graph"], world["diag"]
    rates = []
    deadline = time.monotonic() + seconds
    seen = diag.count
    while time.monotonic() < deadline and not (until and until()):
        graph.spin_until(lambda n=seen: diag.count > n, 1.5)
        for msg in diag.messages[seen:]:
            for st in msg.status:
                if st.hardware_id.endswith("policy_node"):
                    vals = {kv.key: kv.value for kv in st.values}
                    rates.append(float(vals["control_rate_hz"]))
        seen = diag.count
    return rates


def test_learner_joins_updates_and_swaps_a_model_into_the_running_policy(world):
    procs, out = world["procs"], world["out"]
    rates = _spin_collect_rates(world, 150, until=lambda: (
        int(_diag(world["diag"], "finetune_node").get("models_accepted", "0")) >= 1
        and _diag(world["diag"], "policy_node").get("model_sha256", world["initial_sha"]) != world["initial_sha"]
        and int(_diag(world["diag"], "finetune_node").get("updates", "0")) > 0
        and len(_joinable(_curve(out))) >= 3))
    fin = _diag(world["diag"], "finetune_node")
    pol = _diag(world["diag"], "policy_node")
    assert int(fin.get("models_accepted", "0")) >= 1, procs["finetune"].log()[-3000:]
    assert pol["model_sha256"] != world["initial_sha"], "the policy node still runs its first model"
    assert int(fin["updates"]) > 0, fin
    # The control rate held while the learner trained and exported (lock-step: no slower than real time).
    running = [r for r in rates if r > 0]
    assert running and min(running) >= MIN_CONTROL_RATE_HZ, rates
    assert "torch_imported" in pol and pol["torch_imported"] == "false"

    # Every episode the learner reports matches what the simulator did (its own log), and the joins
    # account for every chunk: joined + dropped == chunks, with only the expected drops.
    # Episodes before the policy's chunk topic was discovered (the first second) have no chunks to join.
    curve = _joinable(_curve(out))
    sim = _sim_episodes(procs["sim"].log())
    assert len(curve) >= 3 and len(sim) >= len(curve)
    as_sim = [("success" if r["success"] == "1" else "timeout", int(r["steps"])) for r in curve]
    offset = next((k for k in range(len(sim) - len(curve) + 1) if sim[k:k + len(curve)] == as_sim), None)
    assert offset is not None, (as_sim, sim)
    for row, (event, steps) in zip(curve, sim[offset:], strict=False):
        chunks = math.ceil(steps / H)
        assert int(row["chunks"]) == chunks, row
        expected = chunks if event == "success" else chunks - 1  # a time-out's last chunk is truncated
        assert int(row["joined"]) == expected, (row, procs["finetune"].log()[-2000:])
        assert int(row["joined"]) + int(row["dropped"]) == chunks
        assert float(row["episode_return"]) == pytest.approx(-steps if event == "timeout" else -(steps - 1))
    assert (out / "learning_curve.png").is_file() or len(curve) < 2


def test_killing_the_learner_leaves_the_policy_running_with_its_model(world):
    procs, events = world["procs"], world["events"]
    os.killpg(procs["finetune"].pid, signal.SIGKILL)  # node and learner process, no goodbye
    procs["finetune"].wait(10)
    rates = _spin_collect_rates(world, 2.5)  # a model update in flight at the kill may still land
    sha_before = _diag(world["diag"], "policy_node")["model_sha256"]
    ended = sum(e.data in ("success", "timeout") for e in events.messages)
    rates += _spin_collect_rates(world, 6)
    assert sum(e.data in ("success", "timeout") for e in events.messages) > ended, "episodes stopped"
    running = [r for r in rates if r > 0]
    assert running and min(running) >= MIN_CONTROL_RATE_HZ, rates
    assert _diag(world["diag"], "policy_node")["model_sha256"] == sha_before
    assert procs["policy"].poll() is None and procs["sim"].poll() is None


def test_a_restarted_learner_resumes_from_its_checkpoint(world):
    procs = world["procs"]
    saved = (world["out"] / "learner" / "config.json")
    assert saved.is_file()
    import json

    step = json.loads(saved.read_text())["step"]
    assert step > 0
    procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", finetune_params(world["ckpt"], world["out"]),
                                   world["env"], log_dir=world["tmp"])
    assert procs["finetune"].wait_for_log("learner resumed", timeout=60), procs["finetune"].log()
    found = re.search(r"resumed from .* at update (\d+)\b", procs["finetune"].log())
    assert found, procs["finetune"].log()
    # The SIGKILL can land while a checkpoint is being written: its training state (which resume
    # reads) may then be newer than its config.json, never older.
    resumed = int(found.group(1))
    assert resumed >= step
    world["graph"].spin_for(3.0)
    assert int(_diag(world["diag"], "finetune_node").get("updates", "0")) >= resumed


def test_the_operators_words_discard_an_episode_and_pause_learning(world):
    graph, procs, diag = world["graph"], world["procs"], world["diag"]
    operator = graph.publisher("/episode", String)
    assert graph.wait_matched(operator, n=2)  # the learner and the policy node

    def learner() -> dict[str, str]:
        return _diag(diag, "finetune_node")

    operator.publish(String(data="discard"))
    assert graph.spin_until(lambda: int(learner().get("episodes_discarded", "0")) >= 1, 15), learner()
    assert procs["finetune"].wait_for_log("discarded by the operator", 5), procs["finetune"].log()[-2000:]
    operator.publish(String(data="pause"))
    paused = "the operator paused learning"
    # The learner's own status says once it has applied the pause (a burst of updates may end first).
    assert graph.spin_until(lambda: learner().get("paused") == paused == learner().get("learner_paused"), 10), \
        learner()
    updates = int(learner()["updates"])
    graph.spin_for(2.0)  # the robot runs on, the learner does not update
    assert int(learner()["updates"]) == updates and learner()["learner_learning"] == "false", learner()
    episodes = int(learner()["episodes"])
    operator.publish(String(data="resume"))
    assert graph.spin_until(lambda: learner().get("paused") == "no" and int(learner()["episodes"]) > episodes
                            and int(learner()["updates"]) > updates, 20), learner()


def test_a_takeover_becomes_flagged_transitions_of_the_humans_commands_in_the_replay(world):
    from std_msgs.msg import Bool, Float64MultiArray

    graph, procs, diag = world["graph"], world["procs"], world["diag"]
    engaged = graph.publisher("/teleop/engaged", Bool)
    teleop = graph.publisher("/teleop/command", Float64MultiArray)
    assert graph.wait_matched(engaged) and graph.wait_matched(teleop)
    human = [0.3, -0.2, 0.1, 0.0, 0.5]  # not an action the policy's model would produce exactly
    teleop.publish(Float64MultiArray(data=human))  # the device's command is there before its dead-man
    graph.spin_for(0.1)
    seen = diag.count
    engaged.publish(Bool(data=True))
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        teleop.publish(Float64MultiArray(data=human))
        graph.spin_for(0.02)
    engaged.publish(Bool(data=False))

    def learner_values() -> list[dict[str, str]]:
        return [{kv.key: kv.value for kv in st.values} for msg in diag.messages[seen:] for st in msg.status
                if st.hardware_id.endswith("finetune_node")]

    assert graph.spin_until(lambda: any(float(v.get("intervention_rate", "0")) > 0 for v in learner_values())
                            and int(learner_values()[-1].get("replay_interventions", "0")) > 0, 30), \
        (learner_values()[-1:], procs["finetune"].log()[-3000:])
    last = learner_values()[-1]
    assert int(last["human_steps"]) > 0 and int(last["intervened_joined"]) > 0, last
    rows = [r for r in _curve(world["out"]) if float(r["intervention_rate"] or 0) > 0]
    assert rows and all(int(r["human_steps"]) > 0 for r in rows), rows
    assert stop(procs["finetune"], timeout=45) == 0, procs["finetune"].log()[-3000:]  # the learner saves its replay
    with np.load(world["out"] / "learner" / "replay_online.npz") as d:
        chunk, flag = d["chunk"], d["intervention"]
    is_human = np.isclose(chunk, np.asarray(human, np.float32), atol=1e-6).all(-1)  # [N, H]: a human step
    assert flag.sum() >= 3, flag.sum()
    assert is_human[flag].any(1).all(), chunk[flag][~is_human[flag].any(1)]  # every intervention holds human
    # steps (a cut chunk: policy ones too)
    assert is_human[flag].all(1).any()  # windows of the human's stretch: nothing but the human's commands
    assert not is_human[~flag].any()  # a human step is never learned as the policy's


def test_a_silent_reward_topic_pauses_learning_with_a_log_line(tmp_path):
    from std_msgs.msg import Float32, Float32MultiArray

    ckpt, _ = make_sim_checkpoint(tmp_path)
    dom = domain_id(offset=212)
    params = {**finetune_params(ckpt, tmp_path / "out"), "reward_silence_s": 1.0}
    proc = start_node("dfp_ros.nodes.finetune_node", params, ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as graph:
            state = graph.publisher("/sim/state", Float32MultiArray)
            reward = graph.publisher("/reward", Float32)
            assert graph.wait_matched(state, timeout=60)
            msg = Float32MultiArray(data=[0.0] * 28)

            def robot_runs(seconds: float, with_reward: bool) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    state.publish(msg)
                    if with_reward:
                        reward.publish(Float32(data=-1.0))
                    graph.spin_for(0.05)

            robot_runs(2.5, with_reward=False)
            assert proc.wait_for_log("learning paused: reward silent", timeout=3), proc.log()
            robot_runs(1.0, with_reward=True)
            assert proc.wait_for_log("learning resumed", timeout=3), proc.log()
    finally:
        stop(proc, timeout=15)
