"""Write docs/parameters.md from the nodes' parameter tables (`PARAMS` in each node module).

    python -m dfp_ros.tools.param_docs            # rewrite docs/parameters.md
    python -m dfp_ros.tools.param_docs --check    # exit 1 if it is not current (what the test checks)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from dfp_ros.nodes.params import Param, param_table_markdown

# Node name (as in config/*.yaml) -> module. The order is the document's.
NODES = {
    "policy_node": "dfp_ros.nodes.policy_node",
    "sim_robot_node": "dfp_ros.nodes.sim_robot_node",
    "collect_node": "dfp_ros.nodes.collect_node",
    "finetune_node": "dfp_ros.nodes.finetune_node",
    "reward_node": "dfp_ros.nodes.reward_node",
    "oracle_teleop_node": "dfp_ros.nodes.oracle_teleop_node",
    "joy_teleop_node": "dfp_ros.nodes.joy_teleop_node",
    "realsense_node": "dfp_ros.nodes.realsense_node",
    "reset_node": "dfp_ros.nodes.reset_node",
}
DOC = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"
HEADER = """# Node parameters

Generated from the parameter tables in the node modules (`PARAMS`) by
`python -m dfp_ros.tools.param_docs`; do not edit by hand. "At run time: yes" means a running node
accepts `ros2 param set`; the others are read at start (declared read-only). Camera models add, per
camera the model names, `camera.<name>.topic` and `camera.<name>.compressed` (policy_node,
finetune_node; reward_node also `camera.<name>.encoding`, and its topics have no default); collect_node
takes `camera.<name>.*` for each name in `camera_names`.
"""


def node_tables() -> dict[str, list[Param]]:
    return {node: list(importlib.import_module(module).PARAMS) for node, module in NODES.items()}


def render() -> str:
    parts = [HEADER]
    for node, table in node_tables().items():
        parts.append(f"\n## {node}\n\n{param_table_markdown(table)}")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfp_ros.tools.param_docs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the file is current")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        current = DOC.read_text() if DOC.is_file() else ""
        if current != text:
            print(f"{DOC} is not current: run python -m dfp_ros.tools.param_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
