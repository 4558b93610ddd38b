"""OGBench-style play datasets: generated in the simulator, read by the trainer's loader, rewards as OGBench's
single-task env gives them, resumed episode by episode, refused when made otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ogbench", reason="the simulator needs ogbench and mujoco (training profile)")
pytest.importorskip("lerobot", reason="datasets need lerobot (training profile)")

from dfp_ros.sim.cube_env import CubeSim
from dfp_ros.sim.play_datasets import (
    PlayConfig,
    PlayDatasetError,
    PlayEpisodes,
    make_play_dataset,
    singletask_rewards,
)

CONFIG = PlayConfig(env_name="cube-double-v0", task_id=2, seed=7, episode_steps=100)


def _frames(root: Path):
    from dfp_ros.learning.dataset import ChunkDataset

    return ChunkDataset("", root, horizon=4, progress=False, frame_cache=False)


def _move_cubes(root: Path, positions: dict[int, np.ndarray], frames: range) -> None:
    """Rewrites the stored states of `frames` (dataset indices) with cube i at positions[i] (m)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in sorted((root / "data").glob("*/*.parquet")):
        table = pq.read_table(path)
        column = table["observation.state"]
        states = pc.list_flatten(column).to_numpy().astype(np.float32).reshape(len(table), -1)
        rows = np.isin(table["index"].to_numpy(), list(frames))
        for i, xyz in positions.items():  # OGBench's cube state: (position - centre) * 10
            states[rows, 19 + 9 * i: 22 + 9 * i] = (xyz - [0.425, 0.0, 0.0]) * 10.0
        moved = pa.FixedSizeListArray.from_arrays(pa.array(states.ravel()), states.shape[1])
        pq.write_table(table.set_column(table.schema.get_field_index("observation.state"),
                                        table.schema.field("observation.state"), moved.cast(column.type)), path)


@pytest.fixture(scope="module")
def play_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("play") / "cube-double"
    summary = make_play_dataset(root, 2, CONFIG, progress=False)
    assert (summary.episodes_before, summary.episodes, summary.frames_added) == (0, 2, 200)
    assert summary.subtasks >= 2  # a plan takes ~90 steps: each episode ends one and starts the next
    return root


def test_loads_in_the_trainers_loader_with_play_columns(play_root: Path) -> None:
    data = _frames(play_root)
    sim = CubeSim("cube-double-v0", task_id=2)
    assert (len(data), data.num_episodes, data.state_dim, data.action_dim) == (200, 2, 37, 5)
    assert data.state_specs[0].names == sim.state_names and data.action_names == sim.action_names
    assert np.abs(data.actions).max() <= 1.0 and data.fps == pytest.approx(sim.fps)
    # OGBench's terminals: the episode's last frame (a time-out), nothing else.
    assert np.flatnonzero(data.dones).tolist() == [99, 199]
    goals = np.stack([sim.cube_target(i)[0] for i in range(2)])
    np.testing.assert_array_equal(data.rewards, singletask_rewards(data.state, goals)[0])
    batch = data.batch_at(np.array([0, 98]), with_critic_targets=True)
    assert batch.chunk.shape == (2, 4, 5) and batch.rewards.shape == (2, 4)
    assert batch.mask.tolist() == [1.0, 0.0]  # the chunk at frame 98 runs into the episode's end
    # Play, not a task demonstration: the scene starts at random, far from task 2's layout, and moves.
    assert np.ptp(data.state[:, 19:22], axis=0).max() > 0.05
    sim.close()


def test_rewards_are_the_single_task_envs_own(play_root: Path) -> None:
    data = _frames(play_root)
    sim = CubeSim("cube-double-v0", task_id=2)
    u = sim.env.unwrapped
    goals = np.stack([sim.cube_target(i)[0] for i in range(2)])
    joints = [u._data.joint(f"object_joint_{i}") for i in range(2)]
    states = data.state[::7].copy()
    # Recorded states, and the same with one or both cubes moved 3 cm (inside) / 5 cm (outside) from their goals,
    # so each reward value (-2, -1, 0) is compared.
    variants = [states]
    for offset, cubes in ((0.03, [0]), (0.05, [1]), (0.03, [0, 1]), (0.0, [1])):
        s = states.copy()
        for i in cubes:
            s[:, 19 + 9 * i: 22 + 9 * i] = (goals[i] + [offset, 0.0, 0.0] - [0.425, 0.0, 0.0]) * 10.0
        variants.append(s)
    states = np.concatenate(variants)
    ours, solved = singletask_rewards(states, goals)
    env_rewards = []
    for s in states:
        for i, joint in enumerate(joints):  # the cube poses of this state into the task env
            joint.qpos[:3] = s[19 + 9 * i: 22 + 9 * i] / 10.0 + [0.425, 0.0, 0.0]
            joint.qpos[3:] = s[22 + 9 * i: 26 + 9 * i]
        env_rewards.append(u.compute_reward())
    np.testing.assert_array_equal(ours, np.array(env_rewards, np.float32))
    assert set(ours.tolist()) == {-2.0, -1.0, 0.0}
    np.testing.assert_array_equal(solved, ours == 0.0)
    np.testing.assert_array_equal(data.rewards[::7], ours[: len(data.rewards[::7])])
    sim.close()


