"""The replay buffer of a state model held on the learner's device, sampled there (ROS-free).

`ReplayBuffer` draws a batch's indices with numpy and gathers its rows on the host; the batch then crosses to
the GPU, and every update waits for that. Here the offline dataset's transitions (one per frame, with their
critic targets, built once by `ChunkDataset.batch_at`) and the online ring sit in one table of device tensors,
and a batch is drawn by device ops alone: random numbers, index arithmetic and gathers, with the buffer's sizes
read from a device tensor. So a graphed step (`graphed_step.StaticStep` with `source=sample_into`) replays the
sampling inside its graph and the host does nothing per update.

The sampling distribution is `ReplayBuffer.sample_flagged`'s: a row is online with probability
size / (size + demonstrations) (uniform over the union), or a fixed `online_fraction` of the batch is; a
demonstration row is an intervention of the ring with probability interventions / demonstrations, else a dataset
chunk; within each source, rows are uniform. The CPU buffer draws the binomial split first and orders the batch
by source; here each row draws its source itself (the same binomial counts in law), so rows of the sources are
interleaved and `sample_flagged` says which are interventions. State models only: camera frames stay in the
host buffer.
"""

from __future__ import annotations

import numpy as np
import torch

from dfp_ros.learning.dataset import ChunkBatch, ChunkDataset
from dfp_ros.learning.replay_buffer import ReplayBuffer
from dfp_ros.learning.transitions import Transition

# The table's columns and their per-row shapes: S = state, H = horizon, A = action dimension.
COLUMNS = ("state", "chunk", "rewards", "next_state", "mask")


def offline_rows(dataset: ChunkDataset) -> ChunkBatch:
    """Every frame of a dataset as a transition with its critic targets (what `ChunkDataset.sample` draws from)."""
    if dataset.cameras:
        raise ValueError(f"a device replay holds state models only; the dataset has cameras "
                         f"{[c.name for c in dataset.cameras]}")
    return dataset.batch_at(np.arange(len(dataset)), with_critic_targets=True)


