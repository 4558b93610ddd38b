"""`dfp bench realtime`: success rate of the simulated robot in real time against an added inference delay.

For each added delay (policy_node's `added_latency_s`, a bench knob that sleeps after every inference as
a slower model would) and each mode, `sim_robot_node` and `policy_node` run as processes on a private
DDS graph of their own until `--episodes` episodes ended:

- lockstep: the simulator steps once per command and the policy plans in the callback, waiting for
  every plan (`max_plan_wait_s` large): time does not exist, so the delay cannot matter (the reference);
- realtime: `config/policy.yaml` as shipped (the simulator at 20 Hz on the wall clock, the policy paced
  by its state stream, trigger observation);
- realtime_timer: the same with the policy on its own timer (`trigger: timer`, ticks aligned to the
  state stream);
- realtime_nearest: as shipped, with `num_samples` candidates and `consistency: nearest` (the candidate
  closest to the actions already queued).

Per run it reads the policy's and the simulator's /diagnostics (boundary jumps `chunk_jump_p99`, holds,
superseded commands, late chunks). Lock-step runs go one at a time, then the real-time runs `--jobs` at
a time (each on its own ROS domain, each watched by a worker process of its own). Prints a summary,
writes the figure (success against delay per mode, `--png`), and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dfp_ros import contracts
from dfp_ros.tools.bench_main import run_and_report, standalone_main
from dfp_ros.tools.graph import GraphMonitor, graph_env, start_node, stop

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "config" / "policy.yaml"
DEFAULT_MODEL = ROOT / "models" / "cube_single.onnx"
DELAYS_MS = (0, 20, 50, 100, 200)
MODES = ("lockstep", "realtime", "realtime_timer", "realtime_nearest")
EPISODE_ENDS = ("success", "failure", "timeout")
# A run without any episode event for this long has stalled: a policy too slow for its horizon never
# commands (its chunks are refused as late), and the simulator waits for a first command.
STALL_S = 60.0
# The diagnostics kept per run (policy, simulator).
POLICY_KEYS = ("chunk_jump_p50", "chunk_jump_p99", "plan_latency_p50_ms", "plan_latency_p99_ms", "plan_lead_ticks",
               "ticks_without_action", "dropped_late_chunk", "actions_skipped", "inference_latency_p50_ms",
               "ticks_aligned", "control_rate_hz")
SIM_KEYS = ("steps", "holds", "superseded_commands", "command_after_tick_p50_ms", "command_after_tick_p99_ms")


def mode_params(mode: str, delay_s: float, num_samples: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(simulator, policy) parameters over the shipped config for one run."""
    policy: dict[str, Any] = {"added_latency_s": float(delay_s), "enabled": True}
    sim: dict[str, Any] = {}
    if mode == "lockstep":
        sim["mode"] = "lockstep"
        # Every plan is waited for, however slow, and an observation stays fresh meanwhile; the simulator
        # stamps joint states and frames with simulated time, so the wall-clock stamp check is off.
        policy.update(trigger="observation", max_plan_wait_s=1000.0, max_obs_age_s=1000.0, max_stamp_offset_s=0.0)
    elif mode == "realtime_timer":
        policy["trigger"] = "timer"
    elif mode == "realtime_nearest":
        policy.update(num_samples=num_samples, consistency="nearest")
    elif mode != "realtime":
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    return sim, policy


