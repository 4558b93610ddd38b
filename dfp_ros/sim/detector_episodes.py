"""Labelled camera episodes for a success detector: the episodes a person labels on a real robot, made here.

Every frame holds what a camera policy sees (the joint positions as `observation.state`, one video per
camera) and a label judged on the state the frame shows: success when every cube is within OGBench's
4 cm of its target (`CubeSim.cube_successes`). Two kinds of episode:

- success: OGBench's oracle does the task, then the arm gets zero commands for `tail_steps` more frames
  while the cube stays on its target. A robot does not stop the instant the cube lands, and a detector
  needs more than the one success frame the simulator's episode ends on (it ends one step after);
- near miss: the oracle aims at a point `miss_range_m` beside the target (uniform distance, any
  direction), so the cube is grasped, carried and put down close to its target but outside the success
  radius, followed by the same tail: the negatives that decide a detector's precision.

An oracle that fails (a dropped cube, the time limit) leaves an episode with its true labels, as a person
would label it. Columns: `observation.state` (joint positions), `action` (the executed command),
`next.success` (the frame's label), `next.reward` (0 on a success frame, -1 otherwise: the labels as
the simulator's sparse reward), `next.done`. `dfp train-reward` reads `next.success` (frames at and after
an episode's first success are positives); `dfp train` reads the same dataset as demonstrations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.data.dataset_writer import DatasetWriter, build_features, to_frame
from dfp_ros.sim.cube_env import CubeSim, aim_planner, check_cameras

SUCCESS, NEAR_MISS = "success", "near_miss"


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to record: its kind and reset seed."""

    kind: str
    seed: int


@dataclass
class LabelledSummary:
    root: Path
    episodes: int
    kinds: dict[str, int]
    success_episodes: int  # episodes with at least one success frame
    frames: int
    success_frames: int
    seconds: float


def episode_plan(successes: int, near_misses: int, seed: int) -> list[EpisodeSpec]:
    """Success and near-miss episodes interleaved (so any leading part of the plan holds both kinds),
    episode i reset with seed + i."""
    if successes < 0 or near_misses < 0 or successes + near_misses < 1:
        raise ValueError(f"need at least one episode, got {successes} success + {near_misses} near miss")
    slots = sorted([((i + 0.5) / successes, SUCCESS) for i in range(successes)]
                   + [((i + 0.5) / near_misses, NEAR_MISS) for i in range(near_misses)])
    return [EpisodeSpec(kind, seed + i) for i, (_, kind) in enumerate(slots)]


def _miss_point(sim: CubeSim, rng: np.random.Generator, miss_range_m: tuple[float, float]) -> np.ndarray:
    pos, _ = sim.cube_target(0)
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(*miss_range_m)
    return pos + dist * np.array([np.cos(angle), np.sin(angle), 0.0])


def record_episode(sim: CubeSim, spec: EpisodeSpec, cameras: Sequence[str], tail_steps: int,
                   miss_range_m: tuple[float, float], noise: float) -> list[dict[str, Any]]:
    """One episode's frames (see the module docstring); the simulator is reset with the spec's seed."""
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    rng = np.random.default_rng(spec.seed)
    state = sim.reset(seed=spec.seed)
    planner = CubePlanOracle(env=sim.env, segment_dt=0.4, noise=noise, noise_smoothing=0.5)
    pos, yaw = sim.cube_target(0)
    if spec.kind == NEAR_MISS:
        pos = _miss_point(sim, rng, miss_range_m)
    aim_planner(planner, 0, pos, yaw, state, sim.info, np.random.RandomState(spec.seed).get_state())
    frames: list[dict[str, Any]] = []
    in_episode, tail = True, 0  # in_episode: the simulator's own episode (time limit, success) runs
    while len(frames) < sim.max_episode_steps + tail_steps and tail < tail_steps:
        if planner.done or not in_episode:
            action = np.zeros(sim.action_dim, np.float32)
            tail += 1
        else:
            action = np.clip(np.asarray(planner.select_action(state, sim.info), np.float32),
                             sim.action_low, sim.action_high)
        images = {c: sim.render(c) for c in cameras}
        success = all(sim.cube_successes())  # what this frame shows
        frame = to_frame(sim.joint_positions(), action, images)
        frame["next.success"] = np.array([success], bool)
        frame["next.reward"] = np.array([0.0 if success else -1.0], np.float32)
        frames.append(frame)
        if in_episode:
            state, _, terminated, truncated, _ = sim.step(action)
            in_episode = not (terminated or truncated)
        else:
            state = sim.step_outside_episode(action)
    frames[-1]["next.done"] = np.array([True], bool)
    for f in frames[:-1]:
        f["next.done"] = np.array([False], bool)
    return frames


