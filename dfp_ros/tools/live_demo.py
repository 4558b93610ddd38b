"""The live demo: the simulated robot and the policy node as separate ROS 2 processes over DDS.

Starts `sim_robot_node` and `policy_node` (with the bundled model), watches `/episode` and
`/diagnostics` from this process, and ends cleanly after a fixed number of episodes, printing the
success rate, the control rate and the inference latency (and a JSON line last).

The graph is private: a ROS_DOMAIN_ID of its own (unless you set one) and localhost-only discovery,
so the demo neither sees nor disturbs other ROS graphs on the machine or network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dfp_ros import contracts
from dfp_ros.tools.graph import GraphMonitor, NodeProcess, domain_or_inherited, graph_env, start_node, stop

REPO_MODEL = Path(__file__).resolve().parents[2] / "models" / "cube_single.onnx"
EPISODE_ENDS = ("success", "failure", "timeout")


def run_demo(episodes: int = 20, mode: str = "lockstep", model: str | None = None, task_id: int = 1, seed: int = 0,
             timeout_s: float = 600.0, domain: int | None = None, log_dir: Path | None = None,
             progress: bool = True) -> dict:
    """Run the two nodes until `episodes` episodes ended; returns the figures (see the module doc)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from tqdm import tqdm

    env = graph_env(domain_or_inherited(domain))
    log_dir = Path(log_dir or "outputs/live_demo")
    log_dir.mkdir(parents=True, exist_ok=True)
    model = str(model or REPO_MODEL)
    lockstep = mode == "lockstep"
    sim_params = {"mode": mode, "max_episodes": episodes, "seed": seed, "task_id": task_id}
    policy_params = {"model_path": model, "enabled": True, "seed": seed,
                     "trigger": "observation" if lockstep else "timer"}

    monitor = GraphMonitor("live_demo_monitor", env).open()
    node, executor = monitor.node, monitor.executor
    events: list[str] = []
    diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            # Keep the figures of the last report while the loop ran (after it, the rate reads 0).
            if status.hardware_id.endswith("policy_node") and values.get("control_rate_hz", "0") not in ("0", "0.0"):
                diag.update(values)

    node.create_subscription(String, contracts.TOPIC_EPISODE, lambda m: events.append(m.data),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, on_diag, 10)

    procs: dict[str, NodeProcess] = {}
    t0 = time.monotonic()
    bar = tqdm(total=episodes, desc=f"live demo ({mode})", unit="ep", disable=not progress)
    try:
        # The simulator first: it steps only once commands come. The policy starts once this monitor
        # has discovered the simulator, so no episode event is published before anyone listens.
        procs["sim_robot_node"] = start_node("dfp_ros.nodes.sim_robot_node", sim_params, env,
                                             log_path=log_dir / "sim_robot_node.log")
        while node.count_publishers(contracts.TOPIC_EPISODE) < 1:
            executor.spin_once(timeout_sec=0.1)
            if procs["sim_robot_node"].poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"sim_robot_node did not come up; see {log_dir / 'sim_robot_node.log'}")
        executor.spin_once(timeout_sec=0.5)  # let the simulator match this subscription too
        procs["policy_node"] = start_node("dfp_ros.nodes.policy_node", policy_params, env,
                                          log_path=log_dir / "policy_node.log")
        ended = 0
        while True:
            executor.spin_once(timeout_sec=0.1)
            done = [e for e in events if e in EPISODE_ENDS]
            if len(done) > ended:
                bar.update(len(done) - ended)
                ended = len(done)
                bar.set_postfix(success=f"{done.count('success')}/{ended}")
            sim_exit = procs["sim_robot_node"].poll()
            if sim_exit is not None or ended >= episodes:
                break
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_dir / (name + '.log')}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"only {ended}/{episodes} episodes after {timeout_s:.0f} s")
    finally:
        bar.close()
        if "sim_robot_node" in procs:  # it exits by itself after its last episode
            try:
                procs["sim_robot_node"].wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        codes = {name: stop(p, timeout=10.0) for name, p in procs.items()}
        monitor.close()
    wall = time.monotonic() - t0
    done = [e for e in events if e in EPISODE_ENDS][:episodes]

    def num(key: str) -> float:
        try:
            return float(diag.get(key, "nan"))
        except ValueError:
            return float("nan")

    return {
        "episodes": len(done), "successes": done.count("success"),
        "success_rate": done.count("success") / max(len(done), 1), "mode": mode, "task_id": task_id, "seed": seed,
        "control_rate_hz": num("control_rate_hz"), "ticks": int(num("ticks")),
        "missed_ticks": int(num("missed_ticks")),
        "inference_latency_p50_ms": num("inference_latency_p50_ms"),
        "inference_latency_p99_ms": num("inference_latency_p99_ms"),
        "torch_imported_in_policy": diag.get("torch_imported"), "model_sha256": diag.get("model_sha256", ""),
        "wall_s": round(wall, 1), "exit_codes": codes, "logs": str(log_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfp_ros.tools.live_demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep",
                   help="lockstep: the simulator steps once per command (as fast as the policy answers); "
                        "realtime: 20 Hz on the wall clock")
    p.add_argument("--model", default=None, help="ONNX model (default: the bundled models/cube_single.onnx)")
    p.add_argument("--task-id", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--logs", default="outputs/live_demo", help="node logs go here")
    a = p.parse_args(argv)
    try:
        r = run_demo(a.episodes, a.mode, a.model, a.task_id, a.seed, a.timeout, log_dir=Path(a.logs))
    except (RuntimeError, TimeoutError) as e:
        print(f"live_demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("live_demo: interrupted; both nodes stopped", file=sys.stderr)
        return 130
    print(f"success rate {r['success_rate']:.0%} ({r['successes']}/{r['episodes']} episodes, cube-single task "
          f"{r['task_id']}, {r['mode']}); control rate {r['control_rate_hz']:.1f} Hz; inference latency p50 "
          f"{r['inference_latency_p50_ms']:.2f} ms, p99 {r['inference_latency_p99_ms']:.2f} ms; "
          f"torch in policy process: {r['torch_imported_in_policy']}; {r['wall_s']} s")
    print(json.dumps(r))
    return 0 if r["episodes"] == a.episodes else 1


if __name__ == "__main__":
    sys.exit(main())
