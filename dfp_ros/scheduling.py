"""Real-time scheduling only where a user asked for it.

Linux hands a process's scheduling policy to every thread and child it creates. A launcher or CI
runner that itself runs under SCHED_FIFO would therefore make every node, ONNX Runtime's and MuJoCo's
render threads real-time — a busy-spinning thread at priority 99 can starve the kernel's own work on
a small machine. So every dfp_ros process drops an inherited real-time policy at start
(`drop_inherited_realtime`), unless `DFP_ROS_INHERIT_REALTIME=1` says the user gave it on purpose
(`chrt -f 50 ...`). The policy node's control thread becomes real-time only through its
`control_thread_priority` parameter (`make_thread_realtime`), with SCHED_RESET_ON_FORK so that no
thread or process it creates inherits the priority.

Library code can make a thread real-time too: SVT-AV1 (lerobot's default video codec, libsvtav1,
through PyAV) switches the thread that opens an encoder to SCHED_FIFO at the highest priority (99)
when the process may do so (root, or CAP_SYS_NICE), and every thread or process started from that
thread afterwards inherits it. Code that encodes videos runs inside `no_realtime_leak()`, which
puts the calling thread back. (SVT-AV1's own encoder threads are created real-time on purpose and
end with the encode; collect_node's default codec, h264, does neither.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

INHERIT_ENV = "DFP_ROS_INHERIT_REALTIME"
_NAMES = {getattr(os, "SCHED_FIFO", -1): "fifo", getattr(os, "SCHED_RR", -2): "rr"}


def describe_scheduling(pid: int = 0) -> str:
    """'other' for ordinary scheduling, else 'fifo:<priority>' / 'rr:<priority>' (pid 0: this thread)."""
    try:
        policy = os.sched_getscheduler(pid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        priority = os.sched_getparam(pid).sched_priority
    except (OSError, AttributeError):  # not Linux
        return "other"
    name = _NAMES.get(policy)
    return f"{name}:{priority}" if name else "other"


def drop_inherited_realtime(environ: dict[str, str] | None = None) -> str | None:
    """Return the calling thread (at start-up: the process) to ordinary scheduling if it inherited a
    real-time policy; returns what was dropped (None when nothing was, or the user asked to keep it)."""
    environ = os.environ if environ is None else environ
    current = describe_scheduling()
    if current == "other" or environ.get(INHERIT_ENV, "").strip() in ("1", "true", "yes"):
        return None
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        return None
    return current


def make_thread_realtime(priority: int) -> str:
    """SCHED_FIFO `priority` for the calling thread only; returns the policy in effect afterwards.

    Raises OSError (PermissionError without CAP_SYS_NICE or an rtprio limit) or AttributeError (not Linux).
    """
    policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
    os.sched_setscheduler(0, policy, os.sched_param(priority))
    return describe_scheduling()


@contextmanager
def no_realtime_leak() -> Iterator[None]:
    """Run a block that may leave the calling thread real-time (a video encoder); if it does, put the
    thread back to the policy it had, so nothing started from it afterwards inherits the priority."""
    before = describe_scheduling()
    try:
        yield
    finally:
        if before == "other" and describe_scheduling() != "other":
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except (OSError, AttributeError):
                pass
