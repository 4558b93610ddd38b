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

Isolation: a ROS_DOMAIN_ID derived from this process's pid, plus localhost-only discovery, for the
node processes (`ros_env`) and for the test's own rclpy context (`RosGraph`, which sets the variables
while it is open). Node processes that publish the same absolute topics must get different domains
(`domain_id(offset)`). The process helpers are dfp_ros.tools.graph's (shared with the demo and the
benchmarks); rclpy is imported lazily, so importing this module costs nothing in tests that skip.
"""

from __future__ import annotations

import time
from typing import Any

from dfp_ros.tools.graph import GraphMonitor, NodeProcess, domain_id, running_node, start_node, stop
from dfp_ros.tools.graph import graph_env as ros_env
from dfp_ros.tools.graph import param_arg as _param_arg

__all__ = [
    "Collector",
    "NodeProcess",
    "RosGraph",
    "_param_arg",
    "declared_parameters",
    "domain_id",
    "latched_qos",
    "ros_env",
    "running_node",
    "start_node",
    "stop",
]


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


class RosGraph(GraphMonitor):
    """A private rclpy context + node + single-threaded executor in the test process, on domain `domain`."""

    def __init__(self, domain: int | None = None, node_name: str = "test_probe") -> None:
        super().__init__(node_name, ros_env(domain))

    def __enter__(self) -> RosGraph:
        self.open()
        return self

    def collect(self, topic: str, msg_type: type, qos: Any = None) -> Collector:
        """Start recording `topic` (default QoS: reliable, volatile, depth 1000)."""
        return Collector(self, topic, msg_type, 1000 if qos is None else qos)

    def publisher(self, topic: str, msg_type: type, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, 100 if qos is None else qos)

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

