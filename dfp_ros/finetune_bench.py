"""`dfp bench finetune`: does on-robot fine-tuning improve a weak policy? Measured through the ROS graph.

1. A deliberately weak BC policy: a few oracle demonstrations (with rewards) -> `dfp train --critic`
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
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.live_demo import node_command, stop_process

EVAL_SEED = 100_000
TRAIN_SEED = 1_000
DEFAULT_WORK_DIR = "outputs/bench_finetune"


def add_weak_bc_arguments(p: argparse.ArgumentParser) -> None:
    """The weak BC starting point and its evaluation (shared with `dfp bench ablation`)."""
    p.add_argument("--demos", type=int, default=20, help="oracle demonstrations for the weak BC policy")
    p.add_argument("--bc-steps", type=int, default=500, help="offline BC (+ critic) training steps")
    p.add_argument("--hidden", default="256,256,256", help="actor and critic MLP widths")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    p.add_argument("--task-id", type=int, default=1)


def add_learner_arguments(p: argparse.ArgumentParser) -> None:
    """Online learner settings shared with `dfp bench ablation` (which sweeps --top-k / --lam itself)."""
    p.add_argument("--warmup-steps", type=int, default=2000)
    p.add_argument("--updates-per-step", type=float, default=0.5)
    # 64, not the reference's 256: the learner then keeps up with the simulator on 2 CPU cores.
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-candidates", type=int, default=16)
    p.add_argument("--export-every", type=int, default=500, help="learner updates between models swapped in")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="datasets, runs, models, logs")
    add_weak_bc_arguments(p)
    p.add_argument("--minutes", type=float, default=20.0, help="wall time of fine-tuning through the ROS graph")
    add_learner_arguments(p)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--lam", type=float, default=0.5, help="weight of the top-K drift term (0: BC on the replay only)")
    p.add_argument("--no-pace", dest="pace", action="store_false",
                   help="let the lock-step simulator run ahead of the learner (default: hold the policy while "
                        "the learner is behind --updates-per-step)")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID; None: 1 + pid %% 100")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")


def _log(msg: str) -> None:
    print(f"[bench finetune] {msg}", flush=True)


def evaluate_model(model: Path, episodes: int, task_id: int, seed: int) -> dict[str, Any]:
    """Success over `episodes` seeded episodes, best-of-N through the runtime the robot uses."""
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.evaluate import evaluate

    rt = PolicyRuntime(model, device="cpu")
    rng = np.random.default_rng(seed)
    res = evaluate(lambda s: rt.act(s, None, rng).chunk, episodes, task_id=task_id, seed=seed)
    return {**res, "model_sha256": rt.sha256}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def export_model(ckpt: Path, out: Path, num_candidates: int) -> Path:
    """`dfp export` of a checkpoint with its critic (best-of-`num_candidates`), as the robot gets it."""
    from dfp_ros.cli import main as dfp

    if dfp(["export", str(ckpt), str(out), "--num-samples", str(num_candidates)]) != 0:
        raise RuntimeError(f"dfp export of {ckpt} failed")
    return out


def prepare_weak_bc(work: Path, demos: int, bc_steps: int, hidden: str, task_id: int,
                    log: Callable[[str], None] = _log) -> tuple[Path, Path]:
    """A deliberately weak BC policy + critic: (dataset folder, checkpoint folder) under `work`.

    `demos` oracle demonstrations (with rewards) -> `dfp train --critic` for `bc_steps` steps. What is
    already in `work` is reused, so several benchmarks can start from the very same policy.
    """
    from dfp_ros.cli import main as dfp
    from dfp_ros.sim.oracle_demos import collect_oracle_dataset

    data, run_dir = work / "dataset", work / "bc"
    if not (data / "meta" / "info.json").is_file():
        if data.exists():
            shutil.rmtree(data)
        s = collect_oracle_dataset(data, "dfp_ros/bench_finetune_demos", demos, task_id=task_id, seed=0,
                                   progress=False)
        log(f"{s.episodes} oracle demonstrations ({s.successes} successful, {s.frames} frames)")
    ckpt = run_dir / "checkpoints" / "last"
    if not (ckpt / "config.json").is_file():
        log(f"weak BC policy + critic: {bc_steps} steps, hidden {hidden}")
        rc = dfp(["train", "--root", str(data), "--output", str(run_dir), "--steps", str(bc_steps), "--critic",
                  "--hidden", hidden, "--critic-hidden", hidden, "--batch-size", "256", "--no-progress",
                  "--log-every", "250", "--checkpoint-every", str(bc_steps)])
        if rc != 0:
            raise RuntimeError("dfp train failed")
    return data, ckpt


def _finetune_graph(work: Path, ckpt: Path, model: Path, dataset: Path, a: argparse.Namespace) -> dict[str, Any]:
    """sim + policy + learner as separate processes for `a.minutes`; returns what the graph did."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from dfp_ros.live_demo import demo_env
    from dfp_ros.nodes.node_main import close_monitor, open_monitor

    env = demo_env(a.domain)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = work / "finetune"
    learner = {"init_checkpoint": str(ckpt), "output_dir": str(out), "dataset_root": str(dataset),
               "warmup_steps": a.warmup_steps, "updates_per_step": a.updates_per_step, "batch_size": a.batch_size,
               "top_k": a.top_k, "lam": a.lam, "num_candidates": a.num_candidates, "export_every": a.export_every,
               "checkpoint_every": a.export_every, "torch_threads": 1, "pace_robot": a.pace}
    sim = {"mode": "lockstep", "seed": TRAIN_SEED, "task_id": a.task_id}
    policy = {"model_path": str(model), "enabled": True, "trigger": "observation", "seed": TRAIN_SEED}
    node, ex = open_monitor("bench_finetune_monitor", int(env["ROS_DOMAIN_ID"]))
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
    files = {n: open(logs / f"{n}.log", "a") for n in ("finetune_node", "sim_robot_node", "policy_node")}
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        procs["finetune_node"] = subprocess.Popen(node_command("dfp_ros.nodes.finetune_node", learner), env=env,
                                                  stdout=files["finetune_node"], stderr=subprocess.STDOUT)
        while "finetune_node" not in diag:
            ex.spin_once(timeout_sec=0.2)
            if procs["finetune_node"].poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"finetune_node did not come up; see {logs / 'finetune_node.log'}")
        procs["sim_robot_node"] = subprocess.Popen(node_command("dfp_ros.nodes.sim_robot_node", sim), env=env,
                                                   stdout=files["sim_robot_node"], stderr=subprocess.STDOUT)
        while node.count_publishers("/episode") < 1:
            ex.spin_once(timeout_sec=0.1)
        ex.spin_once(timeout_sec=0.5)
        procs["policy_node"] = subprocess.Popen(node_command("dfp_ros.nodes.policy_node", policy), env=env,
                                                stdout=files["policy_node"], stderr=subprocess.STDOUT)
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
                done = [e for e in events if e in ("success", "timeout", "failure")]
                last = done[-20:]
                _log(f"{(time.monotonic() - t_start) / 60:.1f} min: episodes {len(done)}, success (last 20) "
                     f"{last.count('success')}/{len(last)}, env steps {f.get('env_steps', '?')}, updates "
                     f"{f.get('updates', '?')}, models accepted {f.get('models_accepted', '?')}, critic loss "
                     f"{f.get('critic_loss', '?')}, control rate {rates[-1] if rates else float('nan'):.0f} Hz")
        wall = time.monotonic() - t_start
    finally:
        codes = {n: stop_process(p, timeout=60.0) for n, p in reversed(list(procs.items()))}
        for f in files.values():
            f.close()
        close_monitor(node, ex)
    done = [e for e in events if e in ("success", "timeout", "failure")]
    f = diag.get("finetune_node", {})
    running = [r for r in rates if r > 0]
    return {"wall_s": round(wall, 1), "episodes": len(done), "successes": done.count("success"),
            "env_steps": int(f.get("env_steps", 0)), "updates": int(f.get("updates", 0)),
            "joined": int(f.get("joined", 0)), "dropped": int(f.get("dropped_total", 0)),
            "models_accepted": int(f.get("models_accepted", 0)), "exit_codes": codes,
            "control_rate_min_hz": min(running) if running else float("nan"),
            "control_rate_median_hz": float(np.median(running)) if running else float("nan"),
            "curve_png": str(out / "learning_curve.png"), "curve_csv": str(out / "learning_curve.csv"),
            "learner_checkpoint": str(out / "learner")}


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
    graph = _finetune_graph(work, ckpt, before, data, a)
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


def run_from_args(a: argparse.Namespace) -> int:
    try:
        r = run(a)
    except (RuntimeError, OSError) as e:
        print(f"dfp bench finetune: error: {e}", file=sys.stderr)
        return 1
    print(f"success {r['before_success']:.0%} -> {r['after_success']:.0%} ({r['improvement_points']:+.0f} points) "
          f"over {r['eval_episodes']} episodes; {r['online_env_steps']} online env steps, {r['updates']} updates "
          f"({r['updates_per_s']}/s) in {r['minutes']:g} min; control rate min {r['control_rate_min_hz']:.0f} Hz; "
          f"curve {r['curve_png']}")
    print(json.dumps(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfp_ros.finetune_bench", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
