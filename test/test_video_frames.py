"""Camera frames decoded once per video file and cached: the same pixels as LeRobot's frame-by-frame path,
a cache that is reused, rebuilt when the dataset grows and never required; PNG-image datasets too."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_datasets import write_camera_dataset
from tqdm import tqdm

from dfp_ros.learning.dataset import ChunkDataset, DatasetError, open_lerobot_dataset
from dfp_ros.learning.video_frames import FrameDecodeError, _decode_file

SIZE = 32


def lerobot_frames(root: Path, data: ChunkDataset) -> dict[str, np.ndarray]:
    """Every frame through LeRobotDataset.__getitem__ (the pyav backend), in ChunkDataset's frame order."""
    ds = open_lerobot_dataset("", root)
    order = np.argsort(np.asarray(ds.hf_dataset.with_format("numpy")["index"]))
    out = {}
    for cam in data.cameras:
        frames = []
        for i in order:
            img = (ds[int(i)][cam.key].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            frames.append(cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_AREA))
        out[cam.name] = np.stack(frames)
    return out


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.npy"))


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory) -> Path:
    """Two cameras; the appended episodes land in a second video file, so frames start mid-file too."""
    root = tmp_path_factory.mktemp("video") / "ds"
    write_camera_dataset(root, episodes=3, length=12, size=SIZE)
    return write_camera_dataset(root, episodes=2, length=10, size=SIZE, seed=1)


@pytest.mark.parametrize("size", [(SIZE, SIZE), (24, 20)])
def test_decoded_frames_equal_lerobot_frame_by_frame(video_dataset, tmp_path, size):
    data = ChunkDataset("", video_dataset, horizon=3, image_size=size, progress=False, cache_dir=tmp_path)
    assert len(list((video_dataset / "videos" / "observation.images.front").rglob("*.mp4"))) == 2
    expected = lerobot_frames(video_dataset, data)
    assert sorted(data.images) == ["front", "wrist"]
    for name, frames in expected.items():
        assert data.images[name].shape == (len(data), *size, 3)
        assert int(np.abs(data.images[name].astype(int) - frames).max()) <= 2, name
    # The cameras differ and every frame is filled (an unfilled frame of the cache file would be zeros).
    assert not np.array_equal(data.images["front"], data.images["wrist"])
    assert data.images["front"].reshape(len(data), -1).max(1).min() > 0


def test_cache_reused_then_rebuilt_when_the_dataset_grows(video_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(video_dataset, root)
    cache = tmp_path / "cache"
    first = ChunkDataset("", root, horizon=3, image_size=(24, 24), progress=False, cache_dir=cache)
    (front_file, wrist_file) = cache_files(cache)
    again = ChunkDataset("", root, horizon=3, image_size=(24, 24), progress=False, cache_dir=cache)
    # Served from the cache: a read-only memory map of its file, not a new decode.
    assert Path(again.images["front"].base.filename) == front_file
    assert not again.images["front"].flags.writeable
    np.testing.assert_array_equal(again.images["wrist"], first.images["wrist"])
    assert cache_files(cache) == [front_file, wrist_file]

    write_camera_dataset(root, episodes=2, length=7, size=SIZE, seed=2)  # appended: the cache is stale
    grown = ChunkDataset("", root, horizon=3, image_size=(24, 24), progress=False, cache_dir=cache)
    assert len(grown) == len(first) + 14
    rebuilt = cache_files(cache)
    assert len(rebuilt) == 2 and front_file not in rebuilt  # replaced, not kept beside the new one
    fresh = ChunkDataset("", root, horizon=3, image_size=(24, 24), progress=False, frame_cache=False)
    for name in ("front", "wrist"):
        np.testing.assert_array_equal(grown.images[name], fresh.images[name])
        np.testing.assert_array_equal(grown.images[name][: len(first)], first.images[name])

    # The caches of a dataset that no longer exists go when another one is cached.
    other = tmp_path / "other"
    shutil.copytree(root, other)
    ChunkDataset("", other, horizon=3, image_size=(24, 24), progress=False, cache_dir=cache)
    assert len(cache_files(cache)) == 4
    shutil.rmtree(other)
    ChunkDataset("", root, horizon=3, image_size=(16, 16), progress=False, cache_dir=cache)
    assert [f.parent for f in cache_files(cache)] == [rebuilt[0].parent] * 4


def test_unwritable_cache_decodes_into_memory(video_dataset, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    data = ChunkDataset("", video_dataset, horizon=3, image_size=(24, 24), progress=False, cache_dir=blocker / "c")
    assert data.images["front"].flags.writeable and data.images["front"].shape == (len(data), 24, 24, 3)


def test_png_image_dataset(tmp_path):
    root = write_camera_dataset(tmp_path / "png", episodes=2, length=6, size=SIZE, video=False)
    cache = tmp_path / "cache"
    data = ChunkDataset("", root, horizon=3, image_size=(24, 24), progress=False, cache_dir=cache)
    for name, frames in lerobot_frames(root, data).items():
        np.testing.assert_array_equal(data.images[name], frames)
    assert len(cache_files(cache)) == 2


def test_damaged_video_file_is_one_clear_error(video_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(video_dataset, root)
    (root / "videos" / "observation.images.wrist" / "chunk-000" / "file-001.mp4").write_bytes(b"not a video")
    cache = tmp_path / "cache"
    for kwargs in ({"cache_dir": cache}, {"frame_cache": False}):
        with pytest.raises(DatasetError, match=r"cannot read the camera frames: cannot decode .*file-001\.mp4"):
            ChunkDataset("", root, horizon=3, progress=False, **kwargs)
    assert [f.name.split("_")[0] for f in cache_files(cache)] == ["observation.images.front"]
    assert not list(cache.glob("*/*.partial"))  # nothing half-written left behind


def test_frame_outside_the_tolerance_is_refused(video_dataset):
    path = video_dataset / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4"
    out = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(FrameDecodeError, match=r"1 frames have no video frame within 0.0001 s"):
        _decode_file(path, np.array([0.1, 0.15]), np.arange(2), out, (SIZE, SIZE), 1e-4, tqdm(disable=True))


def test_measure_data_path_reports_both_paths(video_dataset):
    from dfp_ros.tools.data_bench import measure_data_path

    res = measure_data_path(video_dataset, image_size=(24, 24), batch_size=8, old_frames=4)
    assert (res["frames"], res["episodes"], len(res["cameras"])) == (56, 5, 2)
    assert res["data_frames_per_s"] > 0 and res["old_frames_per_s"] > 0 and res["sample_batches_per_s"] > 0