def write_labelled_episodes(root: Path | str, plan: Sequence[EpisodeSpec], cameras: Sequence[str] = ("front", "wrist"),
                            image_size: int = 64, task_id: int = 1, tail_steps: int = 15,
                            miss_range_m: tuple[float, float] = (0.06, 0.12), noise: float = 0.1,
                            progress: bool = True) -> LabelledSummary:
    """Record `plan` into a new LeRobot dataset at `root` (h264 videos)."""
    from tqdm import tqdm

    cameras = check_cameras(cameras)
    if not cameras:
        raise ValueError("a detector's episodes need at least one camera")
    if tail_steps < 1 or not 0 < miss_range_m[0] <= miss_range_m[1]:
        raise ValueError(f"tail_steps must be >= 1 and 0 < miss range low <= high, got {tail_steps}, {miss_range_m}")
    t0 = time.perf_counter()
    sim = CubeSim(task_id=task_id, render=True, image_size=image_size)
    features = build_features(sim.joint_names, sim.action_names, {c: (image_size, image_size) for c in cameras})
    for key, dtype in (("next.success", "bool"), ("next.reward", "float32"), ("next.done", "bool")):
        features[key] = {"dtype": dtype, "shape": (1,), "names": None}
    writer = DatasetWriter(root, "local/dfp_detector_episodes", round(sim.fps), features,
                           robot_type="ogbench_ur5e_robotiq_2f85", vcodec="h264")
    kinds = {SUCCESS: 0, NEAR_MISS: 0}
    frames = success_frames = success_episodes = 0
    try:
        for spec in tqdm(plan, desc="labelled episodes", unit="ep", disable=not progress):
            episode = record_episode(sim, spec, cameras, tail_steps, miss_range_m, noise)
            for frame in episode:
                writer.add_frame(frame, sim.task)
            writer.save_episode()
            positives = sum(bool(f["next.success"][0]) for f in episode)
            kinds[spec.kind] += 1
            frames += len(episode)
            success_frames += positives
            success_episodes += int(positives > 0)
    finally:
        writer.finalize()
        sim.close()
    return LabelledSummary(Path(root), len(plan), kinds, success_episodes, frames, success_frames,
                           time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from dfp_ros.sim.cube_env import CAMERAS

    p = argparse.ArgumentParser(prog="python -m dfp_ros.sim.detector_episodes", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="new folder for the LeRobot dataset")
    p.add_argument("--successes", type=int, default=60, help="successful episodes")
    p.add_argument("--near-misses", type=int, default=60, help="near-miss episodes")
    p.add_argument("--cameras", nargs="+", default=["front", "wrist"], choices=CAMERAS, metavar="CAMERA")
    p.add_argument("--image-size", type=int, default=64, help="camera image height and width")
    p.add_argument("--task", type=int, default=1, help="cube-single task")
    p.add_argument("--tail-steps", type=int, default=15, help="frames of zero commands after the oracle is done")
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    a = p.parse_args(argv)
    try:
        s = write_labelled_episodes(a.root, episode_plan(a.successes, a.near_misses, a.seed), a.cameras,
                                    a.image_size, a.task, a.tail_steps)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{s.episodes} episodes ({s.kinds[SUCCESS]} successes, {s.kinds[NEAR_MISS]} near misses; "
          f"{s.success_episodes} show success) -> {s.root}: {s.frames} frames, {s.success_frames} success frames, "
          f"{s.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
