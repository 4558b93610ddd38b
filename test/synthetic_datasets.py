"""Small LeRobot v3 datasets written through lerobot's own writer, for tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfp_ros.scheduling import no_realtime_leak

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Three far-apart modes of a 2-D action, demonstrated for the same state with these shares.
MODES = np.array([[-0.7, -0.7], [0.7, -0.7], [0.0, 0.7]], np.float32)
SHARES = np.array([0.5, 0.3, 0.2])
ACTION_NOISE = 0.03


def write_multimodal_dataset(root: Path, episodes: int = 200, length: int = 10, seed: int = 0,
                             modes: np.ndarray = MODES, shares: np.ndarray = SHARES) -> Path:
    """Every episode sits at (nearly) the same state and repeats one action mode, drawn by `shares`.

    Mode counts are exact (not sampled), so the true share of each mode is known.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["vx", "vy"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("test/multimodal", fps=10, features=features, root=root, use_videos=False)
    counts = np.round(shares * episodes).astype(int)
    labels = rng.permutation(np.repeat(np.arange(len(modes)), counts))
    for mode in labels:
        for t in range(length):
            ds.add_frame({
                "observation.state": (rng.normal(0, 0.01, 2)).astype(np.float32),
                "action": (modes[mode] + rng.normal(0, ACTION_NOISE, 2)).astype(np.float32),
                "next.reward": np.array([float(t == length - 1)], np.float32),
                "next.done": np.array([t == length - 1]),
                "task": "reach a mode",
            })
        ds.save_episode()
    ds.finalize()
    return root


def _camera_dataset(root: Path, repo_id: str, size: int, rewards: bool):
    """An empty LeRobot dataset: a 3-number state, one video camera 'front', 2 actions (+ reward, done)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
        "observation.images.front": {"dtype": "video", "shape": (size, size, 3),
                                     "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["u", "v"]},
    }
    if rewards:
        features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
        features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    return LeRobotDataset.create(repo_id, fps=10, features=features, root=root, use_videos=True)


def write_image_dataset(root: Path, episodes: int = 3, length: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A tiny dataset with one video camera whose colour encodes the action."""
    rng = np.random.default_rng(seed)
    ds = _camera_dataset(root, "test/images", size, rewards=False)
    for _ in range(episodes):
        for _ in range(length):
            act = rng.uniform(-1, 1, 2).astype(np.float32)
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0] = int((act[0] + 1) * 127)
            img[..., 1] = int((act[1] + 1) * 127)
            ds.add_frame({"observation.state": rng.normal(0, 1, 3).astype(np.float32),
                          "observation.images.front": img, "action": act, "task": "colour"})
        with no_realtime_leak():  # a video encoder makes its thread real-time as root
            ds.save_episode()
    with no_realtime_leak():
        ds.finalize()
    return root


def write_image_reward_dataset(root: Path, episodes: int = 3, length: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A camera dataset with rewards (what a camera policy's critic is pre-trained on): the red channel
    of each frame encodes its frame index in the episode, the reward is 1 on the last frame.
    (32 px: the video encoder fails on 16 px frames; ChunkDataset resizes them to the model's size.)"""
    rng = np.random.default_rng(seed)
    ds = _camera_dataset(root, "test/images_rewards", size, rewards=True)
    for _ in range(episodes):
        for t in range(length):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0] = 30 * t
            ds.add_frame({"observation.state": np.array([t, 0, 0], np.float32),
                          "observation.images.front": img, "action": rng.uniform(-1, 1, 2).astype(np.float32),
                          "next.reward": np.array([float(t == length - 1)], np.float32),
                          "next.done": np.array([t == length - 1]), "task": "look"})
        with no_realtime_leak():  # a video encoder makes its thread real-time as root
            ds.save_episode()
    with no_realtime_leak():
        ds.finalize()
    return root


def camera_image(camera: int, episode: int, t: int, size: int) -> np.ndarray:
    """A frame with structure a video codec has to work on: a gradient lit by the camera and episode,
    and a bright square that moves with time (different per camera)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0] = 255 * (0.5 + 0.5 * np.sin(6 * xx + 0.3 * episode + camera))
    img[..., 1] = 255 * yy
    img[..., 2] = 40 * camera + 10 * (episode % 5)
    side = max(size // 6, 2)
    x = (3 * t + 17 * camera + 5 * episode) % (size - side)
    y = (2 * t + 11 * camera) % (size - side)
    img[y:y + side, x:x + side] = (255, 255, 255)
    return img


def write_camera_dataset(root: Path, episodes: int = 3, length: int = 8, size: int = 32,
                         cameras: tuple[str, ...] = ("front", "wrist"), video: bool = True, seed: int = 0,
                         progress: bool = False) -> Path:
    """Several cameras (video, or PNG images with video=False), a 3-number state and 2 actions.

    Writes to a new dataset at root, or appends the episodes to the dataset already there."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["u", "v"]},
    }
    for cam in cameras:
        features[f"observation.images.{cam}"] = {"dtype": "video" if video else "image",
                                                  "shape": (size, size, 3),
                                                  "names": ["height", "width", "channels"]}
    if (Path(root) / "meta" / "info.json").is_file():
        ds = LeRobotDataset("test/cameras", root=root)
    else:
        ds = LeRobotDataset.create("test/cameras", fps=10, features=features, root=root, use_videos=video)
    first = ds.meta.total_episodes
    for ep in tqdm(range(first, first + episodes), disable=not progress, desc="writing", unit="ep"):
        for t in range(length):
            frame = {"observation.state": np.array([t, ep, 0], np.float32),
                     "action": rng.uniform(-1, 1, 2).astype(np.float32), "task": "look"}
            for c, cam in enumerate(cameras):
                frame[f"observation.images.{cam}"] = camera_image(c, ep, t, size)
            ds.add_frame(frame)
        with no_realtime_leak():  # a video encoder makes its thread real-time as root
            ds.save_episode()
    with no_realtime_leak():
        ds.finalize()
    return root
