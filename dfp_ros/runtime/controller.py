"""The policy loop without ROS: observations in, chunks and per-tick commands out.

`PolicyController` owns what `policy_node` runs: the observation assembler, the model
(`PolicyRuntime`), the chunk queue, the safety filter and the statistics the node publishes as
diagnostics. The node turns messages into arrays, calls these methods from its threads and turns
their results back into messages; unit tests call them with a fake clock (test/test_controller.py).

The rules kept here:
- Re-plan: every `replan_every` ticks, or when fewer than `queue_low` actions remain. With the timer
  trigger a tick that finds a plan due, or an observation arriving at an empty queue, requests one;
  the inference thread serves it (`plan_due` -> `plan`). In lock-step (trigger "observation") the
  pacing observation plans (when due) and ticks once, in that order.
- Time alignment: a chunk planned from an observation received `age` seconds ago starts that many
  whole control periods in (`ChunkQueue.push`): its actions for ticks that passed are skipped. In
  lock-step nothing has passed (ticks are counted by observations), so a chunk starts at index 0.
- A chunk holding NaN/inf is dropped and counted (`NonFiniteChunk`), never queued.
- Live model swap: only a model with the same state layout, cameras and action names (the node's
  subscriptions and limits were built from them); the queued actions stay valid commands.
- Every command passes the safety filter (limits, rate limit, watchdog, e-stop latch, enable).
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
from dfp_ros.runtime.chunk_queue import ChunkQueue
from dfp_ros.runtime.observation import ObservationAssembler, ObservationError, StateSource
from dfp_ros.runtime.policy_runtime import PolicyRuntime, file_sha256
from dfp_ros.runtime.safety import WATCHDOG_ACTIONS, SafetyFilter

TRIGGERS = ("timer", "observation")
# ticks_since_plan after a clear: the next chance plans.
_PLAN_NOW = 10**9


class NonFiniteChunk(ValueError):
    """The model produced NaN or inf; the chunk was dropped and counted (dropped_non_finite_chunk)."""


@dataclass
class PlanResult:
    chunk: np.ndarray  # [H, A] as queued (before skipping the ticks that passed)
    stamp_ns: int  # the observation's stamp: the chunk message's stamp
    runtime: PolicyRuntime  # the model that computed it (the chunk message is built from its metadata)
    latency_s: float  # inference alone
    skipped: int  # leading actions whose tick had passed


class Tick(NamedTuple):
    command: np.ndarray | None  # None: publish nothing this tick
    plan_wanted: bool  # timer trigger: a plan is due; wake the inference thread
    safety_state: str
    watchdog: str


def acceptance_text(runtime: PolicyRuntime) -> str:
    a = runtime.acceptance
    if a is None:
        return "no acceptance test in the model (exported by an older dfp_ros)"
    return f"acceptance test passed on {a.provider} (error {a.max_action_error:.2g} <= {a.tolerance:g})"


def load_policy(source: str | bytes, device: str = "auto", num_samples: int = 0) -> tuple[PolicyRuntime, float]:
    """Load, validate and warm up a model (first-run allocations happen here, not on a tick).

    Returns the runtime and the warm-up inference time (s); raises ContractError with the reason."""
    runtime = PolicyRuntime(source, device=device, num_samples=num_samples or None)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in runtime.meta.cameras}
    t0 = time.perf_counter()
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
                 seed: int = 0, model_source: str = "", clock: Callable[[], float] = time.monotonic):
        """`max_obs_age_s` 0 = two control periods; `replan_every` 0 = the model's horizon; action
        limits default to the model's range. Raises ValueError on a bad value."""
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
        self._dry_run = False
        self._replan_every = int(meta.horizon)
        self._queue_low = 1
        self._apply(dict(max_delta=max_delta, max_obs_age_s=max_obs_age_s, dry_run=dry_run,
                         replan_every=replan_every or int(meta.horizon), queue_low=queue_low))
        self._ticks_since_plan = _PLAN_NOW
        self._plan_requested = False
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
    # Each returns whether the node should act on this observation now: in lock-step, step (the first
    # state source paces the ticks); with the timer, wake the inference thread (nothing queued: start-up,
    # or after a stale stretch, so plan now rather than at the next re-plan tick). A bad message raises
    # ObservationError and is not stored; the node counts it with `reject`.
    def on_state_array(self, source: int, values: np.ndarray, stamp_ns: int, now: float) -> bool:
        with self._lock:
            self._asm.put_array(source, values, stamp_ns, now)
            return self._act_on(source)

    def on_joint_state(self, source: int, names: list[str], fields: dict[str, np.ndarray], stamp_ns: int,
                       now: float) -> bool:
        with self._lock:
            self._asm.put_joint_state(source, names, fields, stamp_ns, now)
            return self._act_on(source)

    def on_image(self, camera: str, rgb: np.ndarray, stamp_ns: int, now: float) -> bool:
        with self._lock:
            self._asm.put_image(camera, rgb, stamp_ns, now)
            return self._act_on(None)

    def reject(self, error: ObservationError) -> None:
        """Count a dropped message under its kind (dropped_<kind> in the stats)."""
        with self._lock:
            self._dropped[error.kind] = self._dropped.get(error.kind, 0) + 1

    def _act_on(self, source: int | None) -> bool:
        if self.lockstep:
            return source == 0
        if self._queue.remaining() == 0:
            self._plan_requested = True
            return True
        return False

    # --- planning -------------------------------------------------------------------------------------
    def _plan_needed(self) -> bool:
        return self._ticks_since_plan >= self._replan_every or self._queue.remaining() < self._queue_low

    def plan_due(self) -> bool:
        """Whether to plan now. Lock-step: the re-plan rule. Timer: a pending request that the rule still
        confirms (a request made while a plan ran is served by that plan); consumes the request."""
        with self._lock:
            if self.lockstep:
                return self._plan_needed()
            due = self._plan_requested and self._plan_needed()
            self._plan_requested = False
            return due

    def plan(self, now: float) -> PlanResult | None:
        """Run inference on the current observation and queue the chunk; None when the observation is
        stale or incomplete (the watchdog handles commands, a fresh message asks again). Raises
        NonFiniteChunk for a chunk with NaN/inf (counted, not queued)."""
        with self._lock:
            runtime = self._runtime
            obs = self._asm.ready(now)
            if obs is None:
                return None
            for cam, age in self._asm.camera_ages(now).items():  # all set: the observation is ready
                self._camera_max_age[cam] = max(age, self._camera_max_age.get(cam, 0.0))
        t0 = time.perf_counter()
        chunk = runtime.act(obs.state, obs.images, self._rng).chunk
        latency = time.perf_counter() - t0
        with self._lock:
            if not np.isfinite(chunk).all():
                self._dropped["non_finite_chunk"] = self._dropped.get("non_finite_chunk", 0) + 1
                raise NonFiniteChunk("the model produced NaN/inf: chunk dropped")
            if self.lockstep:
                skipped = self._queue.push(chunk, 0.0, 0.0)
            else:
                skipped = self._queue.push(chunk, now - obs.age_s, self._clock())
            self._ticks_since_plan = 0
            self._chunks += 1
        return PlanResult(chunk, obs.stamp_ns, runtime, latency, skipped)

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
            action = self._queue.pop()
            self._ticks_since_plan += 1
            cmd = self._safety.filter(action, self._asm.age(now))
            wanted = not self.lockstep and self._plan_needed()
            if wanted:
                self._plan_requested = True
            if cmd is not None and self._dry_run:
                cmd = None
            if cmd is not None:
                self._commands += 1
            return Tick(cmd, wanted, self._safety.state, self._safety.watchdog)

    def count_missed_ticks(self, n: int) -> None:
        """The control loop fell more than a period behind and skipped `n` ticks."""
        with self._lock:
            self._missed_ticks += n

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

    def on_episode_end(self) -> None:
        """Actions planned in the episode that just ended mean nothing after the reset: drop them and plan
        from the next observation (what the offline evaluator does with a chunk's rest)."""
        with self._lock:
            self._clear_plan()

    def _clear_plan(self) -> None:
        self._queue.clear()
        self._ticks_since_plan = _PLAN_NOW

    def set_options(self, **options: Any) -> None:
        """Run-time options, named like the node's parameters: enabled (does not clear an e-stop latch),
        dry_run, watchdog_action, max_obs_age_s (0 = two periods), max_delta, ensemble_k, replan_every,
        queue_low. Raises ValueError (changing nothing) on an unknown name or a bad value."""
        with self._lock:
            self._apply(options)

    def _apply(self, options: dict[str, Any]) -> None:
        checks = {"enabled": lambda v: True, "dry_run": lambda v: True, "ensemble_k": math.isfinite,
                  "watchdog_action": lambda v: v in WATCHDOG_ACTIONS, "max_obs_age_s": lambda v: v >= 0,
                  "max_delta": lambda v: v >= 0, "replan_every": lambda v: v >= 1, "queue_low": lambda v: v >= 0}
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
            else:
                self._queue_low = int(value)

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
                "observation_age_s": age if age is not None else float("inf"),
                **camera_ages,
                "model_sha256": runtime.sha256,
                "model_source": self._model_source,
                "model_event": self._model_event,
                "model_acceptance": acceptance_text(runtime),
                "providers": ",".join(runtime.providers),
                "watchdog": watchdog,
                "watchdog_action": safety.watchdog_action,
                "safety_state": safety.state,
                "enabled": safety.enabled,
                "estop": safety.estopped,
                "dry_run": self._dry_run,
                "trigger": self.trigger,
                "ticks": self._ticks,
                "missed_ticks": self._missed_ticks,
                "commands_published": self._commands,
                "chunks_published": self._chunks,
                "actions_skipped": self._queue.skipped,
                "commands_rejected_non_finite": safety.non_finite_count,
                "dropped_total": sum(self._dropped.values()),
                **{f"dropped_{k}": v for k, v in sorted(self._dropped.items())},
                "torch_imported": "torch" in sys.modules,
            }
