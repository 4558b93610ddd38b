"""Built simulator scenes kept for reuse within one process.

Building a `CubeSim` parses OGBench's MJCF files and compiles the MuJoCo model: 1-2 s on a small CPU,
longer than a short evaluation. Evaluations reset every episode with its own seed, so a scene that ran
other episodes before gives the very same episodes as a new one; benchmarks that evaluate every few
hundred steps, and checks that only read a scene's state layout, borrow one from here instead of
building their own each time.

A borrowed scene is the caller's alone until it is given back (two threads never share one), and
only state-only scenes without the success cue are kept: those are the ones evaluations use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dfp_ros.sim.cube_env import CubeSim

_lock = threading.Lock()
_idle: dict[tuple[str, int], CubeSim] = {}


@contextmanager
def borrowed_scene(env_name: str = "cube-single-v0", task_id: int = 1) -> Iterator[CubeSim]:
    """A state-only `CubeSim` of this scene and task, built on first use and kept for the next borrower.

    Reset it with an explicit seed: where an earlier borrower left it says nothing about the next episode.
    A scene left by an exception is closed, not kept (its episode may be half-stepped in any state).
    """
    key = (env_name, int(task_id))
    with _lock:
        sim = _idle.pop(key, None)
    if sim is None:
        sim = CubeSim(env_name, task_id=task_id)
    try:
        yield sim
    except BaseException:
        sim.close()
        raise
    with _lock:
        spare = _idle.setdefault(key, sim)
    if spare is not sim:  # another borrower gave one back meanwhile: one kept per scene is enough
        sim.close()


def release_scenes() -> int:
    """Close every kept scene (returns how many); the next borrower builds a new one."""
    with _lock:
        kept = list(_idle.values())
        _idle.clear()
    for sim in kept:
        sim.close()
    return len(kept)
