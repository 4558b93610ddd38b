"""Node processes on a private DDS graph, for the demo, the benchmarks and the tests.

A private graph is a ROS_DOMAIN_ID of its own plus localhost-only discovery (`graph_env`): the
processes on it neither see nor disturb other ROS graphs on the machine or the network. Nodes run as
`python -m module --ros-args ...` processes (`start_node`, `running_node`), each in its own session
and logging to a file, and stop with SIGINT (a clean rclpy shutdown), then SIGKILL of the group
(`stop`). The starting process watches the graph through a node of its own (`GraphMonitor`).

rclpy is imported only when a monitor opens, so the process helpers work without ROS 2 installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

DISCOVERY_RANGE = "LOCALHOST"
# What a participant of this process reads from the environment to find its graph: a monitor sets them as
# the graph's environment says while it is open, so it joins the nodes' graph with the nodes' transports.
PARTICIPANT_ENV = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
                   "FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE")


DOMAIN_RANGE_ENV = "DFP_ROS_DOMAINS"


def domain_id(offset: int = 0) -> int:
    """A ROS domain in 1..100 derived from the pid, so parallel runs rarely share a graph. Runs that
    must never share one (parallel test workers) each set their own range: DFP_ROS_DOMAINS="51-100"."""
    first, last = 1, 100
    if spec := os.environ.get(DOMAIN_RANGE_ENV, "").strip():
        try:
            first, last = (int(x) for x in spec.split("-"))
        except ValueError:
            raise ValueError(f"{DOMAIN_RANGE_ENV}={spec!r}: expected FIRST-LAST, e.g. 51-100") from None
        if not 0 <= first <= last <= 232:
            raise ValueError(f"{DOMAIN_RANGE_ENV}={spec!r}: ROS domains are 0..232, first <= last")
    return first + (os.getpid() + offset) % (last - first + 1)


def domain_or_inherited(domain: int | None) -> int:
    """`domain`, else the ROS_DOMAIN_ID the user set, else a private one (`domain_id()`)."""
    if domain is not None:
        return domain
    inherited = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(inherited) if inherited else domain_id()


def graph_env(domain: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a process on the private graph `domain` (default `domain_id()`)."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id() if domain is None else domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = DISCOVERY_RANGE
    env.pop("ROS_STATIC_PEERS", None)  # peers elsewhere would undo the isolation
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the file as they happen, also when a node is killed
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


def param_arg(name: str, value: Any) -> str:
    """`name:=value` for `--ros-args -p`, spelled so that the node gets the value's type back."""
    # --ros-args parses values as YAML: spell bools/floats so they keep their type, quote strings
    # that YAML would otherwise read as another type ("1", "true", "1e3", "").
    if isinstance(value, (list, tuple)):
        return f"{name}:=[{', '.join(param_arg('x', v)[3:] for v in value)}]"
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


def node_command(module: str, params: Mapping[str, Any] | None = None, *, remap: Mapping[str, str] | None = None,
                 params_file: str | Path | None = None) -> list[str]:
    """`python -m module --ros-args [--params-file F] -p k:=v ... -r from:=to ...`."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        cmd += ["-p", param_arg(name, value)]
    for src, dst in (remap or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def log_tail(path: str | Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file (for error messages)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class NodeProcess(subprocess.Popen):
    """A process whose stdout and stderr (rclpy logs) go to `log_path`."""

    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Whether `text` appears in the log within `timeout` seconds (False at once if the process ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.poll() is None:
            if text in self.log():
                return True
            time.sleep(0.05)
        return text in self.log()


def start_process(cmd: list[str], env: Mapping[str, str], log_path: str | Path, *, append: bool = False
                  ) -> NodeProcess:
    """Start `cmd` in a session of its own (a Ctrl-C at the terminal reaches only the starting process, which
    then stops it; `stop` can kill its whole group), its output going to `log_path`."""
    log_path = Path(log_path)
    with open(log_path, "ab" if append else "wb") as log:
        proc = NodeProcess(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    return proc


def start_node(
    module: str,
    params: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    remap: Mapping[str, str] | None = None,
    params_file: str | Path | None = None,
    log_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    append: bool = False,
) -> NodeProcess:
    """Start a node module as a process on the graph of `env` (default `graph_env()`).

    Its log goes to `log_path`, else to a new file `<node>-<n>.log` in `log_dir` (default: a new temp folder);
    `append` keeps what `log_path` already holds.
    """
    if log_path is None:
        folder = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="ros_graph_"))
        log_path = folder / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.log"
    return start_process(node_command(module, params, remap=remap, params_file=params_file),
                         graph_env() if env is None else env, log_path, append=append)


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGINT (a clean rclpy shutdown), then SIGKILL of its process group after `timeout`; the exit code."""
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
def stopping(proc: NodeProcess) -> Iterator[NodeProcess]:
    """`proc`, stopped when the block ends, whatever happens in it."""
    try:
        yield proc
    finally:
        stop(proc)


def running_node(module: str, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 **kwargs: Any) -> AbstractContextManager[NodeProcess]:
    """`start_node` that is always stopped when the block ends, whatever happens in it."""
    return stopping(start_node(module, params, env, **kwargs))


class GraphMonitor:
    """A node of this process's own on the graph of `env` (see graph_env): its own rclpy context and executor.

    While open, the variables of PARTICIPANT_ENV are set as `env` says (restored on close), since rmw reads
    the discovery range and transports from the environment. No rclpy signal handlers: a Ctrl-C stays a
    KeyboardInterrupt, so the caller's `finally` stops the processes it started. `executor` is a kind of
    node_main.make_executor; `fallback` says why another one is used (None when it is not). `spin_until`
    checks its predicate at least every `poll_s` seconds.
    """

    def __init__(self, name: str, env: Mapping[str, str] | None = None, executor: str = "single",
                 poll_s: float = 0.05) -> None:
        self.name = name
        self.poll_s = poll_s
        self.env = dict(graph_env() if env is None else env)
        self.domain = int(self.env["ROS_DOMAIN_ID"])
        self.executor_kind = executor
        self.fallback: str | None = None
        self._saved_env: dict[str, str | None] = {}

    def open(self) -> GraphMonitor:
        import rclpy
        from rclpy.context import Context
        from rclpy.signals import SignalHandlerOptions

        from dfp_ros.nodes.node_main import make_executor

        for key in PARTICIPANT_ENV:
            self._saved_env[key] = os.environ.get(key)
            _set_env(key, self.env.get(key))
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(self.name, context=self.context)
        self.executor, self.fallback = make_executor(self.executor_kind, context=self.context)
        self.executor.add_node(self.node)
        return self

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()
            for key, value in self._saved_env.items():
                _set_env(key, value)

    def __enter__(self) -> GraphMonitor:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Process callbacks until `predicate()` holds or `timeout` seconds pass; returns predicate()."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.executor.spin_once(timeout_sec=min(self.poll_s, left))
        return predicate()

    def spin_for(self, seconds: float) -> None:
        """Process callbacks for `seconds`."""
        self.spin_until(lambda: False, seconds)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
