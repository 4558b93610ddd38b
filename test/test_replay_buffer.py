"""Replay buffer: offline LeRobot data (with its reward column) mixed with online transitions; persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_datasets import write_image_reward_dataset

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


# --- camera models ---------------------------------------------------------------------------------------
SIZE = 16


def _cams(size: int = SIZE):
    from dfp_ros.contracts import CameraSpec

    return [CameraSpec("front", "observation.images.front", size, size)]


def _ti(v: int, S: int = 3, A: int = 2) -> Transition:
    """A transition whose images encode v (observation) and v + 1 (next observation)."""
    t = _t(float(v), S, A)
    t.images = {"front": np.full((SIZE, SIZE, 3), v, np.uint8)}
    t.next_images = {"front": np.full((SIZE, SIZE, 3), v + 1, np.uint8)}
    return t


def test_a_camera_buffer_keeps_uint8_images_with_each_transition_and_batches_them():
    buf = ReplayBuffer(3, H, 2, capacity=4, cameras=_cams())
    for v in range(6):
        buf.add(_ti(v))
    assert buf.images["front"].dtype == np.uint8 and buf.images["front"].shape == (4, SIZE, SIZE, 3)
    batch = buf.sample(32, np.random.default_rng(0))
    img, nxt = batch.images["front"], batch.next_images["front"]
    assert img.dtype == nxt.dtype == torch.uint8 and img.shape == (32, SIZE, SIZE, 3)
    # Each sampled row's images belong to its own transition (state encodes v), the ring forgot v = 0, 1.
    v = batch.state[:, 0].numpy().astype(int)
    assert set(v.tolist()) <= {2, 3, 4, 5}
    np.testing.assert_array_equal(img[:, 0, 0, 0].numpy(), v)
    np.testing.assert_array_equal(nxt[:, 0, 0, 0].numpy(), v + 1)


def test_a_transition_with_wrong_or_missing_images_is_refused_and_not_stored():
    buf = ReplayBuffer(3, H, 2, capacity=4, cameras=_cams())
    bad = _ti(1)
    bad.images = {"front": np.zeros((8, 8, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"camera front: uint8 \(8, 8, 3\), expected uint8 \(16, 16, 3\)"):
        buf.add(bad)
    with pytest.raises(ValueError, match=r"has cameras \[\], the replay buffer expects \['front'\]"):
        buf.add(_t(1.0, 3))
    assert buf.size == 0 and buf.added == 0


def test_a_capacity_whose_images_would_not_fit_the_memory_limit_is_refused_with_what_would():
    per = 2 * SIZE * SIZE * 3
    with pytest.raises(ValueError, match=f"lower the capacity to at most {10}"):
        ReplayBuffer(3, H, 2, capacity=11, cameras=_cams(), max_image_bytes=10 * per)
    ReplayBuffer(3, H, 2, capacity=10, cameras=_cams(), max_image_bytes=10 * per)  # exactly fits
    ReplayBuffer(3, H, 2, capacity=10, max_image_bytes=0)  # state-only: no images, nothing to bound


def test_save_and_load_keep_the_images_and_refuse_a_file_of_other_cameras(tmp_path):
    buf = ReplayBuffer(3, H, 2, capacity=10, cameras=_cams())
    for v in range(3):
        buf.add(_ti(v))
    buf.save(tmp_path / "replay.npz")
    other = ReplayBuffer(3, H, 2, capacity=10, cameras=_cams())
    other.load(tmp_path / "replay.npz")
    assert other.size == 3
    np.testing.assert_array_equal(other.images["front"][:3], buf.images["front"][:3])
    np.testing.assert_array_equal(other.next_images["front"][:3], buf.next_images["front"][:3])
    with pytest.raises(ValueError, match=r"holds images of cameras \['front'\], this replay buffer expects \[\]"):
        ReplayBuffer(3, H, 2, capacity=10).load(tmp_path / "replay.npz")
    with pytest.raises(ValueError, match=r"camera front images are \(16, 16, 3\), this replay buffer expects"):
        ReplayBuffer(3, H, 2, capacity=10, cameras=_cams(8)).load(tmp_path / "replay.npz")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_reward_dataset(tmp_path_factory.mktemp("imgrw") / "ds")


@pytest.fixture(scope="module")
def image_offline(image_root):
    return ChunkDataset("", image_root, horizon=H, image_size=(SIZE, SIZE), progress=False)


def test_a_camera_buffer_is_seeded_from_a_dataset_with_images_and_mixes_both(image_offline):
    buf = ReplayBuffer(3, H, 2, capacity=50, offline=image_offline, online_fraction=0.5, cameras=_cams())
    for _ in range(5):
        buf.add(_ti(200))  # online rows: state 200, image 200
    batch = buf.sample(40, np.random.default_rng(0))
    online = batch.state[:, 0].numpy() == 200
    assert online.sum() == 20
    img = batch.images["front"][:, 0, 0, 0].numpy().astype(int)
    nxt = batch.next_images["front"][:, 0, 0, 0].numpy().astype(int)
    assert (img[online] == 200).all() and (nxt[online] == 201).all()
    # Offline rows: the frame's red channel encodes its index t (video coding is lossy: +-6), the next
    # image is H frames later, clamped to the episode's last frame (t = 7).
    t = batch.state[~online, 0].numpy().astype(int)
    np.testing.assert_allclose(img[~online], 30 * t, atol=6)
    np.testing.assert_allclose(nxt[~online], 30 * np.minimum(t + H, 7), atol=6)
    assert batch.rewards is not None and batch.mask is not None


def test_cameras_of_buffer_and_dataset_must_agree(image_root, image_offline, offline):
    with pytest.raises(ValueError, match=r"cameras \[\('front', 16, 16\)\] .* differ from the model's \[\]"):
        ReplayBuffer(3, H, 2, offline=image_offline)
    with pytest.raises(ValueError, match=r"cameras \[\('front', 8, 8\)\] .* differ"):
        ReplayBuffer(3, H, 2, offline=ChunkDataset("", image_root, horizon=H,
                                                   image_size=(8, 8), progress=False), cameras=_cams())
    with pytest.raises(ValueError, match=r"cameras \[\] .* differ from the model's \[\('front', 16, 16\)\]"):
        ReplayBuffer(2, H, 2, offline=offline, cameras=_cams())


# --- interventions: online transitions that are demonstrations too -----------------------------------------
def _intervened(v: float) -> Transition:
    t = _t(v)
    t.intervention = True
    return t


def test_interventions_are_the_demonstrations_when_there_is_no_dataset_and_keep_their_flag(tmp_path):
    buf = ReplayBuffer(2, H, 2, capacity=100, online_fraction=0.5)
    for v in range(40):
        buf.add(_t(float(v)))
    for v in (100.0, 101.0):
        buf.add(_intervened(v))
    assert buf.demo_size == 2 and buf.intervention[:buf.size].sum() == 2
    batch, flags = buf.sample_flagged(64, np.random.default_rng(0))
    values = batch.state[:, 0].numpy()
    # Half the batch is demonstrations, and they are the only ones: the interventions, flagged as such.
    assert flags.sum() >= 32 and set(values[32:].tolist()) == {100.0, 101.0}
    np.testing.assert_array_equal(flags, values >= 100.0)
    np.testing.assert_array_equal(batch.chunk[flags][:, 0, 0].numpy(), values[flags])  # the executed actions
    # The flag is kept with the transition across a learner restart.
    buf.save(tmp_path / "replay.npz")
    other = ReplayBuffer(2, H, 2, capacity=100, online_fraction=0.5)
    other.load(tmp_path / "replay.npz")
    np.testing.assert_array_equal(other.intervention, buf.intervention)
    assert other.demo_size == 2


def test_interventions_join_the_datasets_demonstrations_and_the_stream_is_unchanged_without_them(offline):
    plain, mixed = ReplayBuffer(2, H, 2, offline=offline), ReplayBuffer(2, H, 2, offline=offline)
    for buf in (plain, mixed):
        for _ in range(len(offline)):
            buf.add(_t(-5.0))
    # No intervention yet: the same draws as a buffer that never had any (same seed, same batch).
    a, b = plain.sample(64, np.random.default_rng(3)), mixed.sample(64, np.random.default_rng(3))
    np.testing.assert_array_equal(a.state.numpy(), b.state.numpy())
    for _ in range(len(offline)):  # as many interventions as the dataset has chunks
        mixed.add(_intervened(7.0))
    rng = np.random.default_rng(0)
    shares = [mixed.sample_flagged(100, rng)[1].mean() for _ in range(30)]
    # Uniform over online (2n, interventions included) + demonstrations (n dataset + n interventions):
    # interventions are half of either side, so half the batch, though a third of the distinct transitions.
    assert 0.44 < np.mean(shares) < 0.56, np.mean(shares)
    # Wrapped over by the ring, an intervention is no demonstration any more.
    small = ReplayBuffer(2, H, 2, capacity=2)
    small.add(_intervened(1.0))
    small.add(_t(2.0))
    small.add(_t(3.0))
    assert small.demo_size == 0 and not small.sample_flagged(8, rng)[1].any()
