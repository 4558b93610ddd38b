"""One recording run (ROS-free): decoded messages in, frames and episodes out to a dataset writer.

`collect_node` hands it every decoded message (`add` for a stream's value, `on_command`,
`on_event`), key presses (`post`, from any thread) and service requests (`request`), and drives it
by timers (`tick`: timer sampling; `pump`: commands, events and keys in source-time order). The
session decides frames (stream_sampling), episodes (episode_control) and the writer's operations, and
keeps the counts of the node's progress line and summary. `log` is any logger with info / warning /
debug (the node's rclpy logger). With `intervention` each command comes with whether a human
produced it, and the flag travels with the command into its frame (one message: never another
tick's flag).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dfp_ros.data.dataset_writer import to_frame
from dfp_ros.data.episode_control import IDLE, RECORDING, STOPPED, EpisodeControl
from dfp_ros.data.stream_sampling import FrameSampler, TriggerQueue

ACTION_STREAM = "action"
WARN_THROTTLE_S = 2.0
MAX_CATCH_UP_S = 0.25  # timer mode: how far back due frames are still sampled (within the streams' history)


def state_stream(topic: str) -> str:
    return f"state:{topic}"


def camera_stream(camera: str) -> str:
    return f"camera:{camera}"


class Writer(Protocol):
    """What the session needs of the dataset writer (writer_process.ProcessWriter)."""

    stats: Any
    backlog: int

    def add_frame(self, frame: dict[str, Any], task: str) -> bool: ...
    def save(self) -> None: ...
    def discard(self) -> None: ...
    def close(self, timeout: float | None = None) -> bool: ...


class RecordingSession:
    def __init__(self, writer: Writer, *, state_topics: list[str], cameras: list[str], fps: int, sample_on: str,
                 max_age_s: float, settle_s: float, auto_episodes: bool, max_episodes: int,
                 start_on_first_command: bool, first_episode: int, task: str, log: Any,
                 clock: Callable[[], int] = time.time_ns, intervention: bool = False) -> None:
        self.writer = writer
        self.state_streams = [state_stream(t) for t in state_topics]
        self.cameras = list(cameras)
        self.fps, self.sample_on, self.auto = fps, sample_on, auto_episodes
        self.intervention = intervention  # commands carry the flag (the `intervention` column)
        self.interventions = 0  # frames written with the flag set
        self.max_episodes, self.start_on_first_command = max_episodes, start_on_first_command
        self.task = task  # the task of the episodes that start from now on
        self.log, self.clock = log, clock
        streams = self.state_streams + [camera_stream(c) for c in self.cameras]
        if sample_on == "timer":
            streams.append(ACTION_STREAM)
        self.sampler = FrameSampler(streams, max_age_s)
        # A command waits until every stream has moved past it (see TriggerQueue), at most this long.
        self.triggers = TriggerQueue(settle_s, timeout_s=min(max_age_s, 1.0))
        self.control = EpisodeControl()
        self.finished = False
        self.episode_index = first_episode
        self.episode_frames = 0
        self.saved_this_run = 0
        self.late_ticks = 0
        self.writer_refused = 0
        self.bad: dict[str, int] = {}
        self._requests: list[str] = []  # from the keyboard thread
        self._req_lock = threading.Lock()
        self._last_warn: dict[str, float] = {}
        self._unhealthy: set[str] = set()
        self._episode_task = task
        self._period_ns = round(1e9 / fps)
        self._next_tick_ns = 0
        self._started_once = False
        self._frames_at_progress = 0
        self._t_progress = time.monotonic()

    # --- input ---------------------------------------------------------------------------------------
    def add(self, stream: str, t_ns: int, value: Any) -> None:
        self.sampler.add(stream, t_ns, value)

    def on_command(self, t_ns: int, action: np.ndarray, intervention: bool = False) -> None:
        """A command; `intervention` (recorded when the session records the column): a human produced it."""
        command = (action, bool(intervention)) if self.intervention else action
        if self.sample_on == "timer":
            self.sampler.add(ACTION_STREAM, t_ns, command)
        else:
            self.triggers.push(t_ns, "action", command)

    def on_event(self, t_ns: int, event: str) -> None:
        self.triggers.push(t_ns, "event", event)

    def post(self, what: str) -> None:
        """An episode request from another thread (keys); handled at the next pump."""
        with self._req_lock:
            self._requests.append(what)

    def count_bad(self, stream: str, kind: str, why: str) -> None:
        self.bad[stream] = self.bad.get(stream, 0) + 1
        self._warn("bad:" + stream, f"dropped a bad message on {stream} ({kind}): {why} ({self.bad[stream]} so far)")

    # --- frames and episodes -------------------------------------------------------------------------
    def tick(self) -> None:
        """Timer sampling: write every frame due by now."""
        if self.control.state != RECORDING:
            return
        # Frames are due at fixed times t0 + k / fps. A timer callback that runs late (a busy process) does
        # not lose them: every due time up to now - settle is sampled from the streams' history, so the
        # dataset keeps one frame per period. Only times further back than the history reaches (more than
        # MAX_CATCH_UP_S) are given up, and counted as not written ("late").
        limit = self.clock() - self.triggers.settle_ns
        if limit - self._next_tick_ns > MAX_CATCH_UP_S * 1e9:
            skipped = int((limit - self._next_tick_ns) // self._period_ns)
            self.sampler.dropped += skipped
            self.late_ticks += skipped
            self._warn("late", f"recorder {skipped / self.fps:.1f} s behind: {skipped} frames not written")
            self._next_tick_ns += skipped * self._period_ns
        while self._next_tick_ns <= limit:
            self._sample(self._next_tick_ns, None)
            self._next_tick_ns += self._period_ns

    def pump(self, flush: bool = False) -> None:
        """Handle posted requests, then the commands and events that are ready (all of them: flush)."""
        with self._req_lock:
            requests, self._requests = self._requests, []
        for what in requests:
            self.request(what)

        def ready(t: int, kind: str) -> bool:
            return kind != "action" or self.sampler.seen_after(t)

        for t, kind, payload in self.triggers.pop_ready(self.clock(), flush=flush, ready=ready,
                                                        stream_now_ns=self.sampler.newest_time()):
            if kind == "event":
                ops, why = self.control.on_event(payload, self.auto)
                self._apply(ops, f"/episode {payload}: {why}")
            else:
                if self.start_on_first_command and not self._started_once and self.control.state == IDLE:
                    self.request("start")
                if self.control.state == RECORDING:
                    self._sample(t, {ACTION_STREAM: payload})

    def request(self, what: str) -> tuple[bool, str]:
        """An episode request (episode_control.EpisodeControl.request); (done, why)."""
        ops, why = self.control.request(what)
        self._apply(ops, why)
        return bool(ops), why

    def _sample(self, t_ns: int, extra: dict[str, Any] | None) -> None:
        res = self.sampler.sample(t_ns, extra)
        if res.values is None:
            for s in res.missing + res.stale:
                self._unhealthy.add(s)
                self._warn(s, f"frame not written: stream {s} is {'missing' if s in res.missing else 'stale'} "
                              f"(frames not written so far: {self.sampler.dropped})")
            return
        for s in list(self._unhealthy):
            self._unhealthy.discard(s)
            self.log.info(f"stream {s} is back; recording frames again")
        v = res.values
        state = np.concatenate([v[s] for s in self.state_streams])
        images = {c: v[camera_stream(c)] for c in self.cameras}
        action, flag = v[ACTION_STREAM] if self.intervention else (v[ACTION_STREAM], None)
        if not self.writer.add_frame(to_frame(state, action, images, flag), self._episode_task):
            # The writer process is gone or starved for seconds: this frame is lost, and counted.
            self.sampler.dropped += 1
            self.writer_refused += 1
            self._warn("writer", f"frame not written: the dataset writer is behind ({self.writer_refused} so far; "
                                 f"{self.writer.stats.error or 'ring full'})")
            return
        self.episode_frames += 1
        self.interventions += bool(flag)

    def _apply(self, ops: list[str], why: str) -> None:
        for op in ops:
            if op == "start":
                self._started_once = True
                self._next_tick_ns = self.clock() - self.triggers.settle_ns  # the episode's frame clock
                self._episode_task = self.task
                self.episode_frames = 0
                self.log.info(f"episode {self.episode_index} recording (task {self._episode_task!r})")
                continue
            if op == "save":
                if self.episode_frames == 0:
                    self.log.warning("episode has no frames; nothing saved")
                    continue
                self.writer.save()
                self.log.info(f"episode {self.episode_index} saving ({self.episode_frames} frames)")
                self.episode_index += 1
                self.saved_this_run += 1
                if self.max_episodes and self.saved_this_run >= self.max_episodes:
                    self.control.request("stop_discard")
            elif op == "discard":
                self.writer.discard()
                self.log.info(f"episode {self.episode_index} discarded ({self.episode_frames} frames)")
            self.episode_frames = 0
        if self.control.state == STOPPED:
            self.finished = True
        if not ops and why:
            self.log.debug(why)

    def close(self, signalled: bool, on_shutdown: str) -> None:
        """Finish: the episode in progress is saved, or at a signal follows `on_shutdown`; then the
        writer finishes its queue and finalizes the dataset."""
        try:
            self.pump(flush=True)
        except Exception:  # a failing log call after a signal; the queue is ours and still valid
            pass
        if self.control.state == RECORDING:
            rule = on_shutdown if signalled else "save"
            self._apply(self.control.request(f"stop_{rule}")[0], "")
        self.writer.close()

    # --- reporting ------------------------------------------------------------------------------------
    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= WARN_THROTTLE_S:
            self._last_warn[key] = now
            self.log.warning(text)

    def _not_written(self) -> tuple[dict[str, int], dict[str, int]]:
        """Frames not written per stream: (missing, stale), streams with none left out."""
        return ({k: v for k, v in self.sampler.missing.items() if v},
                {k: v for k, v in self.sampler.stale.items() if v})

    def stats(self) -> dict[str, Any]:
        w = self.writer.stats
        lat = sorted(w.save_latency_s)
        missing, stale = self._not_written()
        return {
            "episodes_saved": w.episodes_saved, "episodes_discarded": w.episodes_discarded,
            "saved_lengths": w.saved_lengths, "frames_sampled": self.sampler.frames,
            "frames_added": w.frames_written, "frames_not_written": self.sampler.dropped,
            "intervention_frames": self.interventions if self.intervention else None,
            "late_frames": self.late_ticks, "writer_refused": self.writer_refused,
            "missing": missing, "stale": stale,
            "received": self.sampler.received, "bad_messages": self.bad, "writer_backlog": self.writer.backlog,
            "writer_busy_s": round(w.write_s, 3), "writer_cpu_s": round(w.cpu_s, 2),
            "save_latency_s_max": round(lat[-1], 3) if lat else None,
            "save_latency_s_p50": round(lat[len(lat) // 2], 3) if lat else None,
            "writer_error": w.error,
        }

    def progress_line(self) -> str:
        now = time.monotonic()
        frames = self.sampler.frames
        rate = (frames - self._frames_at_progress) / max(now - self._t_progress, 1e-6)
        self._frames_at_progress, self._t_progress = frames, now
        missing, stale = self._not_written()
        return (f"{self.control.state}: episode {self.episode_index} frames {self.episode_frames}; saved "
                f"{self.saved_this_run} this run; frame rate {rate:.1f} Hz; not written {self.sampler.dropped} "
                f"(missing {missing}, stale {stale}); backlog {self.writer.backlog}")