def run_one(mode: str, delay_ms: float, episodes: int, domain: int, log_dir: Path, model: str, seed: int = 0,
            num_samples: int = 8, timeout_s: float = 900.0, sim_extra: dict[str, Any] | None = None,
            policy_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One (mode, delay) run on ROS domain `domain`; the figures of the module docstring. `sim_extra` and
    `policy_extra` override parameters of the two nodes (cameras and a camera model's topics, say)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    env = graph_env(domain)
    log_dir.mkdir(parents=True, exist_ok=True)
    sim_params, policy_params = mode_params(mode, delay_ms / 1e3, num_samples)
    sim_params.update(max_episodes=episodes, seed=seed, **(sim_extra or {}))
    policy_params.update(model_path=model, seed=seed, **(policy_extra or {}))
    events: list[str] = []
    last_event = [time.monotonic()]
    diag: dict[str, dict[str, str]] = {"policy": {}, "sim": {}}
    policy_reported = [0.0]  # when the policy's diagnostics last arrived (monotonic)

    def on_event(msg: String) -> None:
        events.append(msg.data)
        last_event[0] = time.monotonic()

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.hardware_id.endswith("policy_node"):  # the last report: counters and percentiles so far
                rate = values.get("control_rate_hz", "0")
                diag["policy"] = {**values, "control_rate_hz": max(rate, diag["policy"].get("control_rate_hz", "0"),
                                                                   key=float)}
                policy_reported[0] = time.monotonic()
            elif status.hardware_id.endswith("sim_robot_node"):
                diag["sim"] = values

    procs = {}
    t0 = time.monotonic()
    with GraphMonitor("realtime_bench_monitor", env) as monitor:
        node = monitor.node
        node.create_subscription(String, contracts.TOPIC_EPISODE, on_event,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, on_diag, 50)
        try:
            procs["sim"] = start_node("dfp_ros.nodes.sim_robot_node", sim_params, env, params_file=SHIPPED_CONFIG,
                                      log_path=log_dir / "sim_robot_node.log")
            if not monitor.spin_until(lambda: node.count_publishers(contracts.TOPIC_EPISODE) >= 1, 60.0):
                raise RuntimeError(f"sim_robot_node did not come up; see {log_dir}")
            monitor.spin_for(0.5)
            procs["policy"] = start_node("dfp_ros.nodes.policy_node", policy_params, env, params_file=SHIPPED_CONFIG,
                                         log_path=log_dir / "policy_node.log")

            def finished() -> bool:
                return (sum(e in EPISODE_ENDS for e in events) >= episodes or procs["sim"].poll() is not None
                        or procs["policy"].poll() is not None or time.monotonic() - t0 > timeout_s
                        or time.monotonic() - last_event[0] > STALL_S)

            monitor.spin_until(finished, timeout_s)
            # The last diagnostics: the simulator's (it reports every second), and one of the policy's sent after
            # the run (a lock-step episode can end within a second, before its first report).
            ended = time.monotonic()
            monitor.spin_for(1.2)
            monitor.spin_until(lambda: policy_reported[0] > ended, 2.0)
        finally:
            codes = {name: stop(p, timeout=10.0) for name, p in procs.items()}
    done = [e for e in events if e in EPISODE_ENDS][:episodes]
    # Episodes a stalled run did not get to count as failures.
    return {"mode": mode, "delay_ms": delay_ms, "episodes": len(done), "successes": done.count("success"),
            "success_rate": done.count("success") / episodes, "stalled": len(done) < episodes,
            **{k: _number(diag["policy"].get(k)) for k in POLICY_KEYS},
            **{f"sim_{k}": _number(diag["sim"].get(k)) for k in SIM_KEYS},
            "wall_s": round(time.monotonic() - t0, 1), "exit_codes": codes, "logs": str(log_dir)}


def _number(text: str | None) -> float | str | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else None  # strict JSON: nan (no data) -> null


def _worker(a: argparse.Namespace) -> int:
    r = run_one(a.mode, a.delay_ms, a.episodes, a.domain, Path(a.log_dir), a.model, a.seed, a.num_samples,
                a.timeout)
    print(json.dumps(r))
    return 0


def _run_in_worker(mode: str, delay_ms: float, domain: int, a: argparse.Namespace) -> dict[str, Any]:
    """One run in a process of its own (a monitor sets the process's DDS environment while it is open)."""
    log_dir = Path(a.work_dir) / f"{mode}_{int(delay_ms)}ms"
    cmd = [sys.executable, "-m", "dfp_ros.tools.realtime_bench", "--worker", "--mode", mode,
           "--delay-ms", str(delay_ms), "--domain", str(domain), "--log-dir", str(log_dir), "--episodes",
           str(a.episodes), "--model", a.model, "--seed", str(a.seed), "--num-samples", str(a.num_samples),
           "--timeout", str(a.timeout)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout + 120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} at {delay_ms} ms failed (exit {out.returncode}): {out.stderr[-1500:]}")
    return json.loads(lines[-1])


def run(a: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise RuntimeError(f"unknown mode {m!r}; choose from {MODES}")
    runs = [(m, float(d)) for m in modes for d in a.delays_ms]
    base = a.domain if a.domain is not None else 20 + (time.monotonic_ns() // 1000) % 60
    t0 = time.monotonic()
    # Lock-step runs step as fast as the policy answers (a core or more each): one at a time, before the
    # real-time runs, which idle between ticks and run `--jobs` at a time without disturbing each other.
    results = []
    for parallel in (False, True):
        batch = [(i, m, d) for i, (m, d) in enumerate(runs) if (m != "lockstep") == parallel]
        with ThreadPoolExecutor(max_workers=max(1, a.jobs) if parallel else 1) as pool:
            futures = [pool.submit(_run_in_worker, m, d, 1 + (base + i) % 100, a) for i, m, d in batch]
            results += [f.result() for f in futures]
    table: dict[str, Any] = {}
    for m in modes:
        rows = [r for r in results if r["mode"] == m]
        table[m] = {
            "success_rate": {str(int(r["delay_ms"])): r["success_rate"] for r in rows},
            "episodes": {str(int(r["delay_ms"])): r["episodes"] for r in rows},
            "jump_p99": {str(int(r["delay_ms"])): r["chunk_jump_p99"] for r in rows},
            "holds": {str(int(r["delay_ms"])): r["sim_holds"] for r in rows},
            "superseded": {str(int(r["delay_ms"])): r["sim_superseded_commands"] for r in rows},
        }
    summary = {"delays_ms": [int(d) for d in a.delays_ms], "episodes_per_run": a.episodes, "modes": table,
               "wall_s": round(time.monotonic() - t0, 1), "runs": results}
    if a.png:
        summary["png"] = write_figure(summary, Path(a.png))
    return summary


def write_figure(summary: dict[str, Any], path: Path) -> str:
    """Success rate against added delay, one line per mode; '' when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for mode, row in summary["modes"].items():
        delays = sorted(int(d) for d in row["success_rate"])
        ax.plot(delays, [100 * row["success_rate"][str(d)] for d in delays], marker="o", label=mode)
    ax.set_xlabel("added inference delay (ms)")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"cube-single, bundled model, {summary['episodes_per_run']} episodes per point")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def summary_text(r: dict[str, Any]) -> str:
    lines = [f"success rate by added delay (ms) {r['delays_ms']}, {r['episodes_per_run']} episodes each:"]
    for mode, row in r["modes"].items():
        rates = " ".join(f"{100 * row['success_rate'][str(d)]:.0f}%" for d in r["delays_ms"])
        jumps = " ".join(f"{row['jump_p99'][str(d)]:.2f}" if isinstance(row["jump_p99"][str(d)], float) else "-"
                         for d in r["delays_ms"])
        lines.append(f"  {mode:17s} success {rates}; jump_p99 {jumps}")
    lines.append(f"wall {r['wall_s']} s" + (f"; figure {r['png']}" if r.get("png") else ""))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=20, help="episodes per (mode, delay)")
    p.add_argument("--delays-ms", type=float, nargs="+", default=list(DELAYS_MS), help="added inference delays")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    p.add_argument("--num-samples", type=int, default=8, help="candidates for realtime_nearest")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=3, help="runs at a time (each on its own ROS domain)")
    p.add_argument("--domain", type=int, default=None, help="first ROS_DOMAIN_ID (then +1 per run)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--work-dir", default="outputs/realtime_bench", help="node logs, one folder per run")
    p.add_argument("--png", default="docs/realtime_robustness.png", help="figure ('' = none)")
    # One run, in a worker process of its own (what the bench starts per run).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="realtime", help=argparse.SUPPRESS)
    p.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--log-dir", default="", help=argparse.SUPPRESS)


def run_from_args(a: argparse.Namespace) -> int:
    if a.worker:
        return _worker(a)
    return run_and_report("realtime", run, a, summary_text)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.realtime_bench", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
