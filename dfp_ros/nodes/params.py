"""Each node's parameters from one table: name, default, description, and whether a running node
accepts a change.

A node lists its parameters once as `Param`s. `declare_params` declares them all with descriptors
(start-only ones `read_only`, so `ros2 param set` on them is refused by rclpy itself), checks every
value against the table (type, choices, range; a bad value at start raises ValueError: one clear
line and exit), and returns the values by name. `watch_params` installs the two run-time callbacks:
the on-set one only validates (a refused batch changes nothing, the reason goes back to the caller)
and the post-set one hands the accepted values to the node's `apply`. The same table documents the
node: `param_table_markdown` writes it for docs/parameters.md, and a test checks that the YAML files
under config/ name only parameters the tables know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node

# Filled from elsewhere (the model, another parameter) when the table's default is this.
FROM_MODEL = None


@dataclass(frozen=True)
class Param:
    name: str
    default: Any  # the type comes from it (bool, int, float, str, or a list of one of them)
    description: str
    runtime: bool = False  # may be changed on a running node
    choices: tuple = ()
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    default_text: str = ""  # how the docs show a default that is computed at start (FROM_MODEL)

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable for this parameter (None when it is)."""
        if isinstance(self.default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{self.name}={value!r} must be a number"
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} is not one of {self.choices}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and not value >= self.low:
                return f"{self.name}={value!r} must be >= {self.low:g}"
            if self.high is not None and not value <= self.high:
                return f"{self.name}={value!r} must be <= {self.high:g}"
        return None


def _coerce(param: Param, value: Any) -> Any:
    # YAML and `ros2 param set` write 1 for 1.0; a float parameter given an integer means the float.
    if isinstance(param.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(param.default, list) and isinstance(value, tuple):
        return list(value)
    return value


def declare_params(node: Node, table: Iterable[Param], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Declare every parameter of `table` on `node`; returns name -> value. `defaults` fills FROM_MODEL
    defaults (and may override others). Raises ValueError naming the first bad value."""
    defaults = defaults or {}
    values: dict[str, Any] = {}
    for p in table:
        default = defaults.get(p.name, p.default)
        if default is None:
            raise ValueError(f"parameter {p.name} has no default; the node must compute one")
        # A float parameter takes integers too (`rate_hz:=10`, YAML `10`): rclpy would refuse their type.
        descriptor = ParameterDescriptor(description=p.description, read_only=not p.runtime,
                                         dynamic_typing=isinstance(p.default, float))
        value = _coerce(p, _declare(node, p.name, default, descriptor))
        why = p.check(value)
        if why:
            raise ValueError(f"parameter {why}")
        values[p.name] = value
    return values


def watch_params(node: Node, table: Iterable[Param], apply: Callable[[dict[str, Any]], None],
                 validate: Callable[[dict[str, Any]], str | None] | None = None) -> None:
    """Run-time changes: the table's checks and `validate` (changed values -> refusal reason or None)
    decide in the on-set callback; `apply(changed values)` runs once they are set."""
    by_name = {p.name: p for p in table}

    def on_set(params: list) -> SetParametersResult:
        changed = {}
        for prm in params:
            spec = by_name.get(prm.name)
            if spec is None:
                continue  # use_sim_time and other parameters rclpy owns
            if not spec.runtime:
                return SetParametersResult(successful=False,
                                           reason=f"{prm.name} is read at start only; restart the node to change it")
            value = _coerce(spec, prm.value)
            why = spec.check(value)
            if why:
                return SetParametersResult(successful=False, reason=why)
            changed[prm.name] = value
        why = validate(changed) if validate and changed else None
        return SetParametersResult(successful=why is None, reason=why or "")

    def post_set(params: list) -> None:
        changed = {p.name: _coerce(by_name[p.name], p.value) for p in params if p.name in by_name}
        if changed:
            apply(changed)

    node.add_on_set_parameters_callback(on_set)
    node.add_post_set_parameters_callback(post_set)


def param_table_markdown(table: Iterable[Param]) -> str:
    """The table as Markdown (docs/parameters.md): name, default, changeable at run time, description."""
    rows = ["| parameter | default | at run time | description |", "| --- | --- | --- | --- |"]
    for p in table:
        default = p.default_text or ("" if p.default is None else repr(p.default))
        choices = " (" + " | ".join(map(str, p.choices)) + ")" if p.choices else ""
        text = (p.description + ("" if p.choices and "|" in p.description else choices)).replace("|", "\\|")
        rows.append(f"| `{p.name}` | {default} | {'yes' if p.runtime else 'no'} | {text} |")
    return "\n".join(rows) + "\n"


class EmptyList(list):
    """An empty list default that knows its element type: rclpy types a plain `[]` as a byte array,
    and a YAML list of strings or numbers would then be refused."""

    def __init__(self, item_type: type) -> None:
        super().__init__()
        self.item_type = item_type


def _declare(node: Node, name: str, default: Any, descriptor: ParameterDescriptor) -> Any:
    """Declare one parameter and return its value; an EmptyList default is declared by type."""
    if not isinstance(default, EmptyList):
        return node.declare_parameter(name, default, descriptor).value
    from rclpy.parameter import Parameter

    kinds = {str: Parameter.Type.STRING_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
             float: Parameter.Type.DOUBLE_ARRAY, bool: Parameter.Type.BOOL_ARRAY}
    value = node.declare_parameter(name, kinds[default.item_type], descriptor).value
    return [] if value is None else list(value)
