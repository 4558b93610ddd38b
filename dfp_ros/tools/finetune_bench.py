"""`dfp bench finetune`: does on-robot fine-tuning improve a weak policy? Measured through the ROS graph.

1. A deliberately weak BC policy: a few oracle demonstrations (with rewards) -> BC + critic training
   for few steps (the critic is pre-trained offline on the same data, as the reference does).
2. Success before: >= 50 evaluation episodes (seeds `eval_seed`..), best-of-N with the critic,
   whole chunks executed — the exported ONNX model through the runtime the robot uses.
3. Fine-tuning through the ROS graph: sim_robot_node (lock-step, training seeds, disjoint from the
   evaluation seeds) + policy_node (the exported model) + finetune_node (replay seeded with the
   demonstrations), for `minutes` of wall time; the learner swaps improved models into the running
   policy node.
4. Success after: the learner's final checkpoint, exported the same way, on the same evaluation seeds.
Prints progress, a summary, and a JSON line last; the learning curve is in WORK/finetune/learning_curve.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.bench_main import run_and_report, standalone_main
from dfp_ros.tools.graph import GraphMonitor, NodeProcess, domain_or_inherited, graph_env, start_node, stop
from dfp_ros.tools.weak_bc import (
    DEFAULT_WORK_DIR,
    TRAIN_SEED,
    add_learner_arguments,
    add_weak_bc_arguments,
    cpu_seconds,
    evaluate_model,
    export_model,
    prepare_weak_bc,
)

EPISODE_ENDS = ("success", "timeout", "failure")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="datasets, runs, models, logs")
    add_weak_bc_arguments(p)
    p.add_argument("--minutes", type=float, default=20.0, help="wall time of fine-tuning through the ROS graph")
    add_graph_arguments(p)
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")


def add_graph_arguments(p: argparse.ArgumentParser) -> None:
    """The learner and graph settings `learning_graph` reads (shared with `dfp bench hil`)."""
    add_learner_arguments(p)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--lam", type=float, default=0.5, help="weight of the top-K drift term (0: BC on the replay only)")
    p.add_argument("--no-pace", dest="pace", action="store_false",
                   help="let the lock-step simulator run ahead of the learner (default: hold the policy while "
                        "the learner is behind --updates-per-step)")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID; None: 1 + pid %% 100")


def _log(msg: str) -> None:
    print(f"[bench finetune] {msg}", flush=True)


def learner_params(out: Path, ckpt: Path, dataset: Path, a: argparse.Namespace,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """finetune_node's parameters from the command line (`add_graph_arguments`); `extra` adds or overrides."""
    return {"init_checkpoint": str(ckpt), "output_dir": str(out), "dataset_root": str(dataset),
            "warmup_steps": a.warmup_steps, "updates_per_step": a.updates_per_step, "batch_size": a.batch_size,
            "top_k": a.top_k, "lam": a.lam, "num_candidates": a.num_candidates, "export_every": a.export_every,
            "checkpoint_every": a.export_every, "torch_threads": 1, "pace_robot": a.pace, **(extra or {})}


