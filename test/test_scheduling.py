"""Real-time scheduling only where asked for: an inherited SCHED_FIFO is dropped, the control thread's
own priority is not handed to the threads it starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dfp_ros.scheduling import INHERIT_ENV, describe_scheduling

PROBE = """
import threading
from dfp_ros.scheduling import describe_scheduling, drop_inherited_realtime
before = describe_scheduling()
dropped = drop_inherited_realtime()
seen = []
t = threading.Thread(target=lambda: seen.append(describe_scheduling()))
t.start(); t.join()
print(before, dropped, describe_scheduling(), seen[0])
"""


def _under_fifo(code: str, env: dict[str, str]) -> list[str]:
    if shutil.which("chrt") is None:
        pytest.skip("chrt (util-linux) is not installed")
    out = subprocess.run(["chrt", "-f", "5", sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0 and "Operation not permitted" in out.stderr:
        pytest.skip("this user may not start SCHED_FIFO processes (no CAP_SYS_NICE / rtprio limit)")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_process_started_real_time_drops_to_ordinary_scheduling_and_so_do_its_threads():
    env = {k: v for k, v in os.environ.items() if k != INHERIT_ENV}
    assert _under_fifo(PROBE, env) == ["fifo:5", "fifo:5", "other", "other"]


def test_inherited_real_time_is_kept_when_the_user_says_so():
    assert _under_fifo(PROBE, {**os.environ, INHERIT_ENV: "1"}) == ["fifo:5", "None", "fifo:5", "fifo:5"]


def test_the_control_threads_priority_is_not_inherited_by_threads_it_starts():
    code = """
import threading
from dfp_ros.scheduling import describe_scheduling, make_thread_realtime
seen = []
def control():
    seen.append(make_thread_realtime(7))
    child = threading.Thread(target=lambda: seen.append(describe_scheduling()))
    child.start(); child.join()
t = threading.Thread(target=control); t.start(); t.join()
print(*seen, describe_scheduling())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if "PermissionError" in out.stderr:
        pytest.skip("this user may not make a thread SCHED_FIFO")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fifo:7", "other", "other"]


def test_this_test_process_runs_with_ordinary_scheduling():
    # conftest drops whatever real-time policy the runner had: the nodes the suite starts inherit ours.
    assert describe_scheduling() == "other"


def test_a_block_that_makes_the_thread_real_time_is_undone_when_it_ends():
    """What a video encoder (SVT-AV1 as root) does to the thread that opens it, undone by no_realtime_leak."""
    code = """
import threading
from dfp_ros.scheduling import describe_scheduling, make_thread_realtime, no_realtime_leak
seen = []
def encode():
    with no_realtime_leak():
        seen.append(make_thread_realtime(9))
    seen.append(describe_scheduling())
t = threading.Thread(target=encode); t.start(); t.join()
print(*seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if "PermissionError" in out.stderr:
        pytest.skip("this user may not make a thread SCHED_FIFO")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fifo:9", "other"]
