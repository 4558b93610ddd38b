"""`dfp bench ablation`: success rate versus environment steps for BC only, DFP fine-tuning and its top-K ablation.

The paper's ablation shape (BC only; DFP with N = 16, K = 4; K in {1, 2, 8}). Through
the ROS graph (`dfp bench finetune`) one run takes 20 minutes on two cores, so this benchmark runs
the very same learning components in one process, without ROS, and evaluates periodically:

- start (`--from-ogbench WORK_DIR`): the offline checkpoint of a finished `dfp bench ogbench` run, in its
  scene and task, the replay seeded with its play dataset (frames that solve the task terminal). Otherwise:
- start: the weak BC policy + critic of `dfp bench finetune` (`prepare_weak_bc`: oracle demos ->
  BC + critic training), by default the same folder, so both benchmarks start from one checkpoint;
- learner: `OnlineLearner.load(checkpoint, OnlineConfig(...))` with the arm's K and lambda, its
  replay a `ReplayBuffer` seeded with the demonstrations (uniform over offline + online, as the
  finetune node's learner loop does);
- robot: `CubeSim` stepped in lock-step, training seeds `TRAIN_SEED + 10_000 x seed`.. (disjoint
  from the evaluation seeds), reset the way sim_robot_node resets it;
- acting: the learner's weights exported to ONNX (`export_onnx`, policy + critic, best-of-N) and
  run through `PolicyRuntime.act`, the policy node's runtime; whole chunks are executed;
- transitions: each episode's observations, chunks, per-step rewards and end event go through
  `TransitionJoiner` (stamped with lock-step simulation time, chunks stamped with their
  observation), so the replay gets exactly what the finetune node would join: (o, executed chunk,
  H rewards, o+H, mask), terminal on success, time-outs inside a chunk dropped;
- learning: after `warmup_steps` environment steps, `updates_per_step` updates per environment
  step; like the learner loop, env steps are counted when an episode ends, and the updates are
  made then;
- evaluation: every `eval_every` env steps (at the first episode end past it) and at the end, the
  current weights are exported and evaluated best-of-N over the same seeded episodes as
  `dfp bench finetune` (`evaluate_model`). The step-0 point is the BC policy itself; "BC only" is
  that policy, never updated (a flat line: it is the same model at every checkpoint).

How this differs from fine-tuning through the ROS graph (so numbers compare, but not to the digit):
- the acting model is swapped exactly every `export_every` updates; in the graph the learner is a
  separate process and an export reaches the policy node some ticks later (with `pace_robot` the
  policy waits while the learner is behind, which keeps the two close);
- updates happen synchronously at episode ends; in the graph they run concurrently with acting;
- no messages are lost, late or re-ordered: the only chunks not joined are the join rules' own
  (a time-out inside a chunk), where the graph can also drop partial or unmatched ones;
- the rest of a chunk is discarded when an episode ends inside it, as `evaluate` does.
Writes curves.csv (one row per evaluation), finetune_ablation.png and summary.json to --out-dir,
after every finished run, so an interrupted benchmark still leaves its curves; prints a JSON line last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfp_ros.tools import weak_bc
from dfp_ros.tools.bench_main import BENCH_ERRORS, run_and_report, standalone_main
from dfp_ros.tools.sim_finetuning import SimFinetuner, UpdateSchedule, export_acting_model
from dfp_ros.tools.sim_finetuning import run_episode as run_episode  # one episode, joined (tests call it here)

if TYPE_CHECKING:
    from dfp_ros.learning.dataset import ChunkDataset
    from dfp_ros.learning.online import OnlineLearner

SEED_STRIDE = 10_000  # training seeds of run seed s: TRAIN_SEED + s * SEED_STRIDE..
RECENT = 20  # training episodes in the "recent success" column (the learning curve's window)
DEFAULT_ARMS = "bc,k4,k1,k2,k8,lam0"  # reference first, so a time-limited run has it
CSV_COLUMNS = ("arm", "label", "seed", "top_k", "lam", "checkpoint", "env_steps", "updates", "episodes",
               "success_rate", "cubes_placed", "eval_episodes", "train_success_recent", "replay_online", "dropped",
               "models_swapped", "actor_param_delta", "critic_loss", "q_mean", "topk_q", "wall_s")


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    top_k: int = 4
    lam: float = 0.5
    finetune: bool = True


def parse_arm(key: str) -> Arm:
    """'bc' (no fine-tuning), 'kN' (DFP with K = N and the reference lambda 0.5), 'lam0' (K = 4, lambda = 0:
    BC on the replay, the critic still trained but never used by the actor)."""
    key = key.strip().lower()
    if key == "bc":
        return Arm("bc", "BC only", finetune=False)
    if key == "lam0":
        return Arm("lam0", "lambda=0 (BC on replay)", lam=0.0)
    m = re.fullmatch(r"k(\d+)", key)
    if m is None:
        raise ValueError(f"unknown arm {key!r}: expected bc, lam0 or kN (e.g. k4)")
    k = int(m.group(1))
    return Arm(key, f"DFP K={k}" + (" (reference)" if k == 4 else ""), top_k=k)


def _arms(text: str) -> list[Arm]:
    try:
        arms = [parse_arm(k) for k in text.split(",") if k.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if not arms or len({a.key for a in arms}) != len(arms):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated arms, got {text!r}")
    return arms


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="outputs/ablation", help="curves.csv, finetune_ablation.png, summary.json")
    p.add_argument("--from-ogbench", default=None, metavar="WORK_DIR",
                   help="start every arm from a finished `dfp bench ogbench` run's offline checkpoint (drift BC + "
                        "critic on a play dataset) instead of the weak BC policy: its scene, task and play dataset "
                        "(the replay's offline part; task-solving frames terminal); --bc-dir, --demos, --bc-steps, "
                        "--hidden and --task-id are then not used")
    p.add_argument("--bc-dir", default=weak_bc.DEFAULT_WORK_DIR,
                   help="where the weak BC policy lives (made there if missing): by default the folder of "
                        "`dfp bench finetune`, so both benchmarks start from the same checkpoint")
    p.add_argument("--arms", type=_arms, default=DEFAULT_ARMS,
                   help="bc: the BC policy, never updated; kN: DFP with top-K = N; lam0: K=4 with lambda=0")
    p.add_argument("--seeds", type=_seeds, default="0", help="run seeds (training env seeds, acting noise, learner)")
    p.add_argument("--env-steps", type=int, default=25_000, help="online environment steps per fine-tuning run")
    p.add_argument("--eval-every", type=int, default=5_000, help="environment steps between evaluations")
    weak_bc.add_weak_bc_arguments(p)
    weak_bc.add_learner_arguments(p)
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (leave cores to others)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process with --torch-threads threads (about one per core)")
    p.add_argument("--time-limit-min", type=float, default=0.0,
                   help="do not start a run that would likely end past this many minutes from the start "
                        "(estimated from the slowest finished run); 0: no limit")
    p.add_argument("--png", default=None, help="also write the plot here (e.g. docs/finetune_ablation.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[bench ablation] {msg}", file=sys.stdout)
    sys.stdout.flush()


@dataclass(frozen=True)
class Start:
    """Where the arms start: a checkpoint with a critic, the dataset seeding the replay, the scene and task."""

    checkpoint: Path
    dataset: Path
    env_name: str
    task_id: int
    done_key: str  # the dataset column that ends the task for the critic
    description: str
    unchanged_label: str = "BC only"  # the `bc` arm: the start, never updated


@dataclass
class Setup:
    """What every run shares: where it starts, the loaded demonstrations and the start's own score."""

    start: Start
    offline: ChunkDataset
    before: float
    before_placed: float  # the starting policy's share of cubes placed at an episode's end
    models: Path  # scratch folder for exported snapshots


