"""PolicyController, the policy loop without ROS: driven here with a fake clock and the bundled model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dfp_ros.contracts import ContractError, ModelMetadata
from dfp_ros.runtime.controller import (
    NonFiniteChunk,
    PolicyController,
    contract_mismatch,
    load_policy,
    model_bytes_mismatch,
)
from dfp_ros.runtime.observation import ObservationError, StateSource
from dfp_ros.runtime.policy_runtime import PolicyRuntime, file_sha256

MODEL = Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx"  # 28 state values, 5 actions, H=5
PERIOD = 0.05  # its 20 Hz
SOURCES = [StateSource("sim/state", "float32_array", "observation.state")]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@pytest.fixture(scope="module")
def runtime() -> PolicyRuntime:
    return load_policy(str(MODEL), device="cpu")[0]


def controller(runtime: PolicyRuntime, clock: Clock, **options) -> PolicyController:
    options = {"rate_hz": 20.0, "enabled": True, "seed": 0, **options}
    return PolicyController(runtime, SOURCES, clock=clock, **options)


def observe(ctrl: PolicyController, clock: Clock, value: float = 0.1) -> bool:
    return ctrl.on_state_array(0, np.full(28, value, np.float32), int(clock.t * 1e9), clock.t)


def expected_command(runtime: PolicyRuntime, action: np.ndarray) -> np.ndarray:
    return np.clip(action, runtime.meta.action_low, runtime.meta.action_high)


def test_replan_every_n_ticks_and_when_the_queue_runs_low(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, replan_every=3)
    assert observe(ctrl, clock), "an observation at an empty queue asks for a plan"
    assert ctrl.plan_due() and not ctrl.plan_due(), "plan_due consumes the request"
    assert ctrl.plan(clock.t) is not None
    assert not observe(ctrl, clock), "a queued chunk: no plan needed"
    wanted = []
    for _ in range(4):
        clock.advance(PERIOD)
        observe(ctrl, clock)
        wanted.append(ctrl.tick(clock.t).plan_wanted)
    assert wanted == [False, False, True, True]  # due from the 3rd tick until a plan runs
    assert ctrl.plan_due() and ctrl.plan(clock.t) is not None and not ctrl.tick(clock.advance(PERIOD)).plan_wanted

    low = controller(runtime, clock, replan_every=100, queue_low=3)
    observe(low, clock)
    low.plan_due()
    low.plan(clock.t)
    wanted = []
    for _ in range(3):
        clock.advance(PERIOD)
        observe(low, clock)
        wanted.append(low.tick(clock.t).plan_wanted)
    assert wanted == [False, False, True]  # 5 queued: fewer than 3 left after the 3rd tick


def test_plan_requested_when_the_queue_empties(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, replan_every=100)
    observe(ctrl, clock)
    ctrl.plan_due()
    ctrl.plan(clock.t)
    for _ in range(5):
        ctrl.tick(clock.advance(PERIOD))
    clock.advance(0.001)
    assert observe(ctrl, clock) and ctrl.plan_due()


def test_a_chunk_from_an_observation_two_periods_old_starts_at_index_two(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0)
    observe(ctrl, clock)
    clock.advance(2 * PERIOD)  # inference "took" two periods
    plan = ctrl.plan(clock.t - 2 * PERIOD)
    assert plan.skipped == 2
    tick = ctrl.tick(clock.t)
    np.testing.assert_allclose(tick.command, expected_command(runtime, plan.chunk[2]))
    assert ctrl.stats(clock.t)["actions_skipped"] == 2


def test_lockstep_one_command_per_observation_and_unaligned_chunks(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, trigger="observation", max_obs_age_s=1.0)
    plans, commands = [], []
    for i in range(12):
        clock.advance(PERIOD)
        assert observe(ctrl, clock, 0.01 * i), "the pacing source steps the loop"
        clock.advance(0.3)  # a slow answer skips nothing: ticks are counted by observations
        if ctrl.plan_due():
            plans.append(ctrl.plan(clock.t))
        commands.append(ctrl.tick(clock.t).command)
    assert len(plans) == 3 and all(p.skipped == 0 for p in plans)  # H = 5: observations 0, 5, 10
    assert all(c is not None for c in commands)
    np.testing.assert_allclose(commands[0], expected_command(runtime, plans[0].chunk[0]))
    stats = ctrl.stats(clock.t)
    assert stats["ticks"] == 12 and stats["commands_published"] == 12 and stats["chunks_published"] == 3


def test_ensembling_through_the_controller(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, merge="ensemble", ensemble_k=0.0)
    observe(ctrl, clock)
    first = ctrl.plan(clock.t)
    second = ctrl.plan(clock.t)  # another eps: another chunk for the same ticks
    assert not np.allclose(first.chunk, second.chunk)
    tick = ctrl.tick(clock.advance(0.01))
    mean = (first.chunk[0] + second.chunk[0]) / 2
    np.testing.assert_allclose(tick.command, expected_command(runtime, mean), rtol=1e-6)


@pytest.mark.parametrize("action", ["stop", "hold"])
def test_watchdog_on_stale_observations(runtime, action):
    clock = Clock()
    ctrl = controller(runtime, clock, watchdog_action=action)
    observe(ctrl, clock)
    ctrl.plan(clock.t)
    fresh = ctrl.tick(clock.advance(PERIOD))
    assert fresh.command is not None and fresh.watchdog == "ok"
    stale = ctrl.tick(clock.advance(2 * PERIOD + 0.01))  # older than two periods
    assert stale.watchdog == "stale"
    if action == "stop":
        assert stale.command is None and stale.safety_state == "stale_stop"
    else:
        np.testing.assert_array_equal(stale.command, fresh.command)
        assert stale.safety_state == "stale_hold"
    assert ctrl.stats(clock.t)["watchdog"] == "stale"
    assert ctrl.missing(clock.t) == ["sim/state"]


def test_estop_latches_until_enable(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock)
    observe(ctrl, clock)
    ctrl.plan(clock.t)
    assert ctrl.estop() and not ctrl.estop(), "True only when it latches"
    observe(ctrl, clock)
    assert ctrl.tick(clock.t).command is None and ctrl.estopped
    ctrl.set_options(enabled=True)  # the parameter does not clear the latch
    assert ctrl.tick(clock.t).safety_state == "estop"
    assert "e-stop cleared" in ctrl.enable(True) and not ctrl.estopped
    assert ctrl.tick(clock.t).safety_state == "no_action", "the queue was dropped at the e-stop"
    assert observe(ctrl, clock) and ctrl.plan_due() and ctrl.plan(clock.t) is not None
    assert ctrl.tick(clock.t).command is not None
    stats = ctrl.stats(clock.t)
    assert stats["estop"] is False and stats["enabled"] is True


class NaNModel:
    """The bundled model, but every chunk it returns is NaN."""

    def __init__(self, runtime: PolicyRuntime):
        self._runtime = runtime

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)

    def act(self, state, images, rng):
        result = self._runtime.act(state, images, rng)
        result.chunk = np.full_like(result.chunk, np.nan)
        return result


def test_a_nan_chunk_is_dropped_and_counted(runtime):
    clock = Clock()
    ctrl = controller(NaNModel(runtime), clock)
    observe(ctrl, clock)
    with pytest.raises(NonFiniteChunk):
        ctrl.plan(clock.t)
    assert ctrl.tick(clock.t).command is None  # nothing was queued
    stats = ctrl.stats(clock.t)
    assert stats["dropped_non_finite_chunk"] == 1 and stats["chunks_published"] == 0


def test_bad_observations_raise_and_are_counted_once_rejected(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock)
    bad = np.full(28, np.nan, np.float32)
    with pytest.raises(ObservationError) as err:
        ctrl.on_state_array(0, bad, 0, clock.t)
    ctrl.reject(err.value)
    with pytest.raises(ObservationError) as err:
        ctrl.on_state_array(0, np.zeros(27, np.float32), 0, clock.t)
    ctrl.reject(err.value)
    stats = ctrl.stats(clock.t)
    assert stats["dropped_non_finite"] == 1 and stats["dropped_wrong_size"] == 1 and stats["dropped_total"] == 2
    assert ctrl.plan(clock.t) is None, "no good observation yet"


def _export(tmp_path: Path, meta: ModelMetadata, name: str) -> PolicyRuntime:
    pytest.importorskip("torch", reason="exporting a model needs torch")
    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import DFPModel

    path = tmp_path / name
    export_onnx(DFPModel(meta, ModelConfig(horizon=meta.horizon, actor_hidden=(16, 16))), path, num_samples=1)
    return load_policy(str(path), device="cpu")[0]


@pytest.fixture(scope="module")
def swap_models(runtime, tmp_path_factory):
    """Two tiny models with the bundled model's state: one with its actions, one with other actions."""
    from dataclasses import replace

    tmp = tmp_path_factory.mktemp("swap")
    same = replace(runtime.meta, horizon=3, num_samples=1)
    other = replace(same, action_names=["a", "b", "c", "d", "e"])
    return _export(tmp, same, "same.onnx"), _export(tmp, other, "other.onnx")


