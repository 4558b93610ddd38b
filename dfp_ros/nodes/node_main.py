"""The `main()` shared by dfp_ros nodes: start, refuse a bad configuration in one line, spin, close.

A node that sets `finished = True` ends the spin by itself (e.g. after `max_episodes`); Ctrl-C and
SIGTERM end it too, and `close(node, signalled)` still runs, so summaries are logged and files are
closed either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

N = TypeVar("N", bound=Node)
CONFIG_ERROR_EXIT = 2


def run_node(make_node: Callable[[], N], name: str, *, args: list[str] | None = None,
             config_errors: tuple[type[BaseException], ...] = (ValueError,),
             describe_error: Callable[[BaseException], tuple[str, int]] | None = None,
             close: Callable[[N, bool], int | None] | None = None) -> int:
    """Run one node to its end; returns the process exit code.

    `config_errors` raised while constructing the node are user errors: logged as one FATAL line
    (`describe_error` may reword it and choose the exit code; default: the message, exit 2).
    `close(node, signalled)` runs before the node is destroyed and may return a non-zero exit code.
    """
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(name)
    node: N | None = None
    rc = 0
    signalled = False
    try:
        try:
            node = make_node()
        except config_errors as err:
            message, rc = describe_error(err) if describe_error else (str(err), CONFIG_ERROR_EXIT)
            logger.fatal(message)
        else:
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            while rclpy.ok() and not getattr(node, "finished", False):
                executor.spin_once(timeout_sec=0.1)
            signalled = not getattr(node, "finished", False)
    except (KeyboardInterrupt, ExternalShutdownException):
        signalled = True
    finally:
        if node is not None:
            if close is not None:
                rc = close(node, signalled) or rc
            node.destroy_node()
        rclpy.try_shutdown()
    return rc
