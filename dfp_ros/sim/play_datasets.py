"""OGBench-style 'play' datasets for the cube scenes, generated here and written as LeRobot v3 datasets.

OGBench's released `cube-*-play-v0` datasets come from its `data_gen_scripts/generate_manipspace.py`
(`--dataset_type=play`), which is not in the pip package. This module follows that procedure:

- the scene in OGBench's data-collection mode (`mode='data_collection'`, `terminate_at_goal=False`): at a
  reset the arm and every cube are placed at random; episodes run for `max_episode_steps` = 1001 steps and
  nothing but that time limit ends them (OGBench's loader keeps 1000 (s, a, s') transitions of each);
- a play sub-task: `set_new_target` picks one of the cubes nothing stands on and a random target for it,
  on top of another such cube with probability p_stack (drawn once per episode: U(0, 0.25) for cube-double,
  U(0.05, 0.35) triple, U(0.1, 0.5) quadruple, 0 single); OGBench's `CubePlanOracle` plans it (plan noise
  0.1, smoothing 0.5) and, once its plan has run out, the next target is set at once, whether or not the cube
  arrived;
- with probability `p_random_action` (0 for play; OGBench's noisy datasets use 0.1) an action is drawn
  uniformly instead; actions are clipped to [-1, 1];
- sizes (OGBench's commands): 1000 episodes for cube-single and cube-double, 3000 for cube-triple, 5000 for
  cube-quadruple, plus num_episodes // 10 validation episodes that OGBench writes to a second file.

What differs from the released files: episode i is generated from its own seeds (`np.random.SeedSequence(
[seed, i])`: the scene, the plan noise, p_stack and random actions), so a run is reproducible and resumable
episode by episode (OGBench draws everything from unseeded global streams: its files cannot be regenerated
bit for bit, only in distribution); the validation split is not written (make a second dataset with another
`seed`); qpos/qvel are not stored (the cube poses are in the state); the format is LeRobot, not npz.

One frame per step t (the columns of `oracle_demos.dataset_features`, so `dfp train` reads it like the
oracle datasets):

- `observation.state` float32 [S]  s_t, OGBench's state vector (names = CubeSim.state_names)
- `action`            float32 [5]  a_t as executed (clipped)
- `next.reward`       float32 [1]  OGBench's single-task reward for the chosen task, of s_t: the number of
  cubes within 4 cm of that task's goal minus the number of cubes (0 = solved). OGBench relabels its play
  data the same way (`relabel_dataset`, from the qpos of s_t), and the single-task env returns the same
  (success_timing 'pre'): `singletask_rewards`
- `next.success`      bool [1]  every cube at the task's goal in s_t (OGBench's `masks` = 1 - this)
- `next.done`         bool [1]  the episode's last frame (a time-out: OGBench's `terminals`). The trainer
  treats it as terminal for the critic; OGBench's agents bootstrap through time-outs and stop at successes

    dfp make-play-dataset --env cube-double-v0 --task 2 --episodes 100 --root outputs/play/cube-double-task2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.contracts import ContractError

# OGBench generate_manipspace.py: p_stack per episode ~ U(low, high), and the number of training episodes
# in its commands for the play datasets.
P_STACK = {"cube-single-v0": (0.0, 0.0), "cube-double-v0": (0.0, 0.25), "cube-triple-v0": (0.05, 0.35),
           "cube-quadruple-v0": (0.1, 0.5)}
OGBENCH_EPISODES = {"cube-single-v0": 1000, "cube-double-v0": 1000, "cube-triple-v0": 3000,
                    "cube-quadruple-v0": 5000}
PLAY_ENVS = tuple(P_STACK)
EPISODE_STEPS = 1001  # OGBench's --max_episode_steps for every manipspace dataset
CONFIG_FILE = "meta/play_dataset.json"  # inside the dataset: what made it, checked before appending

# OGBench CubeEnv.compute_observation: cube i's position is state[19 + 9 i: 22 + 9 i] = (pos - center) * 10.
_CUBE_STATE_START, _CUBE_STATE_STRIDE = 19, 9
_XYZ_CENTER, _XYZ_SCALER = np.array([0.425, 0.0, 0.0]), 10.0
_SUCCESS_RADIUS = 0.04  # m, CubeEnv._compute_successes


class PlayDatasetError(ContractError):
    """The play dataset cannot be made as asked (unknown scene or task, a folder made differently); nothing written."""


@dataclass(frozen=True)
class PlayConfig:
    """Everything that decides a play dataset's episodes; a dataset is only ever appended to with the same."""

    env_name: str = "cube-double-v0"
    task_id: int = 2  # OGBench's default evaluation task of a single-task env
    seed: int = 0
    noise: float = 0.1
    smoothing: float = 0.5
    p_random_action: float = 0.0
    episode_steps: int = EPISODE_STEPS

    def check(self) -> None:
        """PlayDatasetError naming the first setting out of range."""
        if self.env_name not in P_STACK:
            raise PlayDatasetError(f"unknown env {self.env_name!r}; play datasets are made for {', '.join(PLAY_ENVS)}")
        if not 1 <= self.task_id <= 5:
            raise PlayDatasetError(f"unknown task {self.task_id}; OGBench defines tasks 1-5 per scene")
        if self.noise < 0 or self.smoothing < 0:
            raise PlayDatasetError(f"noise and smoothing must be >= 0, got {self.noise}, {self.smoothing}")
        if not 0.0 <= self.p_random_action <= 1.0:
            raise PlayDatasetError(f"p_random_action must be in [0, 1], got {self.p_random_action}")
        if self.episode_steps < 2:
            raise PlayDatasetError(f"episode_steps must be >= 2, got {self.episode_steps}")

    @property
    def p_stack(self) -> tuple[float, float]:
        return P_STACK[self.env_name]

    def describe(self) -> dict[str, Any]:
        """What is stored in CONFIG_FILE (p_stack too: it is part of the procedure)."""
        return {"generator": __name__, **asdict(self), "p_stack": list(self.p_stack)}


