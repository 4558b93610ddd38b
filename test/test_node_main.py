"""How a dfp_ros node spins (node_main): the executor it picks, its fallback, delivery, and how the spin ends."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from ros_graph import domain_id
from std_msgs.msg import String

from dfp_ros.nodes.node_main import EXECUTOR_ENV, executor_from_env, make_executor


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id(71))
    yield ctx
    ctx.try_shutdown()


def delivers(executor, context: Context) -> bool:
    """A message published in this process reaches a subscription spun by `executor`."""
    node = rclpy.create_node("node_main_probe", context=context)
    got: list[str] = []
    try:
        node.create_subscription(String, "node_main_probe", lambda m: got.append(m.data), 10)
        pub = node.create_publisher(String, "node_main_probe", 10)
        executor.add_node(node)
        deadline = time.monotonic() + 10.0
        while not got and time.monotonic() < deadline:
            pub.publish(String(data="hello"))
            executor.spin_once(timeout_sec=0.05)
        executor.remove_node(node)
    finally:
        node.destroy_node()
    return got[:1] == ["hello"]


def test_events_executor_delivers(context):
    executor, fallback = make_executor("events", context=context)
    try:
        assert fallback is None
        assert not isinstance(executor, SingleThreadedExecutor)  # the C++ EventsExecutor
        assert delivers(executor, context)
    finally:
        executor.shutdown()


def test_single_threaded_executor_delivers(context):
    executor, fallback = make_executor("single", context=context)
    try:
        assert fallback is None and isinstance(executor, SingleThreadedExecutor)
        assert delivers(executor, context)
    finally:
        executor.shutdown()


def test_falls_back_when_events_executor_is_missing(monkeypatch, context):
    monkeypatch.setitem(sys.modules, "rclpy.experimental", None)  # import fails, as on older distributions
    executor, fallback = make_executor("events", context=context)
    try:
        assert isinstance(executor, SingleThreadedExecutor)
        assert fallback is not None and "EventsExecutor unavailable" in fallback
        assert delivers(executor, context)
    finally:
        executor.shutdown()


def test_unknown_executor_refused(monkeypatch):
    monkeypatch.setenv(EXECUTOR_ENV, "multi")
    with pytest.raises(ValueError, match=EXECUTOR_ENV):
        make_executor(executor_from_env("events"))


def test_environment_chooses_only_where_the_node_lets_it(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert executor_from_env("events") == "events"
    monkeypatch.setenv(EXECUTOR_ENV, " Single ")
    assert executor_from_env("events") == "single"


def test_a_parameter_of_the_wrong_type_is_a_one_line_configuration_error(monkeypatch):
    from rclpy.parameter import Parameter

    from dfp_ros.nodes.node_main import CONFIG_ERROR_EXIT, run_node
    from dfp_ros.nodes.params import Param, declare_params

    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id(72)))
    made = []

    def make_node():
        node = rclpy.create_node("node_main_config_probe", parameter_overrides=[Parameter("topic", value=3)])
        made.append(node)
        declare_params(node, [Param("topic", "joy", "a string parameter given an integer")])
        return node

    assert run_node(make_node, "node_main_config_probe", args=[]) == CONFIG_ERROR_EXIT
    assert made and not rclpy.ok()


class _FailingSpin:
    """An executor whose spin fails the way a signal-interrupted `take_message` does."""

    def __init__(self, on_fail=None) -> None:
        self.on_fail = on_fail

    def add_node(self, node) -> None:
        pass

    def remove_node(self, node) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def spin_once(self, timeout_sec: float | None = None) -> None:
        if self.on_fail is not None:
            self.on_fail()
        raise RuntimeError("Unable to convert call argument '0' to Python object")


def _run_with_failing_spin(monkeypatch, domain: int, on_fail) -> tuple[list[bool], object]:
    import threading

    from dfp_ros.nodes import node_main

    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id(domain)))
    monkeypatch.setattr(node_main, "make_executor", lambda kind: (_FailingSpin(on_fail), None))
    monkeypatch.setattr(node_main, "SIGNAL_SHUTDOWN_GRACE_S", 0.5)
    closes: list[bool] = []
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["rc"] = node_main.run_node(lambda: rclpy.create_node("node_main_spin_probe"), "probe",
                                              args=[], close=lambda node, signalled: closes.append(signalled))
        except RuntimeError as err:
            result["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    return closes, result


def test_an_exception_from_the_spin_that_a_signal_shutdown_follows_is_a_normal_end(monkeypatch):
    import threading

    # rclpy's handler shuts the context down from another thread, a moment after the take failed
    def shut_down_soon() -> None:
        threading.Timer(0.1, rclpy.try_shutdown).start()

    closes, result = _run_with_failing_spin(monkeypatch, 73, shut_down_soon)
    assert result == {"rc": 0} and closes == [True]


def test_an_exception_from_the_spin_without_a_shutdown_still_fails_the_node(monkeypatch):
    closes, result = _run_with_failing_spin(monkeypatch, 74, None)
    assert "Unable to convert" in str(result.get("error")) and closes == [False]
    assert not rclpy.ok()
