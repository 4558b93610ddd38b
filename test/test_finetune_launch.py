"""finetune.launch.py + config/finetune.yaml (+ config/reward.yaml for reward:=detector): static checks
that run without ROS 2 `launch`.

Everything the launch file names exists; every launch argument it uses is declared; the parameter
files hold only parameters the nodes really declare (asked from the running nodes).
"""

from __future__ import annotations

import ast
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
REWARD_CONFIG = ROOT / "config" / "reward.yaml"
MODULES = {"finetune_node": "dfp_ros.nodes.finetune_node", "policy_node": "dfp_ros.nodes.policy_node",
           "sim_robot_node": "dfp_ros.nodes.sim_robot_node", "reward_node": "dfp_ros.nodes.reward_node"}


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


def _node_call(text: str, executable: str) -> str:
    """The source of the launch file's Node(...) call for `executable`."""
    for call in ast.walk(ast.parse(text)):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node" and any(
                k.arg == "executable" and getattr(k.value, "value", None) == executable for k in call.keywords):
            return ast.get_source_segment(text, call)
    raise AssertionError(f"no Node({executable})")


def test_reward_detector_option_starts_the_detector_and_moves_the_simulators_rewards_aside():
    text = LAUNCH.read_text()
    assert re.search(r'DeclareLaunchArgument\("reward", default_value="sim", choices=\["sim", "detector"\]', text)
    assert 'detector = PythonExpression(["\'", reward, "\' == \'detector\'"])' in text
    reward_node = _node_call(text, "reward_node")
    assert "condition=IfCondition(detector)" in reward_node and 'LaunchConfiguration("reward_model")' in reward_node
    assert 'LaunchConfiguration("reward_config")' in reward_node and '"use_sim_time"' in reward_node
    sim = _node_call(text, "sim_robot_node")
    assert "remappings=[(\"reward\", PythonExpression([\"'sim/reward' if \", detector" in sim
    # The learner and the simulator read reward.yaml on top of their config where the detector runs.
    assert "reward_params" in _node_call(text, "finetune_node") and "reward_params" in sim
    sections = yaml.safe_load(REWARD_CONFIG.read_text())
    assert set(sections) == {"reward_node", "sim_robot_node", "finetune_node"}
    assert sections["finetune_node"]["ros__parameters"]["reward_mode"] == "sum"
    cameras = sections["reward_node"]["ros__parameters"]["camera"]
    assert set(cameras) <= set(sections["sim_robot_node"]["ros__parameters"]["cameras"])


def test_reward_node_declares_the_parameters_of_reward_yaml(tmp_path):
    pytest.importorskip("rclpy")
    torch = pytest.importorskip("torch")
    from dfp_ros.contracts import CameraSpec, RewardModelMetadata
    from dfp_ros.learning.reward_classifier import RewardClassifier
    from dfp_ros.learning.reward_export import export_reward_onnx

    torch.manual_seed(0)
    size = yaml.safe_load(REWARD_CONFIG.read_text())["sim_robot_node"]["ros__parameters"]["image_size"]
    meta = RewardModelMetadata(state=[], cameras=[CameraSpec(c, f"observation.images.{c}", size, size)
                                                  for c in ("front", "wrist")], threshold=0.5)
    model = tmp_path / "reward.onnx"
    export_reward_onnx(RewardClassifier(meta, (8, 8), 16, (16,)), model)

    def flatten(d: dict, prefix: str = "") -> set[str]:
        return set().union(*(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
                             for k, v in d.items()))

    wanted = flatten(yaml.safe_load(REWARD_CONFIG.read_text())["reward_node"]["ros__parameters"])
    dom = domain_id(offset=243)
    with running_node(MODULES["reward_node"], {"model_path": str(model)}, ros_env(dom), params_file=REWARD_CONFIG,
                      log_dir=tmp_path) as proc, RosGraph(dom) as graph:
        declared = declared_parameters(graph, "reward_node")
        assert proc.poll() is None, proc.log()
    assert wanted <= declared, sorted(wanted - declared)
