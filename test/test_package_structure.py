"""The package's layering, read from the source with `ast` (nothing is imported): no import circle inside
dfp_ros, the ROS-free parts free of ROS, and the library free of the tools built on it.

Imports inside functions count as much as module-level ones: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dfp_ros"
# The parts that must run without ROS 2 (training machines, unit tests without DDS).
ROS_FREE = ("dfp_ros/data", "dfp_ros/learning", "dfp_ros/runtime", "dfp_ros/sim", "dfp_ros/contracts.py",
            "dfp_ros/scheduling.py")
TOOLS = "dfp_ros/tools"
# ROS 2 Python packages: the client library and the message / service packages dfp_ros uses or could use.
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "launch", "launch_ros", "ament_index_python")
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module named by an import anywhere in the file (`from a import b` gives a and a.b), absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the containing package, `level - 1` packages up
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    """dfp_ros module -> the dfp_ros modules it imports (a package counts as its __init__)."""
    mods = modules()
    return {name: {m for m in imported_names(path, name) if m in mods and m != name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def files_under(prefix: str) -> list[Path]:
    target = ROOT / prefix
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith(ROS_SUFFIXES)


def test_the_checks_read_imports_of_every_kind() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "d": {"a", "b"}}) is None
    tools = internal_graph()["dfp_ros.tools.cli"]
    assert "dfp_ros.tools.latency_bench" in tools  # imported inside a function
    assert "dfp_ros.contracts" in tools  # imported at module level
    assert is_ros("rclpy.node") and is_ros("sensor_msgs.msg") and is_ros("std_srvs.srv")
    assert not is_ros("numpy") and not is_ros("dfp_ros.runtime.observation")


def test_no_import_circle_inside_the_package() -> None:
    cycle = find_cycle(internal_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_ros_free_parts_import_no_ros() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {m}" for prefix in ROS_FREE for path in files_under(prefix)
                 for m in sorted(imported_names(path, module_name(path))) if is_ros(m)]
    assert not offenders, "ROS imports in the ROS-free parts:\n" + "\n".join(offenders)


def test_library_imports_nothing_from_the_tools() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {m}" for path in sorted(PACKAGE.rglob("*.py"))
                 if not path.relative_to(ROOT).as_posix().startswith(TOOLS + "/")
                 for m in sorted(imported_names(path, module_name(path)))
                 if m == TOOLS.replace("/", ".") or m.startswith(TOOLS.replace("/", ".") + ".")]
    assert not offenders, "library modules importing tools:\n" + "\n".join(offenders)


def test_node_modules_stay_thin_shells() -> None:
    # A node holds parameters, threads, QoS and callbacks; what grows past this belongs in a ROS-free module.
    too_long = {p.name: n for p in (PACKAGE / "nodes").glob("*_node.py")
                if (n := len(p.read_text().splitlines())) > 450}
    assert not too_long, too_long


def test_no_code_cites_a_document_that_is_not_in_the_repository() -> None:
    cited = [str(p.relative_to(ROOT)) for p in [*PACKAGE.rglob("*.py"), *(ROOT / "test").glob("*.py")]
             if "DESIGN" + ".md" in p.read_text()]
    assert not cited, cited
