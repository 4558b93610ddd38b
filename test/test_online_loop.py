"""The learner loop (dfp_ros.learning.learner_loop) without ROS: episodes in, updates, validated exports, resume."""

from __future__ import annotations

import queue
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))

from dfp_ros.learning import learner_loop
from dfp_ros.learning.learner_loop import LoopConfig, learner_main


def _episode(n: int, S: int = 28, H: int = 5, A: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {"robot": "", "event": "timeout", "success": False, "steps": n * H, "episode_return": -n * H,
            "chunks": n + 1, "dropped": {"truncated": 1},
            "state": rng.normal(size=(n, S)).astype(np.float32),
            "chunk": rng.uniform(-1, 1, (n, H, A)).astype(np.float32), "rewards": -np.ones((n, H), np.float32),
            "next_state": rng.normal(size=(n, S)).astype(np.float32), "mask": np.ones(n, np.float32)}


def _drain(outbox: queue.Queue) -> list[tuple[str, dict]]:
    out = []
    while True:
        try:
            out.append(outbox.get_nowait())
        except queue.Empty:
            return out


def _cfg(ckpt: Path, out: Path) -> LoopConfig:
    return LoopConfig(init_checkpoint=str(ckpt), output_dir=str(out), warmup_steps=50, updates_per_step=0.1,
                      export_every=4, checkpoint_every=4, export_num_samples=4,
                      online={"batch_size": 16, "num_candidates": 4, "top_k": 2, "num_gen": 4, "critic_samples": 2})


def test_loop_learns_exports_validated_models_and_resumes(tmp_path):
    from test_finetune_node import make_sim_checkpoint

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    out = tmp_path / "out"
    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(("episode", _episode(20)))  # 100 env steps: 5 updates past the 50-step warm-up
    # Driven step by step in this process (the node runs the same loop in a child process).
    loop = learner_loop._Loop(_cfg(ckpt, out), inbox, outbox, parent_pid=-1)
    loop._drain(block=False)
    while loop._should_update():
        loop._update()
    loop.save()
    msgs = _drain(outbox)
    kinds = [k for k, _ in msgs]
    assert "started" in kinds and loop.learner.updates == 5
    exported = [m for k, m in msgs if k == "exported"]
    assert len(exported) == 1 and exported[0]["updates"] == 4 and Path(exported[0]["path"]).is_file()
    rows = (out / "learning_curve.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[3] == "100"  # env_steps

    # A new loop on the same folder resumes: same update count, env steps, replay.
    loop2 = learner_loop._Loop(_cfg(ckpt, out), queue.Queue(), outbox, parent_pid=-1)
    assert loop2.learner.updates == 5 and loop2.env_steps == 100 and loop2.replay.size == 20
    assert any(k == "resumed" for k, _ in _drain(outbox))


def test_the_loop_exports_int8_models_when_asked(tmp_path):
    from dataclasses import replace

    from test_finetune_node import make_sim_checkpoint

    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    outbox: queue.Queue = queue.Queue()
    cfg = replace(_cfg(ckpt, tmp_path / "out"), export_weights="int8")
    loop = learner_loop._Loop(cfg, queue.Queue(), outbox, parent_pid=-1)
    loop._episode(_episode(4))
    path = loop.export()
    assert path is not None and PolicyRuntime(path, device="cpu").meta.weights == "int8"


def test_the_loop_runs_the_graphed_learner_step_when_asked_with_the_eager_numbers(tmp_path):
    from dataclasses import replace

    import torch
    from test_finetune_node import make_sim_checkpoint

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    weights = {}
    for mode in ("eager", "graphed"):
        cfg = replace(_cfg(ckpt, tmp_path / mode), learner_mode=mode, export_every=0)
        loop = learner_loop._Loop(cfg, queue.Queue(), queue.Queue(), parent_pid=-1)
        loop._episode(_episode(20))
        while loop._should_update():
            loop._update()
        # graphed: the update runs on static buffers (one CUDA graph on a GPU, the same maths eagerly here)
        assert loop.learner.updates == 5 and (loop.learner.static_step is not None) == (mode == "graphed")
        weights[mode] = {k: v.clone() for k, v in loop.learner.model.state_dict().items()}
    for k, v in weights["eager"].items():
        torch.testing.assert_close(weights["graphed"][k], v, rtol=1e-5, atol=1e-6)


def test_a_model_that_fails_validation_is_never_sent(tmp_path, monkeypatch):
    from test_finetune_node import make_sim_checkpoint

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    outbox: queue.Queue = queue.Queue()
    loop = learner_loop._Loop(_cfg(ckpt, tmp_path / "out"), queue.Queue(), outbox, parent_pid=-1)
    loop._episode(_episode(4))

    def broken(runtime):
        raise ValueError("non-finite actions on a replay state")

    monkeypatch.setattr(loop, "_validate", broken)
    assert loop.export() is None
    msgs = _drain(outbox)
    assert not any(k == "exported" for k, _ in msgs)
    assert any(k == "log" and "failed validation" in m["text"] for k, m in msgs)
    assert not list((tmp_path / "out" / "models").glob("*.onnx"))


def test_learner_main_reports_a_fatal_error_instead_of_dying_silently(tmp_path):
    import signal

    from dfp_ros.learning.model import CheckpointError

    outbox: queue.Queue = queue.Queue()
    handler = signal.getsignal(signal.SIGINT)  # learner_main ignores Ctrl-C (its node stops it): restore ours
    try:
        with pytest.raises(CheckpointError):
            learner_main(LoopConfig(init_checkpoint=str(tmp_path / "nothing"), output_dir=str(tmp_path / "o")),
                         queue.Queue(), outbox, parent_pid=-1)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert [k for k, _ in _drain(outbox)] == ["fatal"]


def test_a_camera_model_learns_from_episodes_with_images_seeded_by_a_camera_dataset_and_resumes(tmp_path):
    """ROS-free path of a camera policy: episodes carry uint8 frames, the replay (seeded from a LeRobot
    dataset with video + rewards) keeps them, updates train on them, exports validate on them, resume keeps them."""
    from synthetic_datasets import write_image_reward_dataset
    from test_finetune_node import make_robot_checkpoint

    size, n = 16, 12
    ckpt, _ = make_robot_checkpoint(tmp_path, ["a", "b", "c"], ["u", "v"], camera_size=size)
    root = write_image_reward_dataset(tmp_path / "ds")
    cfg = _cfg(ckpt, tmp_path / "out")
    cfg.dataset_root, cfg.replay_capacity, cfg.online_fraction = str(root), 100, 0.5
    ep = _episode(n, S=3, H=5, A=2)
    frames = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    ep["images"], ep["next_images"] = {"front": frames}, {"front": frames + 1}
    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(("episode", ep))
    loop = learner_loop._Loop(cfg, inbox, outbox, parent_pid=-1)
    assert loop.replay.offline_size == 24 and loop.replay.cameras[0].name == "front"
    loop._drain(block=False)
    assert loop.replay.size == n
    np.testing.assert_array_equal(loop.replay.images["front"][:n, 0, 0, 0], np.arange(n))
    np.testing.assert_array_equal(loop.replay.next_images["front"][:n, 0, 0, 0], np.arange(n) + 1)
    cnn = [p.clone() for p in loop.learner.model.actor.encoder.images.parameters()]
    while loop._should_update():
        loop._update()
    assert loop.learner.updates == 1  # 60 env steps, 50 warm-up, 0.1 updates per step
    assert any(not (a == b).all() for a, b in zip(cnn, loop.learner.model.actor.encoder.images.parameters(),
                                                    strict=True))
    assert loop.export() is not None  # validated on replay states + their images
    loop.save()
    loop2 = learner_loop._Loop(cfg, queue.Queue(), outbox, parent_pid=-1)
    assert loop2.replay.size == n and loop2.learner.updates == 1
    np.testing.assert_array_equal(loop2.replay.images["front"][:n], loop.replay.images["front"][:n])
    msgs = _drain(outbox)
    assert any(k == "exported" for k, _ in msgs) and not any(k == "log" and m["level"] == "error" for k, m in msgs)
    status = loop2.last_floats()
    assert status == {}  # nothing learned since the resume


def test_status_and_curve_carry_floats_converted_from_the_update_tensors(tmp_path):
    from test_finetune_node import make_sim_checkpoint

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    outbox: queue.Queue = queue.Queue()
    loop = learner_loop._Loop(_cfg(ckpt, tmp_path / "out"), queue.Queue(), outbox, parent_pid=-1)
    loop._episode(_episode(12))  # 60 steps: one update past the warm-up
    loop._update()
    assert all(not isinstance(v, float) for v in loop.last.values())  # tensors until someone logs them
    loop.last_status_t = 0.0
    loop._status()
    (status,) = [m for k, m in _drain(outbox) if k == "status"]
    assert type(status["critic_loss"]) is float and np.isfinite(status["q_mean"])
    loop._episode(_episode(1))
    row = (tmp_path / "out" / "learning_curve.csv").read_text().splitlines()
    header, last = row[0].split(","), row[-1].split(",")
    assert float(last[header.index("critic_loss")]) == pytest.approx(status["critic_loss"])


def test_a_seeding_dataset_is_decoded_at_the_models_one_camera_size_or_refused():
    from dfp_ros.contracts import CameraSpec

    front, wrist = CameraSpec("front", "observation.images.front", 64, 48), CameraSpec("wrist", "k", 32, 32)
    assert learner_loop.seed_image_size([front, CameraSpec("top", "k2", 64, 48)]) == (64, 48)
    with pytest.raises(ValueError, match=r"different sizes \[\(32, 32\), \(64, 48\)\]"):
        learner_loop.seed_image_size([front, wrist])


def test_interventions_go_to_the_replay_flagged_and_the_bc_term_samples_them(tmp_path, monkeypatch):
    """A joined episode with a takeover: its intervened transitions are stored flagged, the curve gets the
    episode's intervention rate, and with a demonstration share and no dataset the BC term of the update
    drifts towards them."""
    import torch
    from test_finetune_node import make_sim_checkpoint

    from dfp_ros.learning import online

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    cfg = _cfg(ckpt, tmp_path / "out")
    cfg.online_fraction = 0.5  # half of each batch is demonstrations: here only the interventions
    loop = learner_loop._Loop(cfg, queue.Queue(), queue.Queue(), parent_pid=-1)
    ep = _episode(12)
    ep.update(intervention=np.arange(12) >= 9, human_steps=15, intervention_rate=0.25)
    loop._episode(ep)
    assert loop.replay.intervention[:12].tolist() == [False] * 9 + [True] * 3
    row = (tmp_path / "out" / "learning_curve.csv").read_text().splitlines()
    header, last = row[0].split(","), row[-1].split(",")
    assert [last[header.index(k)] for k in ("human_steps", "intervention_rate", "intervened")] == ["15", "0.25", "3"]

    bc_positives = []
    real = online.drift_loss

    def spy(gen, pos, neg=None, **kw):
        if pos.shape[1] == 1:  # the BC term: one positive per state, the batch's chunk
            bc_positives.append(pos.detach()[:, 0])
        return real(gen, pos, neg, **kw)

    monkeypatch.setattr(online, "drift_loss", spy)
    loop._update()
    assert loop.batch_interventions >= 0.5
    (positives,) = bc_positives
    intervened = loop.learner.model.normalize_actions(torch.from_numpy(ep["chunk"][9:]).flatten(1))
    matches = torch.cdist(positives, intervened).min(1).values < 1e-5
    assert matches.sum() >= cfg.online["batch_size"] // 2, matches


def test_the_curve_plots_the_intervention_rate_and_a_csv_from_before_its_columns_is_rewritten(tmp_path):
    import csv

    from dfp_ros.learning.learning_curve import COLUMNS, LearningCurve

    old = tmp_path / "learning_curve.csv"
    old.write_text("time_s,robot,episode,env_steps,success\n1.0,,1,100,0\n")  # a run before the new columns
    curve = LearningCurve(tmp_path, window=2)
    for i, rate in enumerate([0.5, 0.25, 0.0]):
        curve.add({"env_steps": 200 + 100 * i, "success": int(rate == 0), "intervention_rate": rate})
    with old.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and [r["env_steps"] for r in rows] == ["100", "200", "300", "400"]
    assert [r["intervention_rate"] for r in rows] == ["", "0.5", "0.25", "0.0"]
    curve.plot()
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
