"""`dfp bench hil`: a whole human-in-the-loop RL session on the simulator, unattended, through the ROS graph.

1. The same deliberately weak BC policy as `dfp bench finetune` (`prepare_weak_bc`, same defaults and work
   folder: both benches start from the very same checkpoint).
2. Success before: seeded evaluation episodes (seeds `eval_seed`..), no interventions.
3. The session: sim_robot_node (lock-step, training seeds) + policy_node (takeover on) + finetune_node
   (learning from `~/executed`: interventions become flagged transitions and demonstrations) +
   oracle_teleop_node as the scripted operator (takes over when the policy reaches no new subgoal for
   `--takeover-after-s`, hands back after `--hand-back-after-s`), for `--minutes` of wall time.
4. The same session without the operator (the comparison; `--no-compare` skips it).
5. Success after, for each, on the same evaluation seeds, with no interventions.
Each session starts afresh from the weak policy (its learner folder is emptied first). Prints progress, a
summary and a JSON line last; WORK/hil/hil_curve.png has success and intervention rates over episodes (the
learner's own learning_curve.png has them over environment steps). In the JSON, `cpu_minutes` is the CPU
time of this process and its node processes up to the operator session's evaluation (the weak policy's
training too when this run built it; the comparison is in `cpu_minutes_total`), and the intervention rates
are the means of the learner's per-episode human steps / steps over the session's first and last episodes.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dfp_ros import contracts
from dfp_ros.learning.learning_curve import _rolling_mean
from dfp_ros.tools.bench_main import run_and_report, standalone_main
from dfp_ros.tools.finetune_bench import add_graph_arguments, learning_graph
from dfp_ros.tools.weak_bc import (
    DEFAULT_WORK_DIR,
    TRAIN_SEED,
    add_weak_bc_arguments,
    cpu_seconds,
    evaluate_model,
    export_model,
    prepare_weak_bc,
)

WITH, WITHOUT = "with_operator", "without_operator"
RATE_EPISODES = 10  # the session's first and last episodes compared for the intervention rate
CURVE_WINDOW = 20  # episodes per point of the plotted rates (the learner's success_rate window)
# finetune_node diagnostics on each progress line of the session
PROGRESS_KEYS = ("intervention_rate", "human_steps", "intervened_joined")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                   help="datasets, runs, models, logs (shared with `dfp bench finetune`: the same weak policy)")
    add_weak_bc_arguments(p)
    p.add_argument("--minutes", type=float, default=6.0, help="wall time of each session through the ROS graph")
    p.add_argument("--takeover-after-s", type=float, default=2.0,
                   help="operator: take over when the policy reached no new subgoal for this long (robot time)")
    p.add_argument("--hand-back-after-s", type=float, default=2.0,
                   help="operator: hand back after this long in control (robot time); 0 = at the episode's end")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the session without the operator")
    add_graph_arguments(p)
    p.add_argument("--fresh", action="store_true", help="delete the work folder first (the weak policy too)")


def _log(msg: str) -> None:
    print(f"[bench hil] {msg}", flush=True)


def check_arguments(a: argparse.Namespace) -> None:
    """The operator's and the session's settings, each refused in one line (RuntimeError) before any work."""
    if not a.minutes > 0:
        raise RuntimeError(f"--minutes must be > 0, got {a.minutes:g}")
    if not a.takeover_after_s >= 0.05:
        raise RuntimeError(f"--takeover-after-s must be >= 0.05 (robot seconds), got {a.takeover_after_s:g}")
    if not a.hand_back_after_s >= 0:
        raise RuntimeError(f"--hand-back-after-s must be >= 0 (0 = keep control until the episode ends), got "
                           f"{a.hand_back_after_s:g}")
    if a.eval_episodes < 1:
        raise RuntimeError(f"--eval-episodes must be >= 1, got {a.eval_episodes}")


def operator_params(a: argparse.Namespace) -> dict[str, Any]:
    """oracle_teleop_node's parameters as the scripted operator of the session."""
    return {"role": "operator", "task_id": a.task_id, "seed": TRAIN_SEED,
            "takeover_after_s": float(a.takeover_after_s), "hand_back_after_s": float(a.hand_back_after_s)}


