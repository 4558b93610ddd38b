"""sim_robot_node as a real process, driven over DDS from this test process.

Three node processes, each on its own ROS domain (they all publish the same absolute topics):
lock-step with Float64MultiArray commands and front + wrist cameras every 5th step (shared by several
tests, in file order), lock-step with JointTrajectory commands driven to success by the oracle of a
mirror CubeSim, and real-time with JointState commands and both cameras; one more start is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_graph import Collector, NodeProcess, RosGraph, domain_id, latched_qos, ros_env, start_node, stop  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float32, Float32MultiArray, Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from dfp_ros import contracts  # noqa: E402
from dfp_ros.nodes.node_main import CONFIG_ERROR_EXIT  # noqa: E402

MODULE = "dfp_ros.nodes.sim_robot_node"
FPS = 20.0
ACTION_NAMES = ["effector_dx", "effector_dy", "effector_dz", "effector_dyaw", "gripper_delta"]
JOINT_NAMES = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
               "wrist_3_joint", "robotiq_right_driver_joint"]
ZERO = [0.0] * 5
STARTUP_S = 30.0  # generous: importing mujoco/ogbench on a busy 2-core machine


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@dataclass
class Sim:
    """A running sim node and this test process's view of its graph."""

    proc: NodeProcess
    graph: RosGraph
    cmd: object  # publisher
    reward: Collector
    episode: Collector
    joints: Collector
    state: Collector
    clock: Collector | None
    images: dict[str, Collector]  # camera name -> its images

    def image_stamps(self, camera: str) -> list[int]:
        return [stamp_ns(m.header.stamp) for m in self.images[camera].messages]

    def events(self) -> list[str]:
        return [m.data for m in self.episode.messages]

    def step(self, msg, timeout: float = 5.0) -> None:
        """Publish one command and wait for its step (one more /reward)."""
        n = self.reward.count
        self.cmd.publish(msg)
        assert self.reward.wait_for(n + 1, timeout), f"no step for a valid command; log:\n{self.proc.log()}"


def floats(values) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sim_robot_logs")


@contextmanager
def _run_sim(log_dir, offset: int, params: dict, cmd_type: type) -> Iterator[Sim]:
    dom = domain_id(offset)
    proc = start_node(MODULE, params, ros_env(dom), log_dir=log_dir)
    try:
        with RosGraph(dom) as g:
            lockstep = params.get("mode") == "lockstep"
            sim = Sim(
                proc=proc,
                graph=g,
                cmd=g.publisher(params.get("command_topic", contracts.TOPIC_POLICY_COMMAND), cmd_type),
                reward=g.collect(contracts.TOPIC_REWARD, Float32),
                episode=g.collect(contracts.TOPIC_EPISODE, String),
                joints=g.collect(contracts.TOPIC_JOINT_STATES, JointState, latched_qos(100)),
                state=g.collect(contracts.TOPIC_SIM_STATE, Float32MultiArray, latched_qos(100)),
                clock=g.collect("/clock", Clock, latched_qos(100)) if lockstep else None,
                images={c: g.collect(contracts.sim_camera_topic(c), Image, qos_profile_sensor_data)
                        for c in (params.get("cameras", ["front"]) if params.get("camera_rate_hz", 0) > 0 else [])},
            )
            # Up = it has subscribed to our commands and its (latched) first observation reached us.
            ok = g.wait_matched(sim.cmd, timeout=STARTUP_S) and sim.state.wait_for(1, timeout=STARTUP_S)
            assert ok, f"sim_robot_node did not come up (rc {proc.poll()}); log:\n{proc.log()}"
            yield sim
    finally:
        stop(proc)


# --- lock-step, Float64MultiArray commands (tests below share one process, in file order) -----------
def _skip_without_rendering() -> None:
    import dfp_ros.sim.cube_env  # noqa: F401  (selects MUJOCO_GL=egl when EGL works here)

    if os.environ.get("MUJOCO_GL") not in ("egl", "osmesa") and not os.environ.get("DISPLAY"):
        pytest.skip("no off-screen rendering here: EGL did not start (install libegl1 libgl1 libgl1-mesa-dri)")


