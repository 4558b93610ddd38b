"""A dataset's camera frames as one uint8 array per camera: decoded once, cached on disk.

LeRobot v3 stores many episodes per mp4 file; reading frame by frame through the dataset object
seeks and decodes from the previous key frame for every single frame. Here each video file is
decoded once, front to back (PyAV, codec threads on), and each dataset frame takes the video frame
at its episode's `from_timestamp` + its own `timestamp` (the query LeRobot makes, with LeRobot's
tolerance). Frames are resized with OpenCV INTER_AREA, as the policy node does.

The arrays are cached as .npy files and memory-mapped when loaded, so a second run on the same
dataset starts at once. The cache lives in `~/.cache/dfp_ros/frames` (`$DFP_ROS_FRAME_CACHE`, or
`$XDG_CACHE_HOME/dfp_ros/frames`), not in the dataset folder: a dataset may be read-only, and
LeRobot's push_to_hub uploads everything in the folder that is not images/ or videos/. A cache file
is named by the camera, the size and a fingerprint of the dataset (frame and episode counts, size
and mtime of every file the frames come from), so a dataset appended to or rewritten gets a new
file; the old one is deleted then, as are the caches of datasets that no longer exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

log = logging.getLogger(__name__)

# Part of every fingerprint: bump it when decoding changes what lands in the arrays.
CACHE_FORMAT = 1
SOURCE_FILE = "dataset.txt"  # in each dataset's cache folder: the dataset root it belongs to
IMAGE_ROWS_PER_READ = 256


class FrameDecodeError(ValueError):
    """A camera's frames cannot be read as the dataset describes them."""


def default_cache_dir() -> Path:
    if os.environ.get("DFP_ROS_FRAME_CACHE"):
        return Path(os.environ["DFP_ROS_FRAME_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dfp_ros" / "frames"


def camera_frames(ds: LeRobotDataset, key: str, size: tuple[int, int], rows: np.ndarray, episode_index: np.ndarray,
                  timestamps: np.ndarray, *, cache_dir: Path | None, progress: bool = True) -> np.ndarray:
    """uint8 [N, h, w, 3] RGB of camera `key` for the dataset rows `rows` (every frame of the dataset,
    with their `episode_index` and `timestamp` columns), read-only and memory-mapped when cached.

    `cache_dir` None decodes into memory without a cache."""
    n = len(rows)
    shape = (n, size[0], size[1], 3)
    if cache_dir is None:
        out = np.empty(shape, np.uint8)
        _decode_into(ds, key, size, rows, episode_index, timestamps, out, progress)
        return out
    path = cache_path(ds, key, size, Path(cache_dir))
    cached = _load_cached(path, shape)
    if cached is not None:
        log.info("%s: %d frames from the cache %s", key, n, path)
        return cached
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / SOURCE_FILE).write_text(str(Path(ds.root).resolve()))
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as e:  # a read-only or full disk: train anyway, from memory
        log.warning("frame cache not writable (%s); decoding %s into memory", e, key)
        return camera_frames(ds, key, size, rows, episode_index, timestamps, cache_dir=None,
                             progress=progress)
    try:
        _decode_into(ds, key, size, rows, episode_index, timestamps, out, progress)
        out.flush()
        del out
        os.replace(partial, path)  # atomic: an interrupted run never leaves a cache that looks complete
    finally:
        partial.unlink(missing_ok=True)
    _remove_stale(path)
    return np.asarray(np.load(path, mmap_mode="r"))


def cache_path(ds: LeRobotDataset, key: str, size: tuple[int, int], cache_dir: Path) -> Path:
    """Where camera `key` at `size` is cached for the dataset as it is now."""
    root = Path(ds.root).resolve()
    folder = cache_dir / hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return folder / f"{key}_{size[0]}x{size[1]}_{_fingerprint(ds, key, size)}.npy"


def _source_files(ds: LeRobotDataset, key: str) -> list[Path]:
    """The files camera `key`'s frames are read from: its videos, or the parquet files (PNG images)."""
    eps = ds.meta.episodes
    if key in ds.meta.video_keys:
        cols = eps.select_columns([f"videos/{key}/chunk_index", f"videos/{key}/file_index"])[:]
        pairs = zip(cols[f"videos/{key}/chunk_index"], cols[f"videos/{key}/file_index"], strict=True)
        names = {ds.meta.video_path.format(video_key=key, chunk_index=c, file_index=f) for c, f in pairs}
    else:
        cols = eps.select_columns(["data/chunk_index", "data/file_index"])[:]
        pairs = zip(cols["data/chunk_index"], cols["data/file_index"], strict=True)
        names = {ds.meta.data_path.format(chunk_index=c, file_index=f) for c, f in pairs}
    return [Path(ds.root) / name for name in sorted(names)]


def _fingerprint(ds: LeRobotDataset, key: str, size: tuple[int, int]) -> str:
    files = []
    for f in _source_files(ds, key):
        if not f.is_file():
            raise FrameDecodeError(f"{key}: file {f} is missing")
        st = f.stat()
        files.append([str(f.relative_to(ds.root)), st.st_size, st.st_mtime_ns])
    info = ds.meta.info
    payload = {"format": CACHE_FORMAT, "key": key, "size": list(size), "files": files,
               "frames": int(info["total_frames"]), "episodes": int(info["total_episodes"])}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("unreadable frame cache %s (%s); decoding again", path, e)
        return None
    if arr.shape != shape or arr.dtype != np.uint8:
        log.warning("frame cache %s holds %s %s, expected %s uint8; decoding again", path, arr.shape,
                    arr.dtype, shape)
        return None
    return np.asarray(arr)  # a plain array over the mapping: indexing it gives plain arrays


def _remove_stale(current: Path) -> None:
    """Delete this camera's older caches of the same dataset, and the caches of datasets now gone."""
    prefix = current.name[: current.name.rindex("_") + 1]
    for old in current.parent.glob(f"{prefix}*.npy"):
        if old != current:
            old.unlink(missing_ok=True)
    for folder in current.parent.parent.iterdir():
        if not folder.is_dir():
            continue
        source = folder / SOURCE_FILE
        try:
            gone = source.is_file() and not Path(source.read_text().strip()).exists()
        except OSError:
            continue
        if gone:
            for f in folder.iterdir():
                f.unlink(missing_ok=True)
            folder.rmdir()


def _decode_into(ds: LeRobotDataset, key: str, size: tuple[int, int], rows: np.ndarray, episode_index: np.ndarray,
                 timestamps: np.ndarray, out: np.ndarray, progress: bool) -> None:
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(rows), desc=f"decoding {key}", unit="frame", disable=not progress,
              dynamic_ncols=True) as bar:
        if key in ds.meta.video_keys:
            _decode_videos(ds, key, size, episode_index, timestamps, out, bar)
        else:
            _read_images(ds, key, size, rows, out, bar)
    dt = time.perf_counter() - t0
    log.info("%s: decoded %d frames in %.1f s (%.0f frames/s)", key, len(rows), dt, len(rows) / max(dt, 1e-9))


