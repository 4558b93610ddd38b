"""ROS-free parts of the recorder: sampling, trigger ordering, episode control, features, the recording
session, the writer (in-process and in its own process), and the state-only oracle."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dfp_ros.data.dataset_writer import (
    IMAGE_PREFIX,
    DatasetWriter,
    FeatureMismatch,
    build_features,
    check_features,
    state_layout,
    to_frame,
)
from dfp_ros.data.episode_control import RECORDING, STOPPED, EpisodeControl
from dfp_ros.data.recording_session import RecordingSession
from dfp_ros.data.stream_sampling import FrameSampler, TriggerQueue
from dfp_ros.data.writer_process import ProcessWriter, WriterInfo, WriterStats

MS = 1_000_000


def test_sampler_takes_newest_before_t_and_counts_missing_and_stale():
    s = FrameSampler(["a", "b"], max_age_s=0.1)
    r = s.sample(100 * MS)
    assert r.values is None and r.missing == ["a", "b"]
    s.add("a", 10 * MS, 1)
    s.add("a", 30 * MS, 2)
    s.add("a", 60 * MS, 3)  # after T: not used for a frame at T
    s.add("b", 45 * MS, "x")
    r = s.sample(50 * MS, {"action": 7})
    assert r.values == {"action": 7, "a": 2, "b": "x"}
    r = s.sample(200 * MS)  # b's newest is 155 ms old
    assert r.values is None and r.stale == ["a", "b"]
    assert (s.frames, s.dropped, s.missing, s.stale) == (1, 2, {"a": 1, "b": 1}, {"a": 1, "b": 1})
    assert s.seen_after(50 * MS) is False and s.seen_after(40 * MS) is True
    with pytest.raises(ValueError):
        FrameSampler(["a"], max_age_s=0)


def test_trigger_queue_orders_by_time_and_waits_for_readiness():
    q = TriggerQueue(settle_s=0.01, timeout_s=0.5)
    q.push(30 * MS, "event", "success")
    q.push(20 * MS, "action", "a2")
    q.push(10 * MS, "action", "a1")
    assert q.pop_ready(15 * MS) == []  # nothing settled yet
    ready = {10 * MS}
    got = q.pop_ready(100 * MS, ready=lambda t, k: k != "action" or t in ready)
    assert got == [(10 * MS, "action", "a1")]  # a2 is not ready, and the event must not overtake it
    assert q.pop_ready(100 * MS, ready=lambda t, k: True) == [(20 * MS, "action", "a2"), (30 * MS, "event", "success")]
    q.push(40 * MS, "action", "a3")
    assert q.pop_ready(600 * MS, ready=lambda t, k: False) == [(40 * MS, "action", "a3")]  # timed out: goes anyway
    q.push(700 * MS, "action", "a4")
    assert q.pop_ready(0, flush=True) == [(700 * MS, "action", "a4")]
    assert len(q) == 0


def test_episode_control_transitions():
    c = EpisodeControl()
    assert c.request("save") == ([], "no episode is being recorded (nothing to save)")
    assert c.request("start")[0] == ["start"] and c.state == RECORDING
    assert c.request("start")[0] == []
    assert c.request("next")[0] == ["save", "start"]
    assert c.request("rerecord")[0] == ["discard", "start"]
    assert c.on_event("success", auto=False)[0] == []
    assert c.on_event("success", auto=True)[0] == ["save"]
    assert c.on_event("reset", auto=True)[0] == []
    assert c.on_event("start", auto=True)[0] == ["start"]
    assert c.on_event("start", auto=True)[0] == ["discard", "start"]  # the end was missed
    assert c.on_event("reset", auto=True)[0] == ["discard"]
    # The operator's discard (a button): like the re-record key, with or without automatic episodes.
    assert c.on_event("discard", auto=False)[0] == []  # nothing is being recorded
    c.request("start")
    assert c.on_event("discard", auto=False)[0] == ["discard", "start"] and c.state == RECORDING
    assert c.request("stop_discard")[0] == ["discard"] and c.state == STOPPED
    assert c.request("start")[0] == []


def test_state_layout_names_each_value_and_checks_the_lists():
    blocks, names = state_layout(["/sim/state", "joint_states"], ["float32_array", "joint_state"], [2], [],
                                 ["j1", "j2"])
    assert [(b.topic, b.type, b.size) for b in blocks] == [("/sim/state", "float32_array", 2),
                                                            ("joint_states", "joint_state", 2)]
    assert names == ["sim.state.0", "sim.state.1", "j1.pos", "j2.pos"]
    _, names = state_layout(["a", "b"], ["float32_array", "float32_array"], [1, 2], ["x", "y", "z"], [])
    assert names == ["x", "y", "z"]
    for bad in ((["a"], ["float32_array", "joint_state"], [1], [], ["j"]),  # a type per topic
                (["a"], ["image"], [1], [], []),
                (["a", "b"], ["float32_array", "float32_array"], [1], [], []),  # a dim per float source
                (["a"], ["joint_state"], [], [], []),  # joints to record
                (["a"], ["float32_array"], [2], ["x"], [])):  # a name per value
        with pytest.raises(ValueError):
            state_layout(*bad)


class _FakeWriter:
    """The dataset writer's interface, recording what the session asks of it."""

    def __init__(self) -> None:
        self.frames: list[tuple[dict, str]] = []
        self.ops: list[str] = []
        self.stats = WriterStats()
        self.backlog = 0

    def add_frame(self, frame: dict, task: str) -> bool:
        self.frames.append((frame, task))
        return True

    def save(self) -> None:
        self.ops.append("save")

    def discard(self) -> None:
        self.ops.append("discard")

    def close(self, timeout: float | None = None) -> bool:
        self.ops.append("close")
        return True


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)

    warning = debug = info


