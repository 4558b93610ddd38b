"""Replay buffer for on-robot fine-tuning: the offline dataset plus online chunk transitions.

The offline part is a `ChunkDataset` (a LeRobot dataset in memory, with its `next.reward` column),
sampled with its own critic targets; the online part is a ring of joined transitions
(`dfp_ros.learning.transitions`). As in the reference, the buffer is "seeded with the offline data":
by default a batch is drawn uniformly over the union (`online_fraction=None`); a fixed share of
online samples per batch can be asked for instead (useful when the offline set is much larger).
The online part is persisted (`save` / `load`, one .npz) for a learner restart; the offline part is
re-read from the dataset.

Demonstrations: the offline dataset's chunks, and the online transitions flagged `intervention`
(built from a human's takeover, `transitions.py`), which stay in the online ring as well (HIL-SERL
keeps interventions in both buffers). A batch's demonstration share is drawn uniformly over both, so
the BC term of the online update (drift towards the batch's chunks) learns from the human's
corrections exactly as it does from the dataset's; with `online_fraction=None` the split is uniform
over online + demonstrations, so an intervention is drawn about twice as often as another transition.
Without interventions every draw is what it was before they existed (same RNG stream). The
demonstrations live in the ring: the ring overwriting an intervention forgets it as a demonstration too.

Camera models (`cameras`): each online transition also holds one RGB uint8 image per camera at
the model's input size, for its observation and for its next observation, in preallocated uint8
rings (2 x capacity x h x w x 3 bytes per camera). The constructor refuses a capacity whose
images would exceed `max_image_bytes` instead of running the machine out of memory later. The
offline dataset must then hold the same cameras at the same size (`ChunkDataset(image_keys=...,
image_size=...)` decodes them to uint8 in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dfp_ros.contracts import CameraSpec
from dfp_ros.learning.dataset import ChunkBatch
from dfp_ros.learning.transitions import Transition, check_image_memory

if TYPE_CHECKING:
    from dfp_ros.learning.dataset import ChunkDataset


DEFAULT_MAX_IMAGE_BYTES = 8 * 1024**3


def _cat_batches(parts: list[ChunkBatch]) -> ChunkBatch:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    def cat_images(name: str) -> dict[str, torch.Tensor]:
        return {k: torch.cat([getattr(p, name)[k] for p in parts]) for k in getattr(parts[0], name)}

    return ChunkBatch(state=cat("state"), images=cat_images("images"), chunk=cat("chunk"), rewards=cat("rewards"),
                      next_state=cat("next_state"), next_images=cat_images("next_images"), mask=cat("mask"))


class ReplayBuffer:
    """Online transitions in a ring of `capacity`, mixed with an optional offline ChunkDataset.

    `cameras` (the model's, in its order) makes it hold images too; without, it is state-only and an
    offline dataset with cameras is refused.
    """

    def __init__(self, state_dim: int, horizon: int, action_dim: int, capacity: int = 1_000_000,
                 offline: ChunkDataset | None = None, online_fraction: float | None = None,
                 cameras: Sequence[CameraSpec] = (), max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self.cameras = list(cameras)
        check_image_memory(self.cameras, capacity, max_image_bytes)
        if offline is not None:
            want = [(c.name, c.height, c.width) for c in self.cameras]
            have = [(c.name, c.height, c.width) for c in offline.cameras]
            if sorted(want) != sorted(have):
                raise ValueError(f"the offline dataset's cameras {have} (name, height, width) differ from the "
                                 f"model's {want}" + ("" if want else ": this replay buffer is state-only"))
            if not offline.has_rewards:
                raise ValueError("the offline dataset has no reward column: it cannot seed a critic's replay")
            if offline.state_dim != state_dim or offline.action_dim != action_dim:
                raise ValueError(f"offline dataset (state {offline.state_dim}, action {offline.action_dim}) "
                                 f"does not match the model (state {state_dim}, action {action_dim})")
        if online_fraction is not None and not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1] or None, got {online_fraction}")
        self.capacity = capacity
        self.offline = offline
        self.online_fraction = online_fraction
        self.state = np.zeros((capacity, state_dim), np.float32)
        self.chunk = np.zeros((capacity, horizon, action_dim), np.float32)
        self.rewards = np.zeros((capacity, horizon), np.float32)
        self.next_state = np.zeros((capacity, state_dim), np.float32)
        self.mask = np.zeros(capacity, np.float32)
        self.intervention = np.zeros(capacity, bool)
        self._demos: np.ndarray | None = None  # slots of flagged transitions (rebuilt after a change)
        # np.zeros maps untouched pages lazily: memory grows as the ring fills, up to the checked bound.
        self.images = {c.name: np.zeros((capacity, c.height, c.width, 3), np.uint8) for c in self.cameras}
        self.next_images = {c.name: np.zeros((capacity, c.height, c.width, 3), np.uint8) for c in self.cameras}
        self.size = 0
        self.cursor = 0
        self.added = 0  # online transitions ever added (the ring may have forgotten some)

    @property
    def offline_size(self) -> int:
        return 0 if self.offline is None else len(self.offline)

    def __len__(self) -> int:
        return self.size + self.offline_size

    @property
    def demos(self) -> np.ndarray:
        """Ring slots holding interventions (online transitions that are demonstrations too)."""
        if self._demos is None:
            self._demos = np.flatnonzero(self.intervention[:self.size])
        return self._demos

    @property
    def demo_size(self) -> int:
        """Demonstrations: the offline dataset's chunks plus the interventions."""
        return self.offline_size + len(self.demos)

    def _check_images(self, images: dict[str, np.ndarray], what: str) -> None:
        if sorted(images) != sorted(self.images):
            raise ValueError(f"transition {what} has cameras {sorted(images)}, the replay buffer expects "
                             f"{sorted(self.images)}")
        for c in self.cameras:
            img = images[c.name]
            if img.shape != (c.height, c.width, 3) or img.dtype != np.uint8:
                raise ValueError(f"transition {what} camera {c.name}: {img.dtype} {img.shape}, expected uint8 "
                                 f"{(c.height, c.width, 3)} (RGB at the model's input size)")

    def add(self, t: Transition) -> None:
        """Store one transition; raises ValueError (and stores nothing) if its images do not fit."""
        self._check_images(t.images, "images")
        self._check_images(t.next_images, "next_images")
        i = self.cursor
        self.state[i], self.chunk[i], self.rewards[i] = t.state, t.chunk, t.rewards
        self.next_state[i], self.mask[i] = t.next_state, t.mask
        if t.intervention or self.intervention[i]:
            self._demos = None
        self.intervention[i] = t.intervention
        for name in self.images:
            self.images[name][i] = t.images[name]
            self.next_images[name][i] = t.next_images[name]
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def _online_batch(self, idx: np.ndarray) -> ChunkBatch:
        return ChunkBatch(state=torch.from_numpy(self.state[idx]),
                          images={k: torch.from_numpy(v[idx]) for k, v in self.images.items()},
                          chunk=torch.from_numpy(self.chunk[idx]), rewards=torch.from_numpy(self.rewards[idx]),
                          next_state=torch.from_numpy(self.next_state[idx]),
                          next_images={k: torch.from_numpy(v[idx]) for k, v in self.next_images.items()},
                          mask=torch.from_numpy(self.mask[idx]))

    def split(self, batch_size: int, rng: np.random.Generator) -> int:
        """How many of `batch_size` samples come from the online ring (the rest: demonstrations)."""
        if self.size == 0:
            return 0
        if self.demo_size == 0:
            return batch_size
        if self.online_fraction is None:  # uniform over the union
            return int(rng.binomial(batch_size, self.size / (self.size + self.demo_size)))
        return round(batch_size * self.online_fraction)

    def sample(self, batch_size: int, rng: np.random.Generator) -> ChunkBatch:
        return self.sample_flagged(batch_size, rng)[0]

    def sample_flagged(self, batch_size: int, rng: np.random.Generator) -> tuple[ChunkBatch, np.ndarray]:
        """A batch (online rows, then interventions drawn as demonstrations, then offline rows) and, per row,
        whether it is an intervention."""
        if len(self) == 0:
            raise ValueError("the replay buffer is empty")
        n_on = self.split(batch_size, rng)
        n_demo = batch_size - n_on
        demos = self.demos
        if not len(demos):
            n_int = 0  # no draw: without interventions the RNG stream stays as it was
        elif self.offline_size == 0:
            n_int = n_demo
        else:  # uniform over the dataset's chunks and the interventions
            n_int = int(rng.binomial(n_demo, len(demos) / self.demo_size))
        parts, flags = [], []

        def from_ring(idx: np.ndarray) -> None:
            parts.append(self._online_batch(idx))
            flags.append(self.intervention[idx])

        if n_on:
            from_ring(rng.integers(0, self.size, n_on))
        if n_int:
            from_ring(demos[rng.integers(0, len(demos), n_int)])
        if n_demo - n_int:
            assert self.offline is not None
            parts.append(self.offline.sample(n_demo - n_int, rng, with_critic_targets=True))
            flags.append(np.zeros(n_demo - n_int, bool))
        return _cat_batches(parts), np.concatenate(flags)

    # --- persistence (the online part; the offline part is re-read from its dataset) ---------------
    def save(self, path: Path | str) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        n = self.size
        images = {f"image.{k}": v[:n] for k, v in self.images.items()}
        images.update({f"next_image.{k}": v[:n] for k, v in self.next_images.items()})
        np.savez(tmp, state=self.state[:n], chunk=self.chunk[:n], rewards=self.rewards[:n],
                 next_state=self.next_state[:n], mask=self.mask[:n], intervention=self.intervention[:n],
                 cursor=self.cursor, added=self.added, **images)
        tmp.replace(path)

    def load(self, path: Path | str) -> None:
        with np.load(path) as d:
            saved = sorted(k.removeprefix("image.") for k in d.files if k.startswith("image."))
            if saved != sorted(self.images):
                raise ValueError(f"{path} holds images of cameras {saved}, this replay buffer expects "
                                 f"{sorted(self.images)}")
            n = min(len(d["state"]), self.capacity)
            for name in ("state", "chunk", "rewards", "next_state", "mask"):
                getattr(self, name)[:n] = d[name][:n]
            # (a file saved before interventions existed holds none)
            self.intervention[:n] = d["intervention"][:n] if "intervention" in d.files else False
            self._demos = None
            for c in self.cameras:
                for prefix, ring in (("image.", self.images), ("next_image.", self.next_images)):
                    saved_images = d[prefix + c.name]  # read once: it may be gigabytes
                    if saved_images.shape[1:] != (c.height, c.width, 3):
                        raise ValueError(f"{path}: camera {c.name} images are {saved_images.shape[1:]}, this "
                                         f"replay buffer expects {(c.height, c.width, 3)}")
                    ring[c.name][:n] = saved_images[:n]
            self.size = n
            self.cursor = int(d["cursor"]) % self.capacity
            self.added = int(d["added"])
