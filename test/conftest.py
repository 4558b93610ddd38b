"""Shared fixtures: small LeRobot datasets written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def multimodal_dataset(tmp_path_factory) -> Path:
    from synthetic_datasets import write_multimodal_dataset

    return write_multimodal_dataset(tmp_path_factory.mktemp("mm") / "ds")


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory) -> Path:
    from synthetic_datasets import write_image_dataset

    return write_image_dataset(tmp_path_factory.mktemp("img") / "ds")