def test_swap_refuses_another_action_layout_and_accepts_the_same(runtime, swap_models):
    same, other = swap_models
    clock = Clock()
    ctrl = controller(runtime, clock)
    assert "action names" in contract_mismatch(runtime, other)
    with pytest.raises(ContractError, match="action names"):
        ctrl.swap(other, "other.onnx")
    ctrl.model_refused("other.onnx: action names differ")
    assert ctrl.stats(clock.t)["model_event"].startswith("refused other.onnx")
    observe(ctrl, clock)
    ctrl.plan(clock.t)
    assert ctrl.swap(same, "same.onnx") is runtime
    assert ctrl.runtime is same
    stats = ctrl.stats(clock.t)
    assert stats["model_sha256"] == same.sha256 and stats["model_source"] == "same.onnx"
    assert stats["model_event"].startswith(f"swapped to {same.sha256[:12]}")
    assert ctrl.tick(clock.advance(PERIOD)).command is not None, "queued actions stay through a swap"
    assert ctrl.plan(clock.t).runtime is same


def test_dry_run_plans_but_commands_nothing(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock, dry_run=True)
    observe(ctrl, clock)
    assert ctrl.plan(clock.t) is not None
    assert ctrl.tick(clock.t).command is None
    ctrl.set_options(dry_run=False)
    assert ctrl.tick(clock.t).command is not None


