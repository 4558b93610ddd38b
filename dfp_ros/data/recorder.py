"""ROS-free core of `collect_node`: sampling frames, episode control, and the LeRobot dataset writer.

Sampling (one clock). Every message is kept with a time in ns: by default its *source* timestamp (the
publisher's system clock when it was published, from rmw's message info), so on one machine the
order of times is the order of causes: the state a teleop source acted on was published before its
command, and the next state after it. A frame at time T takes, for every stream, the newest message
with time <= T, and is written only if every stream has one no older than `max_age_s`; otherwise it
is *not* written and the missing / stale streams are counted (never zeros, never old data).
T is either a wall-clock tick at the dataset fps (`sample_on: timer`, a real robot) or the time of
each command message (`sample_on: action`, one frame per command: a lock-step simulator that runs
faster than real time; the frame pairs the command with the state it was computed from).

Episode control is a small state machine (`EpisodeControl`) fed by services, keys and `/episode`
events; the writer (`DatasetWriter`, run in a child process of its own by `ProcessWriter`) wraps lerobot's
`LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize`.
"""

from __future__ import annotations

import json
import logging
import mmap
import multiprocessing as mp
import os
import queue
import resource
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.scheduling import no_realtime_leak

log = logging.getLogger(__name__)

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."


# --- sampling ----------------------------------------------------------------------------------------
class StreamBuffer:
    """The last few (time_ns, value) of one stream; messages may be handled slightly out of order."""

    def __init__(self, depth: int = 64) -> None:
        self._items: deque[tuple[int, Any]] = deque(maxlen=depth)

    def add(self, t_ns: int, value: Any) -> None:
        self._items.append((int(t_ns), value))

    def newest_at(self, t_ns: int) -> tuple[int, Any] | None:
        """The newest item with time <= t_ns (None when there is none)."""
        best: tuple[int, Any] | None = None
        for item in self._items:
            if item[0] <= t_ns and (best is None or item[0] >= best[0]):
                best = item
        return best

    def newest_time(self) -> int:
        return max((t for t, _ in self._items), default=-1)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class SampleResult:
    values: dict[str, Any] | None  # None: the frame is not written
    missing: list[str] = field(default_factory=list)  # streams with no message at all before T
    stale: list[str] = field(default_factory=list)  # streams whose newest message is older than max_age


class FrameSampler:
    """Builds frames from the newest message of each stream no older than `max_age_s` (see module doc)."""

    def __init__(self, streams: Sequence[str], max_age_s: float, depth: int = 64) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.streams = list(streams)
        self.max_age_ns = int(max_age_s * 1e9)
        self._buffers = {s: StreamBuffer(depth) for s in self.streams}
        self.frames = 0
        self.dropped = 0
        self.missing: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.stale: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.received: dict[str, int] = dict.fromkeys(self.streams, 0)

    def add(self, stream: str, t_ns: int, value: Any) -> None:
        self._buffers[stream].add(t_ns, value)
        self.received[stream] += 1

    def seen_after(self, t_ns: int) -> bool:
        """Whether every stream has a message newer than t_ns (so none older can still arrive)."""
        return all(b.newest_time() > t_ns for b in self._buffers.values())

    def sample(self, t_ns: int, extra: dict[str, Any] | None = None) -> SampleResult:
        """The frame at time t_ns (`extra` values, e.g. the triggering command, are added as they are)."""
        values: dict[str, Any] = dict(extra or {})
        result = SampleResult(values=None)
        for s in self.streams:
            item = self._buffers[s].newest_at(t_ns)
            if item is None:
                result.missing.append(s)
            elif t_ns - item[0] > self.max_age_ns:
                result.stale.append(s)
            else:
                values[s] = item[1]
        if result.missing or result.stale:
            self.dropped += 1
            for s in result.missing:
                self.missing[s] += 1
            for s in result.stale:
                self.stale[s] += 1
            return result
        self.frames += 1
        result.values = values
        return result


