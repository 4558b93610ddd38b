"""`dfp bench latency`: the policy node's latency, tick jitter, CPU and memory in a real ROS graph.

Three kinds of process, each on an isolated DDS graph (own ROS_DOMAIN_ID + LOCALHOST discovery,
dfp_ros.tools.graph): the policy node (`dfp_ros.nodes.policy_node`), a separate observation publisher
(this module with `--publish`), and the bench process itself, which listens to the node's outputs.
Two models, built on the fly with torch (random weights: latency does not depend on their values):
- "state": 28 state numbers (j0.pos..j27.pos), 5 actions, H = 5, 4 x 512 actor and a 2 x (4 x 512)
  critic ensemble exported for best-of-16 (the reference's acting);
- "image": one 96x96 rgb8 camera plus a 7-joint state, no critic, N = 1.
Per model, two runs of `duration_s` each, after dropping the first `warmup_s` of outputs:
1. trigger=observation, replan_every=1: every JointState produces a chunk; latency = the chunk's
   arrival in the bench process (wall clock) - its header.stamp, which the node copies from the
   observation (the publisher stamps it with the wall clock just before publishing; same machine).
2. trigger=timer at control_rate_hz (50) and enabled: the p99 of |command interval - period| as the
   bench process sees the ~/command messages arrive (so DDS and the bench's executor are included),
   the same from the stamps the node puts on the commands (one-point JointTrajectory), and the
   node's own missed_ticks from /diagnostics.
In both, CPU use of the node process (utime+stime over the measured window, % of one core) and its
peak RSS (VmHWM). The latency goals are printed as met / not met; the last line is one JSON object.
Two diagnoses come with the figures:
- before the ROS runs, each model's inference alone in the bench process, back to back and once per
  observation period: on the machines measured so far the second is 2-4x the first (its working set
  has gone cold by the next observation), which is what the node pays at 50 Hz;
- in the latency runs the bench also receives the publisher's JointStates directly, and counts stalls
  (runs of chunks > STALL_MS late) and how many of them held up that direct stream too (then it was
  the receiving process, not the node); the p99 outside stalls is reported next to the full p99.
The node's own diagnostics add the part of the latency spent inside it (observation stamp -> chunk
handed to the publisher). The bench's receiver spins the policy node's executor (EventsExecutor
unless DFP_ROS_EXECUTOR=single), so the receiving side adds as little as the
node's. `--control-thread-priority N` runs the node's control thread under SCHED_FIFO in the 50 Hz
runs (what a robot computer would do; the JSON says which was used).

torch is needed only to build the two models; with --state-model / --image-model (existing ONNX
files of the same shapes) the bench runs in the deploy profile too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.bench_main import run_and_report
from dfp_ros.tools.graph import GraphMonitor, domain_id, graph_env, log_tail, running_node, start_process, stopping

NODE_MODULE = "dfp_ros.nodes.policy_node"
# A namespace of its own as well as a domain: a graph that happens to share the domain (another test
# run on this machine) cannot feed our node or reach our probe; /diagnostics is filtered by hardware_id.
NAMESPACE = "/dfp_latency_bench"
NODE_FQN = f"{NAMESPACE}/policy_node"
CHUNK_TOPIC = f"{NODE_FQN}/action_chunk"
COMMAND_TOPIC = f"{NODE_FQN}/command"
DIAGNOSTICS_TOPIC = "/diagnostics"
STATE_TOPIC = f"{NAMESPACE}/joint_states"
CAMERA_TOPIC = f"{NAMESPACE}/camera/image_raw"
CAMERA_NAME = "front"
STATE_JOINTS, IMAGE_JOINTS, ACTIONS, HORIZON, IMAGE_SIZE = 28, 7, 5, 5, 96

# The goals on the 2 development CPU cores: (JSON path, limit, label).
GOALS = (
    (("state", "latency_p99_ms"), 2.0, "state model obs->chunk p99 <= 2 ms"),
    (("image", "latency_p99_ms"), 15.0, "image model obs->chunk p99 <= 15 ms"),
    (("state", "jitter_p99_ms"), 1.0, "tick jitter p99 <= 1 ms (state model)"),
    (("image", "jitter_p99_ms"), 1.0, "tick jitter p99 <= 1 ms (image model)"),
    (("state", "peak_rss_mb"), 300.0, "policy node RSS <= 300 MB (state model)"),
    (("image", "peak_rss_mb"), 300.0, "policy node RSS <= 300 MB (image model)"),
)


# The bench's own processes (node, publisher, probe) use roughly 10-15% of two cores; a window in which
# the whole machine was busier than this had other work competing for the cores (other tests, builds),
# and its timing figures describe that machine, not the node.
BUSY_MACHINE_PCT = 35.0


# A chunk this late was held up, not slowed down: consecutive such chunks form one stall.
STALL_MS = 50.0
# A late direct observation (publisher -> bench) arriving this close to a stall's release shows that the
# receiving process was held up, not only the chunks (the node, or its hop); seen: released together
# to ~10 ms apart.
STALL_MATCH_S = 0.05


class BenchError(RuntimeError):
    """A run produced no usable measurement (the message says which, with the node's log tail)."""


# --- models ----------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    name: str  # "state" | "image"
    path: Path
    joints: int  # the JointState publishes j0..j<joints-1>
    camera: bool  # whether the publisher also sends a 96x96 rgb8 image
    obs_rate_hz: float


def build_models(out_dir: Path, weights: str = "float32") -> tuple[Path, Path]:
    """Export the two reference-size models with random weights; returns (state, image) ONNX paths."""
    import torch

    from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import DFPModel

    torch.manual_seed(0)

    def meta(joints: int, cameras: list[CameraSpec], has_critic: bool, n: int) -> ModelMetadata:
        return ModelMetadata(
            state=[StateSpec("observation.state", joints, [f"j{i}.pos" for i in range(joints)])],
            cameras=cameras, action_key="action", action_names=[f"a{i}" for i in range(ACTIONS)],
            horizon=HORIZON, action_dim=ACTIONS, fps=50.0, num_samples=n, has_critic=has_critic,
            action_low=[-1.0] * ACTIONS, action_high=[1.0] * ACTIONS, dataset="latency-bench (random weights)")

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if weights == "float32" else f"_{weights}"
    state_path = out_dir / f"bench_state_bo16{suffix}.onnx"
    image_path = out_dir / f"bench_image96{suffix}.onnx"
    state = DFPModel(meta(STATE_JOINTS, [], True, 16), ModelConfig(horizon=HORIZON, use_critic=True))
    export_onnx(state, state_path, num_samples=16, with_critic=True, weights=weights)
    cam = CameraSpec(CAMERA_NAME, f"observation.images.{CAMERA_NAME}", IMAGE_SIZE, IMAGE_SIZE)
    image = DFPModel(meta(IMAGE_JOINTS, [cam], False, 1), ModelConfig(horizon=HORIZON, use_critic=False))
    export_onnx(image, image_path, num_samples=1, with_critic=False, weights=weights)
    return state_path, image_path


# --- processes ---------------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces: split after it
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine, all cores, from /proc/stat (steal counts as busy)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


# --- the bench process's view of the graph -------------------------------------------------------------
class Probe(GraphMonitor):
    """The bench process's node on the bench's graph, recording arrivals with their clocks."""

    def __init__(self, domain: int) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory

        from dfp_ros.nodes.node_main import executor_from_env
        from dfp_ros.nodes.ros_io import stamp_ns

        self.stamp_ns = stamp_ns  # rclpy is imported only where the probe runs
        # The policy node's executor (EventsExecutor unless DFP_ROS_EXECUTOR says otherwise): the receiving
        # side then adds as little of its own delay as the node's side, so the figures describe the node.
        super().__init__("latency_bench", graph_env(domain), executor=executor_from_env("events"), poll_s=0.01)
        self.open()
        if self.fallback:
            print(f"latency bench: {self.fallback}", file=sys.stderr)
        self.chunks: list[tuple[float, float, int]] = []  # (arrival monotonic s, latency ms, stamp ns)
        self.commands: list[tuple[float, int]] = []  # (arrival monotonic s, header stamp ns set by the node)
        # The publisher's JointStates straight from it, (arrival monotonic s, latency ms): a stall seen on
        # both streams at once is the receiving process's, not the node's.
        self.observations: list[tuple[float, float]] = []
        self.diagnostics: dict[str, str] = {}
        # Outputs stamped before this (wall clock, ns) are ignored: a node being stopped keeps publishing
        # for a moment, and those messages wait in our queues until the next run spins.
        self.since_ns = 0
        self.chunk_sub = self.node.create_subscription(JointTrajectory, CHUNK_TOPIC, self._on_chunk, 1000)
        self.node.create_subscription(JointTrajectory, COMMAND_TOPIC, self._on_command, 1000)
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diag, 100)
        self.node.create_subscription(JointState, STATE_TOPIC, self._on_observation, 1000)

    def _on_observation(self, msg: Any) -> None:
        now_ns = time.time_ns()
        stamp = self.stamp_ns(msg.header.stamp)
        if stamp >= self.since_ns:
            self.observations.append((time.monotonic(), (now_ns - stamp) / 1e6))

    def _on_chunk(self, msg: Any) -> None:
        # Wall clock first: it is compared with the publisher's wall-clock stamp.
        now_ns = time.time_ns()
        stamp = self.stamp_ns(msg.header.stamp)
        if stamp >= self.since_ns:
            self.chunks.append((time.monotonic(), (now_ns - stamp) / 1e6, stamp))

    def _on_command(self, msg: Any) -> None:
        stamp = self.stamp_ns(msg.header.stamp)
        if stamp >= self.since_ns:
            self.commands.append((time.monotonic(), stamp))

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == NODE_FQN:
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def reset(self) -> None:
        self.chunks.clear()
        self.commands.clear()
        self.observations.clear()
        self.diagnostics = {}


