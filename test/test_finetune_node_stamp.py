"""finetune_node on a real-robot-like graph: JointState + camera with header stamps, `join: stamp`.

Real processes over DDS: policy_node runs a camera model (JointState proprioception + one camera,
the observation assembler) and stamps each chunk with its observation's stamp (the chunk contract);
finetune_node (`join: stamp`) assembles the same observations from the same topics and joins each
chunk to its observation by that stamp. The robot is this test process: a lock-step robot that
publishes a camera frame and a JointState sharing one wall-clock stamp per step, a reward per step
and episode events — so every joined transition can be checked against what the robot really did.
In one episode this process is also the person beside the robot: it takes the robot over (the policy
node's `~/intervene`, answered once applied, so the takeover lands on a known step) and drives it with
`teleop/command` for a few steps, then hands it back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("torch", reason="the learner needs torch (training profile)")

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.time import Time
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float64MultiArray, String
from std_srvs.srv import SetBool
from test_finetune_node import FPS, finetune_params, make_robot_checkpoint

pytestmark = pytest.mark.realtime  # wall-clock deadlines: run alone, not beside other tests

H = 4
STEPS = 10  # per episode: chunks at steps 0, 4, 8; the last one ends inside the episode's terminal step
STATE_NAMES = ["elbow.pos", "wrist.pos", "wrist.vel"]
ACTIONS = ["a0", "a1"]
FRAME = 24  # published size; the model's camera is 16 px (both nodes resize)
MISMATCHED = (2, 4)  # (episode, step) whose camera frame is stamped 1 ms after its joint state
TAKEOVER, HUMAN_STEPS = 3, range(2, 7)  # the episode whose steps 2-6 the human commands (hand-back at 7)
HUMAN = [0.25, -0.5]  # the human's command (the model's actions never equal it exactly)


def _joints(k: int) -> JointState:
    # Another order than the model's names, and a joint the model does not use.
    return JointState(name=["wrist", "gripper", "elbow"], position=[-0.02 * k, 0.5, 0.01 * k],
                      velocity=[0.5, 0.0, 0.0])


def _image(k: int) -> Image:
    data = np.full((FRAME, FRAME, 3), (10 * k + 5) % 256, np.uint8)
    return Image(height=FRAME, width=FRAME, encoding="rgb8", step=FRAME * 3, data=data.tobytes())


class LockstepRobot:
    """One step per command: reward, then the next observation (frame first, then joints, one stamp)."""

    def __init__(self, graph: RosGraph, steps: int):
        self.graph, self.steps = graph, steps
        self.joints = graph.publisher("/joint_states", JointState)
        self.camera = graph.publisher("/camera/front/image_raw", Image)
        self.reward = graph.publisher("/reward", Float32)
        self.episode = graph.publisher("/episode", String)
        self.intervene = graph.node.create_client(SetBool, "/policy_node/intervene")
        self.teleop = graph.publisher("/teleop/command", Float64MultiArray)
        self.pending = 0
        self.k = 0
        self.episodes = 0
        graph.node.create_subscription(Float64MultiArray, "/policy_node/command", self._on_command, 100)

    def _on_command(self, msg: Float64MultiArray) -> None:
        self.pending += 1

    def take_over(self) -> None:
        """Before observation k of the takeover episode: the device's command before each human step, the
        takeover before the first of them, the release before the first step after them."""
        if self.episodes != TAKEOVER or self.k not in (*HUMAN_STEPS, HUMAN_STEPS[-1] + 1):
            return
        if self.k in HUMAN_STEPS:
            self.teleop.publish(Float64MultiArray(data=HUMAN))
            time.sleep(0.005)  # (best effort, another writer than the service's: let it arrive first)
        if self.k in (HUMAN_STEPS[0], HUMAN_STEPS[-1] + 1):
            future = self.intervene.call_async(SetBool.Request(data=self.k == HUMAN_STEPS[0]))
            assert self.graph.spin_until(future.done, 10.0) and future.result().success, future.result()

    def observe(self) -> None:
        self.take_over()
        now = self.graph.node.get_clock().now()  # wall clock: the rewards' source timestamps agree
        img, js = _image(self.k), _joints(self.k)
        img.header.stamp = js.header.stamp = now.to_msg()
        if (self.episodes, self.k) == MISMATCHED:  # a frame whose stamp is not its step's: never joined
            img.header.stamp = Time(nanoseconds=now.nanoseconds + 1_000_000).to_msg()
        self.camera.publish(img)
        # The frame first: the policy ticks on the joints and must find this step's frame.
        time.sleep(0.02)
        self.joints.publish(js)

    def start(self) -> None:
        self.k = 0
        self.episode.publish(String(data="start"))
        time.sleep(0.005)
        self.observe()

    def step(self) -> None:
        self.pending -= 1
        self.reward.publish(Float32(data=-1.0))
        self.k += 1
        if self.k == self.steps:
            time.sleep(0.005)
            self.episode.publish(String(data="success"))
            self.episodes += 1
            time.sleep(0.005)
            self.start()
        else:
            time.sleep(0.002)
            self.observe()


def _diag(diag, suffix: str) -> dict[str, str]:
    for msg in reversed(diag.messages):
        for st in msg.status:
            if st.hardware_id.endswith(suffix):
                return {kv.key: kv.value for kv in st.values}
    return {}


def test_stamp_join_of_jointstate_and_camera_feeds_the_learner_exact_transitions_with_images(tmp_path):
    ckpt, onnx_path = make_robot_checkpoint(tmp_path, STATE_NAMES, ACTIONS, camera_size=16, horizon=H)
    dom = domain_id(offset=213)
    env = ros_env(dom)
    out = tmp_path / "out"
    params = {**finetune_params(ckpt, out), "join": "stamp", "state_topics": ["joint_states"],
              "state_types": ["joint_state"], "camera.front.topic": "camera/front/image_raw",
              "warmup_steps": 20, "updates_per_step": 0.2, "batch_size": 16, "export_every": 3,
              "checkpoint_every": 3, "replay_capacity": 1000}
    procs = {}
    with RosGraph(dom) as graph:
        diag = graph.collect("/diagnostics", DiagnosticArray)
        robot = LockstepRobot(graph, STEPS)
        try:
            procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", params, env, log_dir=tmp_path)
            assert procs["finetune"].wait_for_log("learner started", timeout=90), procs["finetune"].log()
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", {
                "model_path": str(onnx_path), "enabled": True, "trigger": "observation", "seed": 1,
                "state_topics": ["/joint_states"], "state_types": ["joint_state"],
                "camera.front.topic": "/camera/front/image_raw", "max_obs_age_s": 1.0}, env, log_dir=tmp_path)
            # Both nodes read the robot; the learner reads the policy's chunks, rewards and events.
            assert graph.wait_matched(robot.joints, n=2, timeout=60) and graph.wait_matched(robot.camera, n=2)
            assert graph.wait_matched(robot.reward) and graph.wait_matched(robot.episode, n=2)
            assert robot.intervene.wait_for_service(timeout_sec=30) and graph.wait_matched(robot.teleop)
            assert graph.spin_until(lambda: graph.node.count_subscribers("/policy_node/action_chunk") >= 1
                                    and graph.node.count_publishers("/policy_node/action_chunk") >= 1, 30)
            graph.spin_for(1.0)  # the learner's reader of the chunks discovers the policy's writer too
            robot.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    robot.episodes >= 5 and int(_diag(diag, "finetune_node").get("models_accepted", "0")) >= 1):
                graph.executor.spin_once(timeout_sec=0.05)
                while robot.pending > 0:
                    robot.step()
            assert robot.episodes >= 5, (robot.episodes, procs["policy"].log()[-2000:])
            graph.spin_for(1.5)  # the last episode's grace period, one more diagnostics message
            fin = _diag(diag, "finetune_node")
            assert int(fin.get("models_accepted", "0")) >= 1, procs["finetune"].log()[-3000:]
            assert int(fin["updates"]) > 0 and fin["learner_alive"] == "true", fin
            for p in procs.values():
                assert p.poll() is None, p.log()[-2000:]
        finally:
            for p in procs.values():
                stop(p, timeout=30)

    log = procs["finetune"].log()
    # Every episode after the first (which may start before all readers matched) joins every chunk:
    # 3 chunks per 10-step episode, the last one terminal inside its chunk; nothing dropped — except
    # where the frame's stamp was not its step's: that step has no observation (9 steps counted), its
    # chunk is dropped and so is the chunk before it (no next observation), rather than either being
    # joined with another step's frame. The takeover (human steps 2-6): the chunk at 0 cut at step 2 and
    # the human's windows from step 2 (2-5, and 6-9 which runs on into the policy's steps after the
    # hand-back) are joined from the commands executed; the chunks the policy planned meanwhile (2, 6) never
    # ran; the hand-back's chunk (7) is the policy's again.
    rows = _episode_lines(log)
    assert len(rows) >= 5, log[-3000:]
    for i, (steps, chunks, joined, dropped) in enumerate(rows[1:], start=1):
        if i == MISMATCHED[0]:
            assert (steps, chunks, joined, dropped) == (
                STEPS - 1, 3, 1, "{'chunk_without_observation': 1, 'partial_chunk': 1}"), rows
        elif i == TAKEOVER:
            assert (steps, chunks, joined, dropped) == (STEPS, 4, 4, "{'chunk_not_executed': 2}"), rows
        else:
            assert (steps, chunks, joined, dropped) == (STEPS, 3, 3, ""), rows
    assert int(fin["unpaired_stamps"]) >= 1, fin
    assert "intervention rate 0.50 (5 human steps)" in log, log[-3000:]
    assert (fin["human_steps"], fin["intervened_joined"]) == ("5", "3"), fin

    # The replay the learner saved at its stop, first episode included: each transition's state is the
    # robot's JointState mapped by name, its image is that same step's frame (never a neighbour's, even
    # while readers were still matching), and its next observation is H steps later.
    with np.load(out / "learner" / "replay_online.npz") as d:
        state, nxt, mask = d["state"], d["next_state"], d["mask"]
        img, next_img = d["image.front"], d["next_image.front"]
        chunk, flag = d["chunk"], d["intervention"]
    assert len(state) >= 3 * (len(rows) - 2) and img.shape[1:] == (16, 16, 3) and img.dtype == np.uint8
    k = np.round(state[:, 0] / 0.01).astype(int)
    np.testing.assert_allclose(state, np.stack([0.01 * k, -0.02 * k, np.full_like(k, 0.5, dtype=float)], 1),
                               atol=1e-5)
    assert set(k[~flag].tolist()) == {0, 4, 8, 7}  # 7: the chunk planned at the hand-back
    # The interventions: each step's row is the human's command exactly where the human commanded it.
    assert sorted(k[flag].tolist()) == [0, 2, 6]
    for i in np.flatnonzero(flag):
        human_rows = np.isclose(chunk[i], np.asarray(HUMAN, np.float32), atol=1e-6).all(1)
        assert human_rows.tolist() == [k[i] + j in HUMAN_STEPS for j in range(H)], (k[i], chunk[i])
    assert not np.isclose(chunk[~flag], np.asarray(HUMAN, np.float32), atol=1e-6).all(-1).any()
    np.testing.assert_array_equal(img[:, 8, 8, 0], (10 * k + 5) % 256)
    k_next = np.round(nxt[:, 0] / 0.01).astype(int)
    np.testing.assert_array_equal(k_next, np.where(mask == 1.0, k + H, STEPS - 1))
    np.testing.assert_array_equal(next_img[:, 8, 8, 0], (10 * k_next + 5) % 256)


def _episode_lines(log: str) -> list[tuple[int, int, int, str]]:
    return [(int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) or "") for m in re.finditer(
        r"success after (\d+) steps, return [-\d.]+; chunks (\d+), joined (\d+)(?:, dropped (\{.*\}))?", log)]


def test_steps_from_fps_joins_a_policy_on_a_timer_over_a_100_hz_joint_state_stream(tmp_path):
    """A real robot's usual shape: joint states at 100 Hz, the policy on a 20 Hz timer (chunks every
    H ticks, each stamped with the newest joint state), a sparse reward at success (`sum`)."""
    ckpt, onnx_path = make_robot_checkpoint(tmp_path, STATE_NAMES, ACTIONS, camera_size=None, horizon=H)
    dom = domain_id(offset=215)
    env = ros_env(dom)
    out = tmp_path / "out"
    params = {**finetune_params(ckpt, out), "join": "stamp", "steps_from": "fps", "reward_mode": "sum",
              "state_topics": ["joint_states"], "state_types": ["joint_state"], "warmup_steps": 10**6}
    episode_s, procs = 2.0, {}
    with RosGraph(dom) as graph:
        joints = graph.publisher("/joint_states", JointState)
        reward = graph.publisher("/reward", Float32)
        events = graph.publisher("/episode", String)
        try:
            procs["finetune"] = start_node("dfp_ros.nodes.finetune_node", params, env, log_dir=tmp_path)
            assert procs["finetune"].wait_for_log("learner started", timeout=90), procs["finetune"].log()
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", {
                "model_path": str(onnx_path), "enabled": True, "trigger": "timer", "seed": 1,
                "state_topics": ["/joint_states"], "state_types": ["joint_state"]}, env, log_dir=tmp_path)
            assert graph.wait_matched(joints, n=2, timeout=60) and graph.wait_matched(events, n=2)
            assert graph.wait_matched(reward)
            assert graph.spin_until(lambda: graph.node.count_subscribers("/policy_node/action_chunk") >= 1
                                    and graph.node.count_publishers("/policy_node/action_chunk") >= 1, 30)
            clock = graph.node.get_clock()
            t0 = clock.now().nanoseconds
            episodes = 0
            events.publish(String(data="start"))
            started = tick = time.monotonic()
            while episodes < 6:
                now = clock.now()
                # Position encodes the stamp (s since t0): the test can tell which joint state a transition got.
                js = JointState(name=["wrist", "gripper", "elbow"],
                                position=[0.0, 0.5, (now.nanoseconds - t0) / 1e9], velocity=[0.5, 0.0, 0.0])
                js.header.stamp = now.to_msg()
                joints.publish(js)
                if time.monotonic() - started >= episode_s:
                    reward.publish(Float32(data=1.0))
                    time.sleep(0.002)
                    events.publish(String(data="success"))
                    episodes += 1
                    time.sleep(0.002)  # the next episode starts at once, as on a robot that resets itself
                    events.publish(String(data="start"))
                    started = time.monotonic()
                tick += 0.01
                graph.spin_for(max(0.0, tick - time.monotonic()))
            graph.spin_for(1.5)
            for p in procs.values():
                assert p.poll() is None, p.log()[-2000:]
        finally:
            for p in procs.values():
                stop(p, timeout=30)

    log = procs["finetune"].log()
    rows = [(steps, chunks, joined) for steps, chunks, joined, _ in _episode_lines(log)]
    assert len(rows) >= 5, log[-3000:]
    steps_per_ep = episode_s * FPS
    for steps, chunks, _ in rows[1:]:  # the first may have started before every reader matched
        # Steps are the episode's duration in 1/fps (this process may stall a little on a shared machine),
        # not its ~200 joint states; chunks: one per H steps, plus re-plans around the end event.
        assert steps_per_ep - 2 <= steps <= 1.5 * steps_per_ep and chunks <= steps / H + 4, rows
    chunks = sum(c for _, c, _ in rows[1:])
    joined = sum(j for _, _, j in rows[1:])
    # Chunks 4 ticks (200 ms) apart on a 20 Hz timer join unless the timer slipped by half a step (25 ms)
    # on this shared machine; without steps by time none would (40 joint states per chunk).
    assert joined >= 0.7 * chunks, (rows, log[-2000:])
    replay = out / "learner" / "replay_online.npz"
    assert replay.is_file(), log[-2000:]
    with np.load(replay) as d:
        state, nxt, mask = d["state"], d["next_state"], d["mask"]
    full = mask == 1.0
    assert full.sum() >= 0.5 * joined
    # The next observation of a fully executed chunk is the joint state of the chunk after it: H steps later.
    np.testing.assert_allclose(nxt[full, 0] - state[full, 0], H / FPS, atol=0.5 / FPS)


@pytest.mark.parametrize("params, message", [
    ({"join": "causal", "state_topics": ["joint_states"], "state_types": ["joint_state"]},
     "join: causal places each observation by the time its message was sent"),
    ({"join": "stamp"}, "are Float32MultiArray (no header)"),
    ({"join": "stamp", "state_topics": ["joint_states"], "state_types": ["joint_state"],
      "replay_capacity": 10_000_000}, "lower the capacity to at most"),
    ({"join": "stamp", "state_topics": ["joint_states", "extra"], "state_types": ["joint_state"]},
     "must be non-empty lists of equal lengths"),
    ({"join": "causal", "steps_from": "fps"}, "steps_from: fps places chunks by their header stamps"),
    ({"join": "stamp", "state_topics": ["joint_states"], "state_types": ["joint_state"],
      "export_weights": "fp16"}, "export_weights='fp16' is not one of ('float32', 'int8')"),
])
def test_a_camera_model_with_a_configuration_the_join_cannot_serve_is_refused_at_start(tmp_path, params, message):
    ckpt, _ = make_robot_checkpoint(tmp_path, STATE_NAMES, ACTIONS, camera_size=16, horizon=H)
    proc = start_node("dfp_ros.nodes.finetune_node", {**finetune_params(ckpt, tmp_path / "out"), **params},
                      ros_env(domain_id(offset=214)), log_dir=tmp_path)
    assert proc.wait(timeout=90) == 1
    log = proc.log()
    assert "cannot start" in log and message in log and "Traceback" not in log, log
    assert not (Path(tmp_path) / "out" / "learner").exists()  # refused before a learner was started


def test_header_stamps_from_another_clock_are_reported_not_silently_unjoinable(tmp_path):
    # A simulator's sim-time stamps (here: 100 s after the epoch) next to rewards placed by wall-clock publish time.
    ckpt, _ = make_robot_checkpoint(tmp_path, STATE_NAMES, ACTIONS, camera_size=None, horizon=H)
    dom = domain_id(offset=216)
    params = {**finetune_params(ckpt, tmp_path / "out"), "join": "stamp", "state_topics": ["joint_states"],
              "state_types": ["joint_state"]}
    proc = start_node("dfp_ros.nodes.finetune_node", params, ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as graph:
            joints = graph.publisher("/joint_states", JointState)
            assert graph.wait_matched(joints, timeout=90), proc.log()
            for k in range(5):
                js = _joints(k)
                js.header.stamp.sec = 100 + k
                joints.publish(js)
                graph.spin_for(0.05)
            assert proc.wait_for_log("header stamps are", timeout=10), proc.log()
            assert "another clock" in proc.log() and proc.poll() is None
    finally:
        stop(proc, timeout=30)
