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
