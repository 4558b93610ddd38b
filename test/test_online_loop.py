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