# --- one run ------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    latencies_ms: list[float] = field(default_factory=list)
    intervals_ms: list[float] = field(default_factory=list)  # between command arrivals in the bench
    stamp_intervals_ms: list[float] = field(default_factory=list)  # between the node's command stamps
    cpu_pct: float = float("nan")
    machine_busy_pct: float = float("nan")  # all processes, all cores: shows other work on the machine
    peak_rss_mb: float = float("nan")
    diagnostics: dict[str, str] = field(default_factory=dict)
    repeated_stamps: int = 0
    stalls: int = 0  # runs of consecutive chunks > STALL_MS late
    receiver_wide_stalls: int = 0  # of them, also seen on the publisher's direct observations
    latencies_outside_stalls_ms: list[float] = field(default_factory=list)


def find_stalls(chunks: Sequence[tuple[float, float]], observations: Sequence[tuple[float, float]]
                ) -> tuple[list[list[int]], int]:
    """Group chunks (arrival s, latency ms) more than STALL_MS late into stalls (runs of consecutive ones);
    returns (the chunk indices of each stall, how many stalls the direct observations (arrival s, latency ms)
    show too: a late observation arriving within STALL_MATCH_S of a stall's first late chunk)."""
    stalls: list[list[int]] = []
    for i, (_, lat) in enumerate(chunks):
        if lat <= STALL_MS:
            continue
        if stalls and stalls[-1][-1] == i - 1:
            stalls[-1].append(i)
        else:
            stalls.append([i])
    late_obs = [t for t, lat in observations if lat > STALL_MS]
    shared = sum(any(abs(t - chunks[s[0]][0]) <= STALL_MATCH_S for t in late_obs) for s in stalls)
    return stalls, shared


