"""`ProcessWriter`: every `DatasetWriter` call, in order, in a child process of its own (ROS-free).

Frames' images go to the child through a shared-memory ring, the rest through a pipe; see
`ProcessWriter` for why a process and how it ends.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.data.dataset_writer import DatasetWriter

log = logging.getLogger(__name__)


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
        t0 = time.monotonic()
        ended = self._final.wait(timeout)
        # Its work is done; a busy machine can still take seconds to tear the process down (codec threads).
        left = 5.0 if timeout is None else max(5.0, timeout - (time.monotonic() - t0))
        self._proc.join(timeout=left if ended else 0.1)
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
