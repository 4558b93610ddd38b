"""Each node's parameters live in one table (`PARAMS`); the shipped YAML files and docs/parameters.md
must agree with the tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="the node modules import rclpy")
pytest.importorskip("torch", reason="finetune_node's module imports the learner (training profile)")
yaml = pytest.importorskip("yaml")

from dfp_ros.nodes.params import Param  # noqa: E402
from dfp_ros.tools import param_docs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Per-camera parameters: camera.<name>.<setting>, named by the model (policy, finetune) or camera_names (collect).
CAMERA_KEY = re.compile(r"^camera\.[A-Za-z0-9_]+\.[a-z_]+$")


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same_kind(value: object, default: object) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_every_key_of_a_shipped_config_is_a_parameter_of_its_node_of_the_right_type(config):
    tables = param_docs.node_tables()
    data = yaml.safe_load((ROOT / "config" / config).read_text())
    assert data, config
    for node, section in data.items():
        assert node in tables, f"{config}: {node} is not a dfp_ros node"
        by_name: dict[str, Param] = {p.name: p for p in tables[node]}
        for key, value in _flatten(section["ros__parameters"]).items():
            if key not in by_name:
                assert CAMERA_KEY.match(key), f"{config}: {node} has no parameter {key!r}"
                continue
            default = by_name[key].default
            if default is not None:
                assert _same_kind(value, default), \
                    f"{config}: {node}.{key} = {value!r}, the table's default is {default!r}"


def test_every_table_describes_each_of_its_parameters_once():
    for node, table in param_docs.node_tables().items():
        names = [p.name for p in table]
        assert len(names) == len(set(names)), f"{node}: a parameter is declared twice"
        assert all(p.description.strip() for p in table), f"{node}: a parameter without a description"


def test_the_parameter_reference_is_generated_from_the_tables():
    assert param_docs.main(["--check"]) == 0, "docs/parameters.md is stale: python -m dfp_ros.tools.param_docs"
