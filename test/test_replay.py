"""`dfp replay`: the bundled model open-loop over recordings whose actions are its own chunks (error ~0), over the
same recordings with the actions shuffled (large error), and over the bag itself, converted on the fly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rosbag_files import Recorded, write_sim_bag

from dfp_ros.data.dataset_writer import DatasetWriter, build_features, to_frame
from dfp_ros.data.replay import EpisodeArrays, ReplayReport, chunk_rng, relative_error, replay
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.sim.cube_env import CubeSim
from dfp_ros.tools.cli import main as dfp

pytest.importorskip("rosbags")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx"
STEPS = 10  # two chunks of H=5 per episode


@pytest.fixture(scope="module")
def runtime() -> PolicyRuntime:
    return PolicyRuntime(MODEL, device="cpu")


@pytest.fixture(scope="module")
def own_chunks_bag(runtime, tmp_path_factory) -> tuple[Path, Recorded]:
    """The simulator driven by the model, each chunk executed whole: the recorded actions ARE its chunks."""
    horizon = runtime.meta.horizon
    chunks: dict[tuple[int, int], np.ndarray] = {}

    def policy(episode: int, frame: int, state: np.ndarray) -> np.ndarray:
        start = frame - frame % horizon
        if frame == start:
            chunks[episode, start] = runtime.act(state, {}, chunk_rng(0, episode, start)).chunk
        return chunks[episode, start][frame - start]

    path = tmp_path_factory.mktemp("bag") / "bag"
    return path, write_sim_bag(path, "mcap", episodes=2, steps=STEPS, policy=policy)


def write_dataset(root: Path, rec: Recorded, actions: list[np.ndarray]) -> Path:
    with CubeSim() as sim:
        state_names, action_names = sim.state_names, sim.action_names
    writer = DatasetWriter(root, "test/replay", 20, build_features(state_names, action_names), use_videos=False)
    for states, acts in zip(rec.states, actions, strict=True):
        for s, a in zip(states, acts, strict=True):
            writer.add_frame(to_frame(s, a), "replay")
        writer.save_episode()
    writer.finalize()
    return root


def run_replay(capsys, *args: object) -> dict:
    assert dfp(["replay", *map(str, args), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_the_model_reproduces_its_own_chunks(own_chunks_bag, tmp_path, capsys):
    _, rec = own_chunks_bag
    root = write_dataset(tmp_path / "ds", rec, rec.actions)
    plot = tmp_path / "replay.png"
    res = run_replay(capsys, MODEL, root, "--plot", plot)
    assert (res["episodes"], res["chunks"], res["stride"]) == (2, 4, 5)
    assert res["max_error"] < 1e-5
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shuffled_actions_give_a_large_error(own_chunks_bag, tmp_path, capsys):
    _, rec = own_chunks_bag
    rng = np.random.default_rng(0)
    shuffled = [a[rng.permutation(len(a))] for a in rec.actions]
    res = run_replay(capsys, MODEL, write_dataset(tmp_path / "ds", rec, shuffled), "--plot", tmp_path / "p.png")
    assert res["mean_error"] > 0.05, res


def test_a_bag_is_converted_on_the_fly(own_chunks_bag, tmp_path, capsys):
    bag, _ = own_chunks_bag
    with CubeSim() as sim:
        names = ",".join(sim.state_names), ",".join(sim.action_names)
    res = run_replay(capsys, MODEL, bag, "--state-topic", "sim/state", "--state-names", names[0],
                     "--action-topic", "policy_node/command", "--action-names", names[1], "--sample-on", "action",
                     "--plot", tmp_path / "p.png")
    assert res["episodes"] == 2 and res["max_error"] < 1e-5


def test_a_dataset_that_does_not_fit_the_model_is_refused(tmp_path, capsys):
    rec = Recorded(states=[np.zeros((3, 28), np.float32)], actions=[np.zeros((3, 5), np.float32)])
    root = tmp_path / "ds"
    writer = DatasetWriter(root, "test/replay", 20, build_features([f"s{i}" for i in range(28)],
                                                                  [f"a{i}" for i in range(5)]), use_videos=False)
    for s, a in zip(rec.states[0], rec.actions[0], strict=True):
        writer.add_frame(to_frame(s, a), "x")
    writer.save_episode()
    writer.finalize()
    assert dfp(["replay", str(MODEL), str(root), "--no-progress"]) == 2
    assert "names" in capsys.readouterr().err


def test_errors_are_fractions_of_the_half_range_over_the_horizon(runtime):
    meta = runtime.meta
    low, high = np.array(meta.action_low), np.array(meta.action_high)
    err = relative_error(np.array([high]), np.array([low]), meta)
    np.testing.assert_allclose(err, 2.0, rtol=1e-6)
    # An episode shorter than the horizon: the chunk is cut at its end.
    data = EpisodeArrays(state=np.zeros((3, meta.state_dim), np.float32), images={},
                         actions=np.zeros((3, meta.action_dim), np.float32))
    report = replay(runtime, {7: data}, seed=1)
    assert isinstance(report, ReplayReport) and report.episodes[0].chunks == 1
    assert np.asarray(report.episodes[0].predicted[0]).shape == (3, meta.action_dim)
    chunk = runtime.act(data.state[0], {}, chunk_rng(1, 7, 0)).chunk[:3]
    assert report.episodes[0].max_error == pytest.approx(float(relative_error(chunk, data.actions, meta).max()))