def _assert_images_share_state_stamps(sim: Sim, shape: tuple[int, int]) -> None:
    """Every image of both cameras carries the stamp of a published observation (JointState)."""
    newest = max(t for c in ("front", "wrist") for t in sim.image_stamps(c))
    # A step's images go out just before its joint state.
    assert sim.graph.spin_until(lambda: stamp_ns(sim.joints.last.header.stamp) >= newest, 2.0)
    joint_stamps = {stamp_ns(m.header.stamp) for m in sim.joints.messages}
    for camera in ("front", "wrist"):
        img = sim.images[camera].last
        assert (img.encoding, img.height, img.width, img.header.frame_id) == ("rgb8", *shape, f"{camera}_camera")
        stray = sorted(set(sim.image_stamps(camera)) - joint_stamps)
        assert not stray, f"{camera} images stamped {stray[:5]}, no joint state has those stamps"
    pixels = {c: np.frombuffer(bytes(sim.images[c].last.data), np.uint8).astype(int) for c in ("front", "wrist")}
    assert pixels["front"].std() > 5 and np.abs(pixels["front"] - pixels["wrist"]).mean() > 5  # two real views


@pytest.fixture(scope="module")
def lockstep(log_dir) -> Iterator[Sim]:
    params = {"mode": "lockstep", "lockstep_republish_s": 0.0, "camera_rate_hz": 4.0, "cameras": ["front", "wrist"]}
    with _run_sim(log_dir, 0, params, Float64MultiArray) as sim:
        yield sim


def test_lockstep_n_commands_make_n_steps_and_clock_advances(lockstep: Sim) -> None:
    assert lockstep.clock.wait_for(1)
    clock0 = stamp_ns(lockstep.clock.last.clock)
    r0 = lockstep.reward.count
    # Answer-by-answer, as a lock-step policy does ...
    for _ in range(5):
        lockstep.step(floats(ZERO))
    # ... and a burst without waiting: still one step per command.
    for _ in range(5):
        lockstep.cmd.publish(floats([0.1, 0.0, 0.0, 0.0, 0.0]))
    assert lockstep.reward.wait_for(r0 + 10)
    lockstep.graph.spin_for(0.5)  # and nothing more comes
    assert lockstep.reward.count == r0 + 10
    assert all(m.data == -1.0 for m in lockstep.reward.messages[r0:])  # OGBench: -1 until success
    assert lockstep.clock.wait_for(1) and lockstep.graph.spin_until(
        lambda: stamp_ns(lockstep.clock.last.clock) == clock0 + 10 * round(1e9 / FPS), 2.0), \
        f"/clock {stamp_ns(lockstep.clock.last.clock)} ns, expected {clock0 + 10 * round(1e9 / FPS)}"


def test_observation_contents_and_stamps(lockstep: Sim) -> None:
    lockstep.step(floats(ZERO))
    g = lockstep.graph
    # Both observation topics of this step are in (one message each per step, plus the latched first).
    assert g.spin_until(lambda: stamp_ns(lockstep.joints.last.header.stamp) == stamp_ns(lockstep.clock.last.clock)
                        and lockstep.state.count == lockstep.joints.count)
    js = lockstep.joints.last
    assert list(js.name) == JOINT_NAMES
    assert len(js.position) == 7 and len(js.velocity) == 7
    assert all(math.isfinite(v) for v in [*js.position, *js.velocity])
    st = lockstep.state.last
    assert [(d.label, d.size) for d in st.layout.dim] == [("state", 28)] and len(st.data) == 28
    # The arm's joint positions lead the state vector.
    np.testing.assert_allclose(np.asarray(st.data[:6]), np.asarray(js.position[:6]), atol=1e-5)
    names = g.collect(contracts.TOPIC_SIM_STATE + "_names", String, latched_qos())
    assert names.wait_for(1)
    state_names = json.loads(names.last.data)
    assert len(state_names) == 28 and state_names[0] == "shoulder_pan_joint.pos"


