"""Human takeover without ROS: the arbitration alone (runtime/takeover.py) and through PolicyController,
driven with a fake clock and the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
from test_controller import MODEL, PERIOD, Clock, controller, observe

from dfp_ros.runtime.controller import PolicyController, Tick, load_policy
from dfp_ros.runtime.observation import ObservationError
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.runtime.takeover import HOLD, HUMAN, Takeover

HUMAN_CMD = np.array([0.5, -0.25, 0.1, 0.0, 0.3])


@pytest.fixture(scope="module")
def runtime() -> PolicyRuntime:
    return load_policy(str(MODEL), device="cpu")[0]


def step(ctrl: PolicyController, clock: Clock, teleop: np.ndarray | None = None) -> Tick:
    """One control period of a robot streaming its state (and of a teleop device when `teleop` is given):
    the observation, a plan when due, the tick."""
    clock.advance(PERIOD)
    observe(ctrl, clock)
    if teleop is not None:
        ctrl.on_teleop(teleop, clock.t)
    if ctrl.plan_due():
        ctrl.plan(clock.t)
    return ctrl.tick(clock.t)


def test_takeover_is_immediate_and_the_hand_back_waits_for_the_next_observation():
    t = Takeover(action_dim=5, timeout_s=0.2)
    t.on_command(HUMAN_CMD, 0.0)  # kept before the takeover: the device's newest command
    assert t.set_engaged(True, 0.01) and t.human and t.state == "human"
    assert not t.set_intervene(True, 0.02), "already in control: not a second takeover"
    source, cmd = t.command(0.05)
    assert source == HUMAN and cmd is not None
    np.testing.assert_array_equal(cmd, HUMAN_CMD)
    assert not t.set_engaged(False, 0.06) and not t.hand_back(), "~/intervene still holds the robot"
    assert not t.set_intervene(False, 0.07) and t.human, "released; applied at the next pacing observation"
    assert t.hand_back() and not t.human and not t.hand_back(), "applied once"
    assert t.set_intervene(True, 0.1) and t.interventions == 2
    with pytest.raises(ObservationError, match="4 values, expected 5") as err:
        t.on_command(np.zeros(4), 0.11)
    assert err.value.kind == "teleop_wrong_size"
    with pytest.raises(ValueError, match="teleop_timeout_s"):
        Takeover(5, 0.0)


def test_a_silent_device_gets_the_watchdog_action_until_an_explicit_release():
    t = Takeover(action_dim=5, timeout_s=0.2)
    assert t.set_engaged(True, 1.0)
    assert t.command(1.1) == (HOLD, None), "no command yet: the device's first is on its way"
    t.on_command(HUMAN_CMD, 1.15)
    assert t.command(1.3)[0] == HUMAN
    assert t.command(1.36) == (HOLD, None) and t.state == "lost" and t.timeouts == 1
    t.on_command(HUMAN_CMD, 1.4)
    assert t.command(1.41) == (HOLD, None), "a device that comes back does not resume without a release"
    assert t.human, "and the policy does not take over silently"
    t.set_engaged(False, 1.5)
    assert t.hand_back() and t.state == "policy" and t.timeouts == 1


def test_takeover_and_hand_back_clear_the_queue_one_command_every_tick(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0)
    ticks = [step(ctrl, clock) for _ in range(3)]
    assert [t.source for t in ticks] == ["policy"] * 3
    ctrl.on_teleop(HUMAN_CMD, clock.t)
    assert ctrl.set_engaged(True, clock.t + 0.01)
    human = [step(ctrl, clock, HUMAN_CMD) for _ in range(6)]
    assert [t.source for t in human] == ["human"] * 6, "the human's command from the first tick after takeover"
    for t in human:
        np.testing.assert_allclose(t.command, HUMAN_CMD)
    assert ctrl.stats(clock.t)["chunks_published"] >= 2, "the policy kept planning from live observations"
    ctrl.set_engaged(False, clock.t + 0.01)
    late = ctrl.tick(clock.t + 0.02)  # a tick before the next observation: still the human's
    assert late.source == "human" and late.command is not None
    clock.advance(PERIOD)
    observe(ctrl, clock)  # the hand-back's observation
    assert ctrl.plan_due(), "the queue was dropped: the next tick needs a plan"
    plan = ctrl.plan(clock.t)
    assert plan.stamp_ns == int(clock.t * 1e9) and plan.skipped == 0, "planned from the observation after release"
    back = ctrl.tick(clock.t)
    assert back.source == "policy" and back.stamp_ns == plan.stamp_ns
    np.testing.assert_allclose(back.command, np.clip(plan.chunk[0], runtime.meta.action_low,
                                                     runtime.meta.action_high))
    every = [*ticks, *human, late, back]
    assert all(t.command is not None for t in every), "no tick without a command at takeover or hand-back"
    stamps = [t.stamp_ns for t in every if t is not late]  # the late tick acted on the same observation
    # (1 ns: the fake clock's float seconds turned into stamps)
    assert np.abs(np.diff(stamps) - PERIOD * 1e9).max() <= 1, "one tick per observation, none doubled or missing"
    stats = ctrl.stats(clock.t)
    assert stats["interventions"] == 1 and stats["human_ticks"] == 7 and stats["intervening"] is False


def test_the_takeover_drops_the_queued_chunk(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0, replan_every=100)
    step(ctrl, clock)
    observe(ctrl, clock)
    assert not ctrl.plan_due(), "4 actions queued, no re-plan due for 100 ticks"
    ctrl.intervene(True, clock.t)
    observe(ctrl, clock)
    assert ctrl.plan_due(), "the queue was dropped at the takeover: a fresh plan is due"


@pytest.mark.parametrize("action", ["stop", "hold"])
def test_teleop_timeout_gives_the_watchdog_action_never_the_policy(runtime, action):
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0, watchdog_action=action, teleop_timeout_s=0.12)
    step(ctrl, clock)
    ctrl.on_teleop(HUMAN_CMD, clock.t)
    ctrl.intervene(True, clock.t)
    ticks = [step(ctrl, clock) for _ in range(6)]  # no teleop message after the first
    assert [t.source for t in ticks[:2]] == ["human"] * 2
    assert ctrl.control == "lost" and ctrl.stats(clock.t)["teleop_timeouts"] == 1
    for t in ticks[3:]:
        assert t.safety_state == f"teleop_{action}"
        if action == "stop":
            assert t.command is None
        else:
            assert t.source == "hold"
            np.testing.assert_allclose(t.command, HUMAN_CMD)
    ctrl.intervene(False, clock.t)
    assert step(ctrl, clock).source == "policy", "an explicit release hands back"


def test_human_commands_pass_the_same_safety_filter(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0, max_delta=0.2)
    last = step(ctrl, clock).command
    ctrl.on_teleop(np.array([5.0, -5.0, 0.0, 0.0, 5.0]), clock.t)
    ctrl.set_engaged(True, clock.t)
    first = step(ctrl, clock).command
    assert np.abs(first - last).max() <= 0.2 + 1e-9, "max_delta holds across the takeover: no jump"
    for _ in range(20):
        cmd = step(ctrl, clock, np.array([5.0, -5.0, 0.0, 0.0, 5.0])).command
    np.testing.assert_allclose(cmd, [1.0, -1.0, 0.0, 0.0, runtime.meta.action_high[4]], atol=1e-6)  # clamped
    nan = step(ctrl, clock, np.array([np.nan, 0.0, 0.0, 0.0, 0.0]))
    assert nan.command is None and nan.safety_state == "non_finite"
    assert ctrl.stats(clock.t)["commands_rejected_non_finite"] == 1
    assert ctrl.estop()
    assert step(ctrl, clock, HUMAN_CMD).command is None, "the e-stop wins over the human"
    ctrl.set_engaged(False, clock.t)
    ctrl.enable(True)
    assert step(ctrl, clock).source == "policy"


def test_lockstep_hand_back_plans_from_the_observation_that_applies_it(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, trigger="observation", max_obs_age_s=1.0)

    def lockstep() -> Tick:
        clock.advance(PERIOD)
        assert observe(ctrl, clock)
        if ctrl.step_plan() == "plan":
            ctrl.plan(clock.t)
        return ctrl.tick(clock.t)

    ctrl.on_teleop(HUMAN_CMD, clock.t)
    sources = [lockstep().source]
    ctrl.set_engaged(True, clock.t)
    for _ in range(3):
        ctrl.on_teleop(HUMAN_CMD, clock.t)
        sources.append(lockstep().source)
    ctrl.set_engaged(False, clock.t)
    sources += [lockstep().source for _ in range(2)]
    assert sources == ["policy", "human", "human", "human", "policy", "policy"]
    assert ctrl.stats(clock.t)["ticks_without_action"] == 0