def test_options_checked_and_applied(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock)
    for bad in ({"watchdog_action": "panic"}, {"replan_every": 0}, {"queue_low": -1}, {"max_delta": -0.1},
                {"colour": "red"}):
        with pytest.raises(ValueError):
            ctrl.set_options(**bad)
    assert ctrl.max_obs_age_s == pytest.approx(2 * PERIOD)
    ctrl.set_options(max_obs_age_s=0.5, watchdog_action="hold")
    assert ctrl.max_obs_age_s == 0.5 and ctrl.watchdog_action == "hold"
    ctrl.set_options(max_obs_age_s=0.0)
    assert ctrl.max_obs_age_s == pytest.approx(2 * PERIOD)
    with pytest.raises(ValueError, match="control_rate_hz"):
        controller(runtime, clock, rate_hz=0.0)
    with pytest.raises(ValueError, match="action_low"):
        controller(runtime, clock, action_low=[0.0])


def test_stats(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock)
    for _ in range(11):
        observe(ctrl, clock)
        if ctrl.plan_due():
            plan = ctrl.plan(clock.t)
            ctrl.published(plan, 3_000_000)
        ctrl.tick(clock.t)
        clock.advance(PERIOD)
    ctrl.count_missed_ticks(2)
    stats = ctrl.stats(clock.t - PERIOD)
    assert stats["control_rate_hz"] == pytest.approx(20.0)
    assert stats["ticks"] == 11 and stats["missed_ticks"] == 2 and stats["chunks_published"] >= 2
    assert stats["commands_published"] == 11
    assert stats["obs_to_chunk_p50_ms"] == pytest.approx(3.0)
    assert 0 < stats["inference_latency_p50_ms"] < 1000
    assert stats["model_sha256"] == runtime.sha256 and stats["model_event"] == "started"
    assert stats["trigger"] == "timer" and stats["safety_state"] == "ok" and stats["torch_imported"] == (
        "torch" in sys.modules)
    assert ctrl.stats(clock.t + 10)["control_rate_hz"] == 0.0, "no ticks for a while: rate 0"


def test_model_bytes_must_match_their_label():
    data = MODEL.read_bytes()
    digest = file_sha256(data)
    assert model_bytes_mismatch(data, digest) is None
    assert model_bytes_mismatch(data, "sha256:" + digest.upper()) is None
    assert "does not match" in model_bytes_mismatch(data, "0" * 64)
    assert "(none)" in model_bytes_mismatch(data, "")


def test_controller_imports_no_ros():
    import dfp_ros.runtime.controller as c

    src = Path(c.__file__).read_text()
    assert "rclpy" not in src and "import torch" not in src