def test_lockstep_camera_images_carry_their_steps_stamp(lockstep: Sim) -> None:
    _skip_without_rendering()
    step_ns = round(1e9 / FPS)
    while lockstep.reward.count < 20:
        lockstep.step(floats(ZERO))
    # 4 frames per simulated second at 20 steps per second: steps 5, 10, 15, 20, from both cameras.
    due = {k * 5 * step_ns for k in (1, 2, 3, 4)}
    assert lockstep.graph.spin_until(lambda: all(due <= set(lockstep.image_stamps(c)) for c in ("front", "wrist"))), \
        {c: lockstep.image_stamps(c) for c in ("front", "wrist")}
    assert all(t % (5 * step_ns) == 0 for c in ("front", "wrist") for t in lockstep.image_stamps(c))
    _assert_images_share_state_stamps(lockstep, (96, 96))


def test_bad_commands_are_dropped_and_node_stays_alive(lockstep: Sim) -> None:
    r0 = lockstep.reward.count
    for bad in ([0.0] * 4, [0.0] * 6, [math.nan, 0, 0, 0, 0], [0, 0, math.inf, 0, 0], []):
        lockstep.cmd.publish(floats(bad))
    lockstep.graph.spin_for(0.7)
    assert lockstep.reward.count == r0, "a bad command stepped the simulation"
    assert lockstep.proc.poll() is None
    assert lockstep.proc.wait_for_log("dropped command"), lockstep.proc.log()
    lockstep.step(floats(ZERO))  # still answers a valid one
    assert lockstep.reward.count == r0 + 1


def test_timeout_ends_the_episode_resets_and_starts_the_next(lockstep: Sim) -> None:
    e0 = lockstep.episode.count
    # Every step so far (all tests above included) was in episode 1, which is 200 steps long.
    while lockstep.reward.count < 199:
        lockstep.step(floats(ZERO))
    lockstep.graph.spin_for(0.2)
    assert lockstep.events()[e0:] == [], "the episode ended early"
    lockstep.step(floats(ZERO))  # step 200
    assert lockstep.graph.spin_until(lambda: lockstep.events()[e0:] == ["timeout", "reset", "start"]), \
        lockstep.events()
    # The new episode's first observation follows at once, so a lock-step policy can answer it.
    assert lockstep.graph.spin_until(lambda: stamp_ns(lockstep.joints.last.header.stamp) == 200 * round(1e9 / FPS))
    lockstep.step(floats(ZERO))
    assert lockstep.proc.wait_for_log("episode 1 timeout after 200 steps")


def test_sigint_logs_the_summary_and_exits_0(lockstep: Sim) -> None:
    rc = stop(lockstep.proc)
    log = lockstep.proc.log()
    assert rc == 0, log
    assert "episodes 1, successes 0, success rate 0.000" in log, log


# --- lock-step, JointTrajectory commands, oracle to success, max_episodes=1 --------------------------
def _drive_to_success(sim: Sim, mirror, seed: int, command) -> None:
    """OGBench's oracle on a mirror simulation (same seed, same MuJoCo: it steps in step with the node's)
    drives the node's episode to the mirror's success; each step's state must match."""
    state = mirror.reset()
    np.testing.assert_array_equal(np.asarray(sim.state.last.data, dtype=np.float32), state)
    oracle = mirror.oracle(seed=seed)
    oracle.reset(state, mirror.info)
    for _ in range(mirror.max_episode_steps):
        action = oracle.select_action(state, mirror.info)
        sim.step(command(action))
        state, _, terminated, truncated, _ = mirror.step(action)
        if terminated or truncated:
            break
        sim.graph.spin_until(lambda s=state: np.array_equal(np.asarray(sim.state.last.data, np.float32), s), 2.0)
        np.testing.assert_array_equal(np.asarray(sim.state.last.data, dtype=np.float32), state)
    assert terminated, "the oracle did not solve the mirror episode"


