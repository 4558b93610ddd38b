"""policy_node as a real separate process over DDS, on an isolated graph (test/ros_graph.py).

The test process plays the robot: it publishes /sim/state at 20 Hz and watches ~/action_chunk,
~/command, ~/executed and /diagnostics; for the human takeover it also plays a teleop device.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from dfp_ros.runtime.policy_runtime import PolicyRuntime

pytestmark = pytest.mark.realtime  # control rate and commands per period: run alone, not beside other tests

NODE = "dfp_ros.nodes.policy_node"
MODEL = Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx"
PERIOD = 0.05  # the bundled model's 20 Hz
STATE_DIM = 28
HUMAN = [0.5, -0.25, 0.125, 0.0, 0.25]  # a teleop command inside the model's action range: executed as sent


@pytest.fixture(scope="module")
def model() -> PolicyRuntime:
    return PolicyRuntime(MODEL, device="cpu")


class Robot:
    """The test's side of the graph: a /sim/state publisher and collectors of the node's outputs."""

    def __init__(self, graph: RosGraph):
        self.graph = graph
        self.state_pub = graph.publisher("/sim/state", Float32MultiArray)
        self.estop_pub = graph.publisher("/estop", Bool)
        self.teleop_pub = graph.publisher("/teleop/command", Float64MultiArray)
        self.engaged_pub = graph.publisher("/teleop/engaged", Bool)
        self.executed = graph.collect("/policy_node/executed", JointTrajectory)
        self.chunks = graph.collect("/policy_node/action_chunk", JointTrajectory)
        self.commands = graph.collect("/policy_node/command", Float64MultiArray)
        self.diag = graph.collect("/diagnostics", DiagnosticArray)
        self.published: list[tuple[int, float]] = []  # (wall ns, monotonic) of each /sim/state
        self.rng = np.random.default_rng(0)
        # Clients made once: creating one per call starts a discovery round each time, which on
        # this 2-core machine delays our /sim/state enough to trip the node's 2-period watchdog.
        self.clients = {SetBool: graph.node.create_client(SetBool, "/policy_node/enable"),
                        SetParameters: graph.node.create_client(SetParameters, "/policy_node/set_parameters")}
        self.intervene = graph.node.create_client(SetBool, "/policy_node/intervene")

    def state(self, nan: bool = False) -> Float32MultiArray:
        values = self.rng.uniform(-0.5, 0.5, STATE_DIM).astype(np.float32)
        if nan:
            values[3] = np.nan
        return Float32MultiArray(data=values.tolist())

    def feed(self, seconds: float, nan_every: int = 0, teleop: list[float] | None = None) -> None:
        """Publish /sim/state at 20 Hz for `seconds` (and `teleop` on /teleop/command before each), spinning
        in between."""
        n = 0
        next_t = time.monotonic()
        end = next_t + seconds
        while time.monotonic() < end:
            if teleop is not None:
                self.teleop_pub.publish(Float64MultiArray(data=teleop))
            self.published.append((time.time_ns(), time.monotonic()))
            self.state_pub.publish(self.state(nan=bool(nan_every) and n % nan_every == nan_every - 1))
            n += 1
            next_t += PERIOD
            self.graph.spin_until(lambda t=next_t: time.monotonic() >= t, max(0.0, next_t - time.monotonic()))

    def diagnostics(self, timeout: float = 3.0) -> dict[str, str]:
        """Values of the next policy_node diagnostics message."""
        n = self.diag.count
        assert self.diag.wait_for(n + 1, timeout), "no /diagnostics from policy_node"
        for msg in reversed(self.diag.messages):
            for status in msg.status:
                if "policy_node" in status.name:
                    return {kv.key: kv.value for kv in status.values}
        raise AssertionError("diagnostics carry no policy_node status")

    def diagnostics_since(self, t: float) -> list[dict[str, str]]:
        """Values of every policy_node diagnostics message that arrived after monotonic time t."""
        return [{kv.key: kv.value for kv in st.values}
                for m, a in zip(self.diag.messages, self.diag.arrivals, strict=True) if a > t
                for st in m.status if "policy_node" in st.name]

    def call(self, srv_type, request, timeout: float = 10.0, client=None):
        client = client or self.clients[srv_type]
        assert self.graph.spin_until(client.service_is_ready, timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        assert self.graph.spin_until(future.done, timeout), f"service {client.srv_name} did not answer"
        return future.result()

    @staticmethod
    def _set_request(name: str, value: str | bool) -> SetParameters.Request:
        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        return SetParameters.Request(parameters=[Parameter(name=name, value=pv)])

    def set_param(self, name: str, value: str | bool):
        """The `ros2 param set` equivalent: the node's SetParameters service."""
        return self.call(SetParameters, self._set_request(name, value)).results[0]

    def set_param_while_feeding(self, name: str, value: str | bool, seconds: float):
        """Set a parameter while /sim/state keeps flowing (so the watchdog has no reason to stop)."""
        client = self.clients[SetParameters]
        assert self.graph.spin_until(client.service_is_ready, 10.0)
        future = client.call_async(self._set_request(name, value))
        self.feed(seconds)
        assert self.graph.spin_until(future.done, 10.0)
        return future.result().results[0]

    def commands_after(self, t: float) -> list[Float64MultiArray]:
        return [m for m, a in zip(self.commands.messages, self.commands.arrivals, strict=True) if a > t]

    def executed_after(self, t: float) -> list[JointTrajectory]:
        return [m for m, a in zip(self.executed.messages, self.executed.arrivals, strict=True) if a > t]


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    """One policy node (timer trigger, enabled, watchdog stop) shared by the tests of this file; `fresh_node`
    puts it back to its start-up state before each."""
    dom = domain_id()
    log_dir = tmp_path_factory.mktemp("policy_node")
    proc = start_node(NODE, {"model_path": str(MODEL), "enabled": True, "watchdog_action": "stop",
                             "diagnostics_period_s": 0.2, "device": "cpu", "seed": 1}, ros_env(dom), log_dir=log_dir)
    try:
        with RosGraph(dom) as graph:
            r = Robot(graph)
            r.proc = proc
            assert graph.wait_matched(r.state_pub, timeout=20.0), f"policy_node did not come up:\n{proc.log()}"
            assert proc.poll() is None, proc.log()
            assert graph.spin_until(lambda: all(c.service_is_ready() for c in r.clients.values()), 10.0)
            graph.spin_for(0.5)  # let discovery settle: the first exchanges after a match are slow
            yield r
    finally:
        code = stop(proc)
        print(proc.log())
        assert code in (0, -2), f"policy_node exited with {code}"


