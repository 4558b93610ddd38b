"""The scripted operator for rehearsing human-in-the-loop RL: its rules without ROS (a fake clock, the
real simulator and OGBench's planner), and oracle_teleop_node in its operator role taking over from a
policy that never moves, with sim_robot_node and policy_node as real processes."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.data.scripted_operator import HAND_BACK, TAKEOVER, ScriptedOperator
from dfp_ros.data.state_oracle import GRASPED, LIFTED, REACH, StateOracle
from dfp_ros.sim.cube_env import CubeSim

PERIOD = 0.05  # cube-single's control period
ZERO = np.zeros(5, np.float32)


@pytest.fixture(scope="module")
def oracle():
    o = StateOracle(seed=5)
    yield o
    o.close()


def state_with(effector: tuple, opening: float, cube: tuple) -> np.ndarray:
    """A published 28-number state with the effector, gripper opening and cube placed (metres, OGBench's
    compute_observation scaling); the rest zeros and an upright cube."""
    s = np.zeros(28, np.float32)
    s[12:15] = (np.asarray(effector) - (0.425, 0.0, 0.0)) * 10.0
    s[15], s[17] = 1.0, opening * 3.0
    s[19:22] = (np.asarray(cube) - (0.425, 0.0, 0.0)) * 10.0
    s[22], s[26] = 1.0, 1.0
    return s


def test_progress_is_the_subgoal_reached_read_from_the_state(oracle):
    far = oracle.progress(state_with((0.4, 0.2, 0.25), 0.0, (0.4, 0.0, 0.02)))
    assert far.stage == REACH and not far.held and far.gripper_to_cube == pytest.approx(np.hypot(0.2, 0.23), abs=1e-6)
    assert far.cube_height == pytest.approx(0.0, abs=1e-6)
    gripped = oracle.progress(state_with((0.4, 0.0, 0.025), 0.56, (0.4, 0.0, 0.02)))
    assert gripped.held and gripped.stage == GRASPED
    assert oracle.progress(state_with((0.4, 0.0, 0.025), 0.05, (0.4, 0.0, 0.02))).stage == REACH, "fingers open"
    lifted = oracle.progress(state_with((0.4, 0.0, 0.10), 0.56, (0.4, 0.0, 0.095)))
    assert lifted.stage == LIFTED and lifted.cube_height == pytest.approx(0.075, abs=1e-6)
    target = oracle.targets[0][0]
    placed = oracle.progress(state_with((0.3, 0.3, 0.3), 0.0, tuple(target)))
    assert placed.cubes_placed == 1 and placed.stage == 3 and placed.cube_to_target == pytest.approx(0.0, abs=1e-6)


def test_takes_over_after_the_time_without_a_new_subgoal_not_before(oracle):
    op = ScriptedOperator(oracle, takeover_after_s=1.0, hand_back_after_s=0.5)
    far = state_with((0.4, 0.2, 0.25), 0.0, (0.4, 0.0, 0.02))
    near = state_with((0.4, 0.0, 0.06), 0.0, (0.4, 0.0, 0.02))  # 4 cm closer each state: no subgoal yet
    gripped = state_with((0.4, 0.0, 0.025), 0.56, (0.4, 0.0, 0.02))
    steps = [op.on_state(s, t) for s, t in [(far, 0.0), (near, 0.5), (far, 0.95)]]
    assert not any(s.engaged or s.command is not None for s in steps), "watching: no commands"
    assert op.no_progress_s(0.95) == pytest.approx(0.95)
    assert op.on_state(gripped, 0.99).event is None, "a subgoal reached just in time restarts the clock"
    assert op.on_state(far, 1.5).event is None, "the cube dropped again: no progress, but not yet 1 s"
    takeover = op.on_state(far, 1.99)
    assert takeover.event == TAKEOVER and takeover.engaged and takeover.progress.stage == REACH
    assert takeover.command is not None and takeover.command.shape == (5,)
    assert (op.interventions, op.total_interventions, op.operator_states) == (1, 1, 1)
    commands = [op.on_state(far, 2.0 + i * PERIOD) for i in range(9)]
    assert all(s.engaged and s.command is not None and s.event is None for s in commands)
    back = op.on_state(far, 2.5)
    assert back.event == HAND_BACK and not back.engaged and back.command is None
    assert op.on_state(far, 3.45).event is None, "watched again from the hand-back"
    assert op.on_state(far, 3.5).event == TAKEOVER and op.interventions == 2
    assert op.end_episode(), "held the robot at the end: the node releases it"
    op.start_episode()
    assert (op.interventions, op.operator_states, op.total_interventions) == (0, 0, 2)
    assert not op.end_episode()


def test_refuses_settings_that_cannot_work(oracle):
    with pytest.raises(ValueError, match="takeover_after_s must be > 0"):
        ScriptedOperator(oracle, takeover_after_s=0.0)
    with pytest.raises(ValueError, match="hand_back_after_s must be >= 0"):
        ScriptedOperator(oracle, hand_back_after_s=-1.0)
    with pytest.raises(ValueError, match=r"state has shape \(27,\)"):
        ScriptedOperator(oracle).on_state(np.zeros(27, np.float32), 0.0)


def run_episode(sim: CubeSim, op: ScriptedOperator, policy) -> tuple[bool, list]:
    """One episode: the operator's command when it holds the robot (one state late, as through policy_node
    in lock-step), else `policy(state)`. Returns (success, [(step, event, held), ...])."""
    state, previous, events = sim.reset(), None, []
    op.start_episode()
    for k in range(sim.max_episode_steps):
        step = op.on_state(state, k * PERIOD)
        if step.event:
            events.append((k, step.event, step.progress.held))
        action = (step.command if previous is None else previous) if step.engaged else policy(state)
        previous = step.command if step.engaged else None
        state, _, terminated, truncated, _ = sim.step(action)
        if terminated or truncated:
            op.end_episode()
            return terminated, events
    raise AssertionError("the time limit did not end the episode")


def test_the_operator_rescues_a_policy_that_never_moves_and_carries_a_held_cube_on(oracle):
    sim = CubeSim(seed=5)
    try:
        op = ScriptedOperator(oracle, takeover_after_s=1.0, hand_back_after_s=2.0)
        success, events = run_episode(sim, op, lambda s: ZERO)
        assert success, events
        assert [e[:2] for e in events] == [(20, TAKEOVER), (60, HAND_BACK), (80, TAKEOVER)], events
        # Handed back with the cube in the gripper, the policy held it; the second takeover carries it on
        # from there (a plan from scratch would open the gripper first and drop it).
        assert events[1][2] and events[2][2] and oracle.carrying
        assert op.interventions == 2 and op.operator_states > 40
    finally:
        sim.close()


def test_a_policy_that_does_the_task_is_never_taken_over(oracle):
    """OGBench's expert as the policy: its subgoals come at most ~1.5 s apart (reaching and closing on the
    cube), so the default 2 s never fires; 1 s would."""
    sim, expert = CubeSim(seed=6), StateOracle(seed=6)
    try:
        op = ScriptedOperator(oracle)
        for _ in range(2):
            expert.reset()
            success, events = run_episode(sim, op, expert.act)
            assert success and events == []
        assert op.total_interventions == 0
    finally:
        sim.close()
        expert.close()


def test_oracle_operator_takes_over_from_a_useless_policy_and_the_episode_succeeds(tmp_path):
    """sim_robot_node (lock-step) + policy_node with a model that always answers zeros + oracle_teleop_node
    (role operator): the operator takes over, ~/executed shows its ticks as human, and the episode that
    the policy alone would time out ends in success."""
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from model_files import zero_action_model
    from ros_graph import RosGraph, domain_id, ros_env, running_node
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from dfp_ros import contracts
    from dfp_ros.nodes.policy_params import default_model_path

    model = tmp_path / "zeros.onnx"
    zero_action_model(default_model_path(), model)
    env = ros_env(domain_id(58))
    operator = {"role": "operator", "takeover_after_s": 1.0, "hand_back_after_s": 2.0, "seed": 2}
    lockstep_policy = {"model_path": str(model), "enabled": True, "trigger": "observation", "device": "cpu"}
    with (RosGraph(domain_id(58)) as g,
          running_node("dfp_ros.nodes.policy_node", lockstep_policy, env, log_dir=tmp_path) as policy,
          running_node("dfp_ros.nodes.oracle_teleop_node", operator, env, log_dir=tmp_path) as oracle):
        executed = g.collect(contracts.TOPIC_POLICY_EXECUTED, JointTrajectory)
        engaged = g.collect(contracts.TOPIC_TELEOP_ENGAGED, Bool)
        assert policy.wait_for_log("ready:", 90.0), policy.log()
        assert oracle.wait_for_log("subscriber(s) on the commands: acting", 60.0), oracle.log()
        # It ends itself after the episode; it starts once the policy and the operator both see its states
        # (a lock-step episode lasts well under a second: an operator still being discovered would miss it).
        sim_params = {"mode": "lockstep", "seed": 2, "max_episodes": 1, "wait_for_subscribers": 2}
        with running_node("dfp_ros.nodes.sim_robot_node", sim_params, env, log_dir=tmp_path) as sim:
            assert g.spin_until(lambda: sim.poll() is not None, 120.0), f"{sim.log()}\n{oracle.log()}"
            g.spin_for(0.3)

    assert "episode 1 success" in sim.log(), f"{sim.log()}\n{oracle.log()}"
    frames = [m.header.frame_id for m in executed.messages]
    runs = [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]
    assert runs[:2] == ["policy", "human"] and frames.count("human") >= 30, runs
    assert frames.index("human") >= 15, "the policy had its second without progress first"
    policy_moves = np.array([m.points[0].positions for m in executed.messages if m.header.frame_id == "policy"])
    np.testing.assert_array_equal(policy_moves, 0.0)  # so the success is the operator's
    assert [m.data for m in engaged.messages][:1] == [True]
    log = oracle.log()
    assert "takeover 1 after 1 s without reaching the next subgoal" in log, log
    assert "episode 1 success" in log and "intervention(s)" in log, log