def _session(writer: _FakeWriter, now: list[int], **kw) -> RecordingSession:
    args = dict(state_topics=["s"], cameras=[], fps=10, sample_on="action", max_age_s=1.0, settle_s=0.0,
                auto_episodes=True, max_episodes=0, start_on_first_command=False, first_episode=0, task="pick",
                log=_Log(), clock=lambda: now[0])
    args.update(kw)
    return RecordingSession(writer, **args)


def test_recording_session_pairs_each_command_with_its_state_and_follows_episode_events():
    w, now = _FakeWriter(), [0]
    s = _session(w, now, max_episodes=1)
    s.on_event(5 * MS, "start")
    s.add("state:s", 10 * MS, np.array([1.0], np.float32))
    s.on_command(20 * MS, np.array([2.0], np.float32))
    s.add("state:s", 30 * MS, np.array([3.0], np.float32))
    s.on_command(40 * MS, np.array([4.0], np.float32))  # no newer state yet: waits for one
    now[0] = 100 * MS
    s.pump()
    assert len(w.frames) == 1 and s.episode_frames == 1
    frame, task = w.frames[0]
    assert task == "pick" and frame["observation.state"].tolist() == [1.0] and frame["action"].tolist() == [2.0]
    s.task = "place"  # for the next episode, not this one
    s.on_event(50 * MS, "success")
    s.pump(flush=True)
    assert [f["action"].tolist() for f, _ in w.frames] == [[2.0], [4.0]] and w.frames[1][1] == "pick"
    assert w.ops == ["save"] and s.finished  # max_episodes reached
    s.count_bad("state:s", "non_finite", "NaN")
    st = s.stats()
    assert st["bad_messages"] == {"state:s": 1} and st["frames_sampled"] == 2
    s.close(signalled=True, on_shutdown="discard")
    assert w.ops == ["save", "close"]


