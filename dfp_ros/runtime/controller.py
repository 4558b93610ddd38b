"""The policy loop without ROS: observations in, chunks and per-tick commands out.

`PolicyController` owns what `policy_node` runs: the observation assembler, the model
(`PolicyRuntime`), the chunk queue, the safety filter and the statistics the node publishes as
diagnostics. The node turns messages into arrays, calls these methods from its threads and turns
their results back into messages; unit tests call them with a fake clock (test/test_controller.py).
docs/realtime.md explains the timing rules with measurements.

The rules kept here:
- Ticks. Trigger "observation": one tick per message of the first state source (the pacing source),
  in its callback: the robot's state stream paces the policy (lock-step with a simulator, or a robot
  that publishes its state at the control rate). Trigger "timer": ticks on the node's own clock; when
  the pacing source arrives at the control rate, the tick schedule follows its arrivals
  (`next_deadline`: each tick a short, fixed delay after an observation), so the phase between the two
  clocks does not matter.
- Time alignment: action i of a chunk is for the i-th tick after its observation. A chunk is queued
  from index `skip` = the ticks executed since its observation arrived (counted, so exact whatever the
  phase), with the timer also at least the whole periods since then (ticks the loop missed). A chunk
  whose whole horizon has passed is refused and counted (`LateChunk`), never executed out of time.
- Re-plan when the next tick's index in the chunk plus the plan's lead reaches `replan_every`, or
  fewer than `queue_low` + lead actions remain. Lead: 0 while a plan is expected within
  `max_plan_wait_s` (the tick waits for it, bounded, so it uses the fresh observation), else the ticks
  recent plans took to arrive, so the next chunk is queued before the current one runs out. With
  the timer, plans start when the pacing observation arrives (from the newest observation) while it
  comes at least at the control rate, else at a tick; trigger "observation" plans in the callback when
  the plan is expected within `max_plan_wait_s` (lock-step) and on the inference thread otherwise.
- Hand-over (`consistency`): "nearest" picks, among the model's N candidates, the one closest to the
  actions already queued for the ticks both cover (chunk_queue.pick_consistent). Every queued chunk's
  boundary jump is measured (chunk_jump_p50/p99).
- Stamps: a header stamp more than `max_stamp_offset_s` from the node's clock at receipt (a driver
  with a wrong clock, a clock jump) is refused and counted (`stamp_future` / `stamp_past`); execution
  timing uses only the node's monotonic clock and tick counts, never stamps.
- A chunk holding NaN/inf is dropped and counted (`NonFiniteChunk`), never queued.
- Live model swap: only a model with the same state layout, cameras and action names (the node's
  subscriptions and limits were built from them); the queued actions stay valid commands.
- Every command passes the safety filter (limits, rate limit, watchdog, e-stop latch, enable).
- Human takeover (runtime/takeover.py): while a person holds the robot their teleop command replaces
  the policy's in the tick (through the same safety filter); the queue is dropped at the takeover and at
  the pacing observation that applies the hand-back, which the first policy command is planned from.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dfp_ros.contracts import ContractError
from dfp_ros.runtime.chunk_queue import (
    CONSISTENCY_MODES,
    ChunkQueue,
    boundary_jump,
    pick_consistent,
    ticks_elapsed,
)
from dfp_ros.runtime.observation import ObservationAssembler, ObservationError, StateSource
from dfp_ros.runtime.policy_runtime import PolicyRuntime, file_sha256
from dfp_ros.runtime.providers import ProviderOptions
from dfp_ros.runtime.safety import NO_ACTION, STALE_HOLD, TELEOP_HOLD, WATCHDOG_ACTIONS, SafetyFilter
from dfp_ros.runtime.takeover import HOLD, POLICY, Takeover

TRIGGERS = ("timer", "observation")
# The next tick's index in the chunk after a clear: the next chance plans.
_PLAN_NOW = 10**9
# Timer ticks follow the pacing source when its last ALIGN_ARRIVALS intervals have a median within
# ALIGN_TOLERANCE of the control period (a state stream at the control rate).
ALIGN_ARRIVALS = 8
ALIGN_TOLERANCE = 0.2
# Shortest delay from an observation's arrival to the aligned tick (scheduler wake-up, taking the lock).
MIN_TICK_DELAY_S = 0.001


class DroppedChunk(ValueError):
    """A computed chunk that was not queued (counted under dropped_<kind>)."""


class NonFiniteChunk(DroppedChunk):
    """The model produced NaN or inf; the chunk was dropped and counted (dropped_non_finite_chunk)."""


class LateChunk(DroppedChunk):
    """Every tick of the chunk had passed when it was ready; dropped and counted (dropped_late_chunk)."""


@dataclass
class PlanResult:
    chunk: np.ndarray  # [H, A] as queued (before skipping the ticks that passed)
    stamp_ns: int  # the observation's stamp: the chunk message's stamp
    runtime: PolicyRuntime  # the model that computed it (the chunk message is built from its metadata)
    latency_s: float  # inference alone (with added_latency_s)
    skipped: int  # leading actions whose tick had passed
    jump: float  # largest action change at its boundary (nan when nothing ran before it)


class Tick(NamedTuple):
    command: np.ndarray | None  # None: publish nothing this tick
    plan_wanted: bool  # timer trigger: a plan is due; wake the inference thread
    safety_state: str
    watchdog: str
    source: str = POLICY  # who produced the command: policy | human | hold (a repeated command)
    stamp_ns: int = 0  # the observation the tick acted on (its oldest part's stamp, as a chunk's)


def acceptance_text(runtime: PolicyRuntime) -> str:
    a = runtime.acceptance
    if a is None:
        return "no acceptance test in the model (exported by an older dfp_ros)"
    return f"acceptance test passed on {a.provider} (error {a.max_action_error:.2g} <= {a.tolerance:g})"


def load_policy(source: str | bytes, device: str | ProviderOptions = "auto",
                num_samples: int = 0) -> tuple[PolicyRuntime, float]:
    """Load, validate and warm up a model (first-run allocations, and a TensorRT engine build, happen
    here, not on a tick).

    Returns the runtime and the load + warm-up time (s); raises ContractError with the reason."""
    t0 = time.perf_counter()
    runtime = PolicyRuntime(source, device=device, num_samples=num_samples or None)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in runtime.meta.cameras}
    try:
        runtime.act(np.zeros(runtime.meta.state_dim, np.float32), images, np.random.default_rng(0))
    except Exception as e:
        raise ContractError(f"{runtime.source}: warm-up inference failed ({type(e).__name__}: {e})") from e
    return runtime, time.perf_counter() - t0


def contract_mismatch(old: PolicyRuntime, new: PolicyRuntime) -> str | None:
    """Why `new` cannot replace `old` on a running node (None when it can)."""
    o, n = old.meta, new.meta
    if [(s.key, s.dim) for s in o.state] != [(s.key, s.dim) for s in n.state]:
        return (f"its state layout {[(s.key, s.dim) for s in n.state]} differs from the running model's "
                f"{[(s.key, s.dim) for s in o.state]}")
    if [(c.name, c.height, c.width) for c in o.cameras] != [(c.name, c.height, c.width) for c in n.cameras]:
        return "its cameras differ from the running model's"
    if o.action_names != n.action_names:
        return f"its action names {n.action_names} differ from the running model's {o.action_names}"
    return None


def model_bytes_mismatch(data: bytes, label: str) -> str | None:
    """Why pushed model bytes do not match their sha256 label ("sha256:" prefix optional); None if they do."""
    want = label.removeprefix("sha256:").strip().lower()
    got = file_sha256(data)
    return None if want == got else f"sha256 label {want[:12] or '(none)'} does not match the bytes' {got[:12]}"


def _percentile(values: deque, q: float, scale: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) * scale if values else float("nan")


class PolicyController:
    """The policy loop of one node (see the module docstring for its rules).

    Locking: the controller holds its own lock; every public method takes it, so the node's threads
    (executor callbacks, the inference thread, the control thread) call it without one of their own.
    Inference (`runtime.act`) runs outside the lock, so a tick never waits for a plan. One thread at a
    time plans (the inference thread, or the executor thread in lock-step: the random generator is
    not shared), and one thread ticks.

    Time: `now` arguments are the node's monotonic clock in seconds (message receipt times use the
    same clock); `clock` is read once after an inference to align its chunk. Stamps (`stamp_ns`) are
    the ROS clock's and are only carried through to the chunk message.
    """

    def __init__(self, runtime: PolicyRuntime, sources: list[StateSource], *, rate_hz: float,
                 trigger: str = "timer", merge: str = "newest", ensemble_k: float = 0.01,
                 action_low: list[float] | None = None, action_high: list[float] | None = None,
                 max_delta: float = 0.0, max_obs_age_s: float = 0.0, watchdog_action: str = "stop",
                 enabled: bool = False, dry_run: bool = False, replan_every: int = 0, queue_low: int = 1,
                 seed: int = 0, model_source: str = "", consistency: str = "none", added_latency_s: float = 0.0,
                 max_plan_wait_s: float = 0.02, max_stamp_offset_s: float = 1.0, align_ticks: bool = True,
                 teleop_timeout_s: float = 0.25, clock: Callable[[], float] = time.monotonic):
        """`max_obs_age_s` 0 = two control periods; `replan_every` 0 = the model's horizon; action
        limits default to the model's range; `max_stamp_offset_s` 0 = stamps unchecked. Raises
        ValueError on a bad value."""
        meta = runtime.meta
        if not rate_hz > 0:
            raise ValueError(f"control_rate_hz must be > 0, got {rate_hz}")
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger {trigger!r} is not one of {TRIGGERS}")
        low = list(meta.action_low) if action_low is None else list(action_low)
        high = list(meta.action_high) if action_high is None else list(action_high)
        if len(low) != meta.action_dim or len(high) != meta.action_dim:
            raise ValueError(f"action_low / action_high need {meta.action_dim} values, got {len(low)} / {len(high)}")
        self._lock = threading.Lock()
        self.period = 1.0 / rate_hz
        self.trigger = trigger
        self.lockstep = trigger == "observation"
        self._clock = clock
        self._runtime = runtime
        self._rng = np.random.default_rng(seed)
        self._asm = ObservationAssembler(meta, sources, 2.0 * self.period)
        self._queue = ChunkQueue(meta.action_dim, self.period, merge=merge, ensemble_k=ensemble_k)
        self._safety = SafetyFilter(low, high, watchdog_action=watchdog_action, enabled=enabled)
        self._takeover = Takeover(meta.action_dim, teleop_timeout_s)
        self._part_stamps: dict[int | str, int] = {}  # state source index / camera -> its newest stamp
        self._parts = len(sources) + len(meta.cameras)
        self._dry_run = False
        self._replan_every = int(meta.horizon)
        self._queue_low = 1
        self._consistency = "none"
        self._added_latency_s = self._max_plan_wait_s = self._max_stamp_offset_s = 0.0
        self._align_ticks = True
        self._apply(dict(max_delta=max_delta, max_obs_age_s=max_obs_age_s, dry_run=dry_run,
                         replan_every=replan_every or int(meta.horizon), queue_low=queue_low,
                         consistency=consistency, added_latency_s=added_latency_s, max_plan_wait_s=max_plan_wait_s,
                         max_stamp_offset_s=max_stamp_offset_s, align_ticks=align_ticks))
        self._next_index = _PLAN_NOW  # the next tick's action index in the queued chunk
        self._plan_requested = False  # a plan is asked of the inference thread
        self._in_flight = False  # a plan is asked for or running
        self._plan_done = threading.Condition(self._lock)
        self._generation = 0  # bumped when the queue is cleared: a plan started before is dropped
        # --- the pacing (first) state source ------------------------------------------------
        self._pace_tick: int | None = None  # ticks executed when its newest message arrived
        self._paced_since_clear = True  # False from a clear until its next message (plans wait for it)
        self._pace_received = 0.0
        self._pace_arrivals: deque[float] = deque(maxlen=ALIGN_ARRIVALS + 1)
        self._last_action: np.ndarray | None = None  # the last action a tick took from the queue
        # --- statistics --------------------------------------------------------------------
        self._model_source = model_source or runtime.source
        self._model_event = "started"
        self._dropped: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=500)  # inference alone (runtime.act), s
        # Observation stamp -> chunk handed to the publisher, ns (ROS clock, like the stamps): inference plus
        # waiting for the inference thread, the lock and message building; the transport is not in it.
        self._obs_to_chunk: deque[int] = deque(maxlen=500)
        # Per camera, the oldest frame an inference used since the last stats(): a camera that lags behind
        # the state shows here, while observation_age_s only shows the oldest part right now.
        self._camera_max_age: dict[str, float] = {}
        self._tick_times: deque[float] = deque(maxlen=100)
        self._ticks = self._commands = self._chunks = self._missed_ticks = 0
        self._ticks_without_action = 0  # enabled, observations fresh, but nothing queued for the tick
        self._act_s: deque[float] = deque(maxlen=20)  # recent inference times (+ added latency), s
        self._act_p90_s: float | None = None  # their p90, updated when one is added (ticks read it)
        self._pace_interval: float | None = None  # median interval of the arrivals below, updated with them
        self._skips: deque[int] = deque(maxlen=5)  # ticks that passed while recent plans ran
        self._plan_latency: deque[float] = deque(maxlen=500)  # pacing observation arrival -> chunk queued, s
        self._transport: deque[int] = deque(maxlen=500)  # header stamp -> arrival, ns (stamped messages)
        self._jumps: deque[float] = deque(maxlen=2000)  # boundary jumps of queued chunks

    # --- read-only views (for the node's log lines and message building) ----------------------------
    @property
    def runtime(self) -> PolicyRuntime:
        return self._runtime

    @property
    def sources(self) -> list[StateSource]:
        return self._asm.sources

    @property
    def max_obs_age_s(self) -> float:
        return self._asm.max_age_s

    @property
    def watchdog_action(self) -> str:
        return self._safety.watchdog_action

    @property
    def estopped(self) -> bool:
        return self._safety.estopped

    def missing(self, now: float) -> list[str]:
        """Sources that are absent or stale (for a log line saying why there is no observation)."""
        with self._lock:
            return self._asm.missing(now)

    # --- observations ---------------------------------------------------------------------------------
    # Each returns whether the node should act on this observation now: with trigger "observation", step
    # (the first state source paces the ticks); with the timer, wake the inference thread (nothing
    # queued: start-up, or after a stale stretch; or the first source's message brings the plan the next
    # tick needs). A bad message raises ObservationError and is not stored; the node counts it with `reject`.
    # `received_ns` is the node's ROS clock at receipt: a header stamp (stamp_ns != received_ns) further
    # from it than max_stamp_offset_s is refused.
    def on_state_array(self, source: int, values: np.ndarray, stamp_ns: int, now: float,
                       received_ns: int | None = None) -> bool:
        with self._lock:
            self._check_stamp(stamp_ns, received_ns, source == 0)
            self._asm.put_array(source, values, stamp_ns, now)
            self._part_stamps[source] = stamp_ns
            return self._act_on(source, now)

    def on_joint_state(self, source: int, names: list[str], fields: dict[str, np.ndarray], stamp_ns: int,
                       now: float, received_ns: int | None = None) -> bool:
        with self._lock:
            self._check_stamp(stamp_ns, received_ns, source == 0)
            self._asm.put_joint_state(source, names, fields, stamp_ns, now)
            self._part_stamps[source] = stamp_ns
            return self._act_on(source, now)

    def on_image(self, camera: str, rgb: np.ndarray, stamp_ns: int, now: float,
                 received_ns: int | None = None) -> bool:
        with self._lock:
            self._check_stamp(stamp_ns, received_ns, False)
            self._asm.put_image(camera, rgb, stamp_ns, now)
            self._part_stamps[camera] = stamp_ns
            return self._act_on(None, now)

    def reject(self, error: ObservationError) -> None:
        """Count a dropped message under its kind (dropped_<kind> in the stats)."""
        with self._lock:
            self._dropped[error.kind] = self._dropped.get(error.kind, 0) + 1

    def _check_stamp(self, stamp_ns: int, received_ns: int | None, pacing: bool) -> None:
        if received_ns is None or stamp_ns == received_ns:  # no header stamp: nothing to check
            return
        offset = received_ns - stamp_ns
        limit = self._max_stamp_offset_s * 1e9
        if limit > 0 and offset < -limit:
            raise ObservationError("stamp_future", f"header stamp {-offset / 1e9:.3f} s ahead of this node's clock "
                                                   f"(> max_stamp_offset_s {self._max_stamp_offset_s:g})")
        if limit > 0 and offset > limit:
            raise ObservationError("stamp_past", f"header stamp {offset / 1e9:.3f} s behind this node's clock "
                                                 f"(> max_stamp_offset_s {self._max_stamp_offset_s:g})")
        if pacing:
            self._transport.append(offset)

    def _act_on(self, source: int | None, now: float) -> bool:
        if source == 0 and self._takeover.hand_back():  # plan from this observation, the first after the release
            last = self._safety.last
            self._clear_plan()
            self._last_action = last  # the human's last command: the next chunk's boundary jump and consistency
        if source == 0:  # the pacing source: ticks are counted from its arrivals
            self._pace_tick, self._pace_received = self._ticks, now
            self._pace_arrivals.append(now)
            if len(self._pace_arrivals) > ALIGN_ARRIVALS:
                self._pace_interval = float(np.median(np.diff(np.asarray(self._pace_arrivals))))
            self._paced_since_clear = True
            self._plan_done.notify_all()  # a tick waiting for it (wait_for_plan)
        if self.lockstep:
            return source == 0
        if self._queue.remaining() == 0 or (source == 0 and self._want_plan()):
            return self._request()
        return False

    # --- planning -------------------------------------------------------------------------------------
    def _expected_plan_s(self) -> float:
        """Expected inference time (p90 of recent ones; before any, the added latency)."""
        return self._added_latency_s if self._act_p90_s is None else self._act_p90_s

    def _sync(self) -> bool:
        """Plans are expected within max_plan_wait_s: the tick waits for its plan (no lead)."""
        return self._expected_plan_s() <= self._max_plan_wait_s

    def _lead(self) -> int:
        """Ticks a plan is expected to take to reach the queue (0: before the tick that wants it)."""
        if self._sync():
            return 0
        if self._skips:
            return max(self._skips)
        return math.ceil(self._expected_plan_s() / self.period)

    def _want_plan(self) -> bool:
        lead = self._lead()
        return (self._next_index + lead >= self._replan_every
                or self._queue.remaining() - lead < self._queue_low)

    def _request(self) -> bool:
        """Ask the inference thread for a plan (unless one runs); True while a request waits for it."""
        if not self._in_flight:
            self._in_flight = self._plan_requested = True
        return self._plan_requested

    def _plan_finished(self) -> None:
        self._in_flight = False
        self._plan_done.notify_all()

    def plan_due(self) -> bool:
        """Whether to plan now: a pending request that the rule still confirms (a request made while a
        plan ran is served by that plan; consumes the request), or, with trigger "observation" and fast
        plans, the re-plan rule itself (the caller plans in the pacing callback)."""
        with self._lock:
            if self._plan_requested:
                self._plan_requested = False
                if self._want_plan():
                    return True
                self._plan_finished()
                return False
            return self.lockstep and self._sync() and self._want_plan()

    def step_plan(self) -> str:
        """Trigger "observation", before the tick of a pacing observation: "plan" (plan here, now: the
        plan is expected within max_plan_wait_s), "wake" (a plan was asked of the inference thread), or
        "" (no plan due, or one is running)."""
        with self._lock:
            if self._in_flight or not self._want_plan():
                return ""
            if self._sync():
                return "plan"
            self._request()
            return "wake"

    def wait_for_plan(self) -> None:
        """Before a timer tick: wait (at most max_plan_wait_s) for a plan in flight that is expected before
        this tick, or, with ticks aligned to the state stream and nothing queued, for the observation
        that is late for this tick and its plan; so the tick runs the newest observation's chunk."""
        end = time.monotonic() + self._max_plan_wait_s
        with self._plan_done:
            while self._tick_should_wait(self._clock()):
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._plan_done.wait(left)

    def tick_should_wait(self, now: float) -> bool:
        """Whether a timer tick now would wait for a plan (wait_for_plan's condition, for a loop driven by
        another clock)."""
        with self._lock:
            return self._tick_should_wait(now)

    def _tick_should_wait(self, now: float) -> bool:
        return self._lead() == 0 and (self._in_flight or self._observation_late(now))

    def _observation_late(self, now: float) -> bool:
        """A streaming pacing source, an empty queue, and no pacing observation since the last tick."""
        return (self._queue.remaining() == 0 and self._pace_tick is not None and self._pace_tick < self._ticks
                and self._streaming(now))

    def _stream_interval(self, now: float) -> float | None:
        """Median interval of the pacing source's recent arrivals; None when it does not stream (too few
        arrivals, none lately, or trigger observation)."""
        arrivals = self._pace_arrivals
        if self.lockstep or self._pace_interval is None or now - arrivals[-1] > 2 * self.period:
            return None
        return self._pace_interval

    def _streaming(self, now: float) -> bool:
        """The pacing source comes at least at the control rate: the next state arrives before the next tick,
        so plans are started by arrivals (from that fresh state), not by ticks."""
        interval = self._stream_interval(now)
        return interval is not None and interval <= (1 + ALIGN_TOLERANCE) * self.period

    def _aligned(self, now: float) -> bool:
        """Timer ticks follow the pacing source: it arrives at the control rate (align_ticks)."""
        interval = self._stream_interval(now)
        return (self._align_ticks and interval is not None
                and abs(interval - self.period) <= ALIGN_TOLERANCE * self.period)

    def next_deadline(self, planned: float) -> float:
        """The timer's next tick: `planned` (one period after the last), moved by at most half a period
        to a fixed delay after the pacing source's arrivals while that source comes at the control rate.
        The arrivals' phase is the median of the last few (one late message does not move the
        schedule: a tick it misses waits for it, wait_for_plan). The delay leaves time for a plan
        expected before the tick (2x its p90 + 1 ms, at most half a period), so the tick runs the newest
        observation's chunk and its command goes out in phase with the robot."""
        with self._lock:
            if not self._aligned(planned):
                return planned
            delay = MIN_TICK_DELAY_S
            if self._lead() == 0:
                delay = min(0.5 * self.period, 2.0 * self._expected_plan_s() + MIN_TICK_DELAY_S)
            half = 0.5 * self.period
            arrivals = np.asarray(self._pace_arrivals, np.float64)[-ALIGN_ARRIVALS:]
            phase = float(np.median((arrivals - planned + half) % self.period - half))
            return planned + ((phase + delay + half) % self.period - half)

    def plan(self, now: float) -> PlanResult | None:
        """Run inference on the current observation and queue the chunk; None when the observation is
        stale or incomplete (the watchdog handles commands, a fresh message asks again). Raises
        NonFiniteChunk for a chunk with NaN/inf (counted, not queued)."""
        with self._lock:
            runtime = self._runtime
            obs = self._asm.ready(now)
            if obs is None or not self._paced_since_clear:  # (after a clear: the robot's next state)
                self._plan_finished()
                return None
            for cam, age in self._asm.camera_ages(now).items():  # all set: the observation is ready
                self._camera_max_age[cam] = max(age, self._camera_max_age.get(cam, 0.0))
            obs_tick = self._ticks if self._pace_tick is None else self._pace_tick
            pace_received, oldest_received = self._pace_received, now - obs.age_s
            generation, added = self._generation, self._added_latency_s
        t0 = time.perf_counter()
        try:
            result = runtime.act(obs.state, obs.images, self._rng)
            if added > 0:  # a bench knob: a slower model
                time.sleep(added)
        except BaseException:
            with self._lock:
                self._plan_finished()
            raise
        latency = time.perf_counter() - t0
        with self._lock:
            try:
                return self._queue_plan(result, obs.stamp_ns, runtime, latency, obs_tick, pace_received,
                                        oldest_received, generation)
            finally:
                self._plan_finished()
                if not self._sync() and self._want_plan():
                    # Slow plans run back to back: waiting for the next observation would leave a gap.
                    self._request()

    def _queue_plan(self, result: Any, stamp_ns: int, runtime: PolicyRuntime, latency: float, obs_tick: int,
                    pace_received: float, oldest_received: float, generation: int) -> PlanResult | None:
        self._act_s.append(latency)
        self._act_p90_s = float(np.percentile(self._act_s, 90))
        if generation != self._generation:  # the queue was cleared meanwhile (episode end, enable)
            return None
        skip = self._ticks - obs_tick
        if not self.lockstep:  # ticks the control loop missed count too
            skip = max(skip, ticks_elapsed(oldest_received, self._clock(), self.period))
        horizon = result.chunk.shape[0]
        chunk = result.chunk
        if self._consistency == "nearest" and result.candidates.shape[0] > 1 and skip < horizon:
            committed = self._queue.upcoming(horizon - skip)
            if not len(committed) and self._last_action is not None:  # nothing queued: continue the last action
                committed = self._last_action[None, :]
            chunk = result.candidates[pick_consistent(result.candidates, committed, skip, result.q)]
        if not np.isfinite(chunk).all():
            self._dropped["non_finite_chunk"] = self._dropped.get("non_finite_chunk", 0) + 1
            raise NonFiniteChunk("the model produced NaN/inf: chunk dropped")
        self._skips.append(skip)
        if skip >= horizon:
            self._dropped["late_chunk"] = self._dropped.get("late_chunk", 0) + 1
            raise LateChunk(f"chunk ready {skip} ticks after its observation, past its horizon of {horizon}: "
                            "dropped (a slower model needs a longer horizon or a lower control rate)")
        upcoming = self._queue.upcoming(1)
        jump = boundary_jump(chunk[skip], upcoming[0] if len(upcoming) else self._last_action)
        if math.isfinite(jump):
            self._jumps.append(jump)
        self._queue.push(chunk, 0.0, 0.0, skip=skip)
        self._next_index = skip
        self._plan_latency.append(self._clock() - (pace_received or oldest_received))
        self._chunks += 1
        return PlanResult(chunk, stamp_ns, runtime, latency, skip, jump)

    def published(self, plan: PlanResult, obs_to_chunk_ns: int) -> None:
        """The node handed `plan`'s chunk to its publisher `obs_to_chunk_ns` after the observation's stamp."""
        with self._lock:  # both figures of one chunk together, so the stats compare like with like
            self._latencies.append(plan.latency_s)
            self._obs_to_chunk.append(obs_to_chunk_ns)

    # --- control --------------------------------------------------------------------------------------
    def tick(self, now: float) -> Tick:
        """One control tick: the next queued action through the safety filter."""
        with self._lock:
            self._tick_times.append(now)
            self._ticks += 1
            action = self._queue.pop()  # also while the human commands: the chunk runs on in time
            if action is not None:
                self._last_action = action
            self._next_index += 1
            source = POLICY
            if self._takeover.human:
                source, action = self._takeover.command(now)
            cmd = self._safety.without_command() if source == HOLD else self._safety.filter(action, self._asm.age(now))
            if self._safety.state == NO_ACTION:
                self._ticks_without_action += 1
            if self._safety.state in (STALE_HOLD, TELEOP_HOLD):
                source = HOLD
            # With a streaming pacing source, its next arrival starts the plan (from a fresher observation).
            wanted = not self.lockstep and not self._streaming(now) and self._want_plan()
            if wanted:
                self._request()
            if cmd is not None and self._dry_run:
                cmd = None
            if cmd is not None:
                self._commands += 1
            stamps = self._part_stamps
            return Tick(cmd, wanted, self._safety.state, self._safety.watchdog, source,
                        min(stamps.values()) if len(stamps) == self._parts else 0)

    def count_missed_ticks(self, n: int) -> None:
        """The control loop fell more than a period behind and skipped `n` ticks: their actions are dropped,
        so the rest of the chunk still runs at the ticks it was planned for."""
        with self._lock:
            self._missed_ticks += n
            self._queue.drop(n)
            self._next_index += n

    # --- operator inputs ------------------------------------------------------------------------------
    def estop(self) -> bool:
        """Latch a stop and drop the queue; True when it was not latched before."""
        with self._lock:
            already = self._safety.estopped
            self._safety.estop()
            self._queue.clear()
            return not already

    def enable(self, on: bool) -> str:
        """The operator's ~/enable: True also clears an e-stop latch; plans afresh either way."""
        with self._lock:
            message = self._safety.enable(on)
            self._clear_plan()  # start from a fresh plan, not actions computed before the pause
            return message

    # --- human takeover (runtime/takeover.py) -----------------------------------------------------------
    def on_teleop(self, values: np.ndarray, now: float) -> None:
        """A human command; raises ObservationError (not kept) when it does not fit the actions."""
        with self._lock:
            self._takeover.on_command(values, now)

    def set_engaged(self, on: bool, now: float) -> bool:
        """The teleop device's dead-man; True when the human just took over."""
        with self._lock:
            return self._taken_over(self._takeover.set_engaged(on, now))

    def intervene(self, on: bool, now: float) -> bool:
        """The operator's intervene switch; True when the human just took over."""
        with self._lock:
            return self._taken_over(self._takeover.set_intervene(on, now))

    def _taken_over(self, took: bool) -> bool:
        if took:  # the policy's queued actions were planned for a robot the human is about to move
            self._clear_plan()
        return took

    @property
    def control(self) -> str:
        """Who commands: policy | human | lost (the teleop device went silent while it held the robot)."""
        return self._takeover.state

    def on_episode_end(self) -> None:
        """Actions planned in the episode that just ended mean nothing after the reset: drop them and plan
        from the next observation (what the offline evaluator does with a chunk's rest)."""
        with self._lock:
            self._clear_plan()

    def _clear_plan(self) -> None:
        self._queue.clear()
        self._next_index = _PLAN_NOW
        self._generation += 1
        self._last_action = None
        self._paced_since_clear = False

    def set_options(self, **options: Any) -> None:
        """Run-time options, named like the node's parameters: enabled (does not clear an e-stop latch),
        dry_run, watchdog_action, max_obs_age_s (0 = two periods), max_delta, ensemble_k, replan_every,
        queue_low, consistency, added_latency_s, max_plan_wait_s, max_stamp_offset_s (0 = off),
        align_ticks, teleop_timeout_s. Raises ValueError (changing nothing) on an unknown name or a bad value."""
        with self._lock:
            self._apply(options)

    def _apply(self, options: dict[str, Any]) -> None:
        checks = {"enabled": lambda v: True, "dry_run": lambda v: True, "ensemble_k": math.isfinite,
                  "watchdog_action": lambda v: v in WATCHDOG_ACTIONS, "max_obs_age_s": lambda v: v >= 0,
                  "max_delta": lambda v: v >= 0, "replan_every": lambda v: v >= 1, "queue_low": lambda v: v >= 0,
                  "consistency": lambda v: v in CONSISTENCY_MODES, "added_latency_s": lambda v: v >= 0,
                  "max_plan_wait_s": lambda v: v >= 0, "max_stamp_offset_s": lambda v: v >= 0,
                  "align_ticks": lambda v: True, "teleop_timeout_s": lambda v: v > 0}
        for name, value in options.items():
            if name not in checks or not checks[name](value):
                raise ValueError(f"option {name}={value!r} refused")
        for name, value in options.items():
            if name == "enabled":
                self._safety.enabled = bool(value)
            elif name == "dry_run":
                self._dry_run = bool(value)
            elif name == "watchdog_action":
                self._safety.watchdog_action = value
            elif name == "max_obs_age_s":
                self._safety.max_obs_age_s = self._asm.max_age_s = value if value > 0 else 2.0 * self.period
            elif name == "max_delta":
                self._safety.max_delta[:] = float(value)
            elif name == "ensemble_k":
                self._queue.ensemble_k = float(value)
            elif name == "replan_every":
                self._replan_every = int(value)
            elif name == "queue_low":
                self._queue_low = int(value)
            elif name == "consistency":
                self._consistency = value
            elif name == "added_latency_s":
                self._added_latency_s = float(value)
            elif name == "max_plan_wait_s":
                self._max_plan_wait_s = float(value)
            elif name == "max_stamp_offset_s":
                self._max_stamp_offset_s = float(value)
            elif name == "teleop_timeout_s":
                self._takeover.timeout_s = float(value)
            else:
                self._align_ticks = bool(value)

    # --- model swap -----------------------------------------------------------------------------------
    def check_swap(self, new: PolicyRuntime) -> None:
        """Raise ContractError when `new` cannot replace the running model."""
        why = contract_mismatch(self._runtime, new)
        if why:
            raise ContractError(f"{new.source}: {why}; restart the node to run it")

    def swap(self, new: PolicyRuntime, source: str) -> PolicyRuntime:
        """Run `new` from the next plan on (a plan in progress finishes with the old model; queued actions
        stay). Raises ContractError for another contract; returns the old model."""
        self.check_swap(new)
        with self._lock:
            old, self._runtime = self._runtime, new
            self._model_source = source
            self._model_event = f"swapped to {new.sha256[:12]} from {source}"
            return old

    def model_refused(self, event: str) -> None:
        """Record a refused model (the stats' model_event)."""
        with self._lock:
            self._model_event = f"refused {event}"

    # --- statistics -----------------------------------------------------------------------------------
    def stats(self, now: float) -> dict[str, Any]:
        """What the node publishes as diagnostics; starts a new period for the per-camera maxima."""
        with self._lock:
            ticks = self._tick_times
            runtime, safety = self._runtime, self._safety
            age = self._asm.age(now)
            if self.lockstep:  # no ticks without observations: the watchdog from the observation's age
                watchdog = "stale" if age is None or age > self._asm.max_age_s else "ok"
            else:
                watchdog = safety.watchdog
            camera_ages = {f"camera_{c.name}_max_age_ms": self._camera_max_age.get(c.name, float("nan")) * 1e3
                           for c in runtime.meta.cameras}
            self._camera_max_age.clear()
            return {
                "control_rate_hz": (len(ticks) - 1) / (ticks[-1] - ticks[0])
                if len(ticks) > 1 and ticks[-1] > ticks[0] and now - ticks[-1] < 2 * self.period + 0.5 else 0.0,
                "inference_latency_p50_ms": _percentile(self._latencies, 50, 1e3),
                "inference_latency_p99_ms": _percentile(self._latencies, 99, 1e3),
                "obs_to_chunk_p50_ms": _percentile(self._obs_to_chunk, 50, 1e-6),
                "obs_to_chunk_p99_ms": _percentile(self._obs_to_chunk, 99, 1e-6),
                "transport_latency_p50_ms": _percentile(self._transport, 50, 1e-6),
                "transport_latency_p99_ms": _percentile(self._transport, 99, 1e-6),
                "plan_latency_p50_ms": _percentile(self._plan_latency, 50, 1e3),
                "plan_latency_p99_ms": _percentile(self._plan_latency, 99, 1e3),
                "plan_lead_ticks": self._lead(),
                "plan_skip_ticks": self._skips[-1] if self._skips else 0,
                "ticks_aligned": self._aligned(now),
                "chunk_jump_p50": _percentile(self._jumps, 50, 1.0),
                "chunk_jump_p99": _percentile(self._jumps, 99, 1.0),
                "consistency": self._consistency,
                "added_latency_s": self._added_latency_s,
                "observation_age_s": age if age is not None else float("inf"),
                **camera_ages,
                "model_sha256": runtime.sha256,
                "model_source": self._model_source,
                "model_event": self._model_event,
                "model_acceptance": acceptance_text(runtime),
                "providers": ",".join(runtime.providers),
                "provider_fallback": runtime.provider_fallback or "none",
                "watchdog": watchdog,
                # Which state source or camera is absent or stale: what a user checks first when nothing moves.
                "missing": ", ".join(self._asm.missing(now)) or "-",
                "watchdog_action": safety.watchdog_action,
                "safety_state": safety.state,
                "enabled": safety.enabled,
                "estop": safety.estopped,
                "dry_run": self._dry_run,
                "trigger": self.trigger,
                "ticks": self._ticks,
                "missed_ticks": self._missed_ticks,
                "ticks_without_action": self._ticks_without_action,
                "commands_published": self._commands,
                "chunks_published": self._chunks,
                "actions_skipped": self._queue.skipped,
                "commands_rejected_non_finite": safety.non_finite_count,
                **self._takeover.stats(),
                "dropped_total": sum(self._dropped.values()),
                **{f"dropped_{k}": v for k, v in sorted(self._dropped.items())},
                "torch_imported": "torch" in sys.modules,
            }
