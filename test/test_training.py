"""Training on LeRobot datasets through the CLI: chunks, seeds, resume, images, critic, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from dfp_ros.learning.dataset import ChunkDataset, DatasetError
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.tools.cli import main

TINY = ["--hidden", "32,32", "--critic-hidden", "32,32", "--batch-size", "16", "--num-gen", "4",
        "--no-progress", "--log-every", "5"]


def _train(dataset: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "--root", str(dataset), "--output", str(out), *TINY, *extra]) == 0
    return out / "checkpoints" / "last"


def _weights(ckpt: Path) -> dict:
    return {k: v.numpy() for k, v in load_file(str(ckpt / "model.safetensors")).items()}


def test_chunks_repeat_the_last_action_past_the_episode_end(multimodal_dataset):
    data = ChunkDataset("", multimodal_dataset, horizon=5, progress=False)
    assert data.num_episodes == 200 and len(data) == 2000 and data.action_names == ["vx", "vy"]
    last = data.ep_end[0]
    idx = data.chunk_indices(np.array([0, last - 2, last]))
    assert idx[0].tolist() == [0, 1, 2, 3, 4]
    assert idx[1].tolist() == [last - 2, last - 1, last, last, last]
    assert idx[2].tolist() == [last] * 5
    batch = data.sample(64, np.random.default_rng(0), with_critic_targets=True)
    assert batch.chunk.shape == (64, 5, 2) and batch.rewards.shape == (64, 5) and batch.mask.shape == (64,)


def test_critic_targets_stop_at_a_terminal_episode_end(multimodal_dataset):
    data = ChunkDataset("", multimodal_dataset, horizon=5, progress=False)
    last = int(data.ep_end[0])
    # Reward 1 only on the episode's last frame, which is also terminal (next.done).
    b = data.batch_at(np.array([last - 2, 0]), with_critic_targets=True)
    assert b.rewards[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0] and b.mask[0] == 0.0
    assert b.rewards[1].sum() == 0.0 and b.mask[1] == 1.0


def test_a_done_frame_mid_episode_ends_the_chunk_there(multimodal_dataset):
    # A play episode labelled with a task goes on after the task is solved: the solved frame is terminal for the
    # critic (no bootstrap, nothing counted after it), although the episode's frames continue.
    data = ChunkDataset("", multimodal_dataset, horizon=5, progress=False)
    last = int(data.ep_end[0])
    data.rewards[:last + 1] = -1.0
    data.dones[:last + 1] = False
    data.dones[3] = True
    b = data.batch_at(np.array([1, 3, 4]), with_critic_targets=True)
    assert b.rewards[0].tolist() == [-1.0, -1.0, -1.0, 0.0, 0.0] and b.mask[0] == 0.0
    assert b.rewards[1].tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0] and b.mask[1] == 0.0
    # A chunk that starts after the solved frame, and an episode that ends without done (a time-out), bootstrap.
    assert b.rewards[2].tolist() == [-1.0] * 5 and b.mask[2] == 1.0
    timeout = data.batch_at(np.array([last - 1]), with_critic_targets=True)
    assert timeout.rewards[0].tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0] and timeout.mask[0] == 1.0


def test_fixed_seed_reproduces_a_run_and_resume_continues_it_exactly(multimodal_dataset, tmp_path):
    a = _weights(_train(multimodal_dataset, tmp_path / "a", "--steps", "30"))
    b = _weights(_train(multimodal_dataset, tmp_path / "b", "--steps", "30"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    _train(multimodal_dataset, tmp_path / "c", "--steps", "20")
    c = _weights(_train(multimodal_dataset, tmp_path / "c", "--steps", "30", "--resume"))
    assert all(np.array_equal(a[k], c[k]) for k in a)
    other = _weights(_train(multimodal_dataset, tmp_path / "d", "--steps", "30", "--seed", "1"))
    assert not all(np.array_equal(a[k], other[k]) for k in a)
    log = (tmp_path / "c" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 6  # steps 5..30, none twice after resume
    assert (tmp_path / "c" / "curves.png").stat().st_size > 1000


def test_critic_trains_and_exports_best_of_n(multimodal_dataset, tmp_path):
    ckpt = _train(multimodal_dataset, tmp_path / "q", "--steps", "10", "--critic")
    assert main(["export", str(ckpt), str(tmp_path / "q.onnx")]) == 0
    rt = PolicyRuntime(tmp_path / "q.onnx")
    assert rt.meta.has_critic and rt.meta.num_samples == 16
    res = rt.act(np.zeros(2, np.float32), None, np.random.default_rng(0))
    np.testing.assert_array_equal(res.chunk, res.candidates[res.q.argmax()])
    assert main(["export", str(ckpt), str(tmp_path / "p.onnx"), "--no-critic"]) == 0
    assert not PolicyRuntime(tmp_path / "p.onnx").meta.has_critic


def test_image_dataset_trains_exports_and_runs(image_dataset, tmp_path):
    ckpt = _train(image_dataset, tmp_path / "img", "--steps", "3", "--image-size", "24,24")
    assert main(["export", str(ckpt), str(tmp_path / "img.onnx"), "--num-samples", "2"]) == 0
    rt = PolicyRuntime(tmp_path / "img.onnx")
    assert rt.camera_names == ["front"] and rt.meta.cameras[0].height == 24
    img = np.full((24, 24, 3), 128, np.uint8)
    res = rt.act(np.zeros(3, np.float32), {"front": img}, np.random.default_rng(0))
    assert res.chunk.shape == (5, 2) and np.isfinite(res.chunk).all()


def test_missing_state_key_is_refused_with_the_available_features(multimodal_dataset):
    with pytest.raises(DatasetError, match=r"no state feature 'observation.foo'.*observation.state"):
        ChunkDataset("", multimodal_dataset, horizon=5, state_keys=["observation.foo"], progress=False)


def test_cli_user_errors_exit_nonzero_with_one_clear_line(multimodal_dataset, tmp_path):
    ckpt = _train(multimodal_dataset, tmp_path / "run", "--steps", "2")
    (ckpt / "model.safetensors").write_bytes(b"not safetensors at all")
    (tmp_path / "foreign.onnx").write_bytes(b"\x08\x07garbage")
    cases = [
        (["train", "--root", str(tmp_path / "nope"), "--steps", "1"], "no LeRobot dataset at"),
        (["train", "--root", str(multimodal_dataset), "--state-keys", "observation.foo", "--steps", "1",
          "--output", str(tmp_path / "x")], "no state feature 'observation.foo'"),
        (["export", str(ckpt), str(tmp_path / "m.onnx")], "is corrupted"),
        (["export", str(tmp_path / "nockpt"), str(tmp_path / "m.onnx")], "does not exist"),
        (["check", str(tmp_path / "foreign.onnx")], "not a loadable ONNX model"),
    ]
    # Independent commands: run side by side, each its own process as a user would start it.
    procs = [subprocess.Popen([sys.executable, "-m", "dfp_ros.tools.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in cases]
    for (args, message), proc in zip(cases, procs, strict=True):
        _, stderr = proc.communicate(timeout=300)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (args, stderr)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr, (args, stderr)


def test_dataset_by_repo_id_from_the_local_cache(multimodal_dataset, tmp_path):
    import os

    home = tmp_path / "lerobot_home"
    (home / "test").mkdir(parents=True)
    (home / "test" / "multimodal").symlink_to(multimodal_dataset)
    env = {**os.environ, "HF_LEROBOT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "dfp_ros.tools.cli", "train", "--dataset", "test/multimodal", "--output",
                        str(tmp_path / "run"), "--steps", "2", *TINY], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "2000 frames, 200 episodes" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dfp_ros.tools.cli", "train", "--dataset", "test/absent", "--output",
                        str(tmp_path / "run2"), "--steps", "2"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "not in the local LeRobot cache" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "test" / "absent").exists()  # nothing created in the user's cache


def test_image_keys_empty_trains_on_state_only(image_dataset, tmp_path):
    ckpt = _train(image_dataset, tmp_path / "s", "--steps", "2", "--image-keys", "")
    assert main(["export", str(ckpt), str(tmp_path / "s.onnx")]) == 0
    assert PolicyRuntime(tmp_path / "s.onnx").camera_names == []


def test_a_packed_arrays_file_trains_exactly_like_its_dataset_and_refuses_other_columns(multimodal_dataset,
                                                                                           tmp_path):
    packed = tmp_path / "packed.npz"
    assert main(["pack-dataset", "--root", str(multimodal_dataset), "--out", str(packed)]) == 0
    folder = ChunkDataset("", multimodal_dataset, horizon=5, progress=False)
    arrays = ChunkDataset("", packed, horizon=5)
    assert (arrays.repo_id, arrays.fps, arrays.action_names, arrays.state_specs, arrays.num_episodes) == \
        (folder.repo_id, folder.fps, folder.action_names, folder.state_specs, folder.num_episodes)
    for name in ("state_mean", "state_std", "action_low", "action_high", "ep_start", "ep_end"):
        np.testing.assert_array_equal(getattr(arrays, name), getattr(folder, name), err_msg=name)
    idx = np.random.default_rng(0).integers(0, len(folder), 64)
    a, b = arrays.batch_at(idx, with_critic_targets=True), folder.batch_at(idx, with_critic_targets=True)
    for name in ("state", "chunk", "rewards", "next_state", "mask"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy(), err_msg=name)
    # Same data, same seed: the same weights, step for step.
    from_folder = _weights(_train(multimodal_dataset, tmp_path / "folder", "--steps", "20", "--critic"))
    from_arrays = _weights(_train(packed, tmp_path / "arrays", "--steps", "20", "--critic"))
    assert all(np.array_equal(from_folder[k], from_arrays[k]) for k in from_folder)

    with pytest.raises(DatasetError, match=r"other columns than asked: state keys \['observation.foo'\]"):
        ChunkDataset("", packed, horizon=5, state_keys=["observation.foo"])
    with pytest.raises(DatasetError, match=r"done key 'next.success' \(the file holds 'next.done'\)"):
        ChunkDataset("", packed, horizon=5, done_key="next.success")
    with pytest.raises(DatasetError, match="cameras"):
        ChunkDataset("", packed, horizon=5, image_keys=["observation.images.front"])
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="cannot read arrays file"):
        ChunkDataset("", tmp_path / "foreign.npz", horizon=5)
    assert main(["pack-dataset", "--root", str(multimodal_dataset), "--out", str(tmp_path / "p.zip")]) == 2
    half = tmp_path / "half.npz"
    assert main(["pack-dataset", "--root", str(multimodal_dataset), "--out", str(half), "--float16"]) == 0
    rounded = ChunkDataset("", half, horizon=5)
    assert rounded.state.dtype == np.float32 and half.stat().st_size < packed.stat().st_size
    np.testing.assert_allclose(rounded.state, folder.state, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(rounded.state_mean, folder.state_mean)