# --- real time: alignment, slow plans, hand-over, stamps -------------------------------------------
class SlowModel:
    """The bundled model; `during` runs while it "computes" (ticks that pass meanwhile)."""

    def __init__(self, runtime: PolicyRuntime, during=None):
        self._runtime, self.during = runtime, during

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)

    def act(self, state, images, rng):
        if self.during is not None:
            self.during()
        return self._runtime.act(state, images, rng)


def test_a_chunk_starts_at_the_ticks_executed_since_its_observation_whatever_the_phase(runtime):
    clock = Clock()
    ticks = []

    def one_tick():  # a timer tick 40 ms after the observation, while the model computes
        ticks.append(ctrl.tick(clock.advance(0.04)))

    model = SlowModel(runtime)
    ctrl = controller(model, clock, max_obs_age_s=1.0)
    observe(ctrl, clock)
    model.during = one_tick
    clock_before = clock.t
    plan = ctrl.plan(clock.t)
    clock.advance(0.005)  # ready 45 ms after the observation: less than a period, but one tick passed
    assert clock.t - clock_before < PERIOD and plan.skipped == 1
    np.testing.assert_allclose(ctrl.tick(clock.advance(0.04)).command, expected_command(runtime, plan.chunk[1]))


def test_ticks_the_loop_missed_drop_their_actions(runtime):
    """A stalled control loop skips ticks (not made up twice); the actions planned for them are dropped, so
    the next tick runs the action for its own time, not a late one."""
    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0, replan_every=5)
    observe(ctrl, clock)
    plan = ctrl.plan(clock.t)
    np.testing.assert_allclose(ctrl.tick(clock.advance(0.001)).command, expected_command(runtime, plan.chunk[0]))
    clock.advance(2 * PERIOD)
    ctrl.count_missed_ticks(2)
    np.testing.assert_allclose(ctrl.tick(clock.advance(PERIOD)).command, expected_command(runtime, plan.chunk[3]))
    assert ctrl.stats(clock.t)["missed_ticks"] == 2


def test_observation_trigger_plans_in_the_callback_when_fast_and_ahead_when_slow(runtime):
    clock = Clock()
    fast = controller(runtime, clock, trigger="observation", max_obs_age_s=1.0)
    observe(fast, clock)
    assert fast.step_plan() == "plan", "a fast model plans in the pacing callback (lock-step behaviour)"

    model = SlowModel(runtime)
    slow = controller(model, clock, trigger="observation", max_obs_age_s=1.0, added_latency_s=0.06)
    observe(slow, clock)
    assert slow.step_plan() == "wake", "a plan slower than max_plan_wait_s goes to the inference thread"
    assert slow.tick(clock.t).command is None  # this tick had nothing queued yet
    assert slow.step_plan() == "", "one plan at a time"

    def two_more_ticks():  # the robot keeps stepping while the model computes
        for _ in range(2):
            clock.advance(PERIOD)
            observe(slow, clock)
            slow.tick(clock.t)

    model.during = two_more_ticks
    assert slow.plan_due()
    plan = slow.plan(clock.t)
    assert plan.skipped == 3, "three ticks ran since the observation: the chunk starts at index 3"
    clock.advance(PERIOD)
    observe(slow, clock)
    np.testing.assert_allclose(slow.tick(clock.t).command, expected_command(runtime, plan.chunk[3]))
    stats = slow.stats(clock.t)
    assert stats["plan_lead_ticks"] == 3 and stats["ticks_without_action"] == 3  # the ticks before it


def test_slow_plans_are_asked_for_early_enough_and_run_back_to_back(runtime):
    clock = Clock()
    model = SlowModel(runtime)
    ctrl = controller(model, clock, trigger="observation", max_obs_age_s=1.0, added_latency_s=0.06,
                      replan_every=5)

    def ticks(n):
        def run():
            for _ in range(n):
                clock.advance(PERIOD)
                observe(ctrl, clock)
                ctrl.tick(clock.t)
        return run

    observe(ctrl, clock)
    assert ctrl.step_plan() == "wake"
    ctrl.tick(clock.t)
    model.during = ticks(1)
    assert ctrl.plan_due() and ctrl.plan(clock.t).skipped == 2  # lead is now 2 ticks
    # Lead 2 with 3 actions left (indices 2..4): the next plan is due when index + 2 reaches 5, and a
    # request is made at once after a slow plan while one is wanted (no waiting for another observation).
    wanted = []
    model.during = None
    for _ in range(3):
        clock.advance(PERIOD)
        observe(ctrl, clock)
        wanted.append(ctrl.step_plan())
        ctrl.tick(clock.t)
        if wanted[-1] == "wake":
            break
    assert wanted == ["wake"] or wanted[-1] == "wake", wanted
    assert len(wanted) <= 2, "asked for while 2 actions remain: ready before the queue runs out"


