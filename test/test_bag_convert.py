"""`dfp convert-bag`: rosbag2 recordings of simulator runs (sqlite3 and MCAP, written with rosbags' own writer)
converted, read back with lerobot, and bad bags refused with one line and nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rosbag_files import PERIOD_NS, T0_NS, BagWriter, write_sim_bag

from dfp_ros.data.bag_convert import BagMapping, convert_bag
from dfp_ros.tools.cli import main as dfp

pytest.importorskip("rosbags")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = 12


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def sim_bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "bag"
    return path, write_sim_bag(path, request.param, episodes=2, steps=STEPS)


def read_dataset(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/converted_bag", root=root, video_backend="pyav")
    hf = ds.hf_dataset.with_format("numpy")
    return ds, np.asarray(hf["observation.state"]), np.asarray(hf["action"]), np.asarray(hf["episode_index"])


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = dfp([*map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_bag_converts_to_exactly_what_was_recorded(sim_bag, tmp_path, capsys):
    bag, rec = sim_bag
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("state_topics: [sim/state, /joint_states]\naction_topic: policy_node/command\n"
                       "sample_on: action\ntask: pick the cube\n")
    rc, out, _ = run_cli(capsys, "convert-bag", bag, tmp_path / "ds", "--mapping", mapping, "--fps", 20,
                         "--no-progress")
    assert rc == 0
    summary, json_line = out.strip().splitlines()[-2:]
    assert summary.startswith("convert-bag: 2 episodes (0 discarded), 24 frames")
    assert '"episode_lengths": [12, 12]' in json_line
    ds, state, action, episode = read_dataset(tmp_path / "ds")
    assert ds.meta.total_episodes == 2 and len(state) == 2 * STEPS and ds.fps == 20
    want_state = np.concatenate([np.concatenate([s, j.astype(np.float32)], 1)
                                 for s, j in zip(rec.states, rec.joints, strict=True)])
    np.testing.assert_array_equal(state, want_state)
    np.testing.assert_array_equal(action, np.concatenate(rec.actions))
    np.testing.assert_array_equal(episode, np.repeat([0, 1], STEPS))
    names = ds.meta.features["observation.state"]["names"]
    assert names[:2] == ["sim.state.0", "sim.state.1"] and names[28:] == [f"{j}.pos" for j in rec.joint_names]
    assert ds.meta.features["action"]["names"] == [f"policy_node.command.{i}" for i in range(5)]
    assert ds.meta.tasks.index.tolist() == ["pick the cube"]


@pytest.mark.parametrize("events", [True, False], ids=["episode_topic", "pauses"])
def test_timer_sampling_splits_episodes_by_events_or_pauses(events, tmp_path):
    bag = tmp_path / "bag"
    rec = write_sim_bag(bag, "mcap", episodes=2, steps=STEPS, events=events, pause_s=0.5)
    m = BagMapping(state_topics=["/sim/state"], action_topic="/policy_node/command", fps=20, max_age_s=0.1,
                   gap_s=0.3)
    report = convert_bag(bag, tmp_path / "ds", m, progress=False)
    # Frames every 50 ms from the episode's start - settle: the first finds no message yet (the second
    # episode's: only the first's, 0.5 s old), the last state and command come after the episode's last
    # frame time; every other frame pairs a state with the command sent 5 ms after it.
    assert (report.episodes, report.gaps, report.episode_lengths) == (2, 0 if events else 1, [STEPS - 1] * 2)
    assert report.missing == {"state:/sim/state": 1, "action": 1}
    assert report.stale == {"state:/sim/state": 1, "action": 1}
    _, state, action, _ = read_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(state, np.concatenate([s[:-1] for s in rec.states]))
    np.testing.assert_array_equal(action, np.concatenate([a[:-1] for a in rec.actions]))


def test_an_episode_without_its_end_event_is_discarded(tmp_path):
    bag = tmp_path / "bag"
    write_sim_bag(bag, "sqlite3", episodes=2, steps=4, end_last_episode=False)
    m = BagMapping(state_topics=["sim/state"], action_topic="policy_node/command", fps=20, sample_on="action")
    report = convert_bag(bag, tmp_path / "ds", m, progress=False)
    assert (report.episodes, report.episodes_discarded, report.frames) == (1, 1, 4)
    assert read_dataset(tmp_path / "ds")[0].meta.total_episodes == 1


def test_camera_frames_are_recorded_as_video(tmp_path):
    from dfp_ros.sim.cube_env import CubeSim

    try:
        with CubeSim(render=True, image_size=32) as sim:
            sim.reset()
            sim.render()
    except RuntimeError as e:
        pytest.skip(f"simulator rendering is unavailable here: {e}")
    bag = tmp_path / "bag"
    rec = write_sim_bag(bag, "mcap", episodes=1, steps=5, camera=True)
    m = BagMapping(state_topics=["sim/state"], action_topic="policy_node/command", fps=20, sample_on="action",
                   cameras={"front": "sim/camera/image_raw"})
    assert convert_bag(bag, tmp_path / "ds", m, progress=False).frames == 5
    ds, state, _, _ = read_dataset(tmp_path / "ds")
    assert ds.meta.features["observation.images.front"]["shape"] == (32, 32, 3)
    np.testing.assert_array_equal(state, rec.states[0])
    for i in (0, 4):
        img = (ds[i]["observation.images.front"].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(img - rec.images[0][i]).mean() < 12  # h264 is lossy


def hand_bag(path: Path, storage: str = "sqlite3", steps: int = 6, stamp_back: bool = False,
             hole_s: float = 0.0) -> Path:
    """One episode of a 2-joint arm, no simulator; `stamp_back`: a JointState header stamp that goes back at
    step 3; `hole_s`: a pause after step 2."""
    w = BagWriter(path, storage)
    w.event(T0_NS - 1, "start")
    t = T0_NS
    for k in range(steps):
        stamp = t - 3 * PERIOD_NS if (stamp_back and k == 3) else t
        w.joint_state(t, ["a", "b"], np.array([k, -k], float), stamp_ns=stamp)
        w.command(t + 1000, np.array([0.1 * k, 0.0]))
        t += PERIOD_NS + (int(hole_s * 1e9) if k == 2 else 0)
    w.event(t, "success")
    w.close()
    return path


def truncated(bag: Path) -> Path:
    data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    return bag


def test_hand_written_bag_converts(tmp_path):
    m = BagMapping(state_topics=["joint_states"], action_topic="policy_node/command", fps=20, sample_on="action",
                   stamps="header")
    report = convert_bag(hand_bag(tmp_path / "bag"), tmp_path / "ds", m, progress=False)
    assert report.frames == 6
    _, state, action, _ = read_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(state[:, 0], np.arange(6))
    np.testing.assert_allclose(action[:, 0], 0.1 * np.arange(6), rtol=1e-6)


@pytest.mark.parametrize("case", ["missing_topic", "unknown_type", "stamp_back", "hole", "truncated_db3",
                                  "truncated_mcap", "not_a_bag"])
def test_bad_bags_are_refused_in_one_line_and_nothing_is_written(case, tmp_path, capsys):
    bag = tmp_path / "bag"
    args = ["--state-topic", "joint_states", "--action-topic", "policy_node/command", "--stamps", "header"]
    expect = {"missing_topic": "no state topic /nope in the bag (topics: /episode (std_msgs/msg/String), ",
              "unknown_type": "action topic /episode has message type std_msgs/msg/String; action topics must be",
              "stamp_back": "stamps on /joint_states go back in time at message 8 (0.100 s earlier",
              "hole": "no message for 2.05 s (> gap_s 1.0) inside an episode",
              "truncated_db3": "cannot open the bag", "truncated_mcap": "cannot open the bag",
              "not_a_bag": "cannot open the bag"}[case]
    if case == "missing_topic":
        args[1] = "/nope"
    elif case == "unknown_type":
        args[3] = "/episode"
    if case.startswith("truncated"):
        truncated(hand_bag(bag, "sqlite3" if case.endswith("db3") else "mcap", steps=300))
    elif case == "not_a_bag":
        bag.mkdir()
        (bag / "metadata.yaml").write_text("not: [a bag")
    else:
        hand_bag(bag, stamp_back=case == "stamp_back", hole_s=2.0 if case == "hole" else 0)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "convert-bag", bag, out, "--fps", 20, "--no-progress", *args)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfp convert-bag: error: "), err
    assert expect in lines[0] and "Traceback" not in err, lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
