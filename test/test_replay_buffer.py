"""Replay buffer: offline LeRobot data (with its reward column) mixed with online transitions; persistence."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.learning.dataset import ChunkDataset
from dfp_ros.learning.replay_buffer import ReplayBuffer
from dfp_ros.learning.transitions import Transition

H = 5


def _t(v: float, S: int = 2, A: int = 2) -> Transition:
    return Transition(np.full(S, v, np.float32), np.full((H, A), v, np.float32), np.full(H, -1.0, np.float32),
                      np.full(S, v + 1, np.float32), 0.0 if v < 0 else 1.0)


def test_online_only_ring_buffer_samples_what_was_added_and_wraps():
    buf = ReplayBuffer(2, H, 2, capacity=3)
    for v in range(5):
        buf.add(_t(float(v)))
    assert len(buf) == 3 and buf.added == 5
    batch = buf.sample(64, np.random.default_rng(0))
    assert set(batch.state[:, 0].tolist()) == {2.0, 3.0, 4.0}  # the oldest two were overwritten
    assert batch.chunk.shape == (64, H, 2) and batch.rewards.shape == (64, H) and batch.mask.shape == (64,)
    np.testing.assert_array_equal(batch.next_state[:, 0].numpy(), batch.state[:, 0].numpy() + 1)


@pytest.fixture(scope="module")
def offline(multimodal_dataset):
    return ChunkDataset("", multimodal_dataset, horizon=H, progress=False)


def test_seeded_with_the_offline_dataset_and_its_rewards(offline):
    buf = ReplayBuffer(2, H, 2, offline=offline)
    assert len(buf) == len(offline) and buf.size == 0
    batch = buf.sample(32, np.random.default_rng(0))
    assert batch.rewards is not None and batch.mask is not None and batch.next_state is not None
    # The multimodal set rewards 1 on an episode's last frame only: chunk returns are 0 or 1.
    assert set(np.unique(batch.rewards.numpy())) <= {0.0, 1.0}


def test_mixing_uniform_over_the_union_and_with_a_fixed_online_share(offline):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, H, 2, offline=offline)
    for _ in range(len(offline)):  # as many online as offline transitions
        buf.add(_t(-5.0))
    online = np.mean([(buf.sample(100, rng).state[:, 0] == -5.0).float().mean() for _ in range(20)])
    assert 0.4 < online < 0.6
    buf.online_fraction = 0.25
    assert (buf.sample(100, rng).state[:, 0] == -5.0).sum() == 25


def test_offline_data_must_match_the_model_and_carry_rewards(offline):
    with pytest.raises(ValueError, match="does not match"):
        ReplayBuffer(3, H, 2, offline=offline)


def test_save_and_load_the_online_part(tmp_path):
    buf = ReplayBuffer(2, H, 2, capacity=10)
    for v in range(4):
        buf.add(_t(float(v)))
    buf.save(tmp_path / "replay.npz")
    other = ReplayBuffer(2, H, 2, capacity=10)
    other.load(tmp_path / "replay.npz")
    assert other.size == 4 and other.added == 4 and other.cursor == 4
    np.testing.assert_array_equal(other.state[:4], buf.state[:4])
