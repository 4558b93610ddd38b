"""The phase between a robot's ticks and the policy's, on a fake clock (no ROS, no wall clock).

A robot ticks every period and applies the newest command once (a tick without a new one holds, a
command replaced before a tick is superseded: sim_robot_node's counters). Its state reaches the policy
a fraction of a period later, with up to 3 ms of transport jitter; the policy's command reaches the
robot 1 ms after it is sent. The policy loop here is the node's (policy_node): trigger "observation"
plans and ticks in the state's callback; trigger "timer" plans on each state's arrival and ticks on its
own schedule (`next_deadline`), which starts at an arbitrary phase.

Whatever the phase, within an episode every robot tick gets exactly one fresh command, and an episode
reset (queue cleared, the first plan from the reset state) costs no tick. (Not tested: a state arriving so
late that the command lands within the transport jitter of the robot's next tick; whether it makes that
tick is then a coin toss for any policy.) On real processes the same
counters are checked in test_realtime.py, where the machine's stalls decide part of the outcome.
"""

from __future__ import annotations

import heapq
import types
from pathlib import Path

import numpy as np
import pytest

from dfp_ros.runtime import controller as controller_module
from dfp_ros.runtime.controller import PolicyController, load_policy
from dfp_ros.runtime.observation import StateSource

MODEL = Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx"  # 28 state values, 5 actions, H=5
PERIOD = 0.05
COMMAND_TRANSPORT_S = 0.001
MAX_PLAN_WAIT_S = 0.02  # config/policy.yaml
WARM_UP_TICKS = 20  # the timer's schedule follows the state stream after a few arrivals
RESET_TICK = 60
TICKS = 120


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def runtime():
    return load_policy(str(MODEL), device="cpu")[0]


def run_robot_and_policy(runtime, monkeypatch, trigger: str, phase: float) -> tuple[list[int], list[float]]:
    """Commands each robot tick found (index k: those that arrived after tick k-1, by tick k), and for each
    command sent, how long after the newest state's arrival it was sent."""
    clock = FakeClock()
    # Inference takes no time on the fake clock: its measured duration must be the fake clock's too.
    monkeypatch.setattr(controller_module, "time", types.SimpleNamespace(
        perf_counter=clock, monotonic=clock, sleep=lambda s: None))
    ctrl = PolicyController(runtime, [StateSource("sim/state", "float32_array", "observation.state")],
                            rate_hz=1 / PERIOD, enabled=True, seed=0, trigger=trigger, replan_every=5, queue_low=1,
                            max_plan_wait_s=MAX_PLAN_WAIT_S, clock=clock)
    rng = np.random.default_rng(0)
    start = clock.t
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, robot tick)
    order = iter(range(10**9))

    def at(t: float, kind: str, k: int = 0) -> None:
        heapq.heappush(events, (t, next(order), kind, k))

    for k in range(TICKS):
        robot_tick = start + k * PERIOD
        at(robot_tick, "robot_tick", k)
        at(robot_tick + phase * PERIOD + rng.uniform(0.0, 0.003), "state", k)
    if trigger == "timer":
        at(start + 0.37 * PERIOD, "policy_tick")

    arrived = 0  # commands that reached the robot since its last tick
    found: list[int] = []
    last_state, after_state = start, []

    def policy_tick() -> None:
        tick = ctrl.tick(clock.t)
        if tick.command is not None:
            at(clock.t + COMMAND_TRANSPORT_S, "command")
            after_state.append(clock.t - last_state)
        if tick.plan_wanted:
            plan_while_due()

    def plan_while_due() -> None:  # the node's inference thread
        while ctrl.plan_due():
            ctrl.plan(clock.t)

    while events:
        clock.t, _, kind, k = heapq.heappop(events)
        if kind == "robot_tick":
            found.append(arrived)
            arrived = 0
        elif kind == "command":
            arrived += 1
        elif kind == "state":
            last_state = clock.t
            if k == RESET_TICK:  # the robot reset the scene in this tick: the episode event comes first
                ctrl.on_episode_end()
            state = np.full(28, 0.01 * (k % 7), np.float32)
            act = ctrl.on_state_array(0, state, int(clock.t * 1e9), clock.t)
            if act and trigger == "observation":
                if ctrl.step_plan() == "plan":
                    ctrl.plan(clock.t)
                policy_tick()
            elif act:
                plan_while_due()
        elif kind == "policy_tick" and clock.t < start + TICKS * PERIOD:
            deadline = clock.t
            next_state = min((t for t, _, what, _ in events if what == "state"), default=float("inf"))
            if ctrl.tick_should_wait(clock.t) and next_state <= clock.t + MAX_PLAN_WAIT_S:
                at(next_state, "waited_tick", 0)  # the node's wait_for_plan: after the state and its plan
            else:
                policy_tick()
            at(ctrl.next_deadline(deadline + PERIOD), "policy_tick")
        elif kind == "waited_tick":
            policy_tick()
    return found, after_state


@pytest.mark.parametrize("trigger", ["observation", "timer"])
@pytest.mark.parametrize("phase", [0.0, 0.25, 0.5, 0.75])
def test_every_robot_tick_gets_one_fresh_command_whatever_the_phase_and_at_a_reset(runtime, monkeypatch,
                                                                                  trigger, phase):
    found, after_state = run_robot_and_policy(runtime, monkeypatch, trigger, phase)
    steady = found[WARM_UP_TICKS:]
    assert len(steady) == TICKS - WARM_UP_TICKS
    holds = [WARM_UP_TICKS + i for i, n in enumerate(steady) if n == 0]
    superseded = [WARM_UP_TICKS + i for i, n in enumerate(steady) if n > 1]
    assert holds == [] and superseded == [], f"holds at {holds}, two commands at {superseded}: {found}"
    # Commands follow the state they may answer: sent a few ms after its usual arrival. (A state later than
    # usual, by its jitter, may come after the tick: the tick then runs its queued action.)
    assert np.median(after_state[WARM_UP_TICKS:]) < 0.005, after_state


def test_a_timer_that_ignores_the_robots_phase_is_caught(runtime, monkeypatch):
    """The checks above see a lost phase: timer ticks on their own schedule (as with align_ticks off) run on
    states that came a quarter of a period before them."""
    monkeypatch.setattr(PolicyController, "next_deadline", lambda self, planned: planned)
    _, after_state = run_robot_and_policy(runtime, monkeypatch, "timer", 0.1)
    assert np.median(after_state[WARM_UP_TICKS:]) > 0.01, after_state