@pytest.fixture(autouse=True)
def fresh_node(request):
    """Each test starts from the shared node's start-up state, whatever the tests before it left:
    the bundled model, not a dry run, enabled with no e-stop latched, observations flowing."""
    if "robot" not in request.fixturenames:
        yield
        return
    robot = request.getfixturevalue("robot")
    assert robot.set_param("dry_run", False).successful
    assert robot.set_param("model_path", str(MODEL)).successful
    assert robot.call(SetBool, SetBool.Request(data=True)).success  # clears an e-stop latch too
    robot.engaged_pub.publish(Bool(data=False))  # no human holds the robot
    assert robot.call(SetBool, SetBool.Request(data=False), client=robot.intervene).success
    robot.feed(0.3)
    yield


def test_closed_loop_chunks_and_commands(robot, model):
    robot.feed(2.0)
    assert robot.chunks.count >= 5 and robot.commands.count >= 20, robot.proc.log()
    meta = model.meta
    stamps = np.array([ns for ns, _ in robot.published])
    for chunk in robot.chunks.messages:
        assert list(chunk.joint_names) == meta.action_names
        assert len(chunk.points) == meta.horizon
        for i, p in enumerate(chunk.points):
            t = p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
            assert t == pytest.approx((i + 1) / meta.fps, abs=1e-6)
        # Stamped with its observation: the node's receipt time of one of our messages (same clock).
        stamp = chunk.header.stamp.sec * 10**9 + chunk.header.stamp.nanosec
        lag = stamp - stamps[stamps <= stamp].max() if (stamps <= stamp).any() else -1
        assert 0 <= lag < 2 * PERIOD * 1e9, f"chunk stamp {stamp} is not the receipt of an observation (lag {lag} ns)"
    low, high = np.array(meta.action_low), np.array(meta.action_high)
    for cmd in robot.commands.messages:
        a = np.array(cmd.data)
        assert a.shape == (meta.action_dim,) and np.isfinite(a).all()
        assert (a >= low - 1e-9).all() and (a <= high + 1e-9).all()
    # Commands follow the control rate (20 Hz) while observations flow.
    gaps = np.diff(robot.commands.arrivals[-20:])
    assert np.median(gaps) == pytest.approx(PERIOD, abs=0.01)
    diag = robot.diagnostics()
    assert diag["torch_imported"] == "false"
    assert diag["model_sha256"] == model.sha256
    # Observation -> chunk contains the inference (and the wait for the inference thread) of the same chunks.
    assert float(diag["obs_to_chunk_p50_ms"]) >= float(diag["inference_latency_p50_ms"]) > 0
    assert float(diag["obs_to_chunk_p99_ms"]) >= float(diag["inference_latency_p99_ms"])
    assert float(diag["control_rate_hz"]) == pytest.approx(20.0, rel=0.15)
    assert diag["control_thread_scheduling"] == "other"  # no real-time scheduling unless asked for


