"""Frames from several message streams on one clock (ROS-free; used by `collect_node`).

Every message is kept with a time in ns: by default its *source* timestamp (the publisher's system
clock when it was published, from rmw's message info), so on one machine the order of times is the
order of causes: the state a teleop source acted on was published before its command, and the next
state after it. A frame at time T takes, for every stream, the newest message with time <= T, and is
written only if every stream has one no older than `max_age_s`; otherwise it is *not* written and
the missing / stale streams are counted (never zeros, never old data).
T is either a wall-clock tick at the dataset fps (`sample_on: timer`, a real robot) or the time of
each command message (`sample_on: action`, one frame per command: a lock-step simulator that runs
faster than real time; the frame pairs the command with the state it was computed from).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# How long after its time a trigger may be handled (settle, timeout, a busy process): messages are kept
# for max_age + this.
HANDLING_LAG_S = 5.0


class StreamBuffer:
    """(time_ns, value) of one stream for the last `keep_ns` of stream time; messages may be handled slightly
    out of order.

    Kept by time, not by count: a lock-step simulator publishes far faster than real time, and a trigger
    is handled up to settle/timeout (and a busy process's lag) after its time, so a fixed number of
    messages can already have lost the one it needs. The newest message older than the window stays too:
    a trigger at the window's start still finds its state.
    """

    def __init__(self, keep_ns: int) -> None:
        self.keep_ns = int(keep_ns)
        self._items: deque[tuple[int, Any]] = deque()
        self._newest = -1

    def add(self, t_ns: int, value: Any) -> None:
        self._items.append((int(t_ns), value))
        self._newest = max(self._newest, int(t_ns))
        boundary = self._newest - self.keep_ns
        # Times are nearly sorted (per topic DDS delivers in order): trim from the front while the next is
        # also at or before the boundary.
        while len(self._items) > 1 and self._items[1][0] <= boundary and self._items[0][0] <= boundary:
            self._items.popleft()

    def newest_at(self, t_ns: int) -> tuple[int, Any] | None:
        """The newest item with time <= t_ns (None when there is none)."""
        best: tuple[int, Any] | None = None
        for item in self._items:
            if item[0] <= t_ns and (best is None or item[0] >= best[0]):
                best = item
        return best

    def newest_time(self) -> int:
        return self._newest

    def clear(self) -> None:
        self._items.clear()


@dataclass
class SampleResult:
    values: dict[str, Any] | None  # None: the frame is not written
    missing: list[str] = field(default_factory=list)  # streams with no message at all before T
    stale: list[str] = field(default_factory=list)  # streams whose newest message is older than max_age


class FrameSampler:
    """Builds frames from the newest message of each stream no older than `max_age_s` (see module doc)."""

    def __init__(self, streams: Sequence[str], max_age_s: float, lag_s: float = HANDLING_LAG_S) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.streams = list(streams)
        self.max_age_ns = int(max_age_s * 1e9)
        # A frame at T reads messages back to T - max_age; T is handled up to `lag_s` after the newest message.
        self._buffers = {s: StreamBuffer(int((max_age_s + lag_s) * 1e9)) for s in self.streams}
        self.frames = 0
        self.dropped = 0
        self.missing: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.stale: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.received: dict[str, int] = dict.fromkeys(self.streams, 0)

    def add(self, stream: str, t_ns: int, value: Any) -> None:
        self._buffers[stream].add(t_ns, value)
        self.received[stream] += 1

    def newest_time(self) -> int:
        """The newest message time handled on any stream (-1 before the first)."""
        return max((b.newest_time() for b in self._buffers.values()), default=-1)

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
    once `timeout_s` of stream time has passed it (a stream that stopped while the others went on: the frame
    is then judged missing or stale). Stream time, not the wall clock: a process that stalled for seconds
    wakes with its messages still queued in DDS, and the wall clock would pop every waiting trigger before
    the messages it needs are handled. At least `settle_s` always passes, so an episode's end event cannot
    overtake its last command.
    """

    def __init__(self, settle_s: float, timeout_s: float = 1.0) -> None:
        self.settle_ns = int(max(settle_s, 0.0) * 1e9)
        self.timeout_ns = int(max(timeout_s, settle_s) * 1e9)
        self._items: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self._newest = -1

    def push(self, t_ns: int, kind: str, payload: Any = None) -> None:
        self._newest = max(self._newest, int(t_ns))
        self._seq += 1
        self._items.append((int(t_ns), self._seq, kind, payload))
        self._items.sort()

    def pop_ready(self, now_ns: int, flush: bool = False, ready: Callable[[int, str], bool] | None = None,
                  stream_now_ns: int | None = None) -> list[tuple[int, str, Any]]:
        """Triggers ready at wall-clock `now_ns`; `stream_now_ns`: the newest message time handled on the
        streams (None: the wall clock stands in, as for a caller without streams)."""
        progress = now_ns if stream_now_ns is None else max(stream_now_ns, self._newest)
        out = []
        while self._items:
            t, _, kind, payload = self._items[0]
            if not flush:
                if now_ns - t < self.settle_ns:
                    break
                if ready is not None and progress - t < self.timeout_ns and not ready(t, kind):
                    break
            self._items.pop(0)
            out.append((t, kind, payload))
        return out

    def __len__(self) -> int:
        return len(self._items)
