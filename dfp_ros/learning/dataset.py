"""LeRobot v3 datasets -> in-memory arrays -> batches of (observation, action chunk) for training.

The whole dataset is held in memory (images resized to the model's input size), because per-item
access through the dataset object is far too slow to feed 256-state batches at tens of steps per
second. Camera frames are decoded once per video file and cached on disk (`video_frames`), so a
second run on the same dataset memory-maps them and starts at once. Chunks are built per episode:
past an episode's last frame, the last action is repeated (the convention LeRobot uses for its
`action_is_pad` padding).

A state-only dataset can also be packed into one arrays file (`save_arrays`, `dfp pack-dataset`) that
`ChunkDataset` reads without LeRobot: the same frames, episodes and statistics, for a machine (a lent
GPU) that has torch but not the LeRobot stack.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfp_ros.contracts import CameraSpec, ContractError, StateSpec
from dfp_ros.learning.video_frames import FrameDecodeError, camera_frames, default_cache_dir

# Reading must never reach for the network: robots and CI machines are often offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class DatasetError(ContractError):
    """The dataset cannot be opened or does not hold what training needs."""


@dataclass
class ChunkBatch:
    state: torch.Tensor  # [B, S] raw units
    images: dict[str, torch.Tensor]  # camera -> uint8 [B, H, W, 3]
    chunk: torch.Tensor  # [B, H, A] raw units
    rewards: torch.Tensor | None = None  # [B, H], zero past the episode end
    next_state: torch.Tensor | None = None  # [B, S] observation H steps later (clamped to the episode)
    next_images: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # [B]: 0 where the episode terminated within the chunk

    def to(self, device: torch.device | str) -> ChunkBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return ChunkBatch(
            state=mv(self.state), images={k: mv(v) for k, v in self.images.items()},
            chunk=mv(self.chunk), rewards=mv(self.rewards), next_state=mv(self.next_state),
            next_images={k: mv(v) for k, v in self.next_images.items()}, mask=mv(self.mask),
        )


def _feature_dim(feature: dict) -> int:
    return int(np.prod(feature["shape"]))


def _feature_names(feature: dict, dim: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # some datasets nest names, e.g. {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return []


def open_lerobot_dataset(repo_id: str, root: str | Path | None):
    """Open a local LeRobot dataset (by root, or by repo id from the user's cache), offline."""
    from lerobot.datasets.lerobot_dataset import HF_LEROBOT_HOME, LeRobotDataset

    if root is None:
        # Check first: lerobot would create an empty folder in the cache, then try the network.
        cached = Path(HF_LEROBOT_HOME) / repo_id
        if not (cached / "meta" / "info.json").is_file():
            raise DatasetError(f"dataset {repo_id!r} is not in the local LeRobot cache ({cached}); dfp reads "
                               "offline: download it first (huggingface-cli download --repo-type dataset "
                               f"{repo_id} --local-dir {cached}) or pass --root")
    elif not (Path(root) / "meta" / "info.json").is_file():
        raise DatasetError(f"no LeRobot dataset at {root} (expected {Path(root) / 'meta' / 'info.json'})")
    try:
        return LeRobotDataset(repo_id or "local/dataset", root=root, video_backend="pyav")
    except Exception as e:
        where = root if root is not None else f"the LeRobot cache (repo id {repo_id!r})"
        raise DatasetError(f"cannot open LeRobot dataset from {where}: {type(e).__name__}: {e}") from e


REWARD_KEY, DONE_KEY = "next.reward", "next.done"  # LeRobot's names, the loader's defaults
ARRAYS_SUFFIX = ".npz"
ARRAYS_FORMAT = "dfp_ros chunk arrays 1"
_ARRAY_NAMES = ("episode_index", "state", "actions", "state_mean", "state_std", "action_low", "action_high")


def is_arrays_file(root: str | Path | None) -> bool:
    """Whether `root` names a packed arrays file rather than a LeRobot dataset folder."""
    return root is not None and str(root).endswith(ARRAYS_SUFFIX)


class ChunkDataset:
    """A LeRobot dataset (or an arrays file packed from one) held in memory, sampled as batches of chunks."""

    def __init__(self, repo_id: str, root: str | Path | None, *, horizon: int,
                 state_keys: list[str] | None = None, image_keys: list[str] | None = None,
                 action_key: str = "action", image_size: tuple[int, int] = (96, 96),
                 reward_key: str = REWARD_KEY, done_key: str = DONE_KEY,
                 progress: bool = True, frame_cache: bool = True, cache_dir: str | Path | None = None):
        """`frame_cache` False decodes the cameras into memory without reading or writing the cache;
        `cache_dir` None is `video_frames.default_cache_dir()`. A `root` ending in .npz is an arrays file."""
        self.horizon = horizon
        if is_arrays_file(root):
            self._load_arrays(Path(root), state_keys, image_keys, action_key, reward_key, done_key)
            return
        ds = open_lerobot_dataset(repo_id, root)
        features = ds.meta.features
        self.repo_id = ds.repo_id
        self.fps = float(ds.meta.fps)
        camera_keys = list(ds.meta.camera_keys)
        if action_key not in features:
            raise DatasetError(f"dataset has no action feature {action_key!r}; it has {sorted(features)}")
        if not state_keys:
            state_keys = [k for k in ("observation.state", "observation.environment_state") if k in features]
        if image_keys is None:
            image_keys = camera_keys
        for k in state_keys:
            if k not in features:
                raise DatasetError(f"dataset has no state feature {k!r}; it has {sorted(features)}")
        for k in image_keys:
            if k not in camera_keys:
                raise DatasetError(f"dataset has no camera feature {k!r}; its cameras are {camera_keys}")
        if not state_keys and not image_keys:
            raise DatasetError("dataset has no observation.state and no camera: nothing to condition on")

        # One batched read per column: np.asarray(hf[k]) would format the rows one by one (seconds).
        wanted = ["index", "episode_index", "timestamp", *state_keys, action_key, reward_key, done_key]
        columns = [k for k in dict.fromkeys(wanted) if k in ds.hf_dataset.column_names]
        table = ds.hf_dataset.with_format("numpy", columns=columns)[:]
        order = np.argsort(np.asarray(table["index"]), kind="stable")
        col = lambda k: np.asarray(table[k])[order]  # noqa: E731
        self._set_episodes(col("episode_index"))
        n = len(self.episode_index)
        self.state_specs = [StateSpec(k, _feature_dim(features[k]), _feature_names(features[k],
                                      _feature_dim(features[k]))) for k in state_keys]
        self.state = (np.concatenate([col(k).reshape(n, -1) for k in state_keys], axis=1).astype(np.float32)
                      if state_keys else np.zeros((n, 0), np.float32))
        self.actions = col(action_key).reshape(n, -1).astype(np.float32)
        self.action_key = action_key
        self.action_names = _feature_names(features[action_key], self.actions.shape[1]) or [
            f"action_{i}" for i in range(self.actions.shape[1])]
        self.rewards = col(reward_key).reshape(n).astype(np.float32) if reward_key in features else None
        self.dones = col(done_key).reshape(n).astype(bool) if done_key in features else None
        self.reward_key, self.done_key = reward_key, done_key
        self._check_columns()

        h, w = image_size
        self.cameras = [CameraSpec(k.split(".")[-1], k, h, w) for k in image_keys]
        cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if frame_cache else None
        timestamps = col("timestamp") if self.cameras else None
        try:
            # Arrays in the cache are read-only memory maps: every batch copies its frames out.
            self.images = {c.name: camera_frames(ds, c.key, (h, w), order, self.episode_index, timestamps,
                                                 cache_dir=cache, progress=progress) for c in self.cameras}
        except FrameDecodeError as e:
            raise DatasetError(f"cannot read the camera frames: {e}") from e

        stats = ds.meta.stats or {}
        self.state_mean, self.state_std = self._state_stats(stats, state_keys)
        a_stats = stats.get(action_key, {})
        self.action_low = np.asarray(a_stats.get("min", self.actions.min(0)), np.float32).reshape(-1)
        self.action_high = np.asarray(a_stats.get("max", self.actions.max(0)), np.float32).reshape(-1)

    def _set_episodes(self, episode_index: np.ndarray) -> None:
        """Each frame's episode, and the first and last frame of it."""
        self.episode_index = np.asarray(episode_index).astype(np.int64)
        n = len(self.episode_index)
        if n == 0:
            raise DatasetError("dataset has no frames")
        starts = np.r_[0, np.flatnonzero(np.diff(self.episode_index)) + 1]
        ends = np.r_[starts[1:], n] - 1
        lengths = ends - starts + 1
        self.ep_start = np.repeat(starts, lengths)
        self.ep_end = np.repeat(ends, lengths)
        self.num_episodes = len(starts)

    def _check_columns(self) -> None:
        self.has_rewards = self.rewards is not None
        if not np.isfinite(self.state).all() or not np.isfinite(self.actions).all():
            raise DatasetError("dataset holds NaN or inf in its state or action columns")

    def save_arrays(self, path: str | Path, float16: bool = False) -> Path:
        """Write the frames, episodes and statistics (no camera frames) as one compressed arrays file that
        `ChunkDataset` reads without LeRobot. `float16` stores states and actions at half precision (half
        the size, a relative rounding of 5e-4; read back as float32); the statistics stay exact."""
        if self.cameras:
            raise DatasetError(f"an arrays file holds no camera frames; the dataset was opened with cameras "
                               f"{[c.name for c in self.cameras]} (open it with image_keys=[])")
        path = Path(path)
        if path.suffix != ARRAYS_SUFFIX:
            raise DatasetError(f"an arrays file is named *{ARRAYS_SUFFIX}, got {path}")
        meta = {"format": ARRAYS_FORMAT, "repo_id": self.repo_id, "fps": self.fps, "action_key": self.action_key,
                "action_names": self.action_names, "reward_key": self.reward_key, "done_key": self.done_key,
                "state": [{"key": s.key, "dim": s.dim, "names": list(s.names)} for s in self.state_specs]}
        columns = {k: getattr(self, k) for k in _ARRAY_NAMES}
        columns["episode_index"] = self.episode_index.astype(np.int32)
        if float16:
            columns.update(state=self.state.astype(np.float16), actions=self.actions.astype(np.float16))
        if self.rewards is not None:
            columns["rewards"] = self.rewards
        if self.dones is not None:
            columns["dones"] = self.dones
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")  # a half-written file never carries the final name
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **columns)
        tmp.replace(path)
        return path

    def _load_arrays(self, path: Path, state_keys: list[str] | None, image_keys: list[str] | None,
                     action_key: str, reward_key: str, done_key: str) -> None:
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != ARRAYS_FORMAT:
                    raise DatasetError(f"{path} is not a dfp_ros arrays file (format {meta.get('format')!r})")
                columns = {k: f[k] for k in (*_ARRAY_NAMES, "rewards", "dones") if k in f.files}
        except (OSError, KeyError, ValueError) as e:  # missing, not an npz, or without its meta
            raise DatasetError(f"cannot read arrays file {path}: {type(e).__name__}: {e}") from e
        held = [s["key"] for s in meta["state"]]
        # Keys left at their defaults take the file's own columns; a key asked for by name must match.
        asked = {"state keys": (list(state_keys or held), held), "action key": (action_key, meta["action_key"]),
                 "reward key": (reward_key, meta["reward_key"] if reward_key != REWARD_KEY else reward_key),
                 "done key": (done_key, meta["done_key"] if done_key != DONE_KEY else done_key)}
        differ = [f"{what} {want!r} (the file holds {have!r})" for what, (want, have) in asked.items() if want != have]
        if image_keys:
            differ.append(f"cameras {image_keys} (an arrays file holds none)")
        if differ:
            raise DatasetError(f"{path} was packed with other columns than asked: {'; '.join(differ)}")
        self.repo_id, self.fps = meta["repo_id"], float(meta["fps"])
        self.action_key, self.action_names = meta["action_key"], list(meta["action_names"])
        self.reward_key, self.done_key = meta["reward_key"], meta["done_key"]
        self.state_specs = [StateSpec(s["key"], int(s["dim"]), list(s["names"])) for s in meta["state"]]
        self._set_episodes(columns["episode_index"])
        self.state, self.actions = columns["state"].astype(np.float32), columns["actions"].astype(np.float32)
        self.rewards, self.dones = columns.get("rewards"), columns.get("dones")
        self.state_mean, self.state_std = columns["state_mean"], columns["state_std"]
        self.action_low, self.action_high = columns["action_low"], columns["action_high"]
        self.cameras, self.images = [], {}
        self._check_columns()

    def _state_stats(self, stats: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if all(k in stats and "mean" in stats[k] for k in keys):
            mean = np.concatenate([np.asarray(stats[k]["mean"], np.float32).reshape(-1) for k in keys]) \
                if keys else np.zeros(0, np.float32)
            std = np.concatenate([np.asarray(stats[k]["std"], np.float32).reshape(-1) for k in keys]) \
                if keys else np.zeros(0, np.float32)
            return mean, std
        return self.state.mean(0), self.state.std(0)

    def __len__(self) -> int:
        return len(self.episode_index)

    @property
    def state_dim(self) -> int:
        return self.state.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def chunk_indices(self, idx: np.ndarray) -> np.ndarray:
        """[B] frame indices -> [B, H] indices of the chunk's actions, clamped to the episode end."""
        steps = idx[:, None] + np.arange(self.horizon)[None, :]
        return np.minimum(steps, self.ep_end[idx][:, None])

    def sample(self, batch_size: int, rng: np.random.Generator, with_critic_targets: bool = False) -> ChunkBatch:
        return self.batch_at(rng.integers(0, len(self), size=batch_size), with_critic_targets)

    def batch_at(self, idx: np.ndarray, with_critic_targets: bool = False) -> ChunkBatch:
        """The batch for frame indices `idx` [B]."""
        cidx = self.chunk_indices(idx)
        batch = ChunkBatch(
            state=torch.from_numpy(self.state[idx]),
            images={k: torch.from_numpy(v[idx]) for k, v in self.images.items()},
            chunk=torch.from_numpy(self.actions[cidx]),
        )
        if with_critic_targets:
            if self.rewards is None:
                raise DatasetError("critic training needs a reward column; the dataset has none")
            steps = idx[:, None] + np.arange(self.horizon)[None, :]
            inside = steps <= self.ep_end[idx][:, None]
            # A done frame inside the chunk ends the task there, also mid-episode (a play dataset labelled with
            # a task's success goes on after it): no reward after it and no bootstrap. At an episode's last frame
            # this is the usual terminal; an episode that ends without done is a time-out and bootstraps.
            done = inside & self.dones[cidx] if self.dones is not None else np.zeros_like(inside)
            after_done = np.cumsum(done, axis=1) - done > 0
            live = inside & ~after_done
            batch.rewards = torch.from_numpy(np.where(live, self.rewards[cidx], 0.0).astype(np.float32))
            nxt = np.minimum(idx + self.horizon, self.ep_end[idx])
            batch.next_state = torch.from_numpy(self.state[nxt])
            batch.next_images = {k: torch.from_numpy(v[nxt]) for k, v in self.images.items()}
            batch.mask = torch.from_numpy((~done.any(axis=1)).astype(np.float32))
        return batch
