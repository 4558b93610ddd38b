"""Frames sampled from stream history kept by time: a fast lock-step robot and a late trigger still pair exactly."""

from __future__ import annotations

from dfp_ros.data.stream_sampling import FrameSampler, StreamBuffer

MS = 1_000_000


def test_a_command_handled_late_after_hundreds_of_newer_states_still_finds_its_own_state():
    # A lock-step simulator at 400 steps/s: 400 states arrive before the recorder gets to a command 1 s old.
    sampler = FrameSampler(["state"], max_age_s=30.0)
    for k in range(1000):
        sampler.add("state", k * 2_500_000, k)
    result = sampler.sample(100 * 2_500_000 + MS)  # the command that answered state 100
    assert result.values == {"state": 100}


def test_history_is_bounded_by_time_and_keeps_the_newest_before_the_window():
    buf = StreamBuffer(keep_ns=100 * MS)
    for k in range(50):
        buf.add(k * 10 * MS, k)  # 490 ms of messages, 10 ms apart
    assert buf.newest_at(10**12) == (490 * MS, 49)
    assert buf.newest_at(390 * MS) == (390 * MS, 39)  # the window's start stays answerable
    assert buf.newest_at(370 * MS) is None  # older ones are gone: memory does not grow with the stream
    assert buf.newest_time() == 490 * MS


def test_a_stalled_recorder_waits_for_the_streams_it_needs_instead_of_timing_out_on_the_wall_clock():
    from dfp_ros.data.stream_sampling import TriggerQueue

    q = TriggerQueue(settle_s=0.02, timeout_s=1.0)
    q.push(100 * MS, "action", "a")
    q.push(150 * MS, "event", "success")
    not_seen = lambda t, kind: kind != "action"  # noqa: E731  the state after the command is still queued
    # Woken 11 s later with the streams handled only up to 120 ms: the command waits, the event behind it too.
    assert q.pop_ready(11_000 * MS, ready=not_seen, stream_now_ns=120 * MS) == []
    # A stream that stopped while the others went on for the timeout: the command goes, then the event.
    assert q.pop_ready(11_000 * MS, ready=not_seen, stream_now_ns=1_200 * MS) == [
        (100 * MS, "action", "a"), (150 * MS, "event", "success")]
