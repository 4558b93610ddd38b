"""Data path of training on a camera dataset: decode frames/s (new and old path), batch sampling vs the training
step, and the time from start to the first training step with a cold and a warm frame cache.

    python -m dfp_ros.tools.data_bench --root data/my_camera_dataset --image-size 96,96 --train-steps 50
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.arg_types import int_list
from dfp_ros.tools.bench_main import run_and_report, standalone_main

CACHE_ENV = "DFP_ROS_FRAME_CACHE"


def _rounds(fn: Callable[[], object], rounds: int, per_round: int) -> list[float]:
    """Seconds per call of `fn`, one mean per round (the spread shows a busy machine)."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn()
        out.append((time.perf_counter() - t0) / per_round)
    return out


def old_path_frames_per_s(data, root: str | Path, repo_id: str, frames: int, seed: int = 0) -> float:
    """The frame-by-frame path training used before the cache: LeRobotDataset.__getitem__ per frame and camera
    (pyav backend), float -> uint8, resize; timed on `frames` random frames per camera."""
    import cv2

    from dfp_ros.learning.dataset import open_lerobot_dataset

    ds = open_lerobot_dataset(repo_id, root)
    rows = np.random.default_rng(seed).choice(len(ds), size=min(frames, len(ds)), replace=False)
    t0 = time.perf_counter()
    for cam in data.cameras:
        for i in rows:
            img = (ds[int(i)][cam.key].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
    return len(rows) * len(data.cameras) / (time.perf_counter() - t0)


def measure_data_path(root: str | Path, repo_id: str = "", image_size: tuple[int, int] = (96, 96),
                      batch_size: int = 256, horizon: int = 5, old_frames: int = 0) -> dict[str, Any]:
    """Load the dataset with its cameras decoded (no cache), then time batch sampling.

    data_frames_per_s: camera frames per second of the whole load (opening included), the number a
    cold `dfp train` sees; sample_batches_per_s: ChunkDataset.sample at `batch_size`, best of 3 rounds."""
    from dfp_ros.learning.dataset import ChunkDataset

    t0 = time.perf_counter()
    data = ChunkDataset(repo_id, root, horizon=horizon, image_size=image_size, progress=False, frame_cache=False)
    load_s = time.perf_counter() - t0
    camera_frames = len(data) * len(data.cameras)
    rng = np.random.default_rng(0)
    sample_s = _rounds(lambda: data.sample(batch_size, rng), rounds=3, per_round=20)
    res: dict[str, Any] = {
        "frames": len(data), "episodes": data.num_episodes, "cameras": [c.key for c in data.cameras],
        "image_size": list(image_size), "batch_size": batch_size, "load_s": round(load_s, 2),
        "data_frames_per_s": round(camera_frames / load_s, 1),
        "sample_ms": round(1000 * min(sample_s), 2), "sample_ms_max": round(1000 * max(sample_s), 2),
        "sample_batches_per_s": round(1 / min(sample_s), 1),
    }
    if old_frames > 0 and data.cameras:
        res["old_frames_per_s"] = round(old_path_frames_per_s(data, root, repo_id, old_frames), 1)
    return res


def measure_training(root: str | Path, repo_id: str, image_size: tuple[int, int], batch_size: int, steps: int,
                     device: str) -> dict[str, Any]:
    """Start to first training step with a cold and a warm frame cache (a fresh cache folder), then steps/s."""
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer

    res: dict[str, Any] = {}
    before = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="dfp_data_bench_") as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "frames")
        try:
            cfg = TrainConfig(dataset=repo_id, root=str(root), output=str(Path(tmp) / "run"), image_size=image_size,
                              batch_size=batch_size, steps=steps, device=device)
            for which in ("cold", "warm"):
                t0 = time.perf_counter()
                trainer = Trainer(cfg, ModelConfig(), progress=False)
                t1 = time.perf_counter()
                trainer.train_step()
                res[f"trainer_init_{which}_s"] = round(t1 - t0, 2)
                res[f"first_step_{which}_s"] = round(time.perf_counter() - t0, 2)
            step_s = _rounds(trainer.train_step, rounds=3, per_round=max(steps // 3, 1))
            rng = np.random.default_rng(1)
            sample_s = _rounds(lambda: trainer.data.sample(batch_size, rng), rounds=3, per_round=20)
        finally:
            if before is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = before
    res.update({"device": str(trainer.device), "train_steps_per_s": round(1 / min(step_s), 2),
                "train_step_ms": round(1000 * min(step_s), 1), "train_step_ms_max": round(1000 * max(step_s), 1),
                "sample_share_of_step_pct": round(100 * min(sample_s) / min(step_s), 1)})
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="local LeRobot dataset folder with cameras")
    p.add_argument("--dataset", default="", help="its repo id (metadata only)")
    p.add_argument("--image-size", type=int_list, default=(96, 96), help="model image size H,W")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--old-frames", type=int, default=200,
                   help="random frames per camera to time the old frame-by-frame path on (0: skip)")
    p.add_argument("--train-steps", type=int, default=50, help="training steps to time (0: skip the trainer)")
    p.add_argument("--device", default="auto")


def run(a: argparse.Namespace) -> dict[str, Any]:
    size = tuple(a.image_size)
    res = measure_data_path(a.root, a.dataset, size, a.batch_size, old_frames=a.old_frames)
    if a.train_steps > 0:
        res.update(measure_training(a.root, a.dataset, size, a.batch_size, a.train_steps, a.device))
    res["cpu_count"] = os.cpu_count()
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return res


def summary(r: dict[str, Any]) -> str:
    lines = [f"{r['episodes']} episodes, {r['frames']} frames, cameras {r['cameras']} at {r['image_size']}:",
             f"  load with decoding (no cache) {r['load_s']:7.2f} s = {r['data_frames_per_s']:8.0f} camera frames/s"]
    if "old_frames_per_s" in r:
        lines.append(f"  old frame-by-frame path       {r['old_frames_per_s']:8.1f} camera frames/s")
    lines.append(f"  sample batch of {r['batch_size']}          {r['sample_ms']:7.2f} ms (max {r['sample_ms_max']})")
    if "train_steps_per_s" in r:
        lines += [f"  start to first training step  cold {r['first_step_cold_s']} s (dataset + model "
                  f"{r['trainer_init_cold_s']} s), warm {r['first_step_warm_s']} s ({r['trainer_init_warm_s']} s)",
                  f"  training step on {r['device']}      {r['train_step_ms']:7.1f} ms ({r['train_steps_per_s']} "
                  f"steps/s); sampling is {r['sample_share_of_step_pct']}% of it"]
    return "\n".join(lines)


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("data", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.data_bench", __doc__.splitlines()[0], add_arguments,
                           run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
