"""The action queue a policy node executes at control rate (no ROS).

A chunk [H, A] computed from an observation stamped `t` starts at `t`: action i is meant for the
i-th control tick after the observation. By the time inference finishes some of those ticks may
already have passed, so `push` skips the actions whose ticks are gone (by the observation's age)
and lines the rest up with the ticks to come. `pop` hands out one action per tick.

Merge rules for a chunk arriving while actions are still queued:
- "newest": the new chunk replaces the queue (the freshest observation wins);
- "ensemble": temporal ensembling (ACT, Zhao et al. 2023): every tick slot keeps the actions all
  chunks proposed for it and `pop` returns their weighted mean with w_i = exp(-k * i), where i is
  the age rank of the proposing chunk in that slot (i = 0 the oldest chunk). k > 0 favours older
  chunks (smoother, the ACT default k = 0.01), k < 0 newer ones, k = 0 a plain mean.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

MERGE_RULES = ("newest", "ensemble")


def ticks_elapsed(stamp: float, now: float, period: float) -> int:
    """Whole control periods between an observation at `stamp` and `now` (never negative)."""
    if period <= 0:
        return 0
    # The small epsilon keeps an age of exactly n periods (float noise) at n, not n - 1.
    return max(0, math.floor((now - stamp) / period + 1e-9))


class ChunkQueue:
    """Actions lined up for the coming control ticks; not thread-safe (the node holds a lock)."""

    def __init__(self, action_dim: int, period: float, merge: str = "newest", ensemble_k: float = 0.01):
        if merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {MERGE_RULES}, got {merge!r}")
        if period < 0:
            raise ValueError(f"period must be >= 0, got {period}")
        self.action_dim = action_dim
        self.period = period
        self.merge = merge
        self.ensemble_k = float(ensemble_k)
        # One entry per coming tick: the actions proposed for it, oldest chunk first.
        self._slots: deque[list[np.ndarray]] = deque()
        self.skipped = 0  # actions dropped because their tick had passed (for diagnostics)

    def clear(self) -> None:
        self._slots.clear()

    def remaining(self) -> int:
        """How many ticks the queue can still serve (the re-plan-when-low rule reads this)."""
        return len(self._slots)

    def push(self, chunk: np.ndarray, stamp: float, now: float) -> int:
        """Queue a chunk computed from an observation at `stamp`; returns how many actions it skipped."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk has shape {chunk.shape}, expected [H, {self.action_dim}]")
        skip = min(ticks_elapsed(stamp, now, self.period), chunk.shape[0])
        self.skipped += skip
        live = chunk[skip:]
        if self.merge == "newest":
            self._slots = deque([a] for a in live)
            return skip
        # Ensemble: slot j of the queue is the same tick as live[j]; longer chunks extend the queue.
        for j, action in enumerate(live):
            if j < len(self._slots):
                self._slots[j].append(action)
            else:
                self._slots.append([action])
        return skip

    def weights(self, n: int) -> np.ndarray:
        """Normalised ensembling weights for n proposals, oldest first."""
        w = np.exp(-self.ensemble_k * np.arange(n, dtype=np.float64))
        return w / w.sum()

    def pop(self) -> np.ndarray | None:
        """The action for this tick (None when the queue is empty)."""
        if not self._slots:
            return None
        proposals = self._slots.popleft()
        if len(proposals) == 1:
            return proposals[0].copy()
        return np.average(np.stack(proposals), axis=0, weights=self.weights(len(proposals)))