def test_watchdog_stops_commands_and_resumes(robot):
    robot.feed(0.5)
    last_pub = robot.published[-1][1]
    robot.graph.spin_for(1.0)
    # Counted, not timed (this process's stalls would move the arrival times): the ticks within
    # max_obs_age_s (two periods) of the last state, one at the boundary, one in flight.
    after = [a for a in robot.commands.arrivals if a > last_pub]
    assert len(after) <= 4, f"{len(after)} commands after the last observation (ticks at {np.diff(after)})"
    diag = robot.diagnostics()
    assert diag["watchdog"] == "stale" and diag["safety_state"] == "stale_stop"
    t = time.monotonic()
    robot.feed(0.6)
    assert len(robot.commands_after(t)) >= 5, "commands did not resume with observations"
    # Read while observations flowed: once they stop, the watchdog is right to say stale again.
    assert any(d["watchdog"] == "ok" for d in robot.diagnostics_since(t))


def test_nan_state_dropped_counted_never_commanded(robot):
    before = int(robot.diagnostics().get("dropped_non_finite", "0"))
    t = time.monotonic()
    robot.feed(1.0, nan_every=2)  # every other message carries a NaN
    cmds = robot.commands_after(t)
    assert cmds, "the good half of the messages should still drive commands"
    assert all(math.isfinite(x) for c in cmds for x in c.data)
    after = int(robot.diagnostics()["dropped_non_finite"])
    assert after - before >= 8
    assert robot.proc.poll() is None
    assert "sim/state (non_finite): " in robot.proc.log()  # a clear log line naming source and reason


def test_estop_latches_until_enabled(robot):
    robot.feed(0.3)
    robot.estop_pub.publish(Bool(data=True))
    t = time.monotonic()
    robot.feed(0.2)
    robot.estop_pub.publish(Bool(data=False))  # releasing the button does not re-enable
    robot.feed(0.8)
    # "At once": the ticks during the e-stop message's own trip (three at most: 150 ms on a loaded 2-core
    # machine), counted rather than timed by this process's clock.
    assert len(robot.commands_after(t)) <= 3, "commands after the e-stop"
    assert robot.diagnostics()["estop"] == "true"
    resp = robot.call(SetBool, SetBool.Request(data=True))
    assert resp.success and "e-stop cleared" in resp.message
    t = time.monotonic()
    robot.feed(0.6)
    assert len(robot.commands_after(t)) >= 5


def test_dry_run_publishes_chunks_not_commands(robot):
    assert robot.set_param("dry_run", True).successful
    robot.feed(0.2)
    t = time.monotonic()
    chunks_before = robot.chunks.count
    robot.feed(1.0)
    assert robot.chunks.count - chunks_before >= 2
    assert not robot.commands_after(t + 0.15)