def ogbench_start(work: Path) -> Start:
    """The offline end of a finished `dfp bench ogbench` run (ValueError naming what is missing)."""
    from dfp_ros.tools.ogbench_bench import CONFIG_FILE, PROGRESS_FILE, SUCCESS_KEY

    config_path, progress_path = work / CONFIG_FILE, work / PROGRESS_FILE
    if not config_path.is_file():
        raise ValueError(f"--from-ogbench {work}: no {CONFIG_FILE} there; it is not a `dfp bench ogbench` work dir")
    config = json.loads(config_path.read_text())
    evaluations = json.loads(progress_path.read_text()).get("evaluations", []) if progress_path.is_file() else []
    done = [e["offline_steps"] for e in evaluations if e["phase"] == "offline"]
    checkpoint = work / "offline" / "checkpoints" / "last"
    if config["offline_steps"] not in done or not (checkpoint / "config.json").is_file():
        raise ValueError(f"--from-ogbench {work}: its offline phase has not reached {config['offline_steps']} steps "
                         f"(evaluated at {done or 'none'}); finish it with `dfp bench ogbench` first")
    return Start(checkpoint, Path(config["dataset"]), config["env"], int(config["task"]), SUCCESS_KEY,
                 f"{config['env'].removesuffix('-v0')} task {config['task']}: from {config['offline_steps']} offline "
                 f"steps (drift BC + critic, play data, {'x'.join(map(str, config['hidden']))}) + online fine-tuning",
                 "offline checkpoint")


