"""Who commands the robot at each control tick: the policy, or the person beside it (no ROS).

`Takeover` arbitrates between the policy's queued actions and a human's teleop commands (a gamepad
through joy_teleop_node, a leader arm, ...). `PolicyController` holds one under its lock, feeds it the
human inputs and asks it once per tick; the command it picks then passes the same safety filter as a
policy action (limits, max_delta, watchdog, e-stop, NaN guard). The rules:

- The human is in control while their device says its dead-man is held (`engaged`, joy_teleop_node's
  `teleop/engaged`) or while the operator's intervene switch is on (policy_node's `~/intervene`).
- Taking over is immediate: the next tick runs the human's newest command, and the controller drops
  the policy's queue (the policy goes on planning from live observations meanwhile).
- Handing back (both released) waits for the robot's next pacing observation: the controller drops
  the queue then and plans from that observation, so the first policy command after the release comes
  from a state observed after it. A tick before that observation still runs the human's command, so no
  tick goes without a command and none gets two.
- A human command counts while younger than `timeout_s`. In control without one, a tick gets the
  watchdog action (hold the last command, or stop): at first that is the device's first command still
  on its way; once nothing came for `timeout_s` since the takeover and since the last command, the
  device is gone ("lost", counted as a teleop timeout) and the watchdog action stays until an explicit
  release. Control never falls back to the policy silently.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dfp_ros.runtime.observation import ObservationError

# Who produced a tick's command (the `~/executed` frame_id): the policy, the human, or the watchdog
# action (a repeated command).
POLICY, HUMAN, HOLD = "policy", "human", "hold"


class Takeover:
    """Policy or human, per tick (see the module docstring). Not thread-safe: the controller's lock.

    Time: `now` arguments are one monotonic clock in seconds (the controller's)."""

    def __init__(self, action_dim: int, timeout_s: float = 0.25):
        if not timeout_s > 0:
            raise ValueError(f"teleop_timeout_s must be > 0, got {timeout_s}")
        self.action_dim = int(action_dim)
        self.timeout_s = float(timeout_s)
        self.human = False  # the human is in control (from the takeover until the hand-back is applied)
        self.lost = False  # the device went silent while in control: the watchdog action until released
        self._engaged = False  # the device's dead-man
        self._intervene = False  # the operator's switch
        self._release_pending = False  # both released; applied at the next pacing observation
        self._command: np.ndarray | None = None  # the human's newest command and its receipt time
        self._received = -math.inf
        self._since = -math.inf  # when the human took over
        self.interventions = self.human_ticks = self.timeouts = 0

    # --- inputs (each returns True when the human just took over: the caller drops the policy's queue) --
    def set_engaged(self, on: bool, now: float) -> bool:
        self._engaged = bool(on)
        return self._update(now)

    def set_intervene(self, on: bool, now: float) -> bool:
        self._intervene = bool(on)
        return self._update(now)

    def _update(self, now: float) -> bool:
        wanted = self._engaged or self._intervene
        if wanted and (not self.human or self._release_pending):  # a press after a release is a new takeover
            self.human, self.lost, self._release_pending, self._since = True, False, False, now
            self.interventions += 1
            return True
        if not wanted and self.human:
            self._release_pending = True
        return False

    def on_command(self, values: np.ndarray, now: float) -> None:
        """A human command (in the policy's action units and order); kept whether or not the human is in
        control, so a takeover finds the device's newest one. Raises ObservationError on a wrong size."""
        v = np.asarray(values, np.float64).reshape(-1)
        if v.size != self.action_dim:
            raise ObservationError("teleop_wrong_size", f"teleop command has {v.size} values, expected "
                                                        f"{self.action_dim} (the policy's actions)")
        self._command, self._received = v, now

    # --- per observation and per tick -------------------------------------------------------------------
    def hand_back(self) -> bool:
        """At a pacing observation: apply a pending release. True when the policy is back in control (the
        caller drops the queue and plans from this observation)."""
        if not self._release_pending:
            return False
        self.human = self.lost = self._release_pending = False
        return True

    def command(self, now: float) -> tuple[str, np.ndarray | None]:
        """While the human is in control: (HUMAN, their command), or (HOLD, None) for the watchdog action."""
        if not self.lost:
            if self._command is not None and now - self._received <= self.timeout_s:
                self.human_ticks += 1
                return HUMAN, self._command
            if now - self._since > self.timeout_s:
                self.lost = True
                self.timeouts += 1
        return HOLD, None

    @property
    def state(self) -> str:
        return "lost" if self.lost else HUMAN if self.human else POLICY

    def stats(self) -> dict[str, Any]:
        return {"control": self.state, "intervening": self.human, "interventions": self.interventions,
                "human_ticks": self.human_ticks, "teleop_timeouts": self.timeouts,
                "teleop_timeout_s": self.timeout_s}
