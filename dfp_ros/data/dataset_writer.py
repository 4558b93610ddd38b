"""The LeRobot v3 dataset a recorder writes (ROS-free): feature spec, the append check, and
`DatasetWriter`, a thin wrapper around lerobot's `LeRobotDataset.create` / `add_frame` /
`save_episode` / `finalize` (run in a process of its own by `writer_process.ProcessWriter`).

lerobot is imported only when a dataset is opened (it pulls in torch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.scheduling import no_realtime_leak

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
INTERVENTION_KEY = "intervention"  # bool per frame: a human, not the policy, produced the action


class FeatureMismatch(ValueError):
    """Appending would mix features; nothing was written."""


def build_features(state_names: Sequence[str], action_names: Sequence[str],
                   cameras: dict[str, tuple[int, int]] | None = None,
                   intervention: bool = False) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec: observation.state, action, one video per camera (shapes as tuples), and with
    `intervention` a bool column saying which frames' actions a human produced (a human-in-the-loop session)."""
    if not state_names or not action_names:
        raise ValueError("a dataset needs at least one state and one action name")
    for what, names in (("state", state_names), ("action", action_names)):
        if len(set(names)) != len(names):
            raise ValueError(f"{what} names repeat: {list(names)}")
    features: dict[str, dict[str, Any]] = {
        STATE_KEY: {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)},
    }
    for name, (h, w) in (cameras or {}).items():
        features[IMAGE_PREFIX + name] = {"dtype": "video", "shape": (int(h), int(w), 3),
                                         "names": ["height", "width", "channels"]}
    if intervention:
        features[INTERVENTION_KEY] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


STATE_SOURCE_TYPES = ("float32_array", "joint_state")


@dataclass(frozen=True)
class StateBlock:
    """One state topic's part of the recorded state vector."""

    topic: str
    type: str  # one of STATE_SOURCE_TYPES
    size: int


def state_layout(topics: Sequence[str], types: Sequence[str], dims: Sequence[int], names: Sequence[str],
                 joint_names: Sequence[str]) -> tuple[list[StateBlock], list[str]]:
    """The recorded state: one block per topic, in order, and the name of each value.

    A float32_array topic fills `dims[k]` values (the k-th such topic), named from `names` (all
    float32_array values, in order) or `<topic>.<i>`; a joint_state topic fills the positions of
    `joint_names`, named `<joint>.pos`. ValueError when the lists do not fit together."""
    if len(types) != len(topics) or any(t not in STATE_SOURCE_TYPES for t in types):
        raise ValueError(f"state_types {list(types)} needs one of {STATE_SOURCE_TYPES} per state topic")
    n_float = list(types).count("float32_array")
    if n_float and len(dims) != n_float:  # ignored when every source is a joint_state
        raise ValueError(f"state_dims {list(dims)} needs one length per float32_array source ({n_float})")
    if "joint_state" in types and not joint_names:
        raise ValueError("joint_state state sources need joint_names (the joints to record)")
    total_float = sum(dims) if n_float else 0
    if names and len(names) != total_float:
        raise ValueError(f"state_names has {len(names)} names for {total_float} float32_array values")
    blocks: list[StateBlock] = []
    out: list[str] = []
    float_dims = iter(dims)
    for topic, ty in zip(topics, types, strict=True):
        if ty == "float32_array":
            dim = int(next(float_dims))
            base = topic.strip("/").replace("/", ".")
            offset = sum(b.size for b in blocks if b.type == ty)
            out += list(names[offset:offset + dim]) if names else [f"{base}.{i}" for i in range(dim)]
        else:
            dim = len(joint_names)
            out += [f"{j}.pos" for j in joint_names]
        blocks.append(StateBlock(topic, ty, dim))
    return blocks, out


def _norm_feature(f: dict[str, Any]) -> tuple[str, tuple[int, ...], Any]:
    names = f.get("names")
    return str(f["dtype"]), tuple(int(x) for x in f["shape"]), list(names) if isinstance(names, list) else names


def check_features(root: Path, features: dict[str, dict[str, Any]], fps: int) -> None:
    """Raise FeatureMismatch naming every feature (and fps) that differs from the dataset at root."""
    info = json.loads((root / "meta" / "info.json").read_text())
    have: dict[str, dict[str, Any]] = info["features"]
    problems = []
    if int(info["fps"]) != int(fps):
        problems.append(f"fps: dataset {info['fps']}, configured {fps}")
    builtin = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    for key in sorted((set(have) - builtin) | set(features)):
        if key not in have:
            problems.append(f"{key}: not in the dataset")
        elif key not in features:
            problems.append(f"{key}: in the dataset but not configured")
        else:
            a, b = _norm_feature(have[key]), _norm_feature(features[key])
            for i, what in enumerate(("dtype", "shape", "names")):
                if a[i] != b[i]:
                    problems.append(f"{key}: {what} {a[i]} in the dataset, {b[i]} configured")
    if problems:
        raise FeatureMismatch(f"cannot append to {root}: the features differ -> " + "; ".join(problems))