def _run(probe: Probe, model: BenchModel, *, mode: str, duration_s: float, warmup_s: float,
         control_rate_hz: float, domain: int, log_dir: Path, control_thread_priority: int = 0) -> RunResult:
    """Start node + publisher, drop `warmup_s` after the first output, measure `duration_s`, stop both."""
    env = graph_env(domain)
    params: dict[str, Any] = {
        "model_path": str(model.path), "device": "cpu", "state_topics": [STATE_TOPIC],
        "state_types": ["joint_state"], "state_keys": ["observation.state"],
        # The bench measures timing, not the watchdog: a generous age keeps a late frame from stopping commands.
        "max_obs_age_s": 0.5, "episode_topic": "",
    }
    if model.camera:
        params[f"camera.{CAMERA_NAME}.topic"] = CAMERA_TOPIC
    if mode == "latency":
        params.update(trigger="observation", replan_every=1, control_rate_hz=float(model.obs_rate_hz),
                      dry_run=True)
    else:
        # One-point JointTrajectory commands: the node stamps each as it publishes it, which tells the
        # node's own tick jitter apart from what transport and the receiving executor add.
        params.update(trigger="timer", control_rate_hz=float(control_rate_hz), enabled=True,
                      command_type="joint_trajectory", control_thread_priority=int(control_thread_priority))
    pub_cmd = [sys.executable, "-m", "dfp_ros.tools.latency_bench", "--publish", "--rate", str(model.obs_rate_hz),
               "--joints", str(model.joints), "--parent", str(os.getpid())]
    if model.camera:
        pub_cmd += ["--camera"]
    tag = f"{model.name}-{mode}"
    node_log, pub_log = log_dir / f"policy_node-{tag}.log", log_dir / f"publisher-{tag}.log"
    probe.reset()
    # The previous node is gone by now: whatever it published is stamped earlier than this.
    probe.since_ns = time.time_ns()
    res = RunResult()

    def fail(why: str) -> BenchError:
        return BenchError(f"{tag}: {why}\n--- policy node log ({node_log}):\n{log_tail(node_log)}\n"
                          f"--- publisher log ({pub_log}):\n{log_tail(pub_log)}")

    with running_node(NODE_MODULE, params, env, remap={"__ns": NAMESPACE}, log_path=node_log) as node:
        # The node is up once its chunk publisher is discovered (it creates it after loading the model).
        if not probe.spin_until(lambda: probe.chunk_sub.get_publisher_count() > 0 or node.poll() is not None, 60.0):
            raise fail("the policy node did not come up within 60 s")
        if node.poll() is not None:
            raise fail(f"the policy node exited with {node.returncode}")
        probe.reset()  # what arrived while the node started (the previous run's stragglers are filtered anyway)
        with stopping(start_process(pub_cmd, env, pub_log)) as pub:
            arrivals = probe.chunks if mode == "latency" else probe.commands
            if not probe.spin_until(lambda: bool(arrivals) or node.poll() is not None or pub.poll() is not None, 30.0):
                raise fail("no output from the policy node within 30 s of the publisher starting")
            if node.poll() is not None or pub.poll() is not None:
                raise fail("a process exited early")
            start = time.monotonic() + warmup_s
            probe.spin_until(lambda: time.monotonic() >= start, warmup_s + 1.0)
            cpu0, t0, mach0 = _cpu_seconds(node.pid), time.monotonic(), _machine_jiffies()
            probe.spin_until(lambda: time.monotonic() >= t0 + duration_s, duration_s + 1.0)
            cpu1, t1, mach1 = _cpu_seconds(node.pid), time.monotonic(), _machine_jiffies()
            res.cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
            res.machine_busy_pct = 100.0 * (mach1[0] - mach0[0]) / max(1, mach1[1] - mach0[1])
            # The node publishes /diagnostics once a second: wait for one from after the window.
            probe.diagnostics = {}
            probe.spin_until(lambda: bool(probe.diagnostics), 2.5)
            res.diagnostics = dict(probe.diagnostics)
            res.peak_rss_mb = _peak_rss_mb(node.pid)
            if node.poll() is not None:
                raise fail(f"the policy node exited with {node.returncode} during the measurement")
    # The raw samples, for a look at what made a p99 (one stall or steady noise).
    if mode == "latency":
        raw = {"arrival_s_latency_ms_stamp_ns": [[round(t - t0, 5), round(lat, 4), st] for t, lat, st in probe.chunks],
               "observations_arrival_s_latency_ms": [[round(t - t0, 5), round(lat, 4)]
                                                     for t, lat in probe.observations]}
    else:
        raw = {"arrival_s_stamp_ns": [[round(t - t0, 5), st] for t, st in probe.commands]}
    (log_dir / f"samples-{tag}.json").write_text(json.dumps({"window_s": [0.0, round(t1 - t0, 4)], **raw}))
    if mode == "latency":
        window = [(t, lat, stamp) for t, lat, stamp in probe.chunks if t0 <= t <= t1]
        res.latencies_ms = [lat for _, lat, _ in window]
        stalls, res.receiver_wide_stalls = find_stalls([(t, lat) for t, lat, _ in window],
                                                       [o for o in probe.observations if t0 <= o[0] <= t1])
        res.stalls = len(stalls)
        stalled = {i for s in stalls for i in s}
        res.latencies_outside_stalls_ms = [lat for i, lat in enumerate(res.latencies_ms) if i not in stalled]
        # A chunk carrying the previous chunk's stamp did not come from a new observation: for the image
        # model, the JointState triggered the tick before this cycle's image was taken in; for any model,
        # two messages reached the node before its inference thread ran (a busy machine), so it planned
        # twice from the newer one.
        res.repeated_stamps = sum(a[2] == b[2] for a, b in itertools.pairwise(window))
        if not res.latencies_ms:
            raise fail("no chunk arrived in the measured window")
    else:
        window = [(t, stamp) for t, stamp in probe.commands if t0 <= t <= t1]
        if len(window) < 3:
            raise fail(f"only {len(window)} commands arrived in the measured window")
        res.intervals_ms = list(np.diff([t for t, _ in window]) * 1e3)
        res.stamp_intervals_ms = list(np.diff([stamp for _, stamp in window]) / 1e6)
    return res


