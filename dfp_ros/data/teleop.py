"""Joystick teleoperation: sensor_msgs/Joy axes and buttons -> one action vector (ROS-free).

Per action i: value = scale[i] * deadzone(axes[axis[i]]) + button_value[i] * (buttons[plus[i]] -
buttons[minus[i]]), then clipped to [low[i], high[i]]. Index -1 means "not used". A dead-man button
must be held for any action to come out (`deadman_button`, -1 = none); released, or with no Joy
message for `timeout_s` (a gamepad that went away), the mapping gives the `released` action: zeros
by default (for end-effector *delta* actions like the simulator's, zero holds the arm still), or
None (publish nothing).

The dead zone removes a stick's rest noise and rescales the rest so the output is continuous:
|x| <= d -> 0, else sign(x) * (|x| - d) / (1 - d).
"""

from __future__ import annotations

from collections.abc import Sequence
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

        if self.deadman_button >= 0 and not button(self.deadman_button):
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
