"""Shared fixtures: small LeRobot datasets written once per session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Decoded camera frames of the suite's throw-away datasets stay out of the user's cache.
_FRAME_CACHE = None
if "DFP_ROS_FRAME_CACHE" not in os.environ:
    _FRAME_CACHE = os.environ["DFP_ROS_FRAME_CACHE"] = tempfile.mkdtemp(prefix="dfp_ros_test_frames_")
sys.path.insert(0, str(Path(__file__).parent))
# Parallel workers (pytest -n N) each draw their tests' ROS domains from a range of their own, so no two
# tests running at once share a graph.
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    _span = 100 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _first = 1 + int(_worker[2:]) * _span
    from dfp_ros.tools.graph import DOMAIN_RANGE_ENV

    os.environ[DOMAIN_RANGE_ENV] = f"{_first}-{_first + _span - 1}"


@pytest.fixture(scope="session")
def multimodal_dataset(tmp_path_factory) -> Path:
    from synthetic_datasets import write_multimodal_dataset

    return write_multimodal_dataset(tmp_path_factory.mktemp("mm") / "ds")


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory) -> Path:
    from synthetic_datasets import write_image_dataset

    return write_image_dataset(tmp_path_factory.mktemp("img") / "ds")


# The suite runs with ordinary scheduling even when whatever started it is real-time: the nodes it
# starts inherit this process's policy (see dfp_ros.scheduling).
_DROPPED_REALTIME = None
try:
    from dfp_ros.scheduling import drop_inherited_realtime

    _DROPPED_REALTIME = drop_inherited_realtime()
except ImportError:
    pass


def pytest_report_header(config) -> str | None:
    if _DROPPED_REALTIME:
        return f"dfp_ros: pytest inherited real-time scheduling ({_DROPPED_REALTIME}); dropped to ordinary"
    return None


@pytest.fixture(autouse=True)
def stays_ordinary_scheduling():
    """A test that leaves this process real-time would hand that to every node started after it (video
    encoders do this to the thread that opens them when running as root: see dfp_ros.scheduling)."""
    yield
    try:
        from dfp_ros.scheduling import describe_scheduling, drop_inherited_realtime
    except ImportError:
        return
    now = describe_scheduling()
    if now != "other":
        drop_inherited_realtime({})
        pytest.fail(f"this test left the test process under real-time scheduling ({now})")


def pytest_sessionfinish(session, exitstatus) -> None:
    if _FRAME_CACHE:
        shutil.rmtree(_FRAME_CACHE, ignore_errors=True)