def dataset_exists(root: Path) -> bool:
    return (Path(root) / "meta" / "info.json").is_file()


class DatasetWriter:
    """A LeRobot v3 dataset being recorded: new, or appended to when its features match."""

    def __init__(self, root: str | Path, repo_id: str, fps: int, features: dict[str, dict[str, Any]],
                 append: bool = False, robot_type: str = "", use_videos: bool = True,
                 vcodec: str = "libsvtav1", parallel_encoding: bool = False, streaming_encoding: bool = False,
                 encoder_queue_maxsize: int = 120) -> None:
        self.root = Path(root)
        self.fps = int(fps)
        self.features = features
        self._parallel = parallel_encoding
        self._finalized = False
        # Check before importing lerobot (seconds): a refusal must be quick and write nothing.
        exists = dataset_exists(self.root)
        if exists and not append:
            raise FileExistsError(f"{self.root} already holds a dataset; set append to add episodes to it")
        if not exists and self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} exists and is not a LeRobot dataset; choose a new folder")
        if exists:
            check_features(self.root, features, self.fps)
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if exists:
            self.ds = LeRobotDataset(repo_id, root=self.root, vcodec=vcodec, streaming_encoding=streaming_encoding,
                                     encoder_queue_maxsize=encoder_queue_maxsize)
            self.appended = True
        else:
            if self.root.exists():
                self.root.rmdir()  # an empty folder: LeRobot creates it itself and refuses an existing one
            self.ds = LeRobotDataset.create(repo_id, fps=self.fps, root=self.root, features=features,
                                            robot_type=robot_type or None, use_videos=use_videos, vcodec=vcodec,
                                            streaming_encoding=streaming_encoding,
                                            encoder_queue_maxsize=encoder_queue_maxsize)
            self.appended = False
        self.episodes_at_open = int(self.ds.meta.total_episodes)
        self.buffered = 0

    @property
    def total_episodes(self) -> int:
        return int(self.ds.meta.total_episodes)

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        f = dict(frame)
        f["task"] = task
        self._wait_for_encoder()
        with no_realtime_leak():  # a streaming encoder opens here (see dfp_ros.scheduling)
            self.ds.add_frame(f)
        self.buffered += 1

    def _wait_for_encoder(self) -> None:
        """Streaming encoding: wait while a camera's encoder queue is full.

        lerobot's feed_frame drops a frame after 0.1 s on a full queue (and the episode would then be
        discarded, see save_episode). Frames wait in the writer process's own queue instead, so an encoder
        that is slower for a moment (a busy machine) delays the episode's save, never loses a frame. Reads
        lerobot 0.4.4's private encoder fields; without them, lerobot's own behaviour applies.
        """
        enc = getattr(self.ds, "_streaming_encoder", None)
        queues = getattr(enc, "_frame_queues", None) or {}
        threads = getattr(enc, "_threads", None) or {}
        while any(q.full() and threads.get(k) is not None and threads[k].is_alive() for k, q in queues.items()):
            time.sleep(0.002)

    def save_episode(self) -> int:
        """Write the buffered episode; returns its length (0: nothing buffered, nothing written)."""
        n = self.buffered
        if n == 0:
            return 0
        # Streaming encoding (video encoded while recording, no PNGs): lerobot drops a frame when its
        # encoder queue is full and only logs it - the video would then be shorter than the episode.
        enc = getattr(self.ds, "_streaming_encoder", None)
        dropped = {k: v for k, v in (getattr(enc, "_dropped_frames", None) or {}).items() if v}
        if dropped:
            self.discard_episode()
            raise RuntimeError(f"the video encoder fell behind and dropped frames {dropped}; episode discarded "
                               "(use a faster vcodec such as h264, or streaming_encoding false)")
        with no_realtime_leak():  # videos are encoded here (see dfp_ros.scheduling)
            self.ds.save_episode(parallel_encoding=self._parallel)
        self.buffered = 0
        return n

    def discard_episode(self) -> int:
        n = self.buffered
        if self.ds.episode_buffer is not None:
            self.ds.clear_episode_buffer()
        self.buffered = 0
        return n

    def finalize(self) -> None:
        """Close the parquet writers (without this the dataset cannot be opened); safe to call twice."""
        if self._finalized:
            return
        self._finalized = True
        if self.buffered:
            self.discard_episode()
        with no_realtime_leak():
            self.ds.finalize()



def to_frame(state: np.ndarray, action: np.ndarray, images: dict[str, np.ndarray] | None = None,
             intervention: bool | None = None) -> dict[str, Any]:
    """A LeRobot frame from arrays (float32 state/action, uint8 HxWx3 images, the intervention flag if recorded)."""
    frame: dict[str, Any] = {STATE_KEY: np.asarray(state, dtype=np.float32),
                             ACTION_KEY: np.asarray(action, dtype=np.float32)}
    for name, img in (images or {}).items():
        frame[IMAGE_PREFIX + name] = img
    if intervention is not None:
        frame[INTERVENTION_KEY] = np.array([intervention], bool)
    return frame
