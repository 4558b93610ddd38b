"""The last gate before a command reaches the robot (no ROS).

`SafetyFilter.filter` turns the action a control tick wants to send into the command to publish,
or None for "publish nothing". In order:
1. e-stop latched or not enabled -> None. The e-stop latch is cleared only by an explicit
   `enable(True)` (the node's `~/enable` service), never by the e-stop topic going False, so a
   flapping e-stop button cannot restart a robot.
2. observation stale (older than `max_obs_age_s`, or none yet) -> the watchdog: "hold" repeats the
   last command that passed (if any), "stop" publishes nothing.
3. no action (queue empty) -> None.
   (`without_command` is the watchdog action for another reason: a teleop device that holds the robot
   and has sent no command, after the same e-stop and enable checks.)
4. NaN / inf anywhere -> None (counted); a non-finite number never reaches a robot.
5. clip to [low, high], then limit the change from the last command to `max_delta` per tick.
States are plain strings so the node can put them in diagnostics as they are.
"""

from __future__ import annotations

import numpy as np

WATCHDOG_ACTIONS = ("hold", "stop")

# Values of SafetyFilter.state
OK = "ok"
DISABLED = "disabled"
ESTOP = "estop"
STALE_HOLD = "stale_hold"
STALE_STOP = "stale_stop"
TELEOP_HOLD = "teleop_hold"
TELEOP_STOP = "teleop_stop"
NO_ACTION = "no_action"
NON_FINITE = "non_finite"


class SafetyFilter:
    def __init__(self, low: np.ndarray | list[float], high: np.ndarray | list[float], *,
                 max_delta: float | np.ndarray | list[float] = 0.0, max_obs_age_s: float = 0.1,
                 watchdog_action: str = "stop", enabled: bool = False):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"low {self.low.shape} and high {self.high.shape} must be equal-length vectors")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise ValueError("action limits must be finite")
        if (self.low > self.high).any():
            raise ValueError(f"action low {self.low.tolist()} exceeds high {self.high.tolist()}")
        delta = np.broadcast_to(np.asarray(max_delta, dtype=np.float64), self.low.shape).copy()
        if (delta < 0).any() or not np.isfinite(delta).all():
            raise ValueError(f"max_delta must be finite and >= 0 (0 = off), got {max_delta}")
        self.max_delta = delta
        if watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(f"watchdog_action must be one of {WATCHDOG_ACTIONS}, got {watchdog_action!r}")
        self.watchdog_action = watchdog_action
        self.max_obs_age_s = float(max_obs_age_s)
        self.enabled = bool(enabled)
        self.estopped = False
        self.last: np.ndarray | None = None  # the last command that passed (for hold and the rate limit)
        self.state = OK if self.enabled else DISABLED
        self.watchdog = "ok"  # "ok" | "stale" (observation freshness only, for diagnostics)
        self.non_finite_count = 0

    # --- operator inputs --------------------------------------------------------------------
    def estop(self) -> None:
        """Latch a stop; only enable(True) clears it."""
        self.estopped = True
        self.last = None  # after a stop the rate limit must not start from a pre-stop command
        self.state = ESTOP

    def enable(self, on: bool) -> str:
        """The explicit operator decision: True clears the e-stop latch and enables commanding."""
        if on:
            was = "e-stop cleared, enabled" if self.estopped else "enabled"
            self.estopped = False
            self.enabled = True
            return was
        self.enabled = False
        self.last = None
        return "disabled"

    # --- per tick -----------------------------------------------------------------------------
    def filter(self, action: np.ndarray | None, obs_age_s: float | None) -> np.ndarray | None:
        """The command to publish this tick, or None to publish nothing; sets `state`."""
        stale = obs_age_s is None or not np.isfinite(obs_age_s) or obs_age_s > self.max_obs_age_s
        self.watchdog = "stale" if stale else "ok"
        if self._blocked():
            return None
        if stale:
            return self._watchdog_action(STALE_HOLD, STALE_STOP)
        if action is None:
            self.state = NO_ACTION
            return None
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.low.shape or not np.isfinite(action).all():
            self.non_finite_count += 1
            self.state = NON_FINITE
            return None
        cmd = np.clip(action, self.low, self.high)
        if self.last is not None:
            limited = self.max_delta > 0
            cmd = np.where(limited, np.clip(cmd, self.last - self.max_delta, self.last + self.max_delta), cmd)
            cmd = np.clip(cmd, self.low, self.high)
        self.last = cmd
        self.state = OK
        return cmd.copy()

    def without_command(self) -> np.ndarray | None:
        """A tick whose commander has no command (a teleop device not heard from): the watchdog action."""
        return None if self._blocked() else self._watchdog_action(TELEOP_HOLD, TELEOP_STOP)

    def _blocked(self) -> bool:
        """E-stop latched or not enabled (sets `state`)."""
        if self.estopped:
            self.state = ESTOP
        elif not self.enabled:
            self.state = DISABLED
        return self.estopped or not self.enabled

    def _watchdog_action(self, hold_state: str, stop_state: str) -> np.ndarray | None:
        if self.watchdog_action == "hold" and self.last is not None:
            self.state = hold_state
            return self.last.copy()
        self.state = stop_state if self.watchdog_action == "stop" else hold_state
        return None