def test_a_chunk_past_its_horizon_is_refused_and_counted(runtime):
    from dfp_ros.runtime.controller import LateChunk

    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=10.0)
    observe(ctrl, clock)
    clock.advance(5 * PERIOD + 0.001)  # every one of its 5 ticks has passed
    with pytest.raises(LateChunk):
        ctrl.plan(clock.t - 5 * PERIOD - 0.001)
    assert ctrl.tick(clock.t).command is None, "never executed out of time"
    assert ctrl.stats(clock.t)["dropped_late_chunk"] == 1


@pytest.mark.parametrize("offset_s, kind", [(2.0, "stamp_past"), (-2.0, "stamp_future")])
def test_stamps_far_from_this_clock_are_refused(runtime, offset_s, kind):
    clock = Clock()
    ctrl = controller(runtime, clock, max_stamp_offset_s=1.0)
    received_ns = 1_000_000_000_000
    stamp_ns = received_ns - int(offset_s * 1e9)  # a driver clock behind (past) or ahead (future, a jump)
    with pytest.raises(ObservationError) as err:
        ctrl.on_state_array(0, np.zeros(28, np.float32), stamp_ns, clock.t, received_ns)
    assert err.value.kind == kind
    ctrl.reject(err.value)
    assert ctrl.plan(clock.t) is None and ctrl.stats(clock.t)[f"dropped_{kind}"] == 1
    # Within the bound, and header-less (stamped at receipt), it is accepted; 0 turns the check off.
    ctrl.on_state_array(0, np.zeros(28, np.float32), received_ns - 5_000_000, clock.t, received_ns)
    ctrl.on_state_array(0, np.zeros(28, np.float32), received_ns, clock.t, received_ns)
    assert ctrl.stats(clock.t)["transport_latency_p50_ms"] == pytest.approx(5.0)
    ctrl.set_options(max_stamp_offset_s=0.0)
    ctrl.on_state_array(0, np.zeros(28, np.float32), stamp_ns, clock.t, received_ns)


def test_timer_ticks_follow_a_state_stream_at_the_control_rate(runtime):
    clock = Clock()
    ctrl = controller(runtime, clock)
    planned = clock.t + 0.5
    assert ctrl.next_deadline(planned) == planned, "no stream yet: the timer's own schedule"
    phase = 0.013
    for i in range(10):
        observe(ctrl, Clock(clock.t + phase + i * PERIOD))
    last = clock.t + phase + 9 * PERIOD
    for planned in (last + 0.02, last + 0.04, last + 0.06):
        got = ctrl.next_deadline(planned)
        assert abs(got - planned) <= PERIOD / 2 + 1e-9
        offset = (got - last) % PERIOD
        assert 0.001 - 1e-9 <= offset < 0.01, "a short fixed delay after the state's arrival"
    # One late message (transport jitter) does not move the schedule: the phase is the arrivals' median.
    before = ctrl.next_deadline(last + 0.04)
    observe(ctrl, Clock(last + PERIOD + 0.01))
    assert abs(ctrl.next_deadline(before + PERIOD) - (before + PERIOD)) < 1e-6
    # A faster stream (100 Hz joint states) does not move the schedule.
    fast = controller(runtime, clock)
    for i in range(10):
        observe(fast, Clock(clock.t + i * 0.01))
    assert fast.next_deadline(clock.t + 0.1) == clock.t + 0.1


def test_a_tick_waits_briefly_for_a_plan_due_before_it(runtime):
    import time

    clock = Clock()
    ctrl = controller(runtime, clock, max_plan_wait_s=0.03)
    assert observe(ctrl, clock), "a request is in flight"
    t0 = time.monotonic()
    ctrl.wait_for_plan()  # nobody plans here: it gives up after the bound
    assert 0.025 < time.monotonic() - t0 < 0.5
    ctrl.plan_due()
    ctrl.plan(clock.t)
    ctrl.set_options(max_plan_wait_s=1.0)
    assert not ctrl.tick_should_wait(clock.t), "nothing in flight: no wait"
    t0 = time.monotonic()
    ctrl.wait_for_plan()
    assert time.monotonic() - t0 < 0.5, "returned at once, not after max_plan_wait_s"