def read_curve(csv_path: Path | str) -> list[dict[str, str]]:
    """The learner's learning_curve.csv rows (none if it was never written)."""
    path = Path(csv_path)
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def mean_rate(rows: list[dict[str, str]], column: str) -> float | None:
    """The mean of `column` over `rows` that carry it; None when none does."""
    values = [float(r[column]) for r in rows if r.get(column, "") not in ("", None)]
    return round(sum(values) / len(values), 4) if values else None


def plot_curves(curves: dict[str, list[dict[str, str]]], png: Path) -> None:
    """Success rate of each session and the operator's intervention rate, over episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    labels = {WITH: ("success rate, operator taking over", "tab:blue"),
              WITHOUT: ("success rate, no operator", "tab:orange")}
    for arm, rows in curves.items():
        if rows:
            ax.plot(range(1, len(rows) + 1), _rolling_mean([float(r["success"]) for r in rows], CURVE_WINDOW), lw=1.2,
                    label=labels[arm][0], color=labels[arm][1])
    rows = curves.get(WITH, [])
    rates = [float(r.get("intervention_rate") or 0.0) for r in rows]
    if rates:
        x = range(1, len(rates) + 1)
        alone = [float(r["success"]) * (float(r.get("human_steps") or 0.0) == 0) for r in rows]
        ax.plot(x, _rolling_mean(alone, CURVE_WINDOW), lw=1, ls="--", color="tab:blue",
                label="success without a takeover, operator session")
        ax.plot(x, _rolling_mean(rates, CURVE_WINDOW), lw=1.2, color="tab:red", label="intervention rate (human steps)")
        ax.scatter(x, rates, s=4, color="tab:red", alpha=0.25, label="intervention rate, per episode")
    ax.set_xlabel("episode")
    ax.set_ylabel(f"rate (last {CURVE_WINDOW} episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)  # below: the lines fill the box
    ax.set_title("human-in-the-loop session on the simulator", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def _session(arm: str, hil: Path, ckpt: Path, before: Path, data: Path, a: argparse.Namespace) -> dict[str, Any]:
    """One session from the weak policy, then its evaluation; what it did and scored."""
    out = hil / arm
    if out.exists():  # finetune_node would resume the learner found there
        shutil.rmtree(out)
    extra = {"oracle_teleop_node": operator_params(a)} if arm == WITH else {}
    graph = learning_graph(out, hil / "logs" / arm, ckpt, before, data, a, extra_nodes=extra,
                           learner_extra={"executed_topic": contracts.TOPIC_POLICY_EXECUTED},
                           progress_keys=PROGRESS_KEYS, log=lambda m: _log(f"{arm}: {m}"))
    policy_diag = graph["diagnostics"].get("policy_node", {})
    learner_diag = graph["diagnostics"].get("finetune_node", {})
    after = export_model(Path(graph["learner_checkpoint"]), hil / f"after_{arm}.onnx", a.num_candidates)
    _log(f"{arm}: {graph['episodes']} episodes, {graph['env_steps']} env steps, {graph['updates']} updates, "
         f"{graph['models_accepted']} models swapped in; evaluating on the same seeds")
    ev = evaluate_model(after, a.eval_episodes, a.task_id, a.eval_seed)
    _log(f"{arm}: after: success {ev['success_rate']:.0%}")
    rows = read_curve(graph["curve_csv"])
    return {**graph, "after": ev["success_rate"], "after_sha256": ev["model_sha256"], "rows": rows,
            "interventions": int(policy_diag.get("interventions", 0)),
            "human_steps": int(learner_diag.get("human_steps", 0)),
            "intervened_joined": int(learner_diag.get("intervened_joined", 0))}


def run(a: argparse.Namespace) -> dict[str, Any]:
    check_arguments(a)
    work = Path(a.work_dir)
    if a.fresh and work.exists():
        shutil.rmtree(work)
    hil = work / "hil"
    hil.mkdir(parents=True, exist_ok=True)
    cpu0, t0 = cpu_seconds(), time.monotonic()
    data, ckpt = prepare_weak_bc(work, a.demos, a.bc_steps, a.hidden, a.task_id, lambda m: _log(f"[1/5] {m}"))
    before = export_model(ckpt, hil / "before.onnx", a.num_candidates)
    _log(f"[2/5] evaluating the weak BC policy: {a.eval_episodes} episodes, seeds {a.eval_seed}.., no interventions")
    ev_before = evaluate_model(before, a.eval_episodes, a.task_id, a.eval_seed)
    _log(f"      before: success {ev_before['success_rate']:.0%}")
    _log(f"[3/5] session with the scripted operator for {a.minutes:g} min (takeover after "
         f"{a.takeover_after_s:g} s without a new subgoal, hand-back after {a.hand_back_after_s:g} s; sim lock-step "
         f"seeds {TRAIN_SEED}..)")
    runs = {WITH: _session(WITH, hil, ckpt, before, data, a)}
    cpu_hil = cpu_seconds() - cpu0
    if a.compare:
        _log(f"[4/5] the same session without the operator for {a.minutes:g} min")
        runs[WITHOUT] = _session(WITHOUT, hil, ckpt, before, data, a)
    else:
        _log("[4/5] session without the operator: skipped (--no-compare)")
    png = hil / "hil_curve.png"
    _log(f"[5/5] curves -> {png}")
    plot_curves({arm: r["rows"] for arm, r in runs.items()}, png)
    s = runs[WITH]
    rows = s["rows"]
    without = runs.get(WITHOUT)
    first = mean_rate(rows[:RATE_EPISODES], "intervention_rate")
    last = mean_rate(rows[-RATE_EPISODES:], "intervention_rate")
    return {
        "before": ev_before["success_rate"], "after": s["after"],
        "after_without_interventions": without["after"] if without else None,
        "improvement": round(s["after"] - ev_before["success_rate"], 4),
        "intervention_rate_first_10_episodes": first, "intervention_rate_last_10_episodes": last,
        "intervention_rate_session": mean_rate(rows, "intervention_rate"),
        "episodes": s["episodes"], "online_successes": s["successes"], "env_steps": s["env_steps"],
        "updates": s["updates"], "interventions": s["interventions"], "human_steps": s["human_steps"],
        "intervened_transitions": s["intervened_joined"], "models_swapped": s["models_accepted"],
        "joined": s["joined"], "dropped": s["dropped"], "exit_codes": s["exit_codes"],
        "cpu_minutes": round(cpu_hil / 60, 2),
        "cpu_minutes_total": round((cpu_seconds() - cpu0) / 60, 2),
        "wall_s": round(time.monotonic() - t0, 1),
        "without_operator": ({"episodes": without["episodes"], "online_successes": without["successes"],
                              "env_steps": without["env_steps"], "updates": without["updates"],
                              "interventions": without["interventions"], "curve_csv": without["curve_csv"]}
                             if without else None),
        "goals": {"improvement_ge_0.3": s["after"] - ev_before["success_rate"] >= 0.3,
                  "intervention_rate_falls": first is not None and last is not None and last < first,
                  "with_at_least_without": without["after"] <= s["after"] if without else None},
        "minutes": a.minutes, "takeover_after_s": a.takeover_after_s, "hand_back_after_s": a.hand_back_after_s,
        "warmup_steps": a.warmup_steps, "updates_per_step": a.updates_per_step, "batch_size": a.batch_size,
        "top_k": a.top_k, "lam": a.lam, "num_candidates": a.num_candidates, "paced": a.pace,
        "eval_episodes": a.eval_episodes, "eval_seeds": [a.eval_seed, a.eval_seed + a.eval_episodes - 1],
        "train_seeds_from": TRAIN_SEED, "task_id": a.task_id, "demos": a.demos, "bc_steps": a.bc_steps,
        "curve_png": str(png), "learner_curve_png": s["curve_png"], "curve_csv": s["curve_csv"],
        "before_sha256": ev_before["model_sha256"], "after_sha256": s["after_sha256"], "cpus": os.cpu_count(),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def summary(r: dict[str, Any]) -> str:
    return (f"success {_pct(r['before'])} -> {_pct(r['after'])} with the operator ({100 * r['improvement']:+.0f} "
            f"points), {_pct(r['after_without_interventions'])} without, over {r['eval_episodes']} episodes; "
            f"intervention rate {_pct(r['intervention_rate_first_10_episodes'])} (first 10 episodes) -> "
            f"{_pct(r['intervention_rate_last_10_episodes'])} (last 10) over {r['episodes']} episodes, "
            f"{r['interventions']} takeovers; {r['env_steps']} env steps, {r['updates']} updates in {r['minutes']:g} "
            f"min; {r['cpu_minutes']:g} CPU-min; curve {r['curve_png']}")


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("hil", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.hil_bench", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
