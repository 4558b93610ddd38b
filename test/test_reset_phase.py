"""The reset phase between episodes: the ROS-free rules (runtime/reset_phase.py) with a fake clock, the
effector controller on the real simulator, and reset_node with sim_robot_node (reset_mode external) and
policy_node as real processes."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.runtime.reset_phase import (
    BEGIN,
    FAILED,
    FAILED_NOW,
    HOMING,
    IDLE,
    IGNORED,
    NOTHING,
    OVERRIDDEN,
    RELEASING,
    SETTLED,
    SETTLING,
    EffectorHoming,
    JointHoming,
    ResetPhase,
    effector_pose,
)

PERIOD = 0.05
HOME = [0.0, -1.0, 1.5]
SIM_HOME = [0.0, 0.0, 2.5, 0.0, 0.0]  # config/reset.yaml's, in sim/state units
SIM_TOLERANCE = [0.1, 0.1, 0.1, 0.1, 0.15]
SIM_INDICES = [12, 13, 14, 15, 16, 17]


def joint_phase(home_timeout_s: float = 5.0, settle_s: float = 0.2, max_step: float = 0.1) -> ResetPhase:
    return ResetPhase(JointHoming(HOME, max_step), [0.01] * 3, home_timeout_s, settle_s)


def follow(phase: ResetPhase, start: np.ndarray, ticks: int, t0: float = 0.0, lag: bool = True):
    """A position-controlled arm that reaches each command one tick later; yields (time, step, measured)."""
    measured = np.asarray(start, np.float64)
    for i in range(ticks):
        now = t0 + i * PERIOD
        step = phase.on_state(measured, now)
        yield now, step, measured.copy()
        if step.command is not None and lag:
            measured = step.command.copy()


def test_joint_targets_walk_home_in_bounded_steps_settle_and_release():
    phase = joint_phase()
    assert phase.on_state(np.zeros(3), 0.0).command is None, "idle: no commands while an episode runs"
    assert phase.on_event("success", 0.0) == BEGIN and phase.phase == HOMING
    start = np.array([0.5, 0.0, 1.0])
    steps = list(follow(phase, start, 60))
    commands = [s.command for _, s, _ in steps]
    first = np.abs(commands[0] - start).max()
    assert first <= 0.1 + 1e-12, "the first target starts from the measured pose"
    assert max(np.abs(np.diff(commands, axis=0)).max(), first) <= 0.1 + 1e-12, "max_joint_step per tick"
    settled = [(t, i) for i, (t, s, _) in enumerate(steps) if s.event == SETTLED]
    assert len(settled) == 1 and phase.phase == RELEASING
    t_settled, i = settled[0]
    home_from = next(t for t, _, m in steps if np.abs(m - HOME).max() <= 0.01)
    assert t_settled - home_from == pytest.approx(0.2), "settle_s at home before the hand-back"
    np.testing.assert_allclose(steps[i][2], HOME, atol=0.01)
    assert phase.resets == 0
    phase.released(t_settled + 0.01)
    assert phase.phase == IDLE and phase.resets == 1 and phase.last_reset_s == pytest.approx(t_settled + 0.01)
    assert phase.stats(t_settled + 1.01)["since_last_reset_s"] == pytest.approx(1.0)


def test_events_during_a_reset_are_ignored_and_a_start_from_someone_else_ends_it():
    phase = joint_phase()
    assert phase.on_event("start", 0.0) == NOTHING, "an episode start while idle is not ours to handle"
    assert phase.on_event("reset", 0.0) == NOTHING
    assert phase.on_event("timeout", 0.0) == BEGIN
    assert phase.on_event("success", 0.1) == IGNORED, "a success button during the reset: not an episode"
    assert phase.on_event("discard", 0.2) == IGNORED
    assert phase.on_event("reset", 0.2) == NOTHING, "our own reset word"
    assert phase.phase == HOMING and phase.ignored == 2
    assert phase.on_event("start", 0.3) == OVERRIDDEN and phase.phase == IDLE, "the operator took charge"
    assert phase.on_state(np.zeros(3), 0.4).command is None
    assert phase.resets == 0


def test_leaving_the_tolerance_while_settling_goes_back_to_homing():
    phase = joint_phase(settle_s=1.0)
    phase.on_event("failure", 0.0)
    assert phase.on_state(np.array(HOME), 0.0).event is None and phase.phase == SETTLING
    phase.on_state(np.array(HOME) + 0.05, 0.5)  # pushed away
    assert phase.phase == HOMING
    phase.on_state(np.array(HOME), 0.6)
    assert phase.on_state(np.array(HOME), 1.55).event is None, "the settle time restarts when it comes back"
    assert phase.on_state(np.array(HOME), 1.6).event == SETTLED


def test_not_home_in_time_fails_holds_the_robot_and_retries_on_request():
    phase = joint_phase(home_timeout_s=1.0, max_step=0.01)
    phase.on_event("success", 0.0)
    stuck = np.array([0.5, 0.0, 1.0])  # blocked: never moves whatever it is told
    events = [phase.on_state(stuck, i * PERIOD).event for i in range(25)]
    assert events.count(FAILED_NOW) == 1 and events.index(FAILED_NOW) == 21, "the first state past 1 s"
    assert phase.phase == FAILED and phase.failures == 1 and "home_timeout_s 1" in phase.failure_reason
    stats = phase.stats(2.0)
    assert stats["phase"] == FAILED and stats["failure"] and stats["max_home_error"] == pytest.approx(1.0)
    holds = [phase.on_state(stuck, 2.0 + i * PERIOD).command for i in range(3)]
    for cmd in holds:
        np.testing.assert_allclose(cmd, stuck, err_msg="held where it stopped, not pushed on towards home")
    assert phase.on_event("success", 2.2) == IGNORED, "still no episode while failed"
    assert not joint_phase().retry(0.0), "nothing to retry while idle"
    assert phase.retry(3.0) and phase.phase == HOMING
    cmd = phase.on_state(stuck, 3.0).command
    assert np.abs(cmd - stuck).max() == pytest.approx(0.01), "homing again from where it is"
    assert phase.on_event("start", 3.1) == OVERRIDDEN and phase.phase == IDLE


def test_bad_settings_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="tolerance needs one value > 0 per home dimension"):
        ResetPhase(JointHoming(HOME, 0.1), [0.01, 0.01], 1.0, 0.1)
    with pytest.raises(ValueError, match="max_joint_step must be > 0"):
        JointHoming(HOME, 0.0)
    with pytest.raises(ValueError, match="gains, action_low and action_high need one value per home dimension"):
        EffectorHoming(SIM_HOME, [1.0] * 4, [-1.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match="home_timeout_s must be > 0"):
        ResetPhase(JointHoming(HOME, 0.1), [0.01] * 3, 0.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        JointHoming([0.0, float("nan")], 0.1)


def test_reset_node_refuses_parameters_that_do_not_fit_together():
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from dfp_ros.nodes.reset_node import PARAMS, make_phase

    defaults = {p.name: p.default for p in PARAMS}
    assert make_phase(defaults).homing.home.tolist() == SIM_HOME
    with pytest.raises(ValueError, match="effector_delta needs state_type float32_array, 6 state_indices"):
        make_phase({**defaults, "state_type": "joint_state"})
    with pytest.raises(ValueError, match="joint_position: 3 home values but 2 joint_names"):
        make_phase({**defaults, "command_kind": "joint_position", "state_type": "joint_state",
                    "joint_names": ["a", "b"], "home": HOME, "tolerance": [0.01] * 3})
    phase = make_phase({**defaults, "command_kind": "joint_position", "state_indices": [0, 1, 2], "home": HOME,
                        "tolerance": [0.01] * 3})
    assert isinstance(phase.homing, JointHoming) and phase.homing.max_step == 0.02


def test_the_effector_controller_takes_the_simulated_arm_home_within_the_action_limits():
    """On the real simulator: an episode left the arm somewhere with the cube in its gripper; between
    episodes (step_outside_episode) the proportional controller brings it home, every action clipped to
    the limits, and the next episode keeps the arm there while the cube is placed anew."""
    from dfp_ros.data.state_oracle import StateOracle
    from dfp_ros.sim.cube_env import CubeSim

    sim, oracle = CubeSim(seed=2), StateOracle(seed=2)
    try:
        state = sim.reset()
        for _ in range(40):  # the expert picks the cube up
            state, *_ = sim.step(oracle.act(state))
        phase = ResetPhase(EffectorHoming(SIM_HOME, [1.0, 1.0, 1.0, 1.5, 0.15], [-1.0] * 5, [1.0] * 5),
                           SIM_TOLERANCE, 10.0, 0.5)
        assert phase.on_event("success", 0.0) == BEGIN
        actions, event, now = [], None, 0.0
        while event is None and now < 12.0:
            now += PERIOD
            step = phase.on_state(effector_pose(state, SIM_INDICES), now)
            actions.append(step.command)
            event = step.event
            state = sim.step_outside_episode(step.command)
        assert event == SETTLED, phase.stats(now)
        assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() == 1.0, "clipped to the limits, and used"
        pose = effector_pose(state, SIM_INDICES)
        assert (np.abs(pose - SIM_HOME) <= SIM_TOLERANCE).all(), pose
        cube_before = state[19:22].copy()
        new = sim.reset(keep_arm=True)
        np.testing.assert_allclose(effector_pose(new, SIM_INDICES), pose, atol=1e-3)  # float32 yaw cos/sin
        assert np.abs(new[19:22] - cube_before).max() > 0.05, "the cube was placed anew"
    finally:
        sim.close()
        oracle.close()


def test_reset_node_takes_the_simulated_arm_home_between_episodes_and_starts_the_next(tmp_path):
    """sim_robot_node (lock-step, reset_mode external) + policy_node (bundled model, enabled) + reset_node:
    after the first episode's end the reset node announces `reset`, drives the arm home through policy_node
    (every command within the limits), ignores a success pressed meanwhile, and a `start` follows; the
    next episode keeps the arm where the reset left it."""
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from ros_graph import RosGraph, domain_id, latched_qos, ros_env, start_node, stop
    from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    from dfp_ros import contracts
    from dfp_ros.nodes import ros_io
    from dfp_ros.nodes.policy_params import default_model_path
    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    env = ros_env(domain_id(57))
    procs = []
    try:
        with RosGraph(domain_id(57)) as g:
            events = g.collect(contracts.TOPIC_EPISODE, String)
            executed = g.collect(contracts.TOPIC_POLICY_EXECUTED, JointTrajectory)
            teleop = g.collect(contracts.TOPIC_TELEOP_COMMAND, Float64MultiArray)
            states = g.collect(contracts.TOPIC_SIM_STATE, Float32MultiArray, latched_qos(1000))
            button = g.publisher(contracts.TOPIC_EPISODE, String, ros_io.EVENTS)
            # The policy and the reset node first, so each has found the other before the loop runs.
            procs.append(policy := start_node("dfp_ros.nodes.policy_node", {
                "enabled": True, "trigger": "observation", "device": "cpu"}, env, log_dir=tmp_path))
            procs.append(reset := start_node("dfp_ros.nodes.reset_node", {"settle_s": 1.0, "home_timeout_s": 30.0},
                                             env, log_dir=tmp_path))
            assert policy.wait_for_log("ready:", 90.0), policy.log()
            assert reset.wait_for_log("reset to home", 30.0), reset.log()
            assert g.wait_matched(button, 2), "policy and reset node listen to the episode topic"
            g.spin_for(1.0)
            procs.append(sim := start_node("dfp_ros.nodes.sim_robot_node", {
                "mode": "lockstep", "reset_mode": "external", "seed": 1}, env, log_dir=tmp_path))
            words = lambda: [m.data for m in events.messages]  # noqa: E731
            assert g.spin_until(lambda: "reset" in words(), 120.0), f"{sim.log()}\n{reset.log()}"
            button.publish(String(data="success"))  # the operator's button, during the reset
            assert g.spin_until(lambda: "start" in words()[words().index("reset"):], 60.0), reset.log()
            t_reset = events.arrivals[words().index("reset")]
            t_start = events.arrivals[words().index("start", words().index("reset"))]
            # The next episode runs on (lock-step: as fast as this machine steps, so counted, not timed).
            policy_ticks = lambda: sum(  # noqa: E731
                m.header.frame_id == "policy" for m, t in zip(executed.messages, executed.arrivals, strict=True)
                if t > t_start)
            assert g.spin_until(lambda: policy_ticks() >= 20, 30.0), "the policy does not drive the next episode"
    finally:
        for p in reversed(procs):
            stop(p)

    # Three publishers (simulator, reset node, this test): their order is only kept per publisher. (The
    # simulator's first start may come before this probe is matched.)
    seen = words()[1:] if words()[0] == "start" else words()
    end = "success" if "episode 1 success" in sim.log() else "timeout"
    assert sorted(seen[:seen.index("start")]) == sorted([end, "reset", "success"]), words()
    assert contracts.EPISODE_RESET_FAILED not in words(), words()
    log = reset.log()
    assert "ignored 'success' during the reset" in log and "reset 1 done in" in log, log
    assert "episode 2 start (external reset)" in sim.log(), sim.log()

    # Every command within the limits: the reset node's own, and what policy_node executed.
    assert teleop.count >= 10 and np.abs([m.data for m in teleop.messages]).max() <= 1.0
    meta = PolicyRuntime(default_model_path(), device="cpu", verify=False).meta
    during = [m for m, t in zip(executed.messages, executed.arrivals, strict=True) if t_reset < t < t_start]
    human = np.array([m.points[0].positions for m in during if m.header.frame_id == "human"])
    assert len(human) >= 10, [m.header.frame_id for m in during]
    assert (human >= np.array(meta.action_low) - 1e-9).all() and (human <= np.array(meta.action_high) + 1e-9).all()
    after = [m.header.frame_id for m, t in zip(executed.messages, executed.arrivals, strict=True) if t > t_start]
    assert after.count("policy") >= 20, "the policy drives the next episode"

    # The arm reached home and stayed there for the settle time (a run of states within tolerance).
    values = [np.asarray(m.data, np.float64) for m in states.messages]
    window = [v for v, t in zip(values, states.arrivals, strict=True) if t_reset < t < t_start]
    home = [bool((np.abs(effector_pose(v, SIM_INDICES) - SIM_HOME) <= SIM_TOLERANCE).all()) for v in window]
    longest = max(len(run) for run in "".join("1" if h else "0" for h in home).split("0"))
    assert longest >= 10, f"longest run at home: {longest} of {len(window)} states between reset and start"
    # The next episode: once, the cube placed anew (it jumps) while the arm's joints stay exactly where they
    # were (any physics step moves them a little; the effector pose in a stepped state lags its joints by
    # one physics substep, so the joints are what to compare).
    teleports = [i for i in range(1, len(values)) if states.arrivals[i] > t_reset
                 and np.abs(values[i][19:22] - values[i - 1][19:22]).max() > 0.3
                 and np.abs(values[i][:6] - values[i - 1][:6]).max() < 1e-6]
    assert len(teleports) == 1, teleports