def _resized(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if img.shape[:2] == size:
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _decode_videos(ds: LeRobotDataset, key: str, size: tuple[int, int], episode_index: np.ndarray,
                   timestamps: np.ndarray, out: np.ndarray, bar: tqdm) -> None:
    """Every video file of camera `key` decoded once; out[i] = frame i's video frame."""
    cols = ds.meta.episodes.select_columns(["episode_index", f"videos/{key}/chunk_index",
                                            f"videos/{key}/file_index", f"videos/{key}/from_timestamp"])[:]
    ep_row = {int(e): r for r, e in enumerate(cols["episode_index"])}
    missing = sorted(set(np.unique(episode_index).tolist()) - set(ep_row))
    if missing:
        raise FrameDecodeError(f"{key}: episodes {missing[:5]} have frames but no entry in meta/episodes")
    r = np.array([ep_row[int(e)] for e in episode_index])
    chunk = np.asarray(cols[f"videos/{key}/chunk_index"])[r]
    file = np.asarray(cols[f"videos/{key}/file_index"])[r]
    query = np.asarray(cols[f"videos/{key}/from_timestamp"], np.float64)[r] + timestamps.astype(np.float64)
    tolerance = float(getattr(ds, "tolerance_s", 1e-4))
    for c, f in sorted({(int(a), int(b)) for a, b in zip(chunk, file, strict=True)}):
        targets = np.flatnonzero((chunk == c) & (file == f))
        targets = targets[np.argsort(query[targets], kind="stable")]
        path = Path(ds.root) / ds.meta.video_path.format(video_key=key, chunk_index=c, file_index=f)
        _decode_file(path, query[targets], targets, out, size, tolerance, bar)


def _decode_file(path: Path, query: np.ndarray, targets: np.ndarray, out: np.ndarray, size: tuple[int, int],
                 tolerance: float, bar: tqdm) -> None:
    """One pass over one video: out[targets[j]] = the frame nearest to time query[j] (sorted)."""
    import av

    if not path.is_file():
        raise FrameDecodeError(f"video file {path} is missing")
    best = np.full(len(query), np.inf)
    stop = query[-1] + tolerance
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads inside the codec
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    continue
                lo = int(np.searchsorted(query, t - tolerance, side="left"))
                hi = int(np.searchsorted(query, t + tolerance, side="right"))
                hits = [j for j in range(lo, hi) if abs(query[j] - t) < best[j]]
                if hits:
                    img = _resized(frame.to_ndarray(format="rgb24"), size)
                    for j in hits:
                        fresh = best[j] == np.inf
                        best[j] = abs(query[j] - t)
                        out[targets[j]] = img
                        bar.update(int(fresh))
                if t > stop:
                    break
    except av.FFmpegError as e:
        raise FrameDecodeError(f"cannot decode {path}: {e}") from e
    bad = np.flatnonzero(best >= tolerance)
    if len(bad):
        raise FrameDecodeError(f"{path}: {len(bad)} frames have no video frame within {tolerance} s of their "
                               f"timestamp (first at t={query[bad[0]]:.4f} s in this file)")


def _read_images(ds: LeRobotDataset, key: str, size: tuple[int, int], rows: np.ndarray, out: np.ndarray,
                 bar: tqdm) -> None:
    """A camera stored as images in the parquet files (PNG), read in blocks of rows."""
    hf = ds.hf_dataset.with_format(None).select_columns([key])
    for start in range(0, len(rows), IMAGE_ROWS_PER_READ):
        block = rows[start:start + IMAGE_ROWS_PER_READ]
        for i, pil in enumerate(hf[block.tolist()][key]):
            out[start + i] = _resized(np.asarray(pil.convert("RGB")), size)
        bar.update(len(block))
