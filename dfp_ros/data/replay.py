"""Open-loop replay (ROS-free): an exported model's chunks against the actions a dataset recorded.

For every episode, a chunk is predicted every `stride` frames (default: the model's horizon, the
chunks executed whole) from the recorded observation, and compared with the recorded actions it
would have replaced: |predicted - recorded| as a fraction of each action's half-range, over the
chunk's horizon (cut at the episode's end). The noise of the chunk at frame t of episode e comes from
`chunk_rng(seed, e, t)`, so a replay is reproducible and independent of the stride.

A regression check before a model goes on the robot: a model that reproduces its demonstrations
scores near 0, one that ignores its observations scores near the spread of the actions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.contracts import ContractError, ModelMetadata
from dfp_ros.runtime.observation import resize_to
from dfp_ros.runtime.policy_runtime import PolicyRuntime


def chunk_rng(seed: int, episode: int, frame: int) -> np.random.Generator:
    """The noise source of the chunk predicted at `frame` of `episode`."""
    return np.random.default_rng([seed, episode, frame])


def relative_error(predicted: np.ndarray, recorded: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """|predicted - recorded| per value, as a fraction of each action's half-range."""
    half_range = (np.asarray(meta.action_high, np.float32) - np.asarray(meta.action_low, np.float32)) / 2
    return np.abs(np.asarray(predicted, np.float32) - recorded) / np.maximum(half_range, 1e-6)


@dataclass
class EpisodeArrays:
    """One recorded episode: what the model sees and what was done."""

    state: np.ndarray  # [T, S]
    images: dict[str, np.ndarray]  # camera -> uint8 [T, h, w, 3] at the model's size
    actions: np.ndarray  # [T, A]


@dataclass
class EpisodeReplay:
    episode: int
    frames: int
    chunks: int
    mean_error: float  # mean over the chunks' values, fraction of the half-range
    max_error: float
    chunk_starts: list[int] = field(default_factory=list)
    predicted: list[list[list[float]]] = field(default_factory=list)  # per chunk [h, A] (cut at the end)


@dataclass
class ReplayReport:
    model: str
    dataset: str
    stride: int
    seed: int
    episodes: list[EpisodeReplay]

    @property
    def mean_error(self) -> float:
        n = sum(e.chunks for e in self.episodes)
        return float(sum(e.mean_error * e.chunks for e in self.episodes) / max(n, 1))

    @property
    def max_error(self) -> float:
        return max((e.max_error for e in self.episodes), default=0.0)

    def summary(self) -> dict[str, Any]:
        """The report without the predicted chunks (for the JSON line)."""
        return {"model": self.model, "dataset": self.dataset, "stride": self.stride, "seed": self.seed,
                "episodes": len(self.episodes), "chunks": sum(e.chunks for e in self.episodes),
                "mean_error": round(self.mean_error, 6), "max_error": round(self.max_error, 6),
                "per_episode": [{k: v for k, v in asdict(e).items() if k not in ("chunk_starts", "predicted")}
                                for e in self.episodes]}


def replay_episode(runtime: PolicyRuntime, episode: int, data: EpisodeArrays, stride: int, seed: int) -> EpisodeReplay:
    meta = runtime.meta
    n = len(data.actions)
    starts = list(range(0, n, stride))
    errors, predicted = [], []
    for t in starts:
        chunk = runtime.act(data.state[t], {k: v[t] for k, v in data.images.items()}, chunk_rng(seed, episode, t)).chunk
        recorded = data.actions[t:t + meta.horizon]
        chunk = chunk[:len(recorded)]
        errors.append(relative_error(chunk, recorded, meta))
        predicted.append(chunk.tolist())
    flat = np.concatenate([e.reshape(-1) for e in errors]) if errors else np.zeros(0)
    return EpisodeReplay(episode=episode, frames=n, chunks=len(starts),
                         mean_error=float(flat.mean()) if flat.size else 0.0,
                         max_error=float(flat.max()) if flat.size else 0.0, chunk_starts=starts, predicted=predicted)


def replay(runtime: PolicyRuntime, episodes: dict[int, EpisodeArrays], stride: int | None = None,
           seed: int = 0, dataset: str = "") -> ReplayReport:
    stride = int(stride or runtime.meta.horizon)
    if stride < 1:
        raise ContractError(f"stride must be >= 1, got {stride}")
    return ReplayReport(model=runtime.source, dataset=dataset, stride=stride, seed=seed,
                        episodes=[replay_episode(runtime, e, data, stride, seed) for e, data in episodes.items()])


def check_names(what: str, model_names: list[str], dataset_names: list[str]) -> None:
    """The model's names must be the dataset's (when both name their values)."""
    if model_names and dataset_names and list(model_names) != list(dataset_names):
        raise ContractError(f"the model's {what} names {list(model_names)} are not the dataset's {list(dataset_names)}")


def load_episodes(root: str | Path, meta: ModelMetadata, repo_id: str = "", progress: bool = False
                  ) -> dict[int, EpisodeArrays]:
    """A LeRobot dataset's episodes, with the features the model reads (lerobot, hence torch, is needed here)."""
    from dfp_ros.learning.dataset import ChunkDataset

    size = (meta.cameras[0].height, meta.cameras[0].width) if meta.cameras else (1, 1)
    data = ChunkDataset(repo_id, root, horizon=meta.horizon, state_keys=[s.key for s in meta.state],
                        image_keys=[c.key for c in meta.cameras], action_key=meta.action_key, image_size=size,
                        progress=progress)
    if data.state_dim != meta.state_dim or data.action_dim != meta.action_dim:
        raise ContractError(f"dataset {root}: state {data.state_dim} / action {data.action_dim} values, the model "
                            f"reads {meta.state_dim} / writes {meta.action_dim}")
    for spec, dspec in zip(meta.state, data.state_specs, strict=True):
        check_names(f"{spec.key}", spec.names, dspec.names)
    check_names("action", meta.action_names, data.action_names)
    camera_name = {c.key: c.name for c in data.cameras}
    out: dict[int, EpisodeArrays] = {}
    for e in np.unique(data.episode_index):
        idx = np.flatnonzero(data.episode_index == e)
        images = {}
        for cam in meta.cameras:
            frames = data.images[camera_name[cam.key]][idx]
            images[cam.name] = np.stack([resize_to(f, cam.height, cam.width) for f in frames])
        out[int(e)] = EpisodeArrays(state=data.state[idx], images=images, actions=data.actions[idx])
    return out