# --- the whole bench ----------------------------------------------------------------------------------------------
def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def _diag_float(diag: dict[str, str], key: str) -> float:
    try:
        return float(diag[key])
    except (KeyError, ValueError):
        return float("nan")


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    import onnxruntime

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu or platform.processor(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
            # Other work on the same cores shows up as jitter and missed ticks: say how busy the machine was.
            "loadavg_1m_start": os.getloadavg()[0]}


def inference_at_rate(model: Path, rate_hz: float, runs: int = 100, device: str = "cpu") -> dict[str, float]:
    """The model's inference (ONNX Runtime, as the node runs it; the bench uses the CPU) back to back and once
    per observation period: the difference is what going cold between observations costs (measured: not
    the core waking up, nor only the weight bytes; README, Performance), which no code path in the node
    changes."""
    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    runtime = PolicyRuntime(model, device=device)
    rng = np.random.default_rng(0)
    state = np.zeros(runtime.meta.state_dim, np.float32)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in runtime.meta.cameras}

    def timed(pause_s: float) -> list[float]:
        out = []
        for _ in range(runs):
            if pause_s:
                time.sleep(pause_s)
            t = time.perf_counter()
            runtime.act(state, images, rng)
            out.append((time.perf_counter() - t) * 1e3)
        return out

    timed(0.0)  # warm-up: first runs allocate
    hot, at_rate = timed(0.0), timed(1.0 / rate_hz)
    return {"inference_back_to_back_p50_ms": _pct(hot, 50), "inference_at_rate_p50_ms": _pct(at_rate, 50),
            "inference_at_rate_p99_ms": _pct(at_rate, 99)}