def test_broken_model_refused_old_keeps_running(robot, model, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    robot.feed(0.3)
    result = robot.set_param("model_path", str(broken))
    assert not result.successful and "broken.onnx" in result.reason and "not a loadable ONNX model" in result.reason
    missing = robot.set_param("model_path", str(tmp_path / "nope.onnx"))
    assert not missing.successful and "does not exist" in missing.reason
    t = time.monotonic()
    robot.feed(0.6)
    assert len(robot.commands_after(t)) >= 5
    diag = robot.diagnostics()
    assert diag["model_sha256"] == model.sha256 and "refused" in diag["model_event"]


def test_valid_model_swap_keeps_ticking(robot, model, tmp_path):
    # The same model from another path: swapped between ticks without missing commands.
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(MODEL.read_bytes())
    robot.feed(0.5)
    t = time.monotonic()
    before = robot.diagnostics_since(t - 0.45)[-1]  # (every 0.2 s) while the states flowed
    assert robot.set_param_while_feeding("model_path", str(copy), 0.7).successful
    assert len(robot.commands_after(t)) >= 10
    # The node's own count, not this process's arrival times: at most one tick went without an action. (A
    # model_path is loaded and checked in the parameter callback, on the executor thread, so that its answer
    # can say whether it was accepted: on a loaded machine the states wait meanwhile and the first plan after
    # it may come a tick late.)
    after = [d for d in robot.diagnostics_since(t) if d["safety_state"] == "ok"][-1]  # (while the states flowed)
    lost = int(after["ticks_without_action"]) - int(before["ticks_without_action"])
    assert lost <= 1, f"a swap cost {lost} ticks their action"
    assert str(copy) in robot.diagnostics()["model_source"]


def test_control_thread_priority_applied_or_refused_with_a_warning(tmp_path):
    """control_thread_priority: the control thread runs SCHED_FIFO where allowed; elsewhere the node
    says so and ticks with ordinary scheduling. Diagnostics report what is in effect either way."""
    dom = domain_id(offset=41)
    proc = start_node(NODE, {"model_path": str(MODEL), "enabled": True, "device": "cpu", "control_thread_priority": 10,
                             "diagnostics_period_s": 0.2}, ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as graph:
            r = Robot(graph)
            assert graph.wait_matched(r.state_pub, timeout=20.0), proc.log()
            graph.spin_for(0.5)
            r.feed(1.0)
            assert r.commands.count >= 10, proc.log()
            scheduling = r.diagnostics()["control_thread_scheduling"]
            refused = "SCHED_FIFO refused" in proc.log()
            assert (scheduling, refused) in (("fifo:10", False), ("other", True)), (scheduling, proc.log())
    finally:
        stop(proc)


def test_lockstep_one_command_per_observation(tmp_path):
    """trigger=observation: each observation gets exactly one command, promptly (lock-step eval)."""
    dom = domain_id(offset=37)  # its own graph: its topics must not reach the shared node above
    proc = start_node(NODE, {"model_path": str(MODEL), "enabled": True, "trigger": "observation", "device": "cpu"},
                      ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as graph:
            r = Robot(graph)
            assert graph.wait_matched(r.state_pub, timeout=20.0), proc.log()
            assert graph.spin_until(lambda: r.commands.subscription.get_publisher_count() >= 1, 10.0)
            graph.spin_for(0.5)  # let discovery settle: the first exchanges after a match are slow
            waits = []
            for i in range(12):
                t = time.monotonic()
                r.state_pub.publish(r.state())
                assert r.commands.wait_for(i + 1, timeout=2.0), f"no command for observation {i}:\n{proc.log()}"
                waits.append(time.monotonic() - t)
            graph.spin_for(0.2)
            assert r.commands.count == 12  # one per observation, none from a timer
            assert r.chunks.count == 3  # H = 5: re-planned at observations 0, 5, 10
            assert np.median(waits) < 0.02, f"lock-step answers too slowly: {waits}"

            # Human takeover and hand-back: still exactly one command per observation, each acting on it.
            assert graph.wait_matched(r.engaged_pub) and graph.wait_matched(r.teleop_pub)
            for i, engaged in enumerate([None] * 2 + [True] + [None] * 3 + [False] + [None] * 3):
                if engaged is not None:
                    r.engaged_pub.publish(Bool(data=engaged))
                r.teleop_pub.publish(Float64MultiArray(data=HUMAN))
                graph.spin_for(0.05)  # the switch and the command before the observation
                r.state_pub.publish(r.state())
                assert r.executed.wait_for(13 + i, timeout=2.0), f"no command for observation {12 + i}:\n{proc.log()}"
            graph.spin_for(0.2)
            frames = [m.header.frame_id for m in r.executed.messages]
            assert frames == ["policy"] * 14 + ["human"] * 4 + ["policy"] * 4, frames
            stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in r.executed.messages]
            assert (np.diff(stamps) > 0).all(), "consecutive observations' stamps: none missing, none doubled"
            assert r.commands.count == 22
    finally:
        stop(proc)


def test_model_update_topic_checks_hash(robot, model):
    """/dfp/model_update: bytes whose sha256 is not the label are refused; a matching one is swapped in."""
    from ros_graph import latched_qos
    from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

    pub = robot.graph.publisher("/dfp/model_update", UInt8MultiArray, latched_qos())
    data = MODEL.read_bytes()
    bad = UInt8MultiArray(data=data)
    bad.layout.dim = [MultiArrayDimension(label="sha256:" + "0" * 64, size=len(data), stride=len(data))]
    t = time.monotonic()
    pub.publish(bad)
    robot.feed(0.5)
    assert any("does not match" in d["model_event"] for d in robot.diagnostics_since(t)), robot.proc.log()[-2000:]
    good = UInt8MultiArray(data=data)
    good.layout.dim = [MultiArrayDimension(label=model.sha256, size=len(data), stride=len(data))]
    robot.feed(0.5)
    t = time.monotonic()
    before = robot.diagnostics_since(t - 0.45)[-1]  # (every 0.2 s) while the states flowed
    pub.publish(good)
    robot.feed(0.6)
    assert any("model_update" in d["model_source"] for d in robot.diagnostics_since(t))
    assert len(robot.commands_after(t)) >= 6  # kept commanding through the swap
    # At most the one tick a loaded machine may lose anyway, counted by the node while the states flowed (the
    # bound of a model_path swap; that the load runs off the executor is test_model_loader's to show).
    after = [d for d in robot.diagnostics_since(t) if d["safety_state"] == "ok"][-1]
    lost = int(after["ticks_without_action"]) - int(before["ticks_without_action"])
    assert lost <= 1, f"a pushed model cost {lost} ticks their action"
    assert after["model_pushes_superseded"] == "0"  # each push loaded before the next came
    robot.graph.node.destroy_publisher(pub)


def test_a_pushed_model_failing_its_acceptance_test_here_is_refused_and_the_old_keeps_running(robot, model,
                                                                                             tmp_path):
    """A model whose stored reference this machine's provider does not reproduce (built on purpose by
    moving the reference): refused with the error and the provider named, commands go on."""
    from model_files import shift_acceptance_reference
    from ros_graph import latched_qos
    from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

    off = tmp_path / "off.onnx"
    shift_acceptance_reference(MODEL, off, 0.2)
    result = robot.set_param("model_path", str(off))
    assert not result.successful
    assert "fails its acceptance test on CPUExecutionProvider" in result.reason and "by 0.2 of" in result.reason
    data = off.read_bytes()
    pub = robot.graph.publisher("/dfp/model_update", UInt8MultiArray, latched_qos())
    update = UInt8MultiArray(data=data)
    update.layout.dim = [MultiArrayDimension(label=PolicyRuntime(off, verify=False).sha256, size=len(data),
                                             stride=len(data))]
    t = time.monotonic()
    pub.publish(update)
    robot.feed(0.6)
    events = [d["model_event"] for d in robot.diagnostics_since(t)]
    assert any("fails its acceptance test on CPUExecutionProvider" in e for e in events), events
    assert len(robot.commands_after(t)) >= 6
    diag = robot.diagnostics()
    assert diag["model_sha256"] == model.sha256 and "acceptance test passed on CPUExecutionProvider" in \
        diag["model_acceptance"]
    robot.graph.node.destroy_publisher(pub)


def test_wrong_size_state_dropped(robot):
    before = int(robot.diagnostics().get("dropped_wrong_size", "0"))
    for _ in range(3):
        robot.state_pub.publish(Float32MultiArray(data=[0.0] * (STATE_DIM - 1)))
    robot.feed(0.3)
    assert int(robot.diagnostics()["dropped_wrong_size"]) - before == 3
    assert robot.proc.poll() is None



def test_human_takeover_and_hand_back_keep_ticking(robot, model):
    """The dead-man (teleop/engaged) hands the robot to the teleop commands and back: ~/executed says
    policy -> human -> policy with at most one tick lost at the switches, the human's ticks carry the human's
    command, and ~/command is the same stream. (One tick per observation exactly: the lock-step test.)"""
    before = robot.diagnostics()
    t = time.monotonic()
    robot.feed(0.5, teleop=HUMAN)  # sent but not engaged: ignored
    robot.engaged_pub.publish(Bool(data=True))
    robot.feed(1.0, teleop=HUMAN)
    robot.engaged_pub.publish(Bool(data=False))
    robot.feed(1.0, teleop=HUMAN)
    robot.graph.spin_for(0.1)
    executed = robot.executed_after(t)
    frames = [m.header.frame_id for m in executed]
    runs = [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]
    assert runs == ["policy", "human", "policy"], runs
    assert frames.count("human") >= 15, frames
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in executed])
    assert (np.diff(stamps) >= 0).all(), "each tick acts on the newest observation"
    # Timer ticks against the test's jittery 20 Hz stream: a tick may act on the same observation as the one
    # before (the next one came late), but the ticks go on: none without an action (the node's count).
    # (Read while the states flowed: once they stop, the queue runs out before the watchdog says stale.)
    fed = [d for d in robot.diagnostics_since(t) if d["safety_state"] == "ok"]  # every 0.2 s, from before the switches
    lost = int(fed[-1]["ticks_without_action"]) - int(fed[0]["ticks_without_action"])
    assert lost <= 1, f"{lost} ticks lost at the switches"  # (the hand-back's first plan may come a tick late)
    for m in executed:
        assert list(m.joint_names) == model.meta.action_names
        if m.header.frame_id == "human":
            np.testing.assert_allclose(m.points[0].positions, HUMAN)
    commands = robot.commands_after(t)
    assert len(commands) == len(executed)
    np.testing.assert_allclose([c.data for c in commands], [m.points[0].positions for m in executed])
    after = robot.diagnostics()
    assert int(after["interventions"]) == int(before["interventions"]) + 1 and after["intervening"] == "false"
    assert int(after["human_ticks"]) - int(before["human_ticks"]) == frames.count("human")


