"""Test helpers for talking to real node processes over DDS, each test run on its own isolated graph.

Typical use (see test_sim_robot_node.py):

    dom = domain_id()                                   # per test process (and offset) domain
    proc = start_node("dfp_ros.nodes.sim_robot_node", {"mode": "lockstep"}, ros_env(dom), log_dir=tmp_path)
    try:
        with RosGraph(dom) as graph:
            rewards = graph.collect("/reward", Float32)
            cmd = graph.publisher("/policy_node/command", Float64MultiArray)
            assert graph.wait_matched(cmd)
            cmd.publish(...)
            assert rewards.wait_for(1, timeout=5.0)
    finally:
        stop(proc)                                      # SIGINT, then SIGKILL; returns the exit code

Isolation (DESIGN.md §6): a ROS_DOMAIN_ID derived from this process's pid, plus
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, for the node processes (`ros_env`) and for the test's own
rclpy context (`RosGraph` passes the domain to rclpy.init and sets the variable while it is open).
Node processes that publish the same absolute topics must get different domains (`domain_id(offset)`).
rclpy is imported lazily, so importing this module costs nothing in tests that skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISCOVERY_RANGE = "LOCALHOST"


def domain_id(offset: int = 0) -> int:
    """A ROS domain in 1..100 derived from the pid, so parallel test runs rarely share a graph."""
    return 1 + (os.getpid() + offset) % 100


def ros_env(domain: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a node process on the isolated graph `domain` (default `domain_id()`)."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id() if domain is None else domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = DISCOVERY_RANGE
    env.pop("ROS_STATIC_PEERS", None)  # peers elsewhere would undo the isolation
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the file as they happen, also when a node is killed
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


def _param_arg(name: str, value: Any) -> str:
    # --ros-args parses values as YAML: spell bools/floats so they keep their type, quote strings
    # that YAML would otherwise read as another type ("1", "true", "1e3").
    if isinstance(value, (list, tuple)):
        return f"{name}:=[{', '.join(_param_arg('x', v)[3:] for v in value)}]"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        import yaml

        text = str(value)
        if not isinstance(yaml.safe_load(text), str):
            text = "'" + text.replace("'", "''") + "'"
    return f"{name}:={text}"


class NodeProcess(subprocess.Popen):
    """A node process whose stdout and stderr (rclpy logs) go to `log_path`."""

    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Whether `text` appears in the log within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return text in self.log()


def start_node(
    module: str,
    params: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    remap: Mapping[str, str] | None = None,
    log_dir: str | Path | None = None,
    params_file: str | Path | None = None,
) -> NodeProcess:
    """Start `python -m module --ros-args [--params-file F] -p k:=v ... -r from:=to ...` as a process."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        cmd += ["-p", _param_arg(name, value)]
    for src, dst in (remap or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="ros_graph_"))
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        # Own session: a Ctrl-C at the terminal does not reach it, and stop() can kill its whole group.
        proc = NodeProcess(cmd, env=dict(env) if env is not None else ros_env(), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """Stop a node: SIGINT (a clean rclpy shutdown), then SIGKILL after `timeout`. Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.wait()


@contextmanager
def running_node(module: str, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 **kwargs: Any) -> Iterator[NodeProcess]:
    """`start_node` that is always stopped when the block ends, whatever happens in it."""
    proc = start_node(module, params, env, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


def latched_qos(depth: int = 1) -> Any:
    """Reliable + transient local: receives a late joiner's copy of latched topics (/joint_states here)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Collector:
    """Records every message of one topic, with its arrival time (time.monotonic())."""

    def __init__(self, graph: RosGraph, topic: str, msg_type: type, qos: Any) -> None:
        self.graph = graph
        self.topic = topic
        self.messages: list[Any] = []
        self.arrivals: list[float] = []
        self.subscription = graph.node.create_subscription(msg_type, topic, self._on_message, qos)

    def _on_message(self, msg: Any) -> None:
        self.messages.append(msg)
        self.arrivals.append(time.monotonic())

    @property
    def count(self) -> int:
        return len(self.messages)

    @property
    def last(self) -> Any:
        return self.messages[-1] if self.messages else None

    def clear(self) -> None:
        self.messages.clear()
        self.arrivals.clear()

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Spin until at least `n` messages in total have arrived; whether they did in time."""
        return self.graph.spin_until(lambda: self.count >= n, timeout)


class RosGraph:
    """A private rclpy context + node + executor in the test process, on domain `domain`."""

    def __init__(self, domain: int | None = None, node_name: str = "test_probe") -> None:
        self.domain = domain_id() if domain is None else domain
        self.node_name = node_name
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> RosGraph:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        for key, value in (("ROS_DOMAIN_ID", str(self.domain)), ("ROS_AUTOMATIC_DISCOVERY_RANGE", DISCOVERY_RANGE)):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self.context = Context()
        # No rclpy signal handlers: pytest keeps its own Ctrl-C behaviour.
        rclpy.init(context=self.context, domain_id=self.domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(self.node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def collect(self, topic: str, msg_type: type, qos: Any = None) -> Collector:
        """Start recording `topic` (default QoS: reliable, volatile, depth 1000)."""
        return Collector(self, topic, msg_type, 1000 if qos is None else qos)

    def publisher(self, topic: str, msg_type: type, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, 100 if qos is None else qos)

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Process callbacks until `predicate()` holds or `timeout` seconds pass; returns predicate()."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.executor.spin_once(timeout_sec=min(0.05, left))
        return predicate()

    def spin_for(self, seconds: float) -> None:
        """Process callbacks for `seconds` (to show that something does NOT arrive)."""
        self.spin_until(lambda: False, seconds)

    def wait_matched(self, publisher: Any, n: int = 1, timeout: float = 10.0) -> bool:
        """Whether `publisher` reaches `n` matched subscriptions (a node up and discovered) in time."""
        return self.spin_until(lambda: publisher.get_subscription_count() >= n, timeout)


def declared_parameters(graph: RosGraph, node_name: str, timeout: float = 40.0) -> set[str]:
    """Names of the parameters a running node declares (its ListParameters service)."""
    from rcl_interfaces.srv import ListParameters

    client = graph.node.create_client(ListParameters, f"/{node_name}/list_parameters")
    assert client.wait_for_service(timeout_sec=timeout), f"{node_name} did not come up"
    # A request sent while the server's reply writer has not yet matched our reader gets an answer
    # that never arrives (DDS discovery is per endpoint): ask again until one does.
    deadline = time.monotonic() + timeout
    while True:
        future = client.call_async(ListParameters.Request())
        if graph.spin_until(future.done, timeout=5.0):
            return set(future.result().result.names)
        client.remove_pending_request(future)
        assert time.monotonic() < deadline, f"{node_name} never answered list_parameters"