def learning_graph(out: Path, logs: Path, ckpt: Path, model: Path, dataset: Path, a: argparse.Namespace, *,
                   extra_nodes: Mapping[str, Mapping[str, Any]] | None = None,
                   learner_extra: Mapping[str, Any] | None = None, progress_keys: Sequence[str] = (),
                   log: Callable[[str], None] = _log) -> dict[str, Any]:
    """sim + policy + learner (+ `extra_nodes`) as separate processes for `a.minutes`; what the graph did.

    The learner writes into `out` (resuming what is there), node logs are appended in `logs`.
    `extra_nodes` ({node module in dfp_ros.nodes: parameters}) start after the simulator, before the policy;
    `learner_extra` is added to (or overrides) finetune_node's parameters; `progress_keys` are finetune_node
    diagnostics added to each progress line. The result carries every node's last diagnostics too.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    env = graph_env(domain_or_inherited(a.domain))
    logs.mkdir(parents=True, exist_ok=True)
    learner = learner_params(out, ckpt, dataset, a, learner_extra)
    sim = {"mode": "lockstep", "seed": TRAIN_SEED, "task_id": a.task_id}
    policy = {"model_path": str(model), "enabled": True, "trigger": "observation", "seed": TRAIN_SEED}
    monitor = GraphMonitor("bench_finetune_monitor", env).open()
    node, ex = monitor.node, monitor.executor
    events: list[str] = []
    diag: dict[str, dict[str, str]] = {}
    rates: list[float] = []

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            vals = {kv.key: kv.value for kv in st.values}
            name = st.hardware_id.rsplit("/", 1)[-1]
            diag[name] = vals
            if name == "policy_node" and "control_rate_hz" in vals:
                rates.append(float(vals["control_rate_hz"]))

    node.create_subscription(String, "/episode", lambda m: events.append(m.data),
                             QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    procs: dict[str, NodeProcess] = {}

    def start(name: str, params: dict[str, Any]) -> None:
        procs[name] = start_node(f"dfp_ros.nodes.{name}", params, env, log_path=logs / f"{name}.log", append=True)

    t0 = time.monotonic()
    try:
        start("finetune_node", learner)
        while "finetune_node" not in diag:
            ex.spin_once(timeout_sec=0.2)
            if procs["finetune_node"].poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"finetune_node did not come up; see {logs / 'finetune_node.log'}")
        start("sim_robot_node", sim)
        while node.count_publishers("/episode") < 1:
            ex.spin_once(timeout_sec=0.1)
        for name, params in (extra_nodes or {}).items():
            start(name, dict(params))
            # The policy starts faster than, say, the operator (it builds a simulator): episodes would run unwatched.
            _wait_answering(monitor, name, procs[name])
        ex.spin_once(timeout_sec=0.5)
        start("policy_node", policy)
        t_start = time.monotonic()
        next_report = t_start + 30
        while time.monotonic() - t_start < a.minutes * 60:
            ex.spin_once(timeout_sec=0.1)
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {logs / (name + '.log')}")
            if time.monotonic() >= next_report:
                next_report += 30
                f = diag.get("finetune_node", {})
                done = [e for e in events if e in EPISODE_ENDS]
                last = done[-20:]
                log(f"{(time.monotonic() - t_start) / 60:.1f} min: episodes {len(done)}, success (last 20) "
                    f"{last.count('success')}/{len(last)}, env steps {f.get('env_steps', '?')}, updates "
                    f"{f.get('updates', '?')}, models accepted {f.get('models_accepted', '?')}, critic loss "
                    f"{f.get('critic_loss', '?')}, control rate {rates[-1] if rates else float('nan'):.0f} Hz"
                    + "".join(f", {k.replace('_', ' ')} {f.get(k, '?')}" for k in progress_keys))
        wall = time.monotonic() - t_start
    finally:
        codes = {n: stop(p, timeout=60.0) for n, p in reversed(list(procs.items()))}
        monitor.close()
    done = [e for e in events if e in EPISODE_ENDS]
    f = diag.get("finetune_node", {})
    running = [r for r in rates if r > 0]
    return {"wall_s": round(wall, 1), "episodes": len(done), "successes": done.count("success"),
            "env_steps": int(f.get("env_steps", 0)), "updates": int(f.get("updates", 0)),
            "joined": int(f.get("joined", 0)), "dropped": int(f.get("dropped_total", 0)),
            "models_accepted": int(f.get("models_accepted", 0)), "exit_codes": codes,
            "control_rate_min_hz": min(running) if running else float("nan"),
            "control_rate_median_hz": float(np.median(running)) if running else float("nan"),
            "curve_png": str(out / "learning_curve.png"), "curve_csv": str(out / "learning_curve.csv"),
            "learner_checkpoint": str(out / "learner"), "diagnostics": diag}


def _wait_answering(monitor: GraphMonitor, name: str, proc: NodeProcess, timeout: float = 120.0) -> None:
    """Until node `name` answers a parameter request, i.e. it is built and spinning; RuntimeError if it dies or
    takes longer than `timeout`."""
    from rcl_interfaces.srv import ListParameters

    client = monitor.node.create_client(ListParameters, f"/{name}/list_parameters")
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if not monitor.spin_until(client.service_is_ready, timeout=1.0):
                continue
            answer = client.call_async(ListParameters.Request())
            if monitor.spin_until(answer.done, timeout=2.0):
                return
            client.remove_pending_request(answer)  # sent before the reply path was matched: ask again
    finally:
        monitor.node.destroy_client(client)
    raise RuntimeError(f"{name} did not come up; see {proc.log_path}")


def run(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(a.work_dir)
    if a.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    cpu0, t0 = cpu_seconds(), time.monotonic()
    data, ckpt = prepare_weak_bc(work, a.demos, a.bc_steps, a.hidden, a.task_id, lambda m: _log(f"[1-2/5] {m}"))
    before = export_model(ckpt, work / "before.onnx", a.num_candidates)
    _log(f"[3/5] evaluating the BC policy: {a.eval_episodes} episodes, seeds {a.eval_seed}..")
    ev_before = evaluate_model(before, a.eval_episodes, a.task_id, a.eval_seed)
    _log(f"      before: success {ev_before['success_rate']:.0%}")
    _log(f"[4/5] fine-tuning through the ROS graph for {a.minutes:g} min (sim lock-step seeds {TRAIN_SEED}..)")
    graph = learning_graph(work / "finetune", work / "logs", ckpt, before, data, a)
    _log(f"      {graph['episodes']} episodes, {graph['env_steps']} env steps, {graph['updates']} updates, "
         f"{graph['models_accepted']} models swapped in")
    after = export_model(Path(graph["learner_checkpoint"]), work / "after.onnx", a.num_candidates)
    _log("[5/5] evaluating the fine-tuned policy on the same seeds")
    ev_after = evaluate_model(after, a.eval_episodes, a.task_id, a.eval_seed)
    return {
        "before_success": ev_before["success_rate"], "after_success": ev_after["success_rate"],
        "improvement_points": round(100 * (ev_after["success_rate"] - ev_before["success_rate"]), 1),
        "eval_episodes": a.eval_episodes, "eval_seeds": [a.eval_seed, a.eval_seed + a.eval_episodes - 1],
        "train_seeds_from": TRAIN_SEED, "task_id": a.task_id, "demos": a.demos, "bc_steps": a.bc_steps,
        "hidden": a.hidden, "minutes": a.minutes, "paced": a.pace, "updates_per_step": a.updates_per_step,
        "top_k": a.top_k, "num_candidates": a.num_candidates, "lam": a.lam,
        "online_env_steps": graph["env_steps"],
        "online_episodes": graph["episodes"], "online_successes": graph["successes"], "updates": graph["updates"],
        "joined": graph["joined"], "dropped": graph["dropped"], "models_swapped": graph["models_accepted"],
        "control_rate_min_hz": graph["control_rate_min_hz"], "control_rate_median_hz": graph["control_rate_median_hz"],
        "updates_per_s": round(graph["updates"] / max(graph["wall_s"], 1e-9), 2),
        "env_steps_per_s": round(graph["env_steps"] / max(graph["wall_s"], 1e-9), 1),
        "wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(cpu_seconds() - cpu0, 1),
        "curve_png": graph["curve_png"], "before_sha256": ev_before["model_sha256"],
        "after_sha256": ev_after["model_sha256"], "cpus": os.cpu_count(),
    }


def summary(r: dict[str, Any]) -> str:
    return (f"success {r['before_success']:.0%} -> {r['after_success']:.0%} ({r['improvement_points']:+.0f} points) "
            f"over {r['eval_episodes']} episodes; {r['online_env_steps']} online env steps, {r['updates']} updates "
            f"({r['updates_per_s']}/s) in {r['minutes']:g} min; control rate min {r['control_rate_min_hz']:.0f} Hz; "
            f"curve {r['curve_png']}")


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("finetune", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.finetune_bench", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
