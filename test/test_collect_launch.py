"""collect.launch.py + config/collect.yaml: a static check that runs here (launch / launch_ros are not
installable from PyPI): every executable the launch file names exists and is registered,
and the parameter file holds only parameters the nodes really declare (asked from the running nodes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from launch_files import console_scripts, launch_nodes
from ros_graph import RosGraph, declared_parameters, domain_id, ros_env, running_node

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "collect.launch.py"
CONFIG = ROOT / "config" / "collect.yaml"
EXECUTABLES = {"sim_robot_node", "oracle_teleop_node", "joy_teleop_node", "realsense_node", "collect_node"}


def test_every_executable_the_launch_names_exists_and_is_a_console_script():
    nodes = launch_nodes(LAUNCH)
    assert {n["executable"] for n in nodes} == EXECUTABLES
    scripts = console_scripts()
    for node in nodes:
        assert node["package"] == "dfp_ros" and node["name"] == node["executable"]
        module = f"dfp_ros.nodes.{node['executable']}"
        assert importlib.util.find_spec(module) is not None, module
        assert scripts.get(node["executable"]) == module, \
            f"setup.py console_scripts lacks '{node['executable']} = {module}:main'"
    config = yaml.safe_load(CONFIG.read_text())
    assert EXECUTABLES <= set(config), f"config/collect.yaml lacks sections {EXECUTABLES - set(config)}"


@pytest.mark.parametrize("node_name", ["collect_node", "oracle_teleop_node", "joy_teleop_node", "sim_robot_node"])
def test_parameter_file_holds_only_declared_parameters(tmp_path, node_name):
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    if node_name == "collect_node":
        pytest.importorskip("lerobot", reason="lerobot is not installed (training profile)")
    config = yaml.safe_load(CONFIG.read_text())
    wanted = set(config[node_name]["ros__parameters"])
    extra = {"root": str(tmp_path / "ds"), "keyboard": False} if node_name == "collect_node" else {}
    dom = domain_id(140)
    with running_node(f"dfp_ros.nodes.{node_name}", extra, ros_env(dom), params_file=CONFIG,
                      log_dir=tmp_path) as proc, RosGraph(dom) as graph:
        declared = declared_parameters(graph, node_name)
        assert proc.poll() is None, proc.log()
    assert wanted <= declared, f"{node_name}: not declared by the node: {sorted(wanted - declared)}"


def test_realsense_section_names_only_declared_parameters():
    # realsense_node exits without a camera, so its declarations are read from its parameter table.
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from dfp_ros.nodes.realsense_node import PARAMS

    declared = {p.name for p in PARAMS}
    wanted = set(yaml.safe_load(CONFIG.read_text())["realsense_node"]["ros__parameters"])
    assert wanted <= declared, sorted(wanted - declared)