def _build_models_in_child(work: Path, weights: str) -> tuple[Path, Path]:
    """build_models in a child process: the bench's receiver then carries neither torch's threads nor its
    ~180k Python objects while it measures."""
    cmd = [sys.executable, "-m", "dfp_ros.tools.latency_bench", "--build-models", str(work)]
    proc = subprocess.run(cmd + (["--int8"] if weights == "int8" else []), capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"building the models failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    state, image = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(state), Path(image)


def _model_weights(path: Path) -> str:
    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    return PolicyRuntime(path, device="cpu").meta.weights


def run_latency_bench(*, duration_s: float = 10.0, warmup_s: float = 1.0, control_rate_hz: float = 50.0,
                      state_rate_hz: float = 50.0, image_rate_hz: float = 30.0, domain: int | None = None,
                      state_model: str | Path | None = None, image_model: str | Path | None = None,
                      work_dir: str | Path | None = None, control_thread_priority: int = 0,
                      weights: str = "float32", progress: Callable[[str], None] | None = None) -> dict:
    """Run all four measurements; returns the figures (the JSON `dfp bench latency` prints)."""
    say = progress or (lambda _msg: None)
    domain = domain_id() if domain is None else domain
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="dfp_latency_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if state_model is None or image_model is None:
        say(f"building the two reference-size models with torch (random weights, {weights}) ...")
        t = time.monotonic()
        built = _build_models_in_child(work, weights)
        state_model = state_model or built[0]
        image_model = image_model or built[1]
        say(f"  exported in {time.monotonic() - t:.1f} s")
    models = [BenchModel("state", Path(state_model), STATE_JOINTS, False, state_rate_hz),
              BenchModel("image", Path(image_model), IMAGE_JOINTS, True, image_rate_hz)]
    from dfp_ros.nodes.node_main import executor_from_env, freeze_heap  # rclpy: only where the bench runs

    result: dict[str, Any] = {"machine": machine_info(), "duration_s": duration_s, "warmup_s": warmup_s,
                              "control_rate_hz": control_rate_hz, "ros_domain_id": domain, "logs": str(work),
                              "executor": executor_from_env("events"),
                              "control_thread_priority": control_thread_priority}
    say("inference alone in this process, back to back and once per observation period ...")
    alone = {m.name: inference_at_rate(m.path, m.obs_rate_hz) for m in models}
    probe = Probe(domain)
    # The receiver must not add pauses of its own: with torch imported (the models were just built) a
    # full garbage collection here takes ~90 ms and delays every chunk waiting behind it.
    freeze_heap()
    try:
        for m in models:
            say(f"{m.name} model: observation -> chunk latency ({m.obs_rate_hz:g} Hz observations, "
                f"{duration_s:g} s) ...")
            lat = _run(probe, m, mode="latency", duration_s=duration_s, warmup_s=warmup_s,
                       control_rate_hz=control_rate_hz, domain=domain, log_dir=work)
            say(f"{m.name} model: control ticks at {control_rate_hz:g} Hz ({duration_s:g} s) ...")
            jit = _run(probe, m, mode="jitter", duration_s=duration_s, warmup_s=warmup_s,
                       control_rate_hz=control_rate_hz, domain=domain, log_dir=work,
                       control_thread_priority=control_thread_priority)
            period_ms = 1e3 / control_rate_hz
            dev = np.abs(np.asarray(jit.intervals_ms) - period_ms)
            node_dev = np.abs(np.asarray(jit.stamp_intervals_ms) - period_ms)
            result[m.name] = {
                "model": str(m.path), "weights": _model_weights(m.path), "obs_rate_hz": m.obs_rate_hz,
                "latency_p50_ms": _pct(lat.latencies_ms, 50), "latency_p99_ms": _pct(lat.latencies_ms, 99),
                "latency_max_ms": max(lat.latencies_ms), "chunks": len(lat.latencies_ms),
                "stalls": lat.stalls, "stalls_receiver_wide": lat.receiver_wide_stalls,
                "latency_p99_outside_stalls_ms": _pct(lat.latencies_outside_stalls_ms, 99),
                "chunks_with_repeated_stamp": lat.repeated_stamps,
                "inference_p50_ms": _diag_float(lat.diagnostics, "inference_latency_p50_ms"),
                "inference_p99_ms": _diag_float(lat.diagnostics, "inference_latency_p99_ms"),
                **alone[m.name],
                "jitter_p50_ms": _pct(dev, 50), "jitter_p99_ms": _pct(dev, 99), "jitter_max_ms": float(dev.max()),
                "node_tick_jitter_p50_ms": _pct(node_dev, 50), "node_tick_jitter_p99_ms": _pct(node_dev, 99),
                "commands": len(jit.intervals_ms) + 1,
                "command_rate_hz": 1e3 / float(np.mean(jit.intervals_ms)),
                "missed_ticks": int(_diag_float(jit.diagnostics, "missed_ticks")) if jit.diagnostics else -1,
                "control_thread_scheduling": jit.diagnostics.get("control_thread_scheduling", "unknown"),
                "obs_to_chunk_in_node_p50_ms": _diag_float(lat.diagnostics, "obs_to_chunk_p50_ms"),
                "obs_to_chunk_in_node_p99_ms": _diag_float(lat.diagnostics, "obs_to_chunk_p99_ms"),
                "cpu_pct_latency_run": lat.cpu_pct, "cpu_pct_jitter_run": jit.cpu_pct,
                "peak_rss_mb": max(lat.peak_rss_mb, jit.peak_rss_mb),
                "machine_busy_pct_latency_run": lat.machine_busy_pct,
                "machine_busy_pct_jitter_run": jit.machine_busy_pct,
            }
    finally:
        probe.close()
    result["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    result["busy_runs"] = [f"{m.name} {run}" for m in models for run in ("latency", "jitter")
                           if result[m.name][f"machine_busy_pct_{run}_run"] > BUSY_MACHINE_PCT]
    result["goals"] = {label: {"value": result[a][b], "limit": limit, "met": bool(result[a][b] <= limit)}
                       for (a, b), limit, label in GOALS}
    return result


def format_table(res: dict) -> str:
    rows = [("model weights", "weights"),
            ("observation -> chunk latency p50 (ms)", "latency_p50_ms"),
            ("observation -> chunk latency p99 (ms)", "latency_p99_ms"),
            ("  node's own inference p50 / p99 (ms)", None),
            ("  same model alone: back to back p50 (ms)", "inference_back_to_back_p50_ms"),
            ("  same model alone: once per observation p50 (ms)", "inference_at_rate_p50_ms"),
            ("  in the node, obs stamp -> chunk p50 (ms)", "obs_to_chunk_in_node_p50_ms"),
            ("  in the node, obs stamp -> chunk p99 (ms)", "obs_to_chunk_in_node_p99_ms"),
            ("chunks measured", "chunks"),
            ("  repeating the previous chunk's stamp", "chunks_with_repeated_stamp"),
            (f"stalls (chunks > {STALL_MS:g} ms late, in a row)", "stalls"),
            ("  of them also on the direct observations", "stalls_receiver_wide"),
            ("  latency p99 of the chunks outside stalls (ms)", "latency_p99_outside_stalls_ms"),
            (f"command interval |dt - {1e3 / res['control_rate_hz']:g} ms| p99 (ms)", "jitter_p99_ms"),
            ("  same, from the node's command stamps (ms)", "node_tick_jitter_p99_ms"),
            ("command rate seen (Hz)", "command_rate_hz"),
            ("missed ticks (node's /diagnostics)", "missed_ticks"),
            ("node CPU, latency run (% of one core)", "cpu_pct_latency_run"),
            ("node CPU, 50 Hz run (% of one core)", "cpu_pct_jitter_run"),
            ("node peak RSS, VmHWM (MB)", "peak_rss_mb"),
            # Everything on the machine (bench, publisher, node, and anyone else's work), % of all cores:
            # far above the node's own share means the figures were taken on a busy machine.
            ("machine busy, latency run (% of all cores)", "machine_busy_pct_latency_run"),
            ("machine busy, 50 Hz run (% of all cores)", "machine_busy_pct_jitter_run")]
    m = res["machine"]
    lines = [f"dfp bench latency — {m['cpu_count']} CPUs ({m['cpu_model']}), onnxruntime {m['onnxruntime']}, "
             f"{res['duration_s']:g} s per measurement after {res['warmup_s']:g} s warm-up; load average "
             f"{m['loadavg_1m_start']:.2f} -> {m['loadavg_1m_end']:.2f}; executor {res['executor']}, control "
             f"thread {res['state']['control_thread_scheduling']}",
             f"{'':44}{'state (best-of-16)':>20}{'image 96x96':>16}"]
    for label, key in rows:
        if key is None:
            cells = [f"{res[k]['inference_p50_ms']:.2f} / {res[k]['inference_p99_ms']:.2f}" for k in ("state", "image")]
        else:
            cells = [f"{res[k][key]:.2f}" if isinstance(res[k][key], float) else str(res[k][key])
                     for k in ("state", "image")]
        lines.append(f"{label:44}{cells[0]:>20}{cells[1]:>16}")
    lines.append("goals:")
    for label, g in res["goals"].items():
        lines.append(f"  {'met    ' if g['met'] else 'NOT MET'}  {label:44} {g['value']:.2f}")
    if res["busy_runs"]:
        lines.append(f"WARNING: other work kept the machine busy (> {BUSY_MACHINE_PCT:g}% of all cores) during "
                     f"{', '.join(res['busy_runs'])}: those timing figures are not representative; rerun on a "
                     "quiet machine")
    lines.append(f"logs: {res['logs']}")
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    """NaN / inf -> null, so the JSON line is strict JSON (a missing figure reads as missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


# --- the publisher process ------------------------------------------------------------------------------------------
def publish(rate_hz: float, joints: int, camera: bool, parent: int | None, max_seconds: float) -> int:
    """Publish JointState (+ a 96x96 rgb8 Image) at a fixed rate, stamped with the wall clock."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image, JointState

    from dfp_ros.nodes.ros_io import set_stamp

    # The bench stops us with SIGINT: make it a KeyboardInterrupt (a clean exit) even where the shell that
    # started the bench ignores SIGINT (background jobs inherit that), instead of waiting for the SIGKILL.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("latency_bench_publisher")
    try:
        js_pub = node.create_publisher(JointState, STATE_TOPIC, 10)
        img_pub = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data) if camera else None
        rng = np.random.default_rng(0)
        js = JointState(name=[f"j{i}" for i in range(joints)], position=rng.uniform(-1, 1, joints).tolist())
        img = None
        if camera:
            pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            img = Image(height=IMAGE_SIZE, width=IMAGE_SIZE, encoding="rgb8", step=IMAGE_SIZE * 3,
                        data=pixels.tobytes())
        # Start once the node has matched (DDS discovery runs on its own threads; no spinning needed).
        deadline = time.monotonic() + 30.0
        pubs = [p for p in (js_pub, img_pub) if p is not None]
        while any(p.get_subscription_count() == 0 for p in pubs) and time.monotonic() < deadline:
            time.sleep(0.01)
        period = 1.0 / rate_hz
        end = time.monotonic() + max_seconds
        next_t = time.monotonic()
        while time.monotonic() < end:
            if parent is not None and os.getppid() != parent:
                break  # the bench died without stopping us: do not outlive it
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.time_ns()
            for msg in (img, js):  # the image first, so it is in place when the JointState triggers the tick
                if msg is None:
                    continue
                set_stamp(msg.header.stamp, now)
            if img_pub is not None:
                img_pub.publish(img)
            js_pub.publish(js)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# --- command line ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (4 measurements)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of output dropped before each measurement")
    p.add_argument("--control-rate", type=float, default=50.0, help="control rate of the jitter runs (Hz)")
    p.add_argument("--state-rate", type=float, default=50.0, help="observation rate for the state model (Hz)")
    p.add_argument("--image-rate", type=float, default=30.0, help="observation (camera) rate for the image model (Hz)")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID; None: 1 + pid %% 100")
    p.add_argument("--state-model", default=None, help="an existing state-only ONNX model (28 joints j0..j27) "
                                                       "instead of building one with torch")
    p.add_argument("--image-model", default=None, help="an existing one-camera ONNX model (camera 'front', "
                                                       "7 joints) instead of building one with torch")
    p.add_argument("--work-dir", default=None, help="where models and process logs go; None: a new temp dir")
    p.add_argument("--int8", action="store_true",
                   help="build the models with int8 weights (`dfp export --int8`) instead of float32")
    p.add_argument("--control-thread-priority", type=int, default=0,
                   help="the node's control_thread_priority in the 50 Hz runs (SCHED_FIFO 1-99; 0 = ordinary)")