def test_rerun_appends_the_missing_episodes_and_other_settings_are_refused(play_root: Path, tmp_path: Path) -> None:
    # On a copy: the other tests read the two-episode dataset whatever their order.
    play_root = shutil.copytree(play_root, tmp_path / "play")
    before = _frames(play_root)
    summary = make_play_dataset(play_root, 3, CONFIG, progress=False)
    assert (summary.episodes_before, summary.episodes, summary.frames_added) == (2, 3, 100)
    after = _frames(play_root)
    assert after.num_episodes == 3
    np.testing.assert_array_equal(after.state[:200], before.state)
    np.testing.assert_array_equal(after.actions[:200], before.actions)
    # Episode 2 is what a run making it directly would have made.
    episodes = PlayEpisodes(CONFIG)
    third = episodes.run(2)
    episodes.close()
    np.testing.assert_array_equal(after.state[200:], third.states)
    np.testing.assert_array_equal(after.actions[200:], third.actions)
    assert make_play_dataset(play_root, 2, CONFIG, progress=False).frames_added == 0  # already there

    info = (play_root / "meta" / "info.json").read_text()
    for other in (dataclasses.replace(CONFIG, task_id=3), dataclasses.replace(CONFIG, noise=0.2)):
        with pytest.raises(PlayDatasetError, match="other settings"):
            make_play_dataset(play_root, 5, other, progress=False)
    assert (play_root / "meta" / "info.json").read_text() == info
    assert json.loads(info)["total_episodes"] == 3


def test_unknown_scene_or_task_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from dfp_ros.tools.cli import main

    root = tmp_path / "play"
    for args, says in ((["--env", "cube-nine-v0"], "unknown env 'cube-nine-v0'"), (["--task", "6"], "unknown task 6")):
        assert main(["make-play-dataset", *args, "--episodes", "1", "--root", str(root)]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1
    assert not root.exists()


def test_a_relabelled_copy_holds_the_sources_episodes_with_another_tasks_rewards(play_root: Path, tmp_path: Path,
                                                                                capsys) -> None:
    from dfp_ros.tools.cli import main

    sim = CubeSim("cube-double-v0", task_id=1)
    goals = np.stack([sim.cube_target(i)[0] for i in range(2)])
    sim.close()
    # Short random play hardly meets a task's goals: in a copy of the source, both cubes are put on task 1's goals
    # in frames 0-9 and the first one alone in 10-19. Its stored (task 2) labels say -2 there, as everywhere.
    src = tmp_path / "source"
    shutil.copytree(play_root, src)
    _move_cubes(src, {0: goals[0], 1: goals[1]}, range(10))
    _move_cubes(src, {0: goals[0]}, range(10, 20))
    source = _frames(src)
    assert set(source.rewards.tolist()) == {-2.0}
    n = source.num_episodes
    root = tmp_path / "task1"
    # One episode more than the source holds: that one is generated, as a task-1 dataset would have it.
    assert main(["make-play-dataset", "--relabel-from", str(src), "--task", "1", "--episodes", str(n + 1),
                 "--root", str(root), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["relabelled"], summary["episodes"], summary["config"]["task_id"]) == (n, n + 1, 1)
    data = _frames(root)
    assert data.num_episodes == n + 1
    np.testing.assert_array_equal(data.state[:len(source)], source.state)
    np.testing.assert_array_equal(data.actions[:len(source)], source.actions)
    rewards, _ = singletask_rewards(data.state, goals)
    np.testing.assert_array_equal(data.rewards, rewards)
    assert data.rewards[:20].tolist() == [0.0] * 10 + [-1.0] * 10
    episodes = PlayEpisodes(dataclasses.replace(CONFIG, task_id=1))
    generated = episodes.run(n)
    episodes.close()
    np.testing.assert_array_equal(data.state[len(source):], generated.states)

    # Not a play dataset, or the copy onto its own source: one line, nothing written.
    for given, dst, says in ((tmp_path / "nothing", tmp_path / "x", "is not a play dataset"),
                             (src, src, "are the same folder")):
        assert main(["make-play-dataset", "--relabel-from", str(given), "--task", "1", "--root", str(dst)]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and _frames(src).num_episodes == n