def test_without_its_own_success_ending_episodes_another_nodes_verdict_does(log_dir) -> None:
    """success_ends_episode false: the simulator's success ends nothing (the arm steps on, reward 0) until a
    success on /episode from another node (a detector's), logged with the true outcome; a new episode follows."""
    from dfp_ros.sim.cube_env import CubeSim

    seed = 2
    params = {"mode": "lockstep", "seed": seed, "success_ends_episode": False, "lockstep_republish_s": 0.0}
    with CubeSim(seed=seed) as mirror, _run_sim(log_dir, 5, params, Float64MultiArray) as sim:
        _drive_to_success(sim, mirror, seed, floats)
        for _ in range(3):  # past its success: still stepping, reward 0, no event of its own
            sim.step(floats(ZERO))
        # (the first "start" may predate this process's subscription: events are volatile)
        assert sim.events() in ([], ["start"]) and [m.data for m in sim.reward.messages[-4:]] == [0.0] * 4
        verdict = sim.graph.publisher(contracts.TOPIC_EPISODE, String)
        assert sim.graph.wait_matched(verdict)
        verdict.publish(String(data="success"))
        assert sim.graph.spin_until(lambda: sim.events()[-3:] == ["success", "reset", "start"]), sim.events()
        assert sim.proc.wait_for_log("episode 1 success (from another node) after"), sim.proc.log()
        assert "true outcome success; successes 1/1" in sim.proc.log(), sim.proc.log()


def test_oracle_reaches_success_and_max_episodes_exits_0(log_dir) -> None:
    from dfp_ros.sim.cube_env import CubeSim

    seed = 2
    params = {"mode": "lockstep", "command_type": "joint_trajectory", "max_episodes": 1, "seed": seed,
              "lockstep_republish_s": 0.2}
    # Same seed, same MuJoCo: the mirror steps in step with the node's simulation.
    with CubeSim(seed=seed) as mirror, _run_sim(log_dir, 1, params, JointTrajectory) as sim:
        def traj(names, values, points=1) -> JointTrajectory:
            msg = JointTrajectory(joint_names=list(names))
            msg.points = [JointTrajectoryPoint(positions=[float(v) for v in values]) for _ in range(points)]
            return msg

        # Bad trajectories: unknown name, two points, a missing name.
        r0 = sim.reward.count
        sim.cmd.publish(traj([*ACTION_NAMES[:4], "elbow_joint"], ZERO))
        sim.cmd.publish(traj(ACTION_NAMES, ZERO, points=2))
        sim.cmd.publish(traj(ACTION_NAMES[:4], ZERO[:4]))
        j0 = sim.joints.count
        sim.graph.spin_for(0.5)
        assert sim.reward.count == r0 and sim.proc.poll() is None
        # No command for lockstep_republish_s: the observation is sent again, same stamp, no step.
        assert sim.joints.count > j0 and stamp_ns(sim.joints.last.header.stamp) == 0

        # Names in reverse order: the node must order by name, not position.
        _drive_to_success(sim, mirror, seed, lambda action: traj(ACTION_NAMES[::-1], action[::-1]))
        assert sim.graph.spin_until(lambda: "success" in sim.events()), sim.events()
        assert sim.events()[-1] == "success"  # the last episode: no reset after it
        assert sim.proc.wait(timeout=10) == 0, sim.proc.log()
        log = sim.proc.log()
        assert "episodes 1, successes 1, success rate 1.000" in log, log
        assert "dropped commands 3" in log, log


# --- real time, JointState commands, camera ---------------------------------------------------------
@pytest.fixture(scope="module")
def realtime(log_dir) -> Iterator[Sim]:
    params = {"mode": "realtime", "rate_hz": 20.0, "command_type": "joint_state", "camera_rate_hz": 4.0,
              "cameras": ["front", "wrist"], "image_size": 64}
    with _run_sim(log_dir, 2, params, JointState) as sim:
        yield sim


def test_realtime_cameras_publish_with_the_ticks_observation_stamp(realtime: Sim) -> None:
    _skip_without_rendering()
    # Frames come from the start, before any command (the ticks publish the held observation afresh).
    assert realtime.graph.spin_until(lambda: all(realtime.images[c].count >= 2 for c in ("front", "wrist")), 5.0), \
        realtime.proc.log()
    img = realtime.images["front"].last
    assert img.step == 64 * 3 and len(img.data) == 64 * 64 * 3
    _assert_images_share_state_stamps(realtime, (64, 64))
    # One render per 5th tick (4 of 20 Hz), both cameras at once: their stamps are the same ticks'.
    common = set(realtime.image_stamps("front")) & set(realtime.image_stamps("wrist"))
    assert len(common) >= 2, (realtime.image_stamps("front"), realtime.image_stamps("wrist"))


