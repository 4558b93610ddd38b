"""Joystick teleoperation: sensor_msgs/Joy axes and buttons -> one action vector (ROS-free).

Per action i: value = scale[i] * deadzone(axes[axis[i]]) + button_value[i] * (buttons[plus[i]] -
buttons[minus[i]]), then clipped to [low[i], high[i]]. Index -1 means "not used". A dead-man button
must be held for any action to come out (`deadman_button`, -1 = none); released, or with no Joy
message for `timeout_s` (a gamepad that went away), the mapping gives the `released` action: zeros
by default (for end-effector *delta* actions like the simulator's, zero holds the arm still), or
None (publish nothing).

The dead zone removes a stick's rest noise and rescales the rest so the output is continuous:
|x| <= d -> 0, else sign(x) * (|x| - d) / (1 - d).

`EpisodeButtons` turns operator buttons into episode events (success, failure, discard, pause /
resume), one per press: an event fires when its button goes from released to pressed between two Joy
messages, and not again within `debounce_s` (a bouncing contact; drivers repeat the pressed state).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class JoyMapping:
    axis: list[int]
    scale: list[float]
    low: list[float]
    high: list[float]
    plus: list[int] = field(default_factory=list)  # button adding +button_value (e.g. gripper close)
    minus: list[int] = field(default_factory=list)  # button adding -button_value (e.g. gripper open)
    button_value: list[float] = field(default_factory=list)
    deadzone: float = 0.1
    deadman_button: int = -1
    released: str = "zero"  # zero | none

    def __post_init__(self) -> None:
        n = len(self.axis)
        self.plus = self.plus or [-1] * n
        self.minus = self.minus or [-1] * n
        self.button_value = self.button_value or [1.0] * n
        for name in ("scale", "low", "high", "plus", "minus", "button_value"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries; axis has {n} (one per action)")
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"low {self.low} must not exceed high {self.high}")
        if self.released not in ("zero", "none"):
            raise ValueError(f"released must be 'zero' or 'none', got {self.released!r}")

    @property
    def buttons_used(self) -> set[int]:
        """The Joy buttons this mapping reads (the dead-man and the action buttons)."""
        return {b for b in (self.deadman_button, *self.plus, *self.minus) if b >= 0}

    def held(self, buttons: Sequence[int]) -> bool:
        """Whether the dead-man is held (always, without one). Raises ValueError when the message lacks it."""
        if self.deadman_button < 0:
            return True
        if self.deadman_button >= len(buttons):
            raise ValueError(f"the Joy message has {len(buttons)} buttons; button {self.deadman_button} is configured")
        return bool(buttons[self.deadman_button])

    @property
    def dim(self) -> int:
        return len(self.axis)

    def _dz(self, x: float) -> float:
        ax = abs(x)
        if ax <= self.deadzone:
            return 0.0
        return float(np.sign(x)) * (min(ax, 1.0) - self.deadzone) / (1.0 - self.deadzone)

    def released_action(self) -> np.ndarray | None:
        if self.released == "none":
            return None
        return np.clip(np.zeros(self.dim), self.low, self.high)

    def map(self, axes: Sequence[float], buttons: Sequence[int]) -> np.ndarray | None:
        """The action for one Joy message; the released action when the dead-man is not held.

        Raises ValueError when the message lacks an axis or button the mapping uses (another device).
        """
        def button(i: int) -> int:
            if i < 0:
                return 0
            if i >= len(buttons):
                raise ValueError(f"the Joy message has {len(buttons)} buttons; button {i} is configured")
            return 1 if buttons[i] else 0

        if not self.held(buttons):
            return self.released_action()
        out = np.zeros(self.dim)
        for k in range(self.dim):
            a = self.axis[k]
            if a >= 0:
                if a >= len(axes):
                    raise ValueError(f"the Joy message has {len(axes)} axes; axis {a} is configured")
                x = float(axes[a])
                if not np.isfinite(x):
                    raise ValueError(f"axis {a} is {x}")
                out[k] += self.scale[k] * self._dz(x)
            out[k] += self.button_value[k] * (button(self.plus[k]) - button(self.minus[k]))
        return np.clip(out, self.low, self.high)


# The event word of a button that alternates between two events: pause, then resume, then pause...
PAUSE_RESUME = "pause_resume"


class EpisodeButtons:
    """Joy buttons -> episode event words, one per press (see the module docstring)."""

    def __init__(self, buttons: dict[str, int], debounce_s: float = 0.3, taken: Iterable[int] = (),
                 pause_resume: tuple[str, str] = ("pause", "resume")):
        """`buttons`: event word (or PAUSE_RESUME) -> Joy button, -1 = none; `taken`: buttons the action
        mapping reads (a press must not move the robot and end an episode at once). ValueError on a clash."""
        self.buttons = {word: int(b) for word, b in buttons.items() if b >= 0}
        seen: dict[int, str] = {}
        for word, b in self.buttons.items():
            if b in seen:
                raise ValueError(f"button {b} is both {seen[b]} and {word}")
            seen[b] = word
        clash = sorted(set(seen) & set(taken))
        if clash:
            raise ValueError(f"episode button(s) {clash} also move the robot (dead-man or action buttons)")
        if not debounce_s >= 0:
            raise ValueError(f"debounce_s must be >= 0, got {debounce_s}")
        self.debounce_s = float(debounce_s)
        self.pause_resume = pause_resume
        self.paused = False
        self._down: dict[int, bool] = {}  # button -> pressed in the previous message
        self._fired: dict[int, float] = {}  # button -> when it last fired

    def update(self, buttons: Sequence[int], now: float) -> list[str]:
        """The events one Joy message's buttons fire (`now`: seconds on any monotonic clock).

        Raises ValueError when the message lacks a configured button (nothing fires, nothing changes)."""
        if self.buttons and max(self.buttons.values()) >= len(buttons):
            raise ValueError(f"the Joy message has {len(buttons)} buttons; episode button "
                             f"{max(self.buttons.values())} is configured")
        events = []
        for word, b in self.buttons.items():
            down, was = bool(buttons[b]), self._down.get(b, False)
            self._down[b] = down
            if down and not was and now - self._fired.get(b, -np.inf) >= self.debounce_s:
                self._fired[b] = now
                if word == PAUSE_RESUME:
                    word = self.pause_resume[self.paused]
                    self.paused = not self.paused
                events.append(word)
        return events