def cube_positions(states: np.ndarray, num_cubes: int) -> np.ndarray:
    """[N, num_cubes, 3] cube centres (m) read from OGBench cube states [N, S]."""
    s = np.asarray(states, dtype=np.float64)
    idx = _CUBE_STATE_START + _CUBE_STATE_STRIDE * np.arange(num_cubes)[:, None] + np.arange(3)[None, :]
    return s[:, idx] / _XYZ_SCALER + _XYZ_CENTER


def singletask_rewards(states: np.ndarray, goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OGBench's single-task reward and success of each state: (cubes within 4 cm of their goal) - cubes, and
    whether all are. `goals` [num_cubes, 3] in metres (the task's goal_xyzs); states [N, S] -> float32 [N], bool [N].
    Any task's rewards can be recomputed from a play dataset's states with this."""
    goals = np.asarray(goals, dtype=np.float64)
    ok = np.linalg.norm(cube_positions(states, len(goals)) - goals[None], axis=-1) <= _SUCCESS_RADIUS
    return (ok.sum(axis=1) - ok.shape[1]).astype(np.float32), ok.all(axis=1)


@dataclass
class PlayEpisode:
    """One generated episode: states [T, S], actions [T, 5], and how its play sub-tasks went."""

    index: int
    states: np.ndarray
    actions: np.ndarray
    subtasks: int  # plans that ran out within the episode
    subtasks_completed: int  # of them, those whose cube was within 4 cm of its target at the end of the plan

    @property
    def completion(self) -> float:
        return self.subtasks_completed / self.subtasks if self.subtasks else 0.0


class PlayEpisodes:
    """OGBench's play-data loop for one cube scene; `run(i)` gives the same episode whenever it is called."""

    def __init__(self, config: PlayConfig) -> None:
        import warnings

        import gymnasium
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        import dfp_ros.sim.cube_env  # noqa: F401  (picks MuJoCo's GL backend, registers OGBench's ids)

        config.check()
        self.config = config
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            self._env = gymnasium.make(config.env_name, terminate_at_goal=False, mode="data_collection",
                                       max_episode_steps=config.episode_steps)
        self._u = self._env.unwrapped
        self._planner = CubePlanOracle(env=self._env, segment_dt=0.4, noise=config.noise,
                                       noise_smoothing=config.smoothing)

    def close(self) -> None:
        self._env.close()

    def run(self, index: int) -> PlayEpisode:
        from dfp_ros.sim.cube_env import aim_planner

        cfg = self.config
        env_seed, plan_seed, draw_seed = np.random.SeedSequence([cfg.seed, index]).generate_state(3)
        draws = np.random.default_rng(draw_seed)
        plan_rng = np.random.RandomState(plan_seed).get_state()
        p_stack = float(draws.uniform(*cfg.p_stack))

        def plan(ob: np.ndarray, info: dict[str, Any], rng_state: Any) -> Any:
            # The target the env drew, through aim_planner for its private random stream.
            return aim_planner(self._planner, int(info["privileged/target_block"]), info["privileged/target_block_pos"],
                               float(info["privileged/target_block_yaw"][0]), ob, info, rng_state)

        ob, info = self._env.reset(seed=int(env_seed))
        plan_rng = plan(ob, info, plan_rng)
        states, actions = [], []
        subtasks = completed = 0
        done = False
        while not done:
            if draws.random() < cfg.p_random_action:
                action = draws.uniform(-1.0, 1.0, size=5)
            else:
                action = np.asarray(self._planner.select_action(ob, info))
            action = np.clip(action, -1.0, 1.0)
            next_ob, _, terminated, truncated, info = self._env.step(action)
            done = terminated or truncated
            if self._planner.done:  # the plan ran out: a new sub-task at once (OGBench's order)
                subtasks += 1
                completed += bool(info["success"])  # data-collection mode: the sub-task's cube, after the step
                target_ob, target_info = self._u.set_new_target(p_stack=p_stack)
                plan_rng = plan(target_ob, target_info, plan_rng)
            states.append(ob)
            actions.append(action)
            ob = next_ob
        return PlayEpisode(index, np.asarray(states, np.float32), np.asarray(actions, np.float32), subtasks, completed)


_WORKER: PlayEpisodes | None = None


def _run_in_worker(job: tuple[PlayConfig, int]) -> PlayEpisode:
    # Built at the first job rather than in a Pool initializer: an initializer that raises makes the pool
    # start new workers forever, an error here reaches the caller.
    global _WORKER
    config, index = job
    if _WORKER is None:
        _WORKER = PlayEpisodes(config)
    return _WORKER.run(index)


def generate_episodes(config: PlayConfig, indices: range, workers: int = 1) -> Iterator[PlayEpisode]:
    """The episodes `indices`, in order; with workers > 1 simulated in that many processes."""
    if workers <= 1:
        episodes = PlayEpisodes(config)
        try:
            for i in indices:
                yield episodes.run(i)
        finally:
            episodes.close()
        return
    import multiprocessing

    # spawn: the parent holds lerobot's writer and tqdm's thread; a forked copy of them helps nothing.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_run_in_worker, ((config, i) for i in indices))


def read_config(root: Path) -> dict[str, Any] | None:
    path = Path(root) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def existing_episodes(root: Path, config: PlayConfig) -> int:
    """Episodes already in a play dataset at root made with `config` (0: no dataset there). PlayDatasetError
    when root holds something else, or a play dataset made with other settings."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        if root.exists() and any(root.iterdir()):
            raise PlayDatasetError(f"{root} exists and is not a LeRobot dataset; choose a new --root")
        return 0
    stored = read_config(root)
    if stored is None:
        raise PlayDatasetError(f"{root} holds a LeRobot dataset that is not a play dataset ({CONFIG_FILE} is missing); "
                               "choose a new --root")
    wanted = config.describe()
    diff = [f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} asked" for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)]
    if diff:
        raise PlayDatasetError(f"{root} holds a play dataset made with other settings ({'; '.join(diff)}); rerun with "
                               "its settings to add episodes, or choose a new --root (nothing was written)")
    return int(json.loads(info_path.read_text())["total_episodes"])


def relabel_config(source: Path, task_id: int) -> PlayConfig:
    """The settings of the play dataset at `source` with `task_id`'s rewards: a copy relabelled with them holds
    the episodes `make_play_dataset` would generate with that config (episode i depends on the seed, not the
    task), so it can be completed by generating."""
    stored = read_config(source)
    if stored is None or not (Path(source) / "meta" / "info.json").is_file():
        raise PlayDatasetError(f"{source} is not a play dataset made by dfp make-play-dataset ({CONFIG_FILE} and "
                               "meta/info.json are needed to relabel it)")
    fields = {k: stored[k] for k in ("env_name", "seed", "noise", "smoothing", "p_random_action", "episode_steps")
              if k in stored}
    return PlayConfig(**fields, task_id=task_id)


def read_play_episodes(root: Path, indices: range) -> Iterator[PlayEpisode]:
    """Episodes `indices` of a play dataset on disk, read with the trainer's loader (states and actions as saved;
    sub-task counts are not stored and read as 0), in order."""
    from dfp_ros.learning.dataset import ChunkDataset

    data = ChunkDataset("", root, horizon=1, state_keys=["observation.state"], image_keys=[], progress=False)
    for index in indices:
        rows = np.flatnonzero(data.episode_index == index)
        if rows.size == 0:
            raise PlayDatasetError(f"{root} has no episode {index} (it holds {data.num_episodes})")
        yield PlayEpisode(index, data.state[rows], data.actions[rows], 0, 0)


@dataclass
class PlaySummary:
    """One run of `make_play_dataset`: what was added (the dataset itself is on disk)."""

    root: str
    config: dict[str, Any]
    episodes_before: int
    episodes: int  # in the dataset now
    frames_added: int = 0
    seconds: float = 0.0
    subtasks: int = 0
    subtasks_completed: int = 0
    task_success_frames: int = 0  # frames whose state solves the reward's task
    episode_completion: list[float] = field(default_factory=list)  # per new episode: sub-tasks completed / ended
    relabelled: int = 0  # episodes copied from --relabel-from rather than generated (no sub-task counts)

    @property
    def transitions_per_s(self) -> float:
        return self.frames_added / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        """One line; the oracle's completion figures are null when no episode was generated (all relabelled)."""
        c = np.asarray(self.episode_completion)
        return json.dumps({**{k: v for k, v in asdict(self).items() if k != "episode_completion"},
                           "transitions_per_s": round(self.transitions_per_s, 1),
                           "subtask_completion": round(self.subtasks_completed / self.subtasks, 4)
                           if self.subtasks else None,
                           "episode_completion_min": round(float(c.min()), 4) if c.size else None,
                           "episode_completion_mean": round(float(c.mean()), 4) if c.size else None})


def make_play_dataset(root: str | Path, episodes: int | None, config: PlayConfig, repo_id: str | None = None,
                      workers: int = 1, progress: bool = True, relabel_from: str | Path | None = None) -> PlaySummary:
    """Make (or complete) a play dataset of `episodes` episodes at root (None: OGBench's number for the scene,
    or all of `relabel_from`'s).

    A dataset already there made with the same config gets its missing episodes appended (episode i is the
    same either way); one made otherwise is refused before anything is written. With `relabel_from` (a play
    dataset made with `config` but another task, see `relabel_config`) its episodes are copied with config's
    task rewards instead of simulated again, as OGBench relabels one play dataset for each of its tasks;
    episodes past its end are generated. One episode is in memory at a time (per worker). Interrupted (an
    exception, Ctrl-C), the episodes saved so far stay readable."""
    config.check()
    root = Path(root)
    source_episodes = 0
    if relabel_from is not None:
        source = relabel_config(Path(relabel_from), config.task_id)
        if source != config:
            raise PlayDatasetError(f"{relabel_from} was made with other settings than asked: {source.describe()}")
        if Path(relabel_from).resolve() == root.resolve():
            raise PlayDatasetError(f"--relabel-from and --root are the same folder {root}; choose a new --root")
        source_episodes = int(json.loads((Path(relabel_from) / "meta" / "info.json").read_text())["total_episodes"])
    default = source_episodes or OGBENCH_EPISODES[config.env_name]
    episodes = default if episodes is None else int(episodes)
    if episodes < 1:
        raise PlayDatasetError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise PlayDatasetError(f"workers must be >= 1, got {workers}")
    before = existing_episodes(root, config)
    summary = PlaySummary(root=str(root), config=config.describe(), episodes_before=before, episodes=before)
    if before >= episodes:
        return summary

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # opening a local dataset must not reach for the network
    import datasets
    from tqdm import tqdm

    from dfp_ros.data.dataset_writer import DatasetWriter, dataset_exists
    from dfp_ros.sim.cube_env import CubeSim
    from dfp_ros.sim.oracle_demos import dataset_features

    if before == 0 and dataset_exists(root):
        # Our own dataset, same settings, stopped before its first episode was saved: lerobot cannot reopen a
        # dataset without episodes, and there is nothing in it to keep.
        shutil.rmtree(root)
    t0 = time.perf_counter()
    task_sim = CubeSim(config.env_name, task_id=config.task_id)  # the task's goals, names, fps; never stepped
    goals = np.stack([task_sim.cube_target(i)[0] for i in range(task_sim.num_cubes)])
    stem = config.env_name.removesuffix("-v0")
    writer = DatasetWriter(root, repo_id or f"local/{stem}-play-task{config.task_id}", round(task_sim.fps),
                           dataset_features(task_sim), append=before > 0,
                           robot_type="ogbench_ur5e_robotiq_2f85")
    task_sim.close()
    if before == 0:
        (root / CONFIG_FILE).write_text(json.dumps(config.describe(), indent=2) + "\n")
    label = f"{stem} play, rewards of task {config.task_id}"
    bar = tqdm(total=episodes, initial=before, desc=f"{stem} play", unit="ep", disable=not progress)
    # lerobot's save_episode runs a datasets map with its own progress bar: one line per episode otherwise.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        copied = range(before, max(before, min(episodes, source_episodes)))
        relabelled = read_play_episodes(Path(relabel_from), copied) if copied else iter(())
        rest = range(max(before, copied.stop), episodes)
        generated = generate_episodes(config, rest, workers) if rest else iter(())
        for ep in itertools.chain(relabelled, generated):
            rewards, successes = singletask_rewards(ep.states, goals)
            last = len(ep.states) - 1
            for t in range(len(ep.states)):
                writer.add_frame({"observation.state": ep.states[t], "action": ep.actions[t],
                                  "next.reward": rewards[t:t + 1], "next.done": np.array([t == last]),
                                  "next.success": successes[t:t + 1]}, label)
            writer.save_episode()
            summary.episodes += 1
            summary.frames_added += len(ep.states)
            summary.subtasks += ep.subtasks
            summary.subtasks_completed += ep.subtasks_completed
            summary.task_success_frames += int(successes.sum())
            if ep.index < copied.stop:
                summary.relabelled += 1
            else:
                summary.episode_completion.append(ep.completion)
            summary.seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(steps_per_s=f"{summary.transitions_per_s:.0f}",
                            subtasks=f"{summary.subtasks_completed}/{summary.subtasks}")
    finally:
        writer.finalize()  # without it the parquet files have no footer and the dataset cannot be opened
        bar.close()
        if bars_were_on:
            datasets.enable_progress_bars()
        summary.seconds = time.perf_counter() - t0
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`dfp make-play-dataset`'s arguments (defaults: OGBench's play procedure)."""
    d = PlayConfig()
    p.add_argument("--env", default=d.env_name,
                   help=f"OGBench cube scene: {', '.join(PLAY_ENVS)} (default: %(default)s)")
    p.add_argument("--task", type=int, default=d.task_id,
                   help="OGBench task (1-5) whose single-task reward labels next.reward / next.success "
                        "(default: %(default)s)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes in the finished dataset; a rerun appends the missing ones (default: OGBench's "
                        + ", ".join(f"{k.removesuffix('-v0')} {v}" for k, v in OGBENCH_EPISODES.items()) + ")")
    p.add_argument("--root", required=True, help="dataset folder: new, or a play dataset made with the same settings")
    p.add_argument("--repo-id", default=None,
                   help="dataset id in its metadata (default: local/<scene>-play-task<task>)")
    p.add_argument("--seed", type=int, default=d.seed, help="episode i is generated from seeds (seed, i) "
                                                             "(default: %(default)s)")
    p.add_argument("--noise", type=float, default=d.noise,
                   help="plan noise of OGBench's CubePlanOracle (default: %(default)s)")
    p.add_argument("--smoothing", type=float, default=d.smoothing,
                   help="temporal smoothing (sigma, steps) of that noise (default: %(default)s)")
    p.add_argument("--p-random-action", type=float, default=d.p_random_action,
                   help="probability of a uniform random action instead of the oracle's (default: %(default)s, "
                        "OGBench's for play)")
    p.add_argument("--episode-steps", type=int, default=d.episode_steps,
                   help="steps per episode (default: %(default)s, OGBench's max_episode_steps; its loader keeps "
                        "steps - 1 transitions of each)")
    p.add_argument("--relabel-from", metavar="SRC", default=None,
                   help="a play dataset made by this command: copy its episodes with --task's rewards instead of "
                        "simulating them again (OGBench relabels one play dataset per task); the scene and "
                        "procedure settings are SRC's, --episodes defaults to SRC's count and episodes past it "
                        "are generated")
    p.add_argument("--workers", type=int, default=1,
                   help="simulator processes; the episodes are the same (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_from_args(a: argparse.Namespace) -> int:
    if a.relabel_from is not None:
        config = relabel_config(Path(a.relabel_from), a.task)
    else:
        config = PlayConfig(env_name=a.env, task_id=a.task, seed=a.seed, noise=a.noise, smoothing=a.smoothing,
                            p_random_action=a.p_random_action, episode_steps=a.episode_steps)
    # A terminated run finalizes like Ctrl-C (the finally in make_play_dataset), so the saved episodes stay readable.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        s = make_play_dataset(a.root, a.episodes, config, repo_id=a.repo_id, workers=a.workers,
                              progress=not a.no_progress, relabel_from=a.relabel_from)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if s.frames_added == 0:
        print(f"{s.root}: already holds {s.episodes} episodes; nothing to add")
    else:
        print(f"{s.root}: {s.episodes_before} -> {s.episodes} episodes (+{s.frames_added} frames) in {s.seconds:.1f} s "
              f"({s.transitions_per_s:.0f} transitions/s); {s.relabelled} relabelled from {a.relabel_from}, "
              f"oracle sub-tasks of the generated ones completed {s.subtasks_completed}/{s.subtasks}; frames "
              f"solving task {config.task_id}: {s.task_success_frames}")
    print(s.to_json())
    return 0
