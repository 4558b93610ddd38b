"""The `main()` shared by dfp_ros nodes: start, refuse a bad configuration in one line, spin, close.

A node that sets `finished = True` ends the spin by itself (e.g. after `max_episodes`); Ctrl-C and
SIGTERM end it too, and `close(node, signalled)` still runs, so summaries are logged and files are
closed either way.

Executor: each node picks one (`run_node(executor=...)`), `single` (rclpy's SingleThreadedExecutor)
unless it says otherwise. rclpy's C++ `EventsExecutor` (`events`) delivers a message between two
Python processes in about two thirds of the time (a 50 Hz ping-pong: round trip p50 0.65 / p99
0.99 ms against 0.96 / 1.55 ms) and holds the GIL for less of each callback, so the policy node uses
it by default (`DFP_ROS_EXECUTOR=single` switches it back). It is not the default for every node
because with these rclpy wheels (Kilted, PyPI) it fails on subscription callbacks that take the
message info ("SystemError: null argument to internal routine"; collect_node and finetune_node need
the source timestamps), oracle_teleop_node crashed under it for a reason not found, and the
simulator's realtime test got flakier. Where `rclpy.experimental` is missing (older distributions)
the single-threaded executor is used and the log says so. Both run every callback on the one
spinning thread, so the nodes' locking assumptions hold either way. (MultiThreadedExecutor is not
offered: measured here to deliver subscription messages late, see policy_node.)
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from dfp_ros.scheduling import INHERIT_ENV, drop_inherited_realtime

N = TypeVar("N", bound=Node)
CONFIG_ERROR_EXIT = 2
EXECUTOR_ENV = "DFP_ROS_EXECUTOR"
EXECUTORS = ("events", "single")
SIGNAL_SHUTDOWN_GRACE_S = 1.0  # how long an exception in the spin waits to be explained by a signal


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach.

    A full collection walks every tracked object while holding the GIL: ~6-9 ms in a policy node
    (rclpy, numpy, onnxruntime loaded), ~90 ms in a process that imported torch. Objects made at start-up
    live as long as the process, so freezing them once start-up is done leaves the collector only the
    objects made since, and a latency-critical thread is not held up by it. (Not after a model swap:
    frozen objects are never collected, and the old model's would leak.)
    """
    gc.collect()
    gc.freeze()


def executor_from_env(default: str) -> str:
    """The executor kind `DFP_ROS_EXECUTOR` asks for, else `default` (for nodes that let users choose)."""
    return os.environ.get(EXECUTOR_ENV, "").strip().lower() or default


def make_executor(kind: str, context: Context | None = None) -> tuple[Executor, str | None]:
    """The executor to spin nodes with, and why it is not the one asked for (None when it is).

    An unknown `kind` raises ValueError. `context` None is rclpy's default context.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor {kind!r} (from {EXECUTOR_ENV} or the node) is not one of {EXECUTORS}")
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError as e:
            return (SingleThreadedExecutor(context=context),
                    f"EventsExecutor unavailable ({e}); using SingleThreadedExecutor")
        return EventsExecutor(context=context), None
    return SingleThreadedExecutor(context=context), None


def context_shuts_down(within_s: float, poll_s: float = 0.01) -> bool:
    """Whether rclpy's default context is, or within `within_s` becomes, shut down.

    rclpy's signal handler shuts the context down from another thread, so an exception that the
    signal caused (a pending KeyboardInterrupt surfaces inside `take_message` as pybind11's "Unable to
    convert call argument") can reach the spin loop while `rclpy.ok()` is still true.
    """
    end = time.monotonic() + within_s
    while rclpy.ok():
        if time.monotonic() >= end:
            return False
        time.sleep(poll_s)
    return True


def run_node(make_node: Callable[[], N], name: str, *, args: list[str] | None = None,
             config_errors: tuple[type[BaseException], ...] = (ValueError,),
             describe_error: Callable[[BaseException], tuple[str, int]] | None = None,
             close: Callable[[N, bool], int | None] | None = None, executor: str = "single") -> int:
    """Run one node to its end on the `executor` kind (see make_executor); returns the process exit code.

    `config_errors` raised while constructing the node are user errors: logged as one FATAL line
    (`describe_error` may reword it and choose the exit code; default: the message, exit 2). A parameter
    rclpy refuses (a value of the wrong type) is one too, whatever `config_errors` says.
    `close(node, signalled)` runs before the node is destroyed and may return a non-zero exit code.
    """
    dropped = drop_inherited_realtime()  # before any thread exists, so none inherits it
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(name)
    if dropped:
        logger.warning(f"this process inherited real-time scheduling ({dropped}) from whatever started it; "
                       f"running with ordinary scheduling ({INHERIT_ENV}=1 keeps it)")
    node: N | None = None
    spinner: Executor | None = None
    rc = 0
    signalled = False
    try:
        try:
            spinner, fallback = make_executor(executor)
            node = make_node()
        except (*config_errors, ParameterException) as err:
            message, rc = describe_error(err) if describe_error else (str(err), CONFIG_ERROR_EXIT)
            logger.fatal(message)
        else:
            if fallback:
                logger.warning(fallback)
            spinner.add_node(node)
            while rclpy.ok() and not getattr(node, "finished", False):
                try:
                    spinner.spin_once(timeout_sec=0.1)
                except Exception as err:
                    if not context_shuts_down(SIGNAL_SHUTDOWN_GRACE_S):
                        raise
                    logger.debug(f"spin ended by {type(err).__name__} during shutdown: {err}")
                    break  # a take or a publish that a signal interrupted: a normal end
            signalled = not getattr(node, "finished", False)
    except (KeyboardInterrupt, ExternalShutdownException):
        signalled = True
    finally:
        if node is not None:
            if close is not None:
                rc = close(node, signalled) or rc
            if spinner is not None:
                spinner.remove_node(node)
            node.destroy_node()
        if spinner is not None:
            spinner.shutdown()
        rclpy.try_shutdown()
    return rc