def test_recording_session_timer_mode_counts_stale_streams_and_keys_post_requests():
    w, now = _FakeWriter(), [1_000 * MS]
    s = _session(w, now, sample_on="timer", max_age_s=0.05, auto_episodes=False)
    s.post("start")  # a key, from another thread
    s.pump()
    assert s.control.state == RECORDING
    for t in range(1_000, 1_201, 10):  # 200 ms of state and commands at 100 Hz
        s.add("state:s", t * MS, np.array([t], np.float32))
        s.on_command(t * MS, np.array([t], np.float32))
    now[0] = 1_200 * MS
    s.tick()
    assert len(w.frames) == 3  # one frame per 100 ms: at 1000, 1100 and 1200 ms
    now[0] = 1_400 * MS  # the streams stopped: stale
    s.tick()
    assert len(w.frames) == 3 and s.sampler.stale["state:s"] == 2
    assert s.request("save") == (True, "episode saved")
    s.close(signalled=False, on_shutdown="discard")
    assert w.ops == ["save", "close"]


def test_terminal_keys_from_a_pipe_become_episode_requests():
    import os

    from dfp_ros.nodes.terminal_keys import KeyThread

    got: list[str] = []
    r, wfd = os.pipe()
    keys = KeyThread(got.append, r)
    keys.start()
    try:
        os.write(wfd, b" nx\x1b[Cr\x1b[D")  # x: not a key
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == ["start", "next", "next", "rerecord", "rerecord"]
        os.write(wfd, b"\x1b")  # a lone Esc
        while len(got) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got[5:] == ["stop_save"]
        os.close(wfd)  # end of input ends the thread
        keys.join(timeout=2)
        assert not keys.is_alive()
    finally:
        keys.stop()
        os.close(r)


def test_features_and_mismatch_message_names_the_feature(tmp_path):
    f = build_features(["j1.pos"], ["a"], {"front": (24, 32)})
    assert f["observation.images.front"]["shape"] == (24, 32, 3) and f["action"]["shape"] == (1,)
    with pytest.raises(ValueError, match="repeat"):
        build_features(["x", "x"], ["a"])
    root = tmp_path / "ds"
    w = DatasetWriter(root, "local/t", 10, f)
    for i in range(3):
        w.add_frame(to_frame([i], [i * 2], {"front": np.full((24, 32, 3), 9, np.uint8)}), "task")
    assert w.save_episode() == 3
    w.finalize()
    w.finalize()  # twice is fine
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file())
    other = build_features(["j1.pos"], ["a", "b"])
    with pytest.raises(FeatureMismatch) as err:
        DatasetWriter(root, "local/t", 10, other, append=True)
    text = str(err.value)
    assert "action: shape" in text and "observation.images.front: in the dataset but not configured" in text
    with pytest.raises(FeatureMismatch, match="fps"):
        check_features(root, f, 30)
    with pytest.raises(FileExistsError, match="append"):
        DatasetWriter(root, "local/t", 10, f)
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()) == before


