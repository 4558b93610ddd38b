"""Scripted demonstrations: run OGBench's cube oracle in `CubeSim` and write a LeRobot v3 dataset.

The dataset is an ordinary LeRobot dataset (`LeRobotDataset.create` / `add_frame` / `save_episode` /
`finalize`), so training reads it exactly like one recorded from ROS topics. One frame per control
step t holds:

- `observation.state`  float32 [S]  the state s_t the action was chosen in (names = CubeSim.state_names)
- `action`             float32 [A]  the executed (clipped) action a_t (names = CubeSim.action_names)
- `next.reward`        float32 [1]  reward returned by step(a_t)
- `next.done`          bool    [1]  the episode ended with this step (success or time-out)
- `next.success`       bool    [1]  info["success"] of this step
- `observation.images.<camera>` video [size, size, 3] per camera asked for ("front", "wrist"),
  rendered at s_t

Reward and success follow OGBench's single-task convention (see `dfp_ros.sim.cube_env`): they judge
s_t, so the last frame of a successful episode is the first one that shows the cube on target.

    python -m dfp_ros.sim.oracle_demos --root data/cube_single_oracle --episodes 100
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.scheduling import no_realtime_leak
from dfp_ros.sim.cube_env import CAMERAS, CubeSim, check_cameras

log = logging.getLogger(__name__)


def image_key(camera: str) -> str:
    """The dataset feature a camera is recorded under: 'front' -> 'observation.images.front'."""
    return f"observation.images.{camera}"


@dataclass
class CollectSummary:
    """What a collection run produced (the dataset itself is on disk)."""

    root: Path
    episodes: int
    successes: int
    frames: int
    seconds: float

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)


def dataset_features(sim: CubeSim, cameras: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec for demonstrations from `sim` (shapes as tuples: LeRobot compares them so)."""
    features: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": (sim.state_dim,), "names": sim.state_names},
        "action": {"dtype": "float32", "shape": (sim.action_dim,), "names": sim.action_names},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }
    for camera in cameras:
        features[image_key(camera)] = {
            "dtype": "video",
            "shape": (sim.image_size, sim.image_size, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def collect_oracle_dataset(
    root: Path,
    repo_id: str,
    episodes: int,
    env_name: str = "cube-single-v0",
    task_id: int = 1,
    seed: int = 0,
    noise: float = 0.1,
    smoothing: float = 0.5,
    cameras: Sequence[str] = (),
    image_size: int = 96,
    progress: bool = True,
    max_steps: int | None = None,
) -> CollectSummary:
    """Write `episodes` oracle demonstrations (episode i reset with seed + i) to a new dataset at root.

    Every episode is kept, failed ones too (their `next.success` stays False); the success count is
    logged. `cameras` (CubeSim's "front", "wrist") are rendered at every step, each into its own
    video feature (`image_key`). `max_steps` cuts episodes shorter than the env's time limit (for quick tests).
    """
    # Imported here so the simulator and evaluation work in the deploy profile, which has no lerobot.
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    root = Path(root)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    cameras = check_cameras(cameras)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if root.exists():
        # LeRobot creates the folder itself and refuses an existing one; say so before simulating.
        raise FileExistsError(f"{root} already exists; LeRobotDataset.create needs a new folder")

    t0 = time.perf_counter()
    sim = CubeSim(env_name, task_id=task_id, seed=seed, render=bool(cameras), image_size=image_size)
    if cameras:
        sim.reset()
        sim.render()  # fail now, with the package hint, rather than after the first episode
    oracle = sim.oracle(noise=noise, smoothing=smoothing, seed=seed)
    dataset = LeRobotDataset.create(
        repo_id,
        fps=round(sim.fps),
        root=root,
        features=dataset_features(sim, cameras),
        robot_type="ogbench_ur5e_robotiq_2f85",
        use_videos=True,
    )

    successes = frames = 0
    bar = tqdm(range(episodes), desc=f"oracle {sim.task}", unit="ep", disable=not progress)
    try:
        for ep in bar:
            state = sim.reset(seed=seed + ep)
            oracle.reset(state, sim.info)
            success = False
            for t in range(sim.max_episode_steps):
                action = oracle.select_action(state, sim.info)
                frame: dict[str, Any] = {"observation.state": state, "action": action}
                for camera in cameras:  # the views at s_t, like cameras sampled with it
                    frame[image_key(camera)] = sim.render(camera)
                next_state, reward, terminated, truncated, info = sim.step(action)
                cut = max_steps is not None and t + 1 >= max_steps
                done = terminated or truncated or cut
                success = success or info["success"]
                frame["next.reward"] = np.array([reward], dtype=np.float32)
                frame["next.done"] = np.array([done], dtype=bool)
                frame["next.success"] = np.array([info["success"]], dtype=bool)
                # lerobot 0.4.4: the task label travels in the frame under "task" (validate_frame
                # requires it) and becomes task_index at save_episode.
                frame["task"] = sim.task
                dataset.add_frame(frame)
                frames += 1
                state = next_state
                if done:
                    break
            with no_realtime_leak():  # videos are encoded here (see dfp_ros.scheduling)
                dataset.save_episode()
            successes += int(success)
            bar.set_postfix(success=f"{successes}/{ep + 1}", frames=frames)
    finally:
        # Without finalize the parquet footers are missing and the dataset cannot be opened.
        with no_realtime_leak():
            dataset.finalize()
        bar.close()
        sim.close()

    summary = CollectSummary(root=root, episodes=episodes, successes=successes, frames=frames,
                             seconds=time.perf_counter() - t0)
    log.info("wrote %d episodes (%d frames) to %s in %.1f s; oracle succeeded in %d (%.0f%%)",
             episodes, frames, root, summary.seconds, successes, 100 * summary.success_rate)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dfp_ros.sim.oracle_demos",
        description=(
            "Record demonstrations of OGBench's scripted cube expert in the simulated robot (CubeSim) "
            "as a LeRobot v3 dataset, ready for dfp_ros training. Episodes end at success or time-out; "
            "all are kept and the success count is reported."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            "example: python -m dfp_ros.sim.oracle_demos --root data/cube_single_oracle --episodes 100\n"
            "(state only: ~8 episodes/s on 2 CPU cores; open it with "
            "LeRobotDataset(repo_id, root=ROOT) and HF_HUB_OFFLINE=1)"
        ),
    )
    parser.add_argument("--root", type=Path, required=True, help="new folder to create the dataset in")
    parser.add_argument("--repo-id", default="local/cube_single_oracle", help="dataset id stored in its metadata")
    parser.add_argument("--episodes", type=int, default=100, help="number of episodes to record")
    parser.add_argument("--env", default="cube-single-v0", help="OGBench cube environment")
    parser.add_argument("--task", type=int, default=1, help="OGBench task id (1-5)")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    parser.add_argument("--noise", type=float, default=0.1, help="oracle plan noise (OGBench's 'noise')")
    parser.add_argument("--smoothing", type=float, default=0.5,
                        help="temporal smoothing (sigma, steps) of the plan noise")
    parser.add_argument("--cameras", nargs="+", default=[], choices=CAMERAS, metavar="CAMERA",
                        help=f"also record these cameras ({', '.join(CAMERAS)}) as videos (needs EGL: Debian "
                             "libegl1, libgl1; ~5 ms per frame and camera)")
    parser.add_argument("--image-size", type=int, default=96, help="camera image height and width")
    parser.add_argument("--max-steps", type=int, default=None, help="cut episodes after this many steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = collect_oracle_dataset(args.root, args.repo_id, args.episodes, env_name=args.env, task_id=args.task,
                               seed=args.seed, noise=args.noise, smoothing=args.smoothing,
                               cameras=args.cameras, image_size=args.image_size,
                               progress=not args.quiet, max_steps=args.max_steps)
    print(f"{s.root}: {s.episodes} episodes, {s.frames} frames, oracle success {s.successes}/{s.episodes} "
          f"({100 * s.success_rate:.0f}%), {s.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
