"""Static reading of launch files and setup.py, for the launch checks that run without ROS 2 `launch`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_nodes(path: Path) -> list[dict[str, str]]:
    """The string keyword arguments of every Node(...) call in a launch file."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            nodes.append({k.arg: k.value.value for k in call.keywords
                          if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)})
    return nodes


def console_scripts() -> dict[str, str]:
    """setup.py's console scripts: executable -> module."""
    return dict(re.findall(r'"(\w+) = ([\w.]+):main"', (ROOT / "setup.py").read_text()))