def weak_bc_start(a: argparse.Namespace) -> Start:
    """The weak BC policy of `dfp bench finetune` (made in --bc-dir when missing)."""
    data, ckpt = weak_bc.prepare_weak_bc(Path(a.bc_dir), a.demos, a.bc_steps, a.hidden, a.task_id, _log)
    return Start(ckpt, data, "cube-single-v0", a.task_id, "next.done",
                 f"cube-single task {a.task_id}: weak BC ({a.demos} demos, {a.bc_steps} steps) + online fine-tuning")


@dataclass
class RunResult:
    arm: Arm
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    updates: int = 0
    replay_online: int = 0
    models_swapped: int = 0
    wall_s: float = 0.0


def _actor_delta(learner: OnlineLearner, initial: list[Any]) -> float:
    """L2 distance of the actor's parameters from where fine-tuning started (0 when nothing learned)."""
    import torch

    with torch.no_grad():
        sq = sum(float((p - p0).pow(2).sum()) for p, p0 in zip(learner.model.actor.parameters(), initial, strict=True))
    return sq ** 0.5


def run_arm(arm: Arm, seed: int, setup: Setup, a: argparse.Namespace,
            on_steps: Callable[[int, dict[str, Any]], None] = lambda n, info: None) -> RunResult:
    """One arm x seed: `a.env_steps` online steps with evaluations every `a.eval_every` (see the module docstring)."""
    import torch

    from dfp_ros.learning.online import OnlineConfig, OnlineLearner
    from dfp_ros.learning.replay_buffer import ReplayBuffer
    from dfp_ros.learning.transitions import TransitionJoiner
    from dfp_ros.sim.cube_env import CubeSim

    t0 = time.monotonic()
    res = RunResult(arm, seed)
    base = {"arm": arm.key, "label": arm.label, "seed": seed, "top_k": arm.top_k if arm.finetune else "",
            "lam": arm.lam if arm.finetune else "", "eval_episodes": a.eval_episodes}
    checkpoints = [*range(0, a.env_steps, a.eval_every), a.env_steps]
    if not arm.finetune:  # the BC policy is never updated: its score at every checkpoint is the step-0 one
        res.rows = [{**base, "checkpoint": c, "env_steps": c, "updates": 0, "episodes": 0,
                     "success_rate": setup.before, "cubes_placed": setup.before_placed, "actor_param_delta": 0.0,
                     "wall_s": 0.0} for c in checkpoints]
        return res
    learner, _ = OnlineLearner.load(setup.start.checkpoint, OnlineConfig(
        num_candidates=a.num_candidates, top_k=arm.top_k, lam=arm.lam, batch_size=a.batch_size))
    # A fresh start seeds the learner the way the learner loop does.
    learner.rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    initial = [p.detach().clone() for p in learner.model.actor.parameters()]
    meta = learner.model.meta
    replay = ReplayBuffer(meta.state_dim, meta.horizon, meta.action_dim, offline=setup.offline)
    joiner = TransitionJoiner(meta.horizon, robot=f"{arm.key}_s{seed}", reward_mode="per_step")
    train_seed = weak_bc.TRAIN_SEED + seed * SEED_STRIDE
    tuner = SimFinetuner(learner, replay, joiner, UpdateSchedule(a.warmup_steps, a.updates_per_step, a.batch_size,
                                                                 a.export_every, a.num_candidates),
                         snapshot=setup.models / f"{arm.key}_s{seed}_acting.onnx",
                         # the policy node's noise seed is its sim's seed, too
                         act_rng=np.random.default_rng(train_seed))
    recent: deque[int] = deque(maxlen=RECENT)

    def row(checkpoint: int, success: float, placed: float) -> dict[str, Any]:
        last = tuner.losses()
        return {**base, "checkpoint": checkpoint, "env_steps": tuner.env_steps, "updates": learner.updates,
                "episodes": tuner.episodes, "success_rate": success, "cubes_placed": placed,
                "train_success_recent": round(float(np.mean(recent)), 3) if recent else "",
                "replay_online": replay.size, "dropped": sum(joiner.dropped.values()),
                "models_swapped": tuner.models_swapped, "actor_param_delta": round(_actor_delta(learner, initial), 6),
                **{k: round(last[k], 5) for k in ("critic_loss", "q_mean", "topk_q") if k in last},
                "wall_s": round(time.monotonic() - t0, 1)}

    res.rows.append(row(0, setup.before, setup.before_placed))
    pending = checkpoints[1:]
    with CubeSim(setup.start.env_name, task_id=setup.start.task_id, seed=train_seed) as sim:
        while tuner.env_steps < a.env_steps:
            rec = tuner.episode(sim)
            recent.append(int(rec.success))
            env_steps = tuner.env_steps
            passed = [c for c in pending if c <= env_steps]
            if passed or env_steps >= a.env_steps:
                # One evaluation, labelled with the last checkpoint passed (the budget at the end).
                label = a.env_steps if env_steps >= a.env_steps else passed[-1]
                pending = [c for c in pending if c > env_steps]
                model = export_acting_model(learner, setup.models / f"{arm.key}_s{seed}_eval.onnx", a.num_candidates)
                ev = weak_bc.evaluate_model(model, a.eval_episodes, setup.start.task_id, a.eval_seed,
                                            env_name=setup.start.env_name)
                res.rows.append(row(label, ev["success_rate"], ev["cubes_placed"]))
            on_steps(rec.steps, {"arm": arm.key, "seed": seed, "updates": learner.updates,
                                 "recent": float(np.mean(recent)),
                                 "eval": res.rows[-1]["success_rate"]})
    res.models_swapped = tuner.models_swapped
    res.updates, res.replay_online, res.wall_s = learner.updates, replay.size, round(time.monotonic() - t0, 1)
    return res