def _load(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/t", root=root, video_backend="pyav")


def test_process_writer_writes_every_accepted_frame_in_order_and_reports_open_errors(tmp_path):
    f = build_features(["j1.pos"], ["a"], {"front": (24, 32)})
    root = tmp_path / "ds"
    saved = []
    w = ProcessWriter(dict(root=root, repo_id="local/t", fps=10, features=f), {IMAGE_PREFIX + "front": (24, 32, 3)},
                      slots=2, on_saved=lambda *a: saved.append(a))
    assert w.wait_ready(120) == WriterInfo(appended=False, episodes_at_open=0, total_episodes=0)
    accepted = []
    for i in range(20):  # as fast as it goes: with 2 slots a frame may be refused, never written half or twice
        if w.add_frame(to_frame([i], [2 * i], {"front": np.full((24, 32, 3), 10 * i, np.uint8)}), "task"):
            accepted.append(i)
    assert accepted[:2] == [0, 1]
    w.save()
    assert w.close(120)
    assert w.stats.saved_lengths == [len(accepted)] and not w.stats.error
    assert saved and saved[0][:2] == (0, len(accepted))
    ds = _load(root)
    assert len(ds) == len(accepted)
    for k, i in enumerate(accepted):  # each frame's image travelled with its own state (flat images: lossless)
        item = ds[k]
        assert float(item["observation.state"].reshape(-1)[0]) == i and float(item["action"].reshape(-1)[0]) == 2 * i
        assert abs(float(item[IMAGE_PREFIX + "front"].mean()) * 255 - 10 * i) < 3

    other = ProcessWriter(dict(root=root, repo_id="local/t", fps=10, features=build_features(["j1.pos"], ["a", "b"]),
                               append=True), {}, slots=1)
    with pytest.raises(FeatureMismatch, match="action: shape"):
        other.wait_ready(120)
    other.close(10)
    assert len(_load(root)) == len(accepted)  # nothing was written by the refused writer


def test_process_writer_finalizes_the_dataset_when_its_node_is_killed(tmp_path):
    """The node process dies (SIGKILL, nothing closed): its writer process still writes the saved episode
    and finalizes, so the dataset loads; the episode that was in progress is not kept."""
    root = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import os, signal, threading
        import numpy as np
        from dfp_ros.data.dataset_writer import build_features, to_frame
        from dfp_ros.data.writer_process import ProcessWriter
        saved = threading.Event()
        w = ProcessWriter(dict(root={str(root)!r}, repo_id="local/t", fps=10, features=build_features(["s"], ["a"])),
                          {{}}, slots=4, on_saved=lambda *a: saved.set())
        w.wait_ready(120)
        for i in range(3):
            assert w.add_frame(to_frame([i], [i]), "task")
        w.save()
        assert saved.wait(120)
        for i in range(2):  # an episode in progress
            w.add_frame(to_frame([9], [9]), "task")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    deadline = time.monotonic() + 120
    while True:
        try:
            ds = _load(root)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert ds.meta.total_episodes == 1 and len(ds) == 3


def test_state_oracle_rebuilds_the_planner_inputs_from_the_published_state():
    from dfp_ros.data.state_oracle import StateOracle, info_from_state
    from dfp_ros.sim.cube_env import CubeSim

    with CubeSim(seed=4) as sim:
        state = sim.reset()
        for _ in range(5):
            state, *_ = sim.step(np.array([0.3, -0.2, 0.1, 0.5, 0.4], np.float32))
        info = info_from_state(state, 1, 0.0)
        for key in ("proprio/effector_pos", "proprio/effector_yaw", "proprio/gripper_opening",
                    "privileged/block_0_pos", "privileged/block_0_yaw"):
            np.testing.assert_allclose(info[key], sim.info[key], atol=2e-6, err_msg=key)
        oracle = StateOracle(seed=4)
        try:
            state = sim.reset(seed=4)
            oracle.reset()
            for _ in range(200):
                state, _, terminated, truncated, _ = sim.step(oracle.act(state))
                if terminated or truncated:
                    break
            assert terminated, "the state-only oracle did not solve the episode"
            with pytest.raises(ValueError, match="shape"):
                oracle.act(np.zeros(5, np.float32))
        finally:
            oracle.close()


@pytest.mark.parametrize("sample_on", ["action", "timer"])
def test_recording_session_writes_each_commands_own_intervention_flag(sample_on):
    w, now = _FakeWriter(), [5 * MS]
    s = _session(w, now, intervention=True, sample_on=sample_on)  # 10 fps: timer frames at 5, 105, 205, ... ms
    s.request("start")
    for k, human in enumerate([False, True, True, False]):
        s.add("state:s", (100 * k + 1) * MS, np.array([k], np.float32))
        s.on_command((100 * k + 2) * MS, np.array([k], np.float32), intervention=human)
        now[0] = (100 * k + 50) * MS
        if sample_on == "timer":
            s.tick()
    s.add("state:s", 350 * MS, np.array([9], np.float32))
    s.pump(flush=True)  # (action sampling: a frame per command)
    frames = [f for f, _ in w.frames]
    assert [f["action"].tolist() for f in frames] == [[0.0], [1.0], [2.0], [3.0]]
    assert [f["intervention"].tolist() for f in frames] == [[False], [True], [True], [False]]
    assert frames[0]["intervention"].dtype == bool and s.stats()["intervention_frames"] == 2
    feats = build_features(["x"], ["a"], intervention=True)
    assert feats["intervention"] == {"dtype": "bool", "shape": (1,), "names": None}
    assert "intervention" not in to_frame(np.zeros(1), np.zeros(1))
    assert "intervention" not in build_features(["x"], ["a"])