def test_teleop_silent_while_engaged_stops_until_released(robot):
    """A teleop device that goes silent while it holds the robot: the watchdog stops it (stop), the policy
    does not take over; ~/intervene false hands back."""
    before = int(robot.diagnostics()["teleop_timeouts"])
    assert robot.call(SetBool, SetBool.Request(data=True), client=robot.intervene).success
    t = time.monotonic()
    robot.feed(0.3, teleop=HUMAN)
    silent = time.monotonic()
    robot.feed(1.0)  # observations go on, teleop commands stop
    frames = [m.header.frame_id for m in robot.executed_after(t)]
    assert set(frames) == {"human"}, frames
    # Within teleop_timeout_s (0.25 s: five ticks), one at the boundary and one in flight; counted, not timed.
    late = robot.commands_after(silent)
    assert len(late) <= 7, f"{len(late)} commands after the teleop device went silent"
    diag = robot.diagnostics()
    assert diag["control"] == "lost" and int(diag["teleop_timeouts"]) == before + 1
    assert diag["safety_state"] == "teleop_stop"
    assert "teleop silent while the human held the robot" in robot.proc.log()
    resp = robot.call(SetBool, SetBool.Request(data=False), client=robot.intervene)
    assert resp.success and "control" in resp.message
    t = time.monotonic()
    robot.feed(0.6)
    frames = [m.header.frame_id for m in robot.executed_after(t)]
    assert len(frames) >= 5 and set(frames) == {"policy"}, frames


def test_a_gpu_provider_asked_for_by_name_and_missing_refuses_to_start_in_one_line(tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    proc = start_node(NODE, {"model_path": str(MODEL), "device": "tensorrt", "trt_fp16": True,
                             "trt_cache_dir": str(tmp_path / "trt")}, ros_env(domain_id(offset=43)), log_dir=tmp_path)
    assert proc.wait(timeout=60) == 1
    log = proc.log()
    assert "cannot start" in log and "device 'tensorrt' asked for" in log and "Traceback" not in log, log
