"""policy.launch.py: a static check that runs here, and a launch_testing test for a full ROS 2 install.

`launch` / `launch_ros` are not installable from PyPI, so the launch file itself is
only started where ROS 2 is installed; here we check that everything it names exists and that the
parameter file holds only parameters the nodes really declare (asked from the running nodes).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from launch_files import console_scripts, launch_nodes
from ros_graph import RosGraph, declared_parameters, domain_id, ros_env, running_node

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "policy.launch.py"
CONFIG = ROOT / "config" / "policy.yaml"


def test_every_executable_and_file_the_launch_names_exists():
    scripts = console_scripts()
    nodes = launch_nodes(LAUNCH)
    assert {n["executable"] for n in nodes} == {"policy_node", "sim_robot_node"}
    for node in nodes:
        assert node["package"] == "dfp_ros"
        module = scripts[node["executable"]]
        assert importlib.util.find_spec(module) is not None, module
    text = LAUNCH.read_text()
    for folder, name in re.findall(r'PathJoinSubstitution\(\[share, "(\w+)", "([\w.]+)"\]\)', text):
        assert (ROOT / folder / name).is_file(), f"{folder}/{name} named by the launch file does not exist"
    setup_text = (ROOT / "setup.py").read_text()
    assert "config/*.yaml" in setup_text and "models/*.onnx" in setup_text


@pytest.mark.parametrize("module,node_name,extra", [
    ("dfp_ros.nodes.policy_node", "policy_node", {"model_path", "enabled"}),
    ("dfp_ros.nodes.sim_robot_node", "sim_robot_node", set()),
])
def test_parameter_file_holds_only_declared_parameters(tmp_path, module, node_name, extra):
    config = yaml.safe_load(CONFIG.read_text())
    wanted = set(config[node_name]["ros__parameters"]) | extra  # extra: set by the launch file itself
    dom = domain_id(offset=37)
    with running_node(module, {}, ros_env(dom), params_file=CONFIG, log_dir=tmp_path) as proc, \
            RosGraph(dom) as graph:
        declared = declared_parameters(graph, node_name)
        assert proc.poll() is None, proc.log()
    assert wanted <= declared, f"{node_name}: not declared by the node: {sorted(wanted - declared)}"
