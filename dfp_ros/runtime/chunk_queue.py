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

    def upcoming(self, n: int) -> np.ndarray:
        """The actions the next `n` ticks would execute (fewer when fewer are queued), [<= n, A]."""
        rows = [self._merged(self._slots[i]) for i in range(min(n, len(self._slots)))]
        return np.asarray(rows, np.float64).reshape(len(rows), self.action_dim)

    def push(self, chunk: np.ndarray, stamp: float, now: float, skip: int | None = None) -> int:
        """Queue a chunk computed from an observation at `stamp`; returns how many actions it skipped.

        `skip` (when given) is the number of ticks already executed since the observation, counted by
        the caller; otherwise the whole periods between `stamp` and `now`."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk has shape {chunk.shape}, expected [H, {self.action_dim}]")
        if skip is None:
            skip = ticks_elapsed(stamp, now, self.period)
        skip = min(max(0, int(skip)), chunk.shape[0])
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
        return self._merged(self._slots.popleft())

    def drop(self, n: int) -> int:
        """Discard the actions of the next `n` ticks unexecuted (ticks that passed); returns how many were queued."""
        dropped = min(max(n, 0), len(self._slots))
        for _ in range(dropped):
            self._slots.popleft()
        return dropped

    def _merged(self, proposals: list[np.ndarray]) -> np.ndarray:
        if len(proposals) == 1:
            return proposals[0].copy()
        return np.average(np.stack(proposals), axis=0, weights=self.weights(len(proposals)))


# --- hand-over between chunks ---------------------------------------------------------------------
# "none": execute the model's chunk (best-of-N by the critic when it has one); "nearest": among the N
# candidates the model returns, the one closest to the actions already queued for the ticks both cover,
# so consecutive chunks agree where they overlap, or, with nothing queued, the one whose first action
# continues the last one executed (with a critic: among the better half by Q).
CONSISTENCY_MODES = ("none", "nearest")


def pick_consistent(candidates: np.ndarray, committed: np.ndarray, skip: int, q: np.ndarray | None = None) -> int:
    """Index of the candidate [N, H, A] whose actions from `skip` on are nearest (squared distance, the
    first overlapping tick weighted most) to `committed` [K, A], the actions queued for the same ticks.
    Nothing committed: the best by Q, else candidate 0."""
    n = candidates.shape[0]
    pool = np.arange(n)
    if q is not None and n > 1:
        pool = np.argsort(-np.asarray(q, np.float64).reshape(n))[: max(1, n // 2)]
    overlap = min(len(committed), candidates.shape[1] - skip)
    if overlap <= 0:
        return int(pool[0])
    diff = candidates[pool, skip:skip + overlap].astype(np.float64) - committed[None, :overlap]
    # Weights 1, 1/2, 1/3, ...: the boundary tick matters most, later ticks will be re-planned anyway.
    weights = 1.0 / np.arange(1, overlap + 1)
    cost = (np.square(diff).sum(axis=2) * weights).sum(axis=1)
    return int(pool[int(np.argmin(cost))])


def boundary_jump(first: np.ndarray, reference: np.ndarray | None) -> float:
    """Largest action change at a chunk boundary: the new chunk's first action against the action the
    tick would have run (or ran last) without it; nan when there is no reference."""
    if reference is None:
        return float("nan")
    return float(np.max(np.abs(np.asarray(first, np.float64) - np.asarray(reference, np.float64))))