class TriggerQueue:
    """Time-ordered triggers (commands, episode events), each handled once it is safe to.

    Messages of different topics can be handled by the executor in another order than they were
    published (and a busy process handles them late). So triggers are sorted by source time and the
    oldest is handled only when `ready(t, kind)` says every stream it needs has been seen past its
    time - per topic, DDS delivers in order, so then nothing older can still come - or, failing that,
    once it is `timeout_s` old (a stream that stopped: the frame is then judged missing or stale). At
    least `settle_s` always passes, so an episode's end event cannot overtake its last command.
    """

    def __init__(self, settle_s: float, timeout_s: float = 1.0) -> None:
        self.settle_ns = int(max(settle_s, 0.0) * 1e9)
        self.timeout_ns = int(max(timeout_s, settle_s) * 1e9)
        self._items: list[tuple[int, int, str, Any]] = []
        self._seq = 0

    def push(self, t_ns: int, kind: str, payload: Any = None) -> None:
        self._seq += 1
        self._items.append((int(t_ns), self._seq, kind, payload))
        self._items.sort()

    def pop_ready(self, now_ns: int, flush: bool = False,
                  ready: Callable[[int, str], bool] | None = None) -> list[tuple[int, str, Any]]:
        out = []
        while self._items:
            t, _, kind, payload = self._items[0]
            if not flush:
                age = now_ns - t
                if age < self.settle_ns:
                    break
                if ready is not None and age < self.timeout_ns and not ready(t, kind):
                    break
            self._items.pop(0)
            out.append((t, kind, payload))
        return out

    def __len__(self) -> int:
        return len(self._items)


# --- episode control -----------------------------------------------------------------------------------
IDLE, RECORDING, STOPPED = "idle", "recording", "stopped"


class EpisodeControl:
    """idle -> recording (start) -> idle (save | discard) ...; stop ends everything.

    Returns the writer operations each request implies ("start", "save", "discard"), so the node
    can run them in order; a request that makes no sense in the current state returns [] and a reason.
    """

    def __init__(self) -> None:
        self.state = IDLE

    def request(self, what: str) -> tuple[list[str], str]:
        if self.state == STOPPED:
            return [], "recording has stopped"
        if what == "start":
            if self.state == RECORDING:
                return [], "an episode is already being recorded (save or discard it first)"
            self.state = RECORDING
            return ["start"], "episode started"
        if what in ("save", "discard"):
            if self.state != RECORDING:
                return [], f"no episode is being recorded (nothing to {what})"
            self.state = IDLE
            return [what], f"episode {what}d" if what == "save" else "episode discarded"
        if what == "next":  # keyboard: keep this one, go on with the next
            ops = ["save"] if self.state == RECORDING else []
            self.state = RECORDING
            return [*ops, "start"], "next episode"
        if what == "rerecord":  # keyboard: throw this one away and record it again
            ops = ["discard"] if self.state == RECORDING else []
            self.state = RECORDING
            return [*ops, "start"], "re-recording the episode"
        if what in ("stop_save", "stop_discard"):
            ops = ([what.removeprefix("stop_")] if self.state == RECORDING else [])
            self.state = STOPPED
            return ops, "stopped"
        raise ValueError(f"unknown episode request {what!r}")

    def on_event(self, event: str, auto: bool) -> tuple[list[str], str]:
        """An `/episode` event from the robot or simulator (only acted on when `auto`)."""
        if not auto:
            return [], "automatic episodes are off"
        if event == "start":
            if self.state == RECORDING:  # the previous end was missed: its frames are not trusted
                ops, _ = self.request("discard")
                more, _ = self.request("start")
                return ops + more, "episode restarted (no end event seen for the previous one)"
            return self.request("start")
        if event in ("success", "failure", "timeout"):
            return self.request("save")
        if event == "reset" and self.state == RECORDING:  # reset without an end: not a complete episode
            return self.request("discard")
        return [], f"event {event!r} needs nothing"


# --- dataset -----------------------------------------------------------------------------------------
class FeatureMismatch(ValueError):
    """Appending would mix features; nothing was written."""