def run_from_args(a: argparse.Namespace) -> int:
    """`dfp bench latency`: progress and the table on stdout, then the JSON line last."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same clean-up path as Ctrl-C

    def run(a: argparse.Namespace) -> dict[str, Any]:
        return run_latency_bench(duration_s=a.duration, warmup_s=a.warmup, control_rate_hz=a.control_rate,
                                 state_rate_hz=a.state_rate, image_rate_hz=a.image_rate, domain=a.domain,
                                 state_model=a.state_model, image_model=a.image_model, work_dir=a.work_dir,
                                 control_thread_priority=a.control_thread_priority,
                                 weights="int8" if a.int8 else "float32", progress=lambda msg: print(msg, flush=True))

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_and_report("latency", run, a, format_table, errors=(BenchError,), to_json=_finite_or_none)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfp_ros.tools.latency_bench", description=__doc__.splitlines()[0])
    p.add_argument("--publish", action="store_true", help="be the observation publisher (started by the bench)")
    p.add_argument("--rate", type=float, default=50.0, help="(--publish) messages per second")
    p.add_argument("--joints", type=int, default=STATE_JOINTS, help="(--publish) joints j0..j<n-1>")
    p.add_argument("--camera", action="store_true", help="(--publish) also publish a 96x96 rgb8 image")
    p.add_argument("--parent", type=int, default=None, help="(--publish) exit when this parent process is gone")
    p.add_argument("--max-seconds", type=float, default=600.0, help="(--publish) stop after this long anyway")
    p.add_argument("--build-models", metavar="DIR", default=None,
                   help="only export the two bench models into DIR (with --int8: int8 weights); prints their paths")
    add_arguments(p)
    a = p.parse_args(argv)
    if a.publish:
        return publish(a.rate, a.joints, a.camera, a.parent, a.max_seconds)
    if a.build_models:
        print(json.dumps([str(path) for path in build_models(Path(a.build_models), "int8" if a.int8 else "float32")]))
        return 0
    try:
        return run_from_args(a)
    except KeyboardInterrupt:
        print("dfp bench latency: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