class DeviceReplay:
    """Offline transitions + an online ring of `capacity`, as device tensors; batches drawn on the device."""

    def __init__(self, state_dim: int, horizon: int, action_dim: int, capacity: int, device: torch.device | str,
                 offline: ChunkBatch | None = None, online_fraction: float | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if online_fraction is not None and not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1] or None, got {online_fraction}")
        self.device = torch.device(device)
        self.state_dim, self.horizon, self.action_dim = state_dim, horizon, action_dim
        self.capacity = capacity
        self.online_fraction = online_fraction
        self.offline_size = 0 if offline is None else int(offline.state.shape[0])
        if offline is not None:
            if offline.images:
                raise ValueError("a device replay holds state models only; the offline rows carry images")
            if offline.rewards is None or offline.next_state is None or offline.mask is None:
                raise ValueError("the offline rows carry no critic targets (rewards, next_state, mask)")
            got = (offline.state.shape[1:], offline.chunk.shape[1:])
            if got != ((state_dim,), (horizon, action_dim)):
                raise ValueError(f"offline rows (state {tuple(got[0])}, chunk {tuple(got[1])}) do not match the "
                                 f"replay (state ({state_dim},), chunk ({horizon}, {action_dim}))")
        rows = self.offline_size + capacity  # offline rows first, then the ring
        shapes = {"state": (state_dim,), "chunk": (horizon, action_dim), "rewards": (horizon,),
                  "next_state": (state_dim,), "mask": ()}
        self.table = {k: torch.zeros((rows, *shapes[k]), dtype=torch.float32, device=self.device) for k in COLUMNS}
        self.intervention = torch.zeros(rows, dtype=torch.bool, device=self.device)
        if offline is not None:
            for k in COLUMNS:
                self.table[k][:self.offline_size].copy_(getattr(offline, k))
        self._flags = np.zeros(capacity, bool)  # the ring's intervention flags, mirrored on the host
        self._demos = np.zeros(0, np.int64)  # ring slots of interventions
        self._demo_slots = torch.zeros(capacity, dtype=torch.long, device=self.device)
        # [ring size, interventions in the ring, offline rows]: the sampler reads these on the device.
        self._counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.size = 0
        self.cursor = 0
        self.added = 0
        self._sync_counts(demos_changed=False)

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, device: torch.device | str) -> DeviceReplay:
        """The same transitions as a host `ReplayBuffer` (its dataset and its ring, interventions flagged)."""
        if buffer.cameras:
            raise ValueError(f"a device replay holds state models only; this buffer has cameras "
                             f"{[c.name for c in buffer.cameras]}")
        offline = offline_rows(buffer.offline) if buffer.offline is not None else None
        replay = cls(buffer.state.shape[1], buffer.chunk.shape[1], buffer.chunk.shape[2], buffer.capacity, device,
                     offline, buffer.online_fraction)
        n, o = buffer.size, replay.offline_size
        for k in COLUMNS:
            replay.table[k][o:o + n].copy_(torch.from_numpy(getattr(buffer, k)[:n]))
        replay._flags[:n] = buffer.intervention[:n]
        replay.intervention[o:].copy_(torch.from_numpy(replay._flags))
        replay.size, replay.cursor, replay.added = n, buffer.cursor, buffer.added
        replay._sync_counts(demos_changed=True)
        return replay

    def __len__(self) -> int:
        return self.size + self.offline_size

    @property
    def demo_size(self) -> int:
        """Demonstrations: the offline rows plus the ring's interventions."""
        return self.offline_size + len(self._demos)

    def add(self, t: Transition) -> None:
        """Store one transition in the ring (a few small host-to-device copies; none per batch)."""
        if t.images or t.next_images:
            raise ValueError("a device replay holds state models only; the transition carries images")
        values = {k: np.asarray(v, np.float32) for k, v in (("state", t.state), ("chunk", t.chunk),
                  ("rewards", t.rewards), ("next_state", t.next_state), ("mask", t.mask))}
        for k, v in values.items():  # all checked before anything is written
            if v.shape != self.table[k].shape[1:]:
                raise ValueError(f"transition {k} has shape {v.shape}, this replay stores "
                                 f"{tuple(self.table[k].shape[1:])}")
        row = self.offline_size + self.cursor
        for k, v in values.items():
            self.table[k][row].copy_(torch.from_numpy(v))
        demos_changed = bool(t.intervention) or bool(self._flags[self.cursor])
        self._flags[self.cursor] = t.intervention
        self.intervention[row] = bool(t.intervention)
        self.cursor = (self.cursor + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1
        self._sync_counts(demos_changed)

    def _sync_counts(self, demos_changed: bool) -> None:
        """The sizes the device sampler reads, and the interventions' slots when they changed."""
        if demos_changed:
            self._demos = np.flatnonzero(self._flags[:self.size])
            if len(self._demos):
                self._demo_slots[:len(self._demos)].copy_(torch.from_numpy(self._demos))
        self._counts.copy_(torch.tensor([self.size, len(self._demos), self.offline_size], dtype=torch.float64))

    def empty_batch(self, batch_size: int) -> ChunkBatch:
        """Buffers for `sample_into` (a static step's input)."""
        def zeros(k: str) -> torch.Tensor:
            return torch.zeros((batch_size, *self.table[k].shape[1:]), device=self.device)

        return ChunkBatch(state=zeros("state"), images={}, chunk=zeros("chunk"), rewards=zeros("rewards"),
                          next_state=zeros("next_state"), mask=zeros("mask"))

    def rows(self, batch_size: int) -> torch.Tensor:
        """Table rows of one batch [B] (device ops only: no host sync, so a CUDA graph can hold them)."""
        size, n_int, n_off = self._counts.unbind()
        demos = n_off + n_int
        u = torch.rand(4, batch_size, dtype=torch.float64, device=self.device)
        if self.online_fraction is None:  # uniform over the union; all online without demonstrations
            online = u[0] < size / (size + demos).clamp_min(1)
        else:
            n_on = round(batch_size * self.online_fraction)
            first = torch.arange(batch_size, device=self.device) < n_on
            online = (first & (size > 0)) | (demos == 0)
        intervention = u[1] < n_int / demos.clamp_min(1)

        def uniform(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:  # in 0..n-1 (0 when n is 0)
            return torch.minimum((x * n).long(), (n.long() - 1).clamp_min(0))

        ring = self.offline_size + uniform(u[2], size)
        # u[3] picks within whichever demonstration source a row has: each row uses it once.
        demo = torch.where(intervention, self.offline_size + self._demo_slots[uniform(u[3], n_int)],
                           uniform(u[3], n_off))
        return torch.where(online, ring, demo)

    def sample_into(self, out: ChunkBatch) -> torch.Tensor:
        """Fill `out` (from `empty_batch`) with one batch in place; returns its rows' intervention flags [B]."""
        if len(self) == 0:
            raise ValueError("the replay buffer is empty")
        rows = self.rows(out.state.shape[0])
        for k in COLUMNS:
            torch.index_select(self.table[k], 0, rows, out=getattr(out, k))
        return self.intervention[rows]

    def sample_flagged(self, batch_size: int) -> tuple[ChunkBatch, torch.Tensor]:
        """A batch on the device and, per row, whether it is an intervention."""
        out = self.empty_batch(batch_size)
        return out, self.sample_into(out)

    def sample(self, batch_size: int) -> ChunkBatch:
        return self.sample_flagged(batch_size)[0]