def summarize(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Per arm: seeds, and at each checkpoint the mean / min / max success over the seeds that reached it."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        arm = out.setdefault(r.arm.key, {"label": r.arm.label, "seeds": [], "curve": {}, "updates": [],
                                         "final_per_seed": [], "final_cubes_placed_per_seed": []})
        arm["seeds"].append(r.seed)
        arm["updates"].append(r.updates)
        arm["final_per_seed"].append(r.rows[-1]["success_rate"])
        arm["final_cubes_placed_per_seed"].append(r.rows[-1]["cubes_placed"])
        for row in r.rows:
            arm["curve"].setdefault(int(row["checkpoint"]), []).append(float(row["success_rate"]))
    for arm in out.values():
        arm["curve"] = {c: {"mean": round(float(np.mean(v)), 4), "min": min(v), "max": max(v), "n": len(v)}
                        for c, v in sorted(arm["curve"].items())}
        arm["final_mean"] = round(float(np.mean(arm["final_per_seed"])), 4)
    return out


def write_csv(path: Path, results: list[RunResult]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        w.writeheader()
        for r in results:
            w.writerows(r.rows)


def plot(paths: list[Path], summary: dict[str, dict[str, Any]], title: str, unchanged_label: str = "BC only") -> None:
    """One line per arm: mean success over seeds, shaded min..max when there is more than one seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for key, arm in summary.items():
        xs = list(arm["curve"])
        mean = [arm["curve"][x]["mean"] for x in xs]
        style = {"linestyle": "--", "color": "gray"} if key == "bc" else {"marker": "o", "markersize": 3}
        if key == "k4":
            style["linewidth"] = 2.5
        n = len(arm["seeds"])
        label = f"{unchanged_label} (never updated)" if key == "bc" else f"{arm['label']} ({n} seed{'s' * (n > 1)})"
        (line,) = ax.plot(xs, mean, label=label, **style)
        if n > 1:
            ax.fill_between(xs, [arm["curve"][x]["min"] for x in xs], [arm["curve"][x]["max"] for x in xs],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("online environment steps")
    ax.set_ylabel("success rate (best-of-N, seeded eval episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)


_WORKER: tuple[Setup, argparse.Namespace] | None = None  # a worker process's shared setup


def make_setup(start: Start, before: dict[str, Any], models: Path) -> Setup:
    """What the runs share; the seeding dataset is loaded once per process (read-only)."""
    from dfp_ros.learning.dataset import ChunkDataset
    from dfp_ros.learning.model import load_checkpoint

    meta = load_checkpoint(start.checkpoint)[0].meta
    offline = ChunkDataset("", str(start.dataset), horizon=meta.horizon, state_keys=[s.key for s in meta.state],
                           image_keys=[], done_key=start.done_key, progress=False)
    return Setup(start, offline, before["success_rate"], before["cubes_placed"], models)


def _init_worker(start: Start, before: dict[str, Any], models: Path, a: argparse.Namespace) -> None:
    import torch

    global _WORKER
    torch.set_num_threads(max(1, a.torch_threads))
    _WORKER = (make_setup(start, before, models), a)


def _run_in_worker(arm: Arm, seed: int) -> RunResult:
    assert _WORKER is not None, "the worker was not initialised"
    return run_arm(arm, seed, *_WORKER)


def run_in_workers(plan: list[tuple[Arm, int]], a: argparse.Namespace, start: Start, before: dict[str, Any],
                   models: Path, may_start: Callable[[Arm, int], bool], on_finished: Callable[[int, RunResult], None],
                   bar: Any) -> None:
    """--jobs > 1: the plan's runs in that many worker processes (spawned: no forked torch state), started in
    plan order while a worker is free; the bar moves when a run ends."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = list(enumerate(plan))
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(start, before, models, a)) as pool:
        running: dict[Any, int] = {}
        while pending or running:
            while pending and len(running) < a.jobs:
                i, (arm, seed) = pending.pop(0)
                if may_start(arm, seed):
                    running[pool.submit(_run_in_worker, arm, seed)] = i
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                r = future.result()
                bar.update(a.env_steps if r.arm.finetune else 0)
                on_finished(running.pop(future), r)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm


    if a.env_steps < 1 or a.eval_every < 1 or a.jobs < 1:
        raise ValueError("--env-steps, --eval-every and --jobs must be positive")
    torch.set_num_threads(max(1, a.torch_threads))
    out = Path(a.out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    cpu0, t0 = weak_bc.cpu_seconds(), time.monotonic()
    start = ogbench_start(Path(a.from_ogbench)) if a.from_ogbench else weak_bc_start(a)
    ckpt = start.checkpoint
    before_model = weak_bc.export_model(ckpt, out / "models" / "before.onnx", a.num_candidates)
    _log(f"evaluating the starting policy ({ckpt}): {a.eval_episodes} episodes, seeds {a.eval_seed}..")
    start_eval = weak_bc.evaluate_model(before_model, a.eval_episodes, start.task_id, a.eval_seed,
                                        env_name=start.env_name)
    before = start_eval["success_rate"]
    _log(f"starting policy: success {before:.0%}, {start_eval['cubes_placed']:.0%} of the cubes placed")
    # Seed-major, so a time-limited benchmark has every arm at least once before any arm twice. The BC
    # policy is the same for every seed (one checkpoint, fixed evaluation seeds): listed once.
    plan = [(arm, seed) for seed in a.seeds for arm in a.arms if arm.finetune or seed == a.seeds[0]]
    trained = sum(arm.finetune for arm, _ in plan)
    bar = tqdm(total=trained * a.env_steps, unit="step", desc="ablation", disable=a.no_progress,
               mininterval=5.0, file=sys.stderr)
    results: list[RunResult] = []
    skipped: list[str] = []
    durations: list[float] = []
    title = (f"{start.description}\nN={a.num_candidates}, lambda=0.5 (DFP arms), {a.eval_episodes} eval episodes per "
             f"point, in-process (dfp bench ablation), {a.updates_per_step:g} updates/step, batch {a.batch_size}")
    pngs = [out / "finetune_ablation.png"] + ([Path(a.png)] if a.png else [])
    finished: dict[int, RunResult] = {}  # by place in the plan: curves and plot keep the plan's order

    def may_start(arm: Arm, seed: int) -> bool:
        elapsed = time.monotonic() - t0
        if arm.finetune and a.time_limit_min > 0 and durations and \
                elapsed + max(durations) > a.time_limit_min * 60:
            skipped.append(f"{arm.key}/seed{seed}")
            _log(f"skipping {arm.label}, seed {seed}: would likely end past the {a.time_limit_min:g}-minute limit")
            return False
        if arm.finetune:
            _log(f"{arm.label}, seed {seed}: {a.env_steps} env steps (warm-up {a.warmup_steps}), "
                 f"K={arm.top_k}, lambda={arm.lam:g}")
        return True

    def on_finished(i: int, r: RunResult) -> None:
        finished[i] = r
        if r.arm.finetune:
            durations.append(r.wall_s)
            curve = ", ".join(f"{row['checkpoint']}: {row['success_rate']:.0%}" for row in r.rows)
            _log(f"{r.arm.label}, seed {r.seed} done in {r.wall_s / 60:.1f} min: {r.updates} updates, "
                 f"{r.models_swapped} models swapped in; success at env steps {curve}")
        results[:] = [finished[j] for j in sorted(finished)]
        write_csv(out / "curves.csv", results)
        plot(pngs, summarize(results), title, start.unchanged_label)

    if a.jobs == 1:
        def on_steps(n: int, info: dict[str, Any]) -> None:
            bar.update(n)
            bar.set_postfix(arm=info["arm"], seed=info["seed"], updates=info["updates"],
                            recent=f"{info['recent']:.2f}", evaluated=f"{info['eval']:.2f}", refresh=False)

        setup = make_setup(start, start_eval, out / "models")  # every run's replay: the same demonstrations
        for i, (arm, seed) in enumerate(plan):
            if may_start(arm, seed):
                on_finished(i, run_arm(arm, seed, setup, a, on_steps))
    else:
        run_in_workers(plan, a, start, start_eval, out / "models", may_start, on_finished, bar)
    bar.close()
    result = {
        "before_success": before, "arms": summarize(results), "skipped": skipped,
        "env_steps_per_run": a.env_steps, "eval_every": a.eval_every, "eval_episodes": a.eval_episodes,
        "eval_seeds": [a.eval_seed, a.eval_seed + a.eval_episodes - 1], "seeds": a.seeds,
        "train_seeds_from": [weak_bc.TRAIN_SEED + s * SEED_STRIDE for s in a.seeds], "env": start.env_name,
        "task_id": start.task_id, "start": start.description, "checkpoint": str(ckpt), "dataset": str(start.dataset),
        **({"from_ogbench": a.from_ogbench} if a.from_ogbench else
           {"demos": a.demos, "bc_steps": a.bc_steps, "hidden": a.hidden}),
        "warmup_steps": a.warmup_steps, "updates_per_step": a.updates_per_step, "batch_size": a.batch_size,
        "num_candidates": a.num_candidates, "export_every": a.export_every,
        "torch_threads": a.torch_threads, "run_wall_s": [r.wall_s for r in results if r.arm.finetune],
        "wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(weak_bc.cpu_seconds() - cpu0, 1),
        "cpus": os.cpu_count(),
        "csv": str(out / "curves.csv"), "png": [str(p) for p in pngs],
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def summary(r: dict[str, Any]) -> str:
    lines = []
    for arm in r["arms"].values():
        finals = ", ".join(f"{v:.0%}" for v in arm["final_per_seed"])
        placed = ", ".join(f"{v:.0%}" for v in arm["final_cubes_placed_per_seed"])
        lines.append(f"{arm['label']:<26} seeds {arm['seeds']}: {r['before_success']:.0%} -> {arm['final_mean']:.0%} "
                     f"(per seed {finals}; cubes placed at the end {placed})")
    lines.append(f"{r['env_steps_per_run']} env steps per run, {r['eval_episodes']} eval episodes per point; "
                 f"wall {r['wall_s'] / 60:.1f} min, CPU {r['cpu_s'] / 60:.1f} min; curves {r['csv']}, "
                 f"plot {r['png'][-1]}")
    return "\n".join(lines)


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("ablation", run, a, summary, errors=(*BENCH_ERRORS, ValueError))


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.finetune_ablation", __doc__, add_arguments, run_from_args, argv,
                           formatter=argparse.RawDescriptionHelpFormatter)


if __name__ == "__main__":
    raise SystemExit(main())