def test_realtime_waits_for_a_command_then_holds(realtime: Sim) -> None:
    j0 = realtime.joints.count
    realtime.graph.spin_for(0.5)
    assert realtime.reward.count == 0, "stepped before any command arrived"
    # Yet the state stays live (a policy's staleness watchdog needs it before it sends a command).
    assert realtime.joints.count - j0 >= 4
    # An unknown joint name is dropped (and starts nothing).
    realtime.cmd.publish(JointState(name=[*ACTION_NAMES[:4], "bogus"], position=ZERO))
    realtime.graph.spin_for(0.3)
    assert realtime.reward.count == 0
    realtime.cmd.publish(JointState(name=ACTION_NAMES, position=[0.0, 0.0, 0.0, 0.0, 1.0]))
    # One command, then the wall-clock timer keeps stepping with holds (zero actions).
    assert realtime.reward.wait_for(6, timeout=5.0), realtime.proc.log()
    # Two commands within one tick: the first is superseded (never applied); all counted on /diagnostics.
    # (A pair split by a tick, when this process stalls between the two, supersedes nothing: sent again.)
    diag = realtime.graph.collect("/diagnostics", DiagnosticArray)

    def counters() -> dict[str, str]:
        return {kv.key: kv.value for m in diag.messages for st in m.status for kv in st.values
                if st.hardware_id.endswith("sim_robot_node")}

    def superseded() -> bool:
        return int(counters().get("superseded_commands", 0)) >= 1

    for _ in range(5):
        realtime.cmd.publish(JointState(name=ACTION_NAMES, position=ZERO))
        realtime.cmd.publish(JointState(name=ACTION_NAMES, position=ZERO))
        if realtime.graph.spin_until(superseded, 2.0):
            break
    assert superseded(), counters()
    values = counters()
    assert int(values["holds"]) >= 4 and int(values["dropped_commands"]) == 1 and values["mode"] == "realtime", values
    assert int(values["steps"]) >= 6 and float(values["command_after_tick_p50_ms"]) >= 0, values
    rc = stop(realtime.proc)
    log = realtime.proc.log()
    assert rc == 0, log
    assert "dropped commands 1" in log and "holds 0," not in log, log


def test_an_unknown_camera_is_refused_at_start_in_one_line(log_dir) -> None:
    proc = start_node(MODULE, {"camera_rate_hz": 5.0, "cameras": ["front", "side"]}, ros_env(domain_id(3)),
                      log_dir=log_dir)
    try:
        rc = proc.wait(timeout=60)
    finally:
        stop(proc)
    log = proc.log()
    assert rc == CONFIG_ERROR_EXIT, log
    assert "cameras ['front', 'side'] must name each of ('front', 'wrist')" in log and "Traceback" not in log, log


def test_wait_for_subscribers_holds_the_first_episode_until_enough_nodes_listen(log_dir) -> None:
    """With wait_for_subscribers 2, one listener on /sim/state gets nothing; a second one starts the first
    episode and both get its first observation (a lock-step participant discovered late misses no step)."""
    dom = domain_id(4)
    proc = start_node(MODULE, {"mode": "lockstep", "wait_for_subscribers": 2}, ros_env(dom), log_dir=log_dir)
    try:
        with RosGraph(dom) as g:
            first = g.collect(contracts.TOPIC_SIM_STATE, Float32MultiArray, latched_qos(100))
            episode = g.collect(contracts.TOPIC_EPISODE, String)
            assert g.spin_until(lambda: "waiting for 2 subscriber(s)" in proc.log(), STARTUP_S), proc.log()
            g.spin_for(1.5)
            assert first.count == 0 and episode.count == 0, proc.log()
            second = g.collect(contracts.TOPIC_SIM_STATE, Float32MultiArray, latched_qos(100))
            assert g.spin_until(lambda: first.count and second.count, 10.0), proc.log()
            assert [m.data for m in episode.messages] == ["start"] and "episode 1 start" in proc.log()
            assert list(first.messages[0].data) == list(second.messages[0].data)
    finally:
        stop(proc)
