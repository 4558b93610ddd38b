"""finetune.launch.py + config/finetune.yaml: static checks that run without ROS 2 `launch`.

Everything the launch file names exists; every launch argument it uses is declared; the parameter
file holds only parameters the nodes really declare (asked from the running nodes).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from launch_files import launch_nodes
from ros_graph import RosGraph, declared_parameters, domain_id, ros_env, running_node

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "finetune.launch.py"
CONFIG = ROOT / "config" / "finetune.yaml"
MODULES = {"finetune_node": "dfp_ros.nodes.finetune_node", "policy_node": "dfp_ros.nodes.policy_node",
           "sim_robot_node": "dfp_ros.nodes.sim_robot_node"}


def test_launch_names_existing_nodes_files_and_declared_arguments():
    nodes = launch_nodes(LAUNCH)
    assert {n["executable"] for n in nodes} == set(MODULES)
    for n in nodes:
        assert n["package"] == "dfp_ros" and n["name"] == n["executable"]
        assert importlib.util.find_spec(MODULES[n["executable"]]) is not None
    text = LAUNCH.read_text()
    declared = set(re.findall(r'DeclareLaunchArgument\("(\w+)"', text))
    used = set(re.findall(r'LaunchConfiguration\("(\w+)"\)', text))
    assert used <= declared, sorted(used - declared)
    for folder, name in re.findall(r'PathJoinSubstitution\(\[share, "(\w+)", "([\w.]+)"\]\)', text):
        assert (ROOT / folder / name).is_file()
    compile(text, str(LAUNCH), "exec")


def test_finetune_parameters_in_the_file_are_declared_by_the_node(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("torch")
    from test_finetune_node import make_sim_checkpoint

    ckpt, _ = make_sim_checkpoint(tmp_path)
    config = yaml.safe_load(CONFIG.read_text())
    wanted = set(config["finetune_node"]["ros__parameters"])
    dom = domain_id(offset=233)
    params = {"init_checkpoint": str(ckpt), "output_dir": str(tmp_path / "out")}
    with running_node(MODULES["finetune_node"], params, ros_env(dom), params_file=CONFIG, log_dir=tmp_path) as proc, \
            RosGraph(dom) as graph:
        declared = declared_parameters(graph, "finetune_node")
        assert proc.poll() is None, proc.log()
    assert wanted <= declared, sorted(wanted - declared)


def test_policy_and_sim_sections_use_parameters_those_nodes_declare():
    # Their full check (asking the running nodes) is test_launch.py's; here: the names we set exist there.
    policy = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())
    mine = yaml.safe_load(CONFIG.read_text())
    for node in ("policy_node", "sim_robot_node"):
        known = set(policy[node]["ros__parameters"]) | {"model_path", "enabled", "seed"}
        assert set(mine[node]["ros__parameters"]) <= known, node