def test_nearest_consistency_picks_the_candidate_continuing_the_queue(runtime):
    from dfp_ros.runtime.chunk_queue import pick_consistent

    committed = np.array([[0.5, 0.0], [0.6, 0.0]])
    candidates = np.array([[[0, 0], [-0.5, 0], [-0.6, 0]], [[0, 0], [0.45, 0], [0.65, 0]]], np.float32)
    assert pick_consistent(candidates, committed, skip=1) == 1
    assert pick_consistent(candidates, committed[:0], skip=1) == 0, "nothing committed: the first"
    q = np.array([1.0, 0.0])
    assert pick_consistent(candidates, committed, skip=1, q=q) == 0, "the critic's better half only"

    class Recording(SlowModel):
        def act(self, state, images, rng):
            self.result = self._runtime.act(state, images, rng)
            return self.result

    clock = Clock()
    eight = Recording(load_policy(str(MODEL), device="cpu", num_samples=8)[0])
    ctrl = controller(eight, clock, consistency="nearest", max_obs_age_s=10.0, seed=3)
    rng = np.random.default_rng(0)
    observe(ctrl, clock)
    previous = ctrl.plan(clock.t).chunk
    for _ in range(10):
        ctrl.tick(clock.advance(PERIOD))
        ctrl.on_state_array(0, rng.normal(0, 0.3, 28).astype(np.float32), int(clock.t * 1e9), clock.t)
        plan = ctrl.plan(clock.t)
        want = pick_consistent(eight.result.candidates, previous[1:], 0)
        np.testing.assert_array_equal(plan.chunk, eight.result.candidates[want])
        assert plan.jump == pytest.approx(float(np.abs(plan.chunk[0] - previous[1]).max()))
        previous = plan.chunk
    stats = ctrl.stats(clock.t)
    assert stats["consistency"] == "nearest" and stats["chunk_jump_p99"] >= stats["chunk_jump_p50"] >= 0


def test_an_aligned_tick_with_nothing_queued_waits_briefly_for_the_late_observation(runtime):
    import threading
    import time

    clock = Clock()
    ctrl = controller(runtime, clock, max_obs_age_s=1.0, max_plan_wait_s=0.5)
    for _ in range(10):  # a state stream at the control rate: ticks follow it
        clock.advance(PERIOD)
        observe(ctrl, clock)
        if ctrl.plan_due():
            ctrl.plan(clock.t)
        ctrl.tick(clock.t)
    ctrl.on_episode_end()  # nothing queued; this period's observation is late
    clock.advance(PERIOD)
    assert ctrl.tick_should_wait(clock.t)
    planned = []

    def late_observation():
        time.sleep(0.01)
        observe(ctrl, clock)
        planned.append(ctrl.plan_due() and ctrl.plan(clock.t) is not None)

    helper = threading.Thread(target=late_observation)
    helper.start()
    t0 = time.monotonic()
    ctrl.wait_for_plan()
    waited = time.monotonic() - t0
    helper.join()
    assert planned == [True] and waited < 0.45, (planned, waited)  # woken by the plan, not by the bound
    assert ctrl.tick(clock.t).command is not None, "the tick ran the late observation's chunk"


def test_a_state_stream_faster_than_the_ticks_starts_whole_chunks_from_fresh_states(runtime):
    """100 Hz joint states, 20 Hz timer ticks at another phase: the state arriving after the tick that
    emptied the queue starts the plan, so every chunk runs whole from index 0 (no tick without an action)."""
    clock = Clock()
    ctrl = controller(runtime, clock, replan_every=5, max_obs_age_s=1.0)
    start, next_tick, plans, commands = clock.t, clock.t + PERIOD, [], []
    for step in range(300):  # 3 s
        clock.t = start + step * 0.01 + 0.003
        if observe(ctrl, clock) and ctrl.plan_due():
            plans.append(ctrl.plan(clock.t))
        while start + (step + 1) * 0.01 > next_tick:
            clock.t = next_tick
            commands.append(ctrl.tick(clock.t).command)
            next_tick += PERIOD
    assert all(p.skipped == 0 for p in plans) and len(plans) == len(commands) // 5  # every 5th tick
    assert all(c is not None for c in commands)
