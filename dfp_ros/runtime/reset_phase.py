"""The reset phase between two episodes on a real robot: take it home, let it settle, hand it back (no ROS).

reset_node runs a `ResetPhase`. At an episode's end (success, failure, timeout, or the operator's discard)
it takes the robot over through policy_node (`~/intervene`, its commands on `teleop/command`, so the
safety filter — limits, max_delta, watchdog — applies to them too) and drives it to a home pose:

- a position-commanded robot (`JointHoming`): the commanded joint positions start at the measured ones
  and walk to the home positions by at most `max_step` per tick;
- a delta-commanded robot like the simulator (`EffectorHoming`: effector x, y, z, yaw and gripper
  opening read from a state vector): a proportional controller, action = gains * (home - pose), clipped
  to the action limits. The yaw error is not wrapped: OGBench clips its yaw target to [-pi, pi], so the
  arm must turn back the long way rather than through +-pi.

Phases: idle -> homing (until every dimension is within its tolerance of home) -> settling (`settle_s`
within tolerance; leaving it goes back to homing) -> releasing (the node hands back and publishes
`start`) -> idle. Not home within `home_timeout_s` of the episode's end -> failed: the robot is held
where it stopped (still taken over, so the policy stays out) until the operator asks for a retry or
starts an episode themselves. Events while a reset runs are not part of any episode: another end (a
success button) is ignored, and counted; a `start` from someone else ends the reset (the operator took
charge).

Time: `now` is one monotonic clock in seconds (the node's wall clock: a real robot's reset takes real time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IDLE, HOMING, SETTLING, RELEASING, FAILED = "idle", "homing", "settling", "releasing", "failed"
END_EVENTS = ("success", "failure", "timeout", "discard")
# What `ResetPhase.on_event` did with an event.
BEGIN, IGNORED, OVERRIDDEN, NOTHING = "begin", "ignored", "overridden", "nothing"
SETTLED, FAILED_NOW = "settled", "failed"  # ResetStep.event


def effector_pose(values: np.ndarray, indices: list[int]) -> np.ndarray:
    """(x, y, z, yaw, gripper) from a state vector; `indices` name x, y, z, yaw cos, yaw sin, gripper."""
    v = np.asarray(values, np.float64)
    x, y, z, c, s, g = (v[i] for i in indices)
    return np.array([x, y, z, math.atan2(s, c), g])


class Homing:
    """Commands towards `goal` (normally `home`) from measured values in the units of `home`."""

    def __init__(self, home: list[float]) -> None:
        self.home = np.asarray(home, np.float64)
        if self.home.ndim != 1 or self.home.size == 0 or not np.isfinite(self.home).all():
            raise ValueError(f"home must be a non-empty list of finite numbers, got {home}")
        self.goal: np.ndarray | None = self.home  # None: hold at the next measured pose (after a failure)

    def begin(self, measured: np.ndarray) -> None:
        """A new homing (or hold) starts from `measured`."""

    def command(self, measured: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class JointHoming(Homing):
    """Joint position targets that walk to the goal by at most `max_step` per tick (see the module doc)."""

    def __init__(self, home: list[float], max_step: float) -> None:
        super().__init__(home)
        if not max_step > 0:
            raise ValueError(f"max_joint_step must be > 0, got {max_step}")
        self.max_step = float(max_step)
        self._target: np.ndarray | None = None

    def begin(self, measured: np.ndarray) -> None:
        self._target = np.asarray(measured, np.float64).copy()

    def command(self, measured: np.ndarray) -> np.ndarray:
        if self._target is None:
            self.begin(measured)
        self._target = self._target + np.clip(self.goal - self._target, -self.max_step, self.max_step)
        return self._target.copy()


class EffectorHoming(Homing):
    """Proportional effector deltas, clipped to the action limits (see the module doc)."""

    def __init__(self, home: list[float], gains: list[float], low: list[float], high: list[float]) -> None:
        super().__init__(home)
        self.gains, self.low, self.high = (np.asarray(x, np.float64) for x in (gains, low, high))
        if not (self.gains.shape == self.low.shape == self.high.shape == self.home.shape):
            raise ValueError(f"gains, action_low and action_high need one value per home dimension "
                             f"({self.home.size}), got {self.gains.size}, {self.low.size}, {self.high.size}")
        if not (self.low <= self.high).all():
            raise ValueError(f"action_low {self.low.tolist()} must not exceed action_high {self.high.tolist()}")

    def command(self, measured: np.ndarray) -> np.ndarray:
        return np.clip(self.gains * (self.goal - np.asarray(measured, np.float64)), self.low, self.high)


@dataclass(frozen=True)
class ResetStep:
    """The answer to one state: the command to send (None: send nothing) and what happened."""

    command: np.ndarray | None
    event: str | None = None  # SETTLED (hand back now) or FAILED_NOW


class ResetPhase:
    """See the module docstring. Not thread-safe (one node callback thread)."""

    def __init__(self, homing: Homing, tolerance: list[float], home_timeout_s: float, settle_s: float) -> None:
        self.homing = homing
        self.tolerance = np.asarray(tolerance, np.float64)
        if self.tolerance.shape != homing.home.shape or not (self.tolerance > 0).all():
            raise ValueError(f"tolerance needs one value > 0 per home dimension ({homing.home.size}), got "
                             f"{list(tolerance)}")
        if not home_timeout_s > 0 or settle_s < 0:
            raise ValueError(f"home_timeout_s must be > 0 and settle_s >= 0, got {home_timeout_s}, {settle_s}")
        self.home_timeout_s, self.settle_s = float(home_timeout_s), float(settle_s)
        self.phase = IDLE
        self.resets = self.failures = self.ignored = 0
        self.last_reset_s = math.nan  # how long the last completed reset took
        self.last_error: np.ndarray | None = None  # |measured - home| at the last state
        self.failure_reason = ""
        self._began = self._deadline = self._settle_from = 0.0
        self._last_end = math.nan
        self._fresh = True  # the next state starts the homing (or the hold)

    def on_event(self, event: str, now: float) -> str:
        """An `episode` event: BEGIN (an end while idle), IGNORED (an end during a reset), OVERRIDDEN (someone
        else's start during a reset: the caller hands the robot back), else NOTHING."""
        if event in END_EVENTS:
            if self.phase != IDLE:
                self.ignored += 1
                return IGNORED
            self.phase, self._began, self._deadline = HOMING, now, now + self.home_timeout_s
            self._home_again()
            return BEGIN
        if event == "start" and self.phase != IDLE:
            self.phase = IDLE
            return OVERRIDDEN
        return NOTHING

    def on_state(self, measured: np.ndarray, now: float) -> ResetStep:
        """One state (in the units of `home`): the command for it, and a transition when one happened."""
        if self.phase == IDLE:
            return ResetStep(None)
        m = np.asarray(measured, np.float64)
        if m.shape != self.homing.home.shape:
            raise ValueError(f"measured {m.size} values, home has {self.homing.home.size}")
        if self.phase == FAILED and self.homing.goal is None:  # failed before any state: hold at this one
            self.homing.goal = m.copy()
        if self._fresh:
            self.homing.begin(m)
            self._fresh = False
        self.last_error = np.abs(m - self.homing.home)
        if self.phase == FAILED:
            return ResetStep(self.homing.command(m))
        home = bool((self.last_error <= self.tolerance).all())
        event = None
        if self.phase == HOMING and home:
            self.phase, self._settle_from = SETTLING, now
        elif self.phase == SETTLING and not home:
            self.phase = HOMING
        if self.phase in (HOMING, SETTLING) and now > self._deadline and not home:
            self.fail(f"not home within home_timeout_s {self.home_timeout_s:g} s: |pose - home| "
                      f"{np.round(self.last_error, 4).tolist()} > tolerance {self.tolerance.tolist()}", m)
            event = FAILED_NOW
        elif self.phase == SETTLING and now - self._settle_from >= self.settle_s:
            self.phase, event = RELEASING, SETTLED
        return ResetStep(self.homing.command(m), event)

    def fail(self, reason: str, measured: np.ndarray | None = None) -> None:
        """Give up: hold the robot where it is (`measured`, else the next state) until `retry` or someone's
        start."""
        self.phase, self.failure_reason = FAILED, reason
        self.failures += 1
        self.homing.goal = None if measured is None else np.asarray(measured, np.float64).copy()
        self._fresh = True

    def retry(self, now: float) -> bool:
        """The operator's retry after a failure: home again with a new time limit. False unless failed."""
        if self.phase != FAILED:
            return False
        self.phase, self._deadline = HOMING, now + self.home_timeout_s
        self._home_again()
        return True

    def released(self, now: float) -> None:
        """The robot was handed back (the caller publishes `start` next)."""
        if self.phase == RELEASING:
            self.phase = IDLE
            self.resets += 1
            self.last_reset_s, self._last_end = now - self._began, now

    def _home_again(self) -> None:
        self.homing.goal = self.homing.home
        self._fresh = True

    def stats(self, now: float) -> dict[str, object]:
        """For /diagnostics: the phase, counts, how long the last reset took and how long ago it ended."""
        err = self.last_error
        return {"phase": self.phase, "resets": self.resets, "failures": self.failures,
                "ignored_events": self.ignored, "last_reset_s": self.last_reset_s,
                "since_last_reset_s": now - self._last_end,
                "max_home_error": float(err.max()) if err is not None else math.nan,
                "failure": self.failure_reason if self.phase == FAILED else ""}