def build_features(state_names: Sequence[str], action_names: Sequence[str],
                   cameras: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec: observation.state, action, and one video per camera (shapes as tuples)."""
    if not state_names or not action_names:
        raise ValueError("a dataset needs at least one state and one action name")
    for what, names in (("state", state_names), ("action", action_names)):
        if len(set(names)) != len(names):
            raise ValueError(f"{what} names repeat: {list(names)}")
    features: dict[str, dict[str, Any]] = {
        STATE_KEY: {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)},
    }
    for name, (h, w) in (cameras or {}).items():
        features[IMAGE_PREFIX + name] = {"dtype": "video", "shape": (int(h), int(w), 3),
                                         "names": ["height", "width", "channels"]}
    return features


def _norm_feature(f: dict[str, Any]) -> tuple[str, tuple[int, ...], Any]:
    names = f.get("names")
    return str(f["dtype"]), tuple(int(x) for x in f["shape"]), list(names) if isinstance(names, list) else names


def check_features(root: Path, features: dict[str, dict[str, Any]], fps: int) -> None:
    """Raise FeatureMismatch naming every feature (and fps) that differs from the dataset at root."""
    info = json.loads((root / "meta" / "info.json").read_text())
    have: dict[str, dict[str, Any]] = info["features"]
    problems = []
    if int(info["fps"]) != int(fps):
        problems.append(f"fps: dataset {info['fps']}, configured {fps}")
    builtin = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    for key in sorted((set(have) - builtin) | set(features)):
        if key not in have:
            problems.append(f"{key}: not in the dataset")
        elif key not in features:
            problems.append(f"{key}: in the dataset but not configured")
        else:
            a, b = _norm_feature(have[key]), _norm_feature(features[key])
            for i, what in enumerate(("dtype", "shape", "names")):
                if a[i] != b[i]:
                    problems.append(f"{key}: {what} {a[i]} in the dataset, {b[i]} configured")
    if problems:
        raise FeatureMismatch(f"cannot append to {root}: the features differ -> " + "; ".join(problems))


def dataset_exists(root: Path) -> bool:
    return (Path(root) / "meta" / "info.json").is_file()


class DatasetWriter:
    """A LeRobot v3 dataset being recorded: new, or appended to when its features match."""

    def __init__(self, root: str | Path, repo_id: str, fps: int, features: dict[str, dict[str, Any]],
                 append: bool = False, robot_type: str = "", use_videos: bool = True,
                 vcodec: str = "libsvtav1", parallel_encoding: bool = False, streaming_encoding: bool = False,
                 encoder_queue_maxsize: int = 120) -> None:
        self.root = Path(root)
        self.fps = int(fps)
        self.features = features
        self._parallel = parallel_encoding
        self._finalized = False
        # Check before importing lerobot (seconds): a refusal must be quick and write nothing.
        exists = dataset_exists(self.root)
        if exists and not append:
            raise FileExistsError(f"{self.root} already holds a dataset; set append to add episodes to it")
        if not exists and self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} exists and is not a LeRobot dataset; choose a new folder")
        if exists:
            check_features(self.root, features, self.fps)
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if exists:
            self.ds = LeRobotDataset(repo_id, root=self.root, vcodec=vcodec, streaming_encoding=streaming_encoding,
                                     encoder_queue_maxsize=encoder_queue_maxsize)
            self.appended = True
        else:
            if self.root.exists():
                self.root.rmdir()  # an empty folder: LeRobot creates it itself and refuses an existing one
            self.ds = LeRobotDataset.create(repo_id, fps=self.fps, root=self.root, features=features,
                                            robot_type=robot_type or None, use_videos=use_videos, vcodec=vcodec,
                                            streaming_encoding=streaming_encoding,
                                            encoder_queue_maxsize=encoder_queue_maxsize)
            self.appended = False
        self.episodes_at_open = int(self.ds.meta.total_episodes)
        self.buffered = 0

    @property
    def total_episodes(self) -> int:
        return int(self.ds.meta.total_episodes)

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        f = dict(frame)
        f["task"] = task
        self._wait_for_encoder()
        with no_realtime_leak():  # a streaming encoder opens here (see dfp_ros.scheduling)
            self.ds.add_frame(f)
        self.buffered += 1

    def _wait_for_encoder(self) -> None:
        """Streaming encoding: wait while a camera's encoder queue is full.

        lerobot's feed_frame drops a frame after 0.1 s on a full queue (and the episode would then be
        discarded, see save_episode). Frames wait in the writer process's own queue instead, so an encoder
        that is slower for a moment (a busy machine) delays the episode's save, never loses a frame. Reads
        lerobot 0.4.4's private encoder fields; without them, lerobot's own behaviour applies.
        """
        enc = getattr(self.ds, "_streaming_encoder", None)
        queues = getattr(enc, "_frame_queues", None) or {}
        threads = getattr(enc, "_threads", None) or {}
        while any(q.full() and threads.get(k) is not None and threads[k].is_alive() for k, q in queues.items()):
            time.sleep(0.002)

    def save_episode(self) -> int:
        """Write the buffered episode; returns its length (0: nothing buffered, nothing written)."""
        n = self.buffered
        if n == 0:
            return 0
        # Streaming encoding (video encoded while recording, no PNGs): lerobot drops a frame when its
        # encoder queue is full and only logs it - the video would then be shorter than the episode.
        enc = getattr(self.ds, "_streaming_encoder", None)
        dropped = {k: v for k, v in (getattr(enc, "_dropped_frames", None) or {}).items() if v}
        if dropped:
            self.discard_episode()
            raise RuntimeError(f"the video encoder fell behind and dropped frames {dropped}; episode discarded "
                               "(use a faster vcodec such as h264, or streaming_encoding false)")
        with no_realtime_leak():  # videos are encoded here (see dfp_ros.scheduling)
            self.ds.save_episode(parallel_encoding=self._parallel)
        self.buffered = 0
        return n

    def discard_episode(self) -> int:
        n = self.buffered
        if self.ds.episode_buffer is not None:
            self.ds.clear_episode_buffer()
        self.buffered = 0
        return n

    def finalize(self) -> None:
        """Close the parquet writers (without this the dataset cannot be opened); safe to call twice."""
        if self._finalized:
            return
        self._finalized = True
        if self.buffered:
            self.discard_episode()
        with no_realtime_leak():
            self.ds.finalize()


# --- the writer process ---------------------------------------------------------------------------------
@dataclass
class WriterStats:
    frames_written: int = 0  # add_frame calls done
    episodes_saved: int = 0
    episodes_discarded: int = 0
    saved_lengths: list[int] = field(default_factory=list)
    save_latency_s: list[float] = field(default_factory=list)  # save request -> episode on disk
    write_s: float = 0.0  # time spent in lerobot calls
    cpu_s: float = 0.0  # CPU time of the writer process (lerobot, PNG / video encoding), at close
    error: str = ""


@dataclass
class WriterInfo:
    """What the node needs to know about the dataset once it is open."""

    appended: bool
    episodes_at_open: int
    total_episodes: int


WRITER_NICE = 10


def _run_writer(writer_kwargs: dict[str, Any], images: dict[str, tuple[int, ...]], slots: int, ring_path: str,
                conn_in: Any, conn_out: Any) -> None:
    """The writer process: opens the DatasetWriter and runs every request, in order (see ProcessWriter)."""
    # Ctrl-C in a terminal (and a SIGTERM sent to the process group) reaches this process too; the node decides
    # what happens (on_shutdown) and then asks for finalize - being stopped here would lose the queued episodes.
    # Without the node (killed), the closed pipe ends this process after finalize.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Receiving the streams in time matters more than writing them at once (frames queue here): on a busy
    # machine the scheduler should favour the node's process over this one.
    os.nice(WRITER_NICE)
    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            try:
                conn_out.send(msg)
            except (BrokenPipeError, OSError):  # the node is gone: finish the work anyway
                pass

    try:
        w = DatasetWriter(**writer_kwargs)
    except BaseException as err:  # reported by wait_ready in the node
        try:
            send("open_error", err)
        except Exception:  # an exception that does not pickle
            send("open_error", RuntimeError(f"{type(err).__name__}: {err}"))
        return
    with open(ring_path, "r+b") as f:
        ring = mmap.mmap(f.fileno(), 0)
    views = _slot_views(ring, images, slots)
    send("ready", WriterInfo(w.appended, w.episodes_at_open, w.total_episodes))
    ops: queue.Queue[tuple[str, Any, float]] = queue.Queue()

    def receive() -> None:
        # Copies each frame's images out of the shared ring at once, so the node gets its slot back within
        # a millisecond however long lerobot takes (an episode's video encoding at save: seconds).
        while True:
            try:
                op, arg, t_req = conn_in.recv()
            except (EOFError, OSError):  # the node died: keep what was saved, close the dataset
                ops.put(("finalize", None, time.monotonic()))
                return
            if op == "frame":
                slot, frame, task = arg
                if slot is not None:
                    for key, view in views[slot].items():
                        frame[key] = view.copy()
                    send("free", slot)
                arg = (frame, task)
            ops.put((op, arg, t_req))
            if op == "finalize":
                return

    threading.Thread(target=receive, name="writer_receive", daemon=True).start()
    stats = WriterStats()
    while True:
        op, arg, t_req = ops.get()
        t0 = time.perf_counter()
        try:
            if op == "frame":
                w.add_frame(*arg)
                stats.frames_written += 1
            elif op == "save":
                n = w.save_episode()
                if n:
                    stats.episodes_saved += 1
                    stats.saved_lengths.append(n)
                    stats.save_latency_s.append(time.monotonic() - t_req)
                    send("saved", w.total_episodes - 1, n, time.monotonic() - t_req)
            elif op == "discard":
                if w.discard_episode():
                    stats.episodes_discarded += 1
            elif op == "finalize":
                w.finalize()
        except Exception as err:  # keep the saved episodes: report, drop this episode, go on
            stats.error = f"{op}: {type(err).__name__}: {err}"
            log.error("dataset writer: %s", stats.error)
            send("error", stats.error)
            try:
                w.discard_episode()
            except Exception:
                pass
        finally:
            stats.write_s += time.perf_counter() - t0
            send("done", stats.frames_written)
        if op == "finalize":
            break
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stats.cpu_s = ru.ru_utime + ru.ru_stime
    send("final", stats)


def _slot_views(ring: Any, images: dict[str, tuple[int, ...]], slots: int) -> list[dict[str, np.ndarray]]:
    """Per slot of the shared ring, one uint8 array per image key (each slot holds one frame's images)."""
    per_slot = sum(int(np.prod(s)) for s in images.values())
    views = []
    for i in range(slots):
        offset, slot = i * per_slot, {}
        for key, shape in images.items():
            n = int(np.prod(shape))
            slot[key] = np.frombuffer(ring, dtype=np.uint8, count=n, offset=offset).reshape(shape)
            offset += n
        views.append(slot)
    return views


class ProcessWriter:
    """Runs every DatasetWriter call, in order, in a child process of its own.

    Why a process and not a thread: lerobot's add_frame and video encoding hold Python's GIL for much of
    their work (PNG writes, frame conversion and statistics), and a thread doing that in the node's
    interpreter delays the ROS callbacks that receive the camera images - measured: with a writer thread,
    2 x 640x480 at 30 Hz lost a third of one camera's frames on 2 cores. In its own process the writer
    costs CPU but never blocks reception.

    A frame's images go through a shared-memory ring (`slots` frames; the child copies each frame out at
    once and hands the slot back), the rest pickled through a pipe. A frame that finds no free slot (the
    writer process starved for `slots` frames) is refused (add_frame returns False) and must be counted
    by the caller. The child is spawned, not forked (forking a process with live DDS threads is unsafe),
    ignores SIGINT and SIGTERM (the node decides what they mean), and if the node dies it still finishes
    its queue and finalizes the dataset: saved episodes always stay.
    """

    def __init__(self, writer_kwargs: dict[str, Any], images: dict[str, tuple[int, ...]], slots: int,
                 on_saved: Callable[[int, int, float], None] | None = None) -> None:
        self._on_saved = on_saved
        self._images = {k: tuple(int(x) for x in s) for k, s in images.items()}
        self._slots = max(int(slots), 1) if self._images else 0
        per_slot = sum(int(np.prod(s)) for s in self._images.values())
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # memory, not disk, where Linux has it
        fd, self._ring_path = tempfile.mkstemp(prefix="dfp_collect_ring_", dir=shm)
        with os.fdopen(fd, "r+b") as f:
            f.truncate(max(per_slot * self._slots, 1))
            self._ring = mmap.mmap(f.fileno(), 0)
        self._views = _slot_views(self._ring, self._images, self._slots)
        self._free: deque[int] = deque(range(self._slots))
        self._lock = threading.Lock()
        self.stats = WriterStats()
        self.info: WriterInfo | None = None
        self._open_error: BaseException | None = None
        self._ready = threading.Event()
        self._final = threading.Event()
        self._sent = 0  # frames handed to the child
        self._done = 0  # frames the child has added
        ctx = mp.get_context("spawn")
        child_in, self._conn = ctx.Pipe(duplex=False)
        self._results, child_out = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_run_writer, name="dataset_writer", daemon=True,
                                 args=(writer_kwargs, self._images, self._slots, self._ring_path, child_in,
                                       child_out))
        self._proc.start()
        child_in.close()
        child_out.close()
        self._reader = threading.Thread(target=self._read_results, name="writer_results", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float | None = None) -> WriterInfo:
        """Block until the dataset is open; raises what opening it raised."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the dataset did not open in time")
        if self.info is None:
            raise self._open_error or RuntimeError("the dataset writer process ended before opening the dataset")
        return self.info

    @property
    def backlog(self) -> int:
        """Frames handed over and not yet added to the dataset."""
        return self._sent - self._done

    def add_frame(self, frame: dict[str, Any], task: str) -> bool:
        """Queue a frame; False (nothing queued) when the ring is full or the writer process is gone."""
        if self._final.is_set():
            return False
        slot = None
        if self._images:  # state-only datasets need no slot
            with self._lock:
                slot = self._free.popleft() if self._free else None
            if slot is None:
                return False
        rest = {}
        for key, value in frame.items():
            if slot is not None and key in self._images:
                self._views[slot][key][...] = value
            else:
                rest[key] = value
        if not self._send("frame", (slot, rest, task)):
            return False
        self._sent += 1
        return True

    def save(self) -> None:
        self._send("save", None)

    def discard(self) -> None:
        self._send("discard", None)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the queue, finalize, and stop the process; True when it ended in time (stats are final)."""
        self._send("finalize", None)
        self._conn.close()
        ended = self._final.wait(timeout)
        self._proc.join(timeout=5.0 if ended else 0.1)
        self._reader.join(timeout=1.0)
        self._results.close()
        self._unlink_ring()
        return ended and not self._proc.is_alive()

    def _send(self, op: str, arg: Any) -> bool:
        try:
            # Request time on CLOCK_MONOTONIC (one clock for every process): the writer measures save latency.
            self._conn.send((op, arg, time.monotonic()))
            return True
        except (BrokenPipeError, OSError):  # the writer process is gone; its error is in stats
            return False

    def _unlink_ring(self) -> None:
        try:
            os.unlink(self._ring_path)  # both processes keep their mapping; the name is no longer needed
        except FileNotFoundError:
            pass

    def _read_results(self) -> None:
        while True:
            try:
                msg = self._results.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "free":
                with self._lock:
                    self._free.append(msg[1])
            elif kind == "done":
                self._done = msg[1]
            elif kind == "saved":
                self.stats.episodes_saved += 1
                self.stats.saved_lengths.append(msg[2])
                self.stats.save_latency_s.append(msg[3])
                if self._on_saved is not None:
                    self._on_saved(*msg[1:])
            elif kind == "error":
                self.stats.error = msg[1]
                log.error("dataset writer: %s", msg[1])
            elif kind == "ready":
                self.info = msg[1]
                self._unlink_ring()
                self._ready.set()
            elif kind == "open_error":
                self._open_error = msg[1]
                self._unlink_ring()
                self._ready.set()
            elif kind == "final":
                self.stats = msg[1]
                self._final.set()
        if not self._final.is_set():
            self.stats.error = self.stats.error or "the dataset writer process ended unexpectedly"
        self._final.set()  # no more frames are accepted
        self._ready.set()


def to_frame(state: np.ndarray, action: np.ndarray, images: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """A LeRobot frame from arrays (float32 state/action, uint8 HxWx3 images)."""
    frame: dict[str, Any] = {STATE_KEY: np.asarray(state, dtype=np.float32),
                             ACTION_KEY: np.asarray(action, dtype=np.float32)}
    for name, img in (images or {}).items():
        frame[IMAGE_PREFIX + name] = img
    return frame
