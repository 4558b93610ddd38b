"""`dfp bench ogbench`: DFP on an OGBench single task, offline then online, beside Q-chunking's published points.

1. data: an OGBench-style play dataset of the scene, rewards of --task (`dfp make-play-dataset`): --dataset,
   or made in the work dir (--dataset-episodes) when missing;
2. offline: drift BC + critic (`Trainer`), the critic's terminal mask from `next.success` (a play episode's
   last frame is a time-out, not a terminal); every --eval-every steps the checkpoint is exported (ONNX,
   best-of-N with the critic) and evaluated over --eval-episodes seeded episodes of the single task
   (CubeSim, true success, whole chunks executed);
3. online: fine-tuning in the simulator, in this process (`sim_finetuning`: the acting model swapped every
   --export-every updates, transitions joined by the finetune node's rules, the replay seeded with the
   dataset), evaluated every --eval-every environment steps the same way.

Writes curve.csv, curve.png (with Q-chunking's points for the scene) and summary.json to the work dir after
every evaluation, and checkpoints there: a rerun with the same settings continues after the last evaluation
(none is repeated); a larger --offline-steps trains on from the last offline checkpoint as long as the online
phase has not started; other settings in the same work dir are refused. Prints a JSON line last.

Defaults are a reduced schedule for a 2-core CPU, ~30-40 min there with --torch-threads 1: 40k offline
steps and 40k online env steps, batch 64, 3 x 256 networks, 100 dataset episodes (such a machine trains
~45 offline steps/s and ~22 online updates/s at this size, but ~4 and ~0.6 at the reference size: 1M steps
would take days). QC's points lie at 100k-1M offline steps: the reduced curve is the start of the offline
curve, not a match. The reference schedule (QC's: 1M offline steps + 1M online env steps, batch 256,
4 x 512, OGBench's 1000-episode dataset), for a GPU:

  dfp bench ogbench --device cuda --learner-mode graphed --offline-steps 1000000 --online-env-steps 1000000 \\
    --eval-every 100000 --batch-size 256 --hidden 512,512,512,512 --updates-per-step 1 --dataset-episodes 1000
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros import contracts
from dfp_ros.contracts import ContractError
from dfp_ros.tools import weak_bc
from dfp_ros.tools.arg_types import int_list
from dfp_ros.tools.bench_main import BENCH_ERRORS, run_and_report, standalone_main

# Published success rates to draw beside ours, by scene: Q-chunking's released curves (QC, OGBench single-task
# success rate, step-matched: offline training steps, then online environment steps after 1M offline steps).
# cube-triple's online figure comes without its step count: drawn as a level.
QC_REFERENCE: dict[str, dict[str, Any]] = {
    "cube-double-v0": {"source": "Q-chunking's released curves",
                       "offline": {100_000: 0.12, 200_000: 0.23, 500_000: 0.48, 1_000_000: 0.66},
                       "online": {100_000: 0.88}},
    "cube-triple-v0": {"source": "Q-chunking's released curves", "offline": {1_000_000: 0.05},
                       "online_end": 0.64},
}
# Average success (%) over the DFP paper's own task set (not these scenes alone), for the summary.
PAPER_AVERAGES = {"source": "the DFP paper's results table", "DFP (K = 4)": 95.6, "MVP": 80.4}

SUCCESS_KEY = "next.success"  # the critic's terminal mask: a success ends the task, a time-out does not
SEED_STRIDE = 10_000  # training episodes of run seed s are reset with TRAIN_SEED + s * SEED_STRIDE + episode
CSV_COLUMNS = ("phase", "offline_steps", "online_env_steps", "success_rate", "successes", "episodes",
               "cubes_placed", "wall_s", "cpu_s")
CONFIG_FILE, PROGRESS_FILE = "config.json", "progress.json"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's layout (the reference command) and shows every default."""


class OgbenchBenchError(ContractError):
    """The bench cannot run as asked (unknown scene or task, a dataset of another scene, another run's work dir)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="cube-double-v0", help="OGBench cube scene")
    p.add_argument("--task", type=int, default=2, help="OGBench task 1-5 of the scene (its single-task reward)")
    p.add_argument("--dataset", default=None,
                   help="play dataset of the scene labelled with --task's rewards (`dfp make-play-dataset`); "
                        "None: WORK_DIR/dataset, made there when missing")
    p.add_argument("--dataset-episodes", type=int, default=100,
                   help="episodes of the dataset made in the work dir (OGBench's cube-double set has 1000)")
    p.add_argument("--offline-steps", type=int, default=40_000,
                   help="offline training steps; a finished run's may grow until its online phase starts")
    p.add_argument("--online-env-steps", type=int, default=40_000, help="online environment steps (0: none)")
    p.add_argument("--eval-every", type=int, default=10_000,
                   help="offline steps, and online env steps, between evaluations (each phase's end is one too)")
    p.add_argument("--eval-episodes", type=int, default=50, help="seeded episodes per evaluation")
    p.add_argument("--eval-seed", type=int, default=weak_bc.EVAL_SEED, help="evaluation episode i is reset with "
                                                                            "this + i")
    p.add_argument("--hidden", type=int_list, default=(256, 256, 256), help="actor and critic MLP widths")
    p.add_argument("--top-k", type=int, default=4, help="online: the top K of the N candidates are positives")
    weak_bc.add_learner_arguments(p)  # --batch-size (both phases), --warmup-steps, --updates-per-step, ...
    p.add_argument("--learner-mode", choices=contracts.LEARNER_STEP_MODES, default="eager",
                   help="the learner's step, offline and online: graphed replays one CUDA graph per update "
                        "(eager on a CPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed (networks, batches, training episodes)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the networks train")
    p.add_argument("--offline-from", default=None, metavar="DIR",
                   help="offline checkpoints trained on another machine (scripts/gpu_ogbench_offline.sh): "
                        "DIR/step_<k> for each evaluation step k, evaluated here instead of trained")
    p.add_argument("--work-dir", default=None,
                   help="checkpoints, curve.csv/png, summary.json (default: outputs/bench_ogbench/"
                        "<scene>-task<k>-s<seed>)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (leave cores to others)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[bench ogbench] {msg}", file=sys.stdout)
    sys.stdout.flush()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def work_dir(a: argparse.Namespace) -> Path:
    return Path(a.work_dir or f"outputs/bench_ogbench/{a.env.removesuffix('-v0')}-task{a.task}-s{a.seed}")


def check_arguments(a: argparse.Namespace) -> None:
    """OgbenchBenchError (or PlayDatasetError) naming the first setting that cannot run."""
    from dfp_ros.sim.play_datasets import PlayConfig

    PlayConfig(env_name=a.env, task_id=a.task).check()  # a scene and task OGBench defines
    for name in ("offline_steps", "eval_every", "eval_episodes", "dataset_episodes", "export_every",
                 "num_candidates", "torch_threads"):
        if getattr(a, name) < 1:
            raise OgbenchBenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.online_env_steps < 0 or a.warmup_steps < 0 or a.updates_per_step < 0:
        raise OgbenchBenchError("--online-env-steps, --warmup-steps and --updates-per-step must be >= 0")
    if a.batch_size < 2 or not a.hidden or min(a.hidden) < 1:
        raise OgbenchBenchError(f"--batch-size must be >= 2 and --hidden positive widths, got {a.batch_size}, "
                                f"{a.hidden}")
    if not 1 <= a.top_k <= a.num_candidates:
        raise OgbenchBenchError(f"--top-k must be in 1..--num-candidates ({a.num_candidates}), got {a.top_k}")


def check_dataset(root: Path, env: str, task: int) -> None:
    """OgbenchBenchError unless root is a LeRobot dataset with the scene's state and actions (names and sizes,
    as CubeSim gives them) and task rewards; a play dataset must be labelled with this scene and task."""
    from dfp_ros.sim.play_datasets import read_config
    from dfp_ros.sim.scene_pool import borrowed_scene

    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise OgbenchBenchError(f"dataset {root} is not a LeRobot dataset (no meta/info.json); make one with "
                                f"`dfp make-play-dataset --env {env} --task {task} --root {root}`")
    features = json.loads(info_path.read_text())["features"]
    with borrowed_scene(env, task) as sim:
        layouts = {"observation.state": sim.state_names, "action": sim.action_names}
    for key, names in layouts.items():
        if key not in features:
            raise OgbenchBenchError(f"dataset {root} has no {key!r} column; {env} needs one of {len(names)} values")
        size, have = int(np.prod(features[key]["shape"])), features[key].get("names")
        if size != len(names):
            raise OgbenchBenchError(f"dataset {root}: {key} has {size} values, {env}'s has {len(names)}: it was not "
                                    "recorded in this scene")
        if have is not None and list(have) != names:
            i = next((i for i, (x, y) in enumerate(zip(have, names, strict=False)) if x != y), len(names))
            raise OgbenchBenchError(f"dataset {root}: {key} is named differently from {env}'s state: value {i} is "
                                    f"{have[i] if i < len(have) else None!r} there, {names[i]!r} in the scene")
    missing = [k for k in ("next.reward", SUCCESS_KEY) if k not in features]
    if missing:
        raise OgbenchBenchError(f"dataset {root} has no {' / '.join(missing)} column: label it with the task's "
                                "rewards (`dfp make-play-dataset`)")
    made = read_config(root)
    if made is not None and (made.get("env_name"), made.get("task_id")) != (env, task):
        raise OgbenchBenchError(f"dataset {root} holds {made.get('env_name')} with task {made.get('task_id')}'s "
                                f"rewards, not {env} task {task}'s")


def run_config(a: argparse.Namespace, dataset: Path, made_here: bool) -> dict[str, Any]:
    """What decides the curve; a work dir is only ever continued with the same."""
    # A given dataset's size is part of the run: one grown later (`dfp make-play-dataset` appends) is another run.
    info = dataset / "meta" / "info.json"
    given = json.loads(info.read_text()).get("total_episodes") if not made_here and info.is_file() else None
    return {"env": a.env, "task": a.task, "dataset": str(dataset.resolve()),
            "dataset_episodes": a.dataset_episodes if made_here else given,
            **{k: getattr(a, k) for k in ("offline_steps", "online_env_steps", "eval_every", "eval_episodes",
                                          "eval_seed", "batch_size", "top_k", "num_candidates", "warmup_steps",
                                          "updates_per_step", "export_every", "seed", "device", "learner_mode")},
            "hidden": list(a.hidden),
            **({"offline_from": str(Path(a.offline_from).resolve())} if a.offline_from else {})}


def check_work_dir(work: Path, config: dict[str, Any]) -> None:
    """Refuses a work dir holding a run with other settings, but for a longer offline phase whose online phase has
    not begun: there is no learning-rate schedule, so training on from the last checkpoint is the longer run."""
    path = work / CONFIG_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    differing = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
    if differing == ["offline_steps"] and config["offline_steps"] > stored["offline_steps"]:
        if Progress(work).done("online"):
            raise OgbenchBenchError(
                f"{work}'s online phase started from its offline checkpoint at {stored['offline_steps']} steps: "
                f"the offline phase can no longer grow to {config['offline_steps']}; choose another --work-dir "
                "(nothing was changed)")
        _log(f"{work}: the offline phase grows from {stored['offline_steps']} to {config['offline_steps']} steps")
        return
    diff = [f"{k}: {stored.get(k)!r} there, {config.get(k)!r} asked" for k in differing]
    if diff:
        raise OgbenchBenchError(f"{work} holds a run with other settings ({'; '.join(diff)}); rerun with its settings "
                                "to continue it, or choose another --work-dir (nothing was changed)")


def checkpoints(every: int, end: int) -> list[int]:
    """Evaluation points of a phase: every `every` steps and its end."""
    return [*range(every, end, every), end] if end > 0 else []


class Progress:
    """The evaluations so far and where the online phase stands, in WORK/progress.json (rewritten whole, atomically,
    after each evaluation); wall and CPU time summed over the sessions that produced them."""

    def __init__(self, work: Path) -> None:
        self.path = work / PROGRESS_FILE
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.evaluations: list[dict[str, Any]] = saved.get("evaluations", [])
        self.online_checkpoint: str | None = saved.get("online_checkpoint")
        self.dataset_s: float = saved.get("dataset_s", 0.0)
        self._wall0, self._cpu0 = saved.get("wall_s", 0.0), saved.get("cpu_s", 0.0)
        self._started: tuple[float, float] | None = None
        self.evaluated_now = 0

    def start_clock(self) -> None:
        """Time from here on counts (the dataset's generation is kept apart, in `dataset_s`)."""
        self._started = (time.monotonic(), weak_bc.cpu_seconds())

    def elapsed(self) -> tuple[float, float]:
        """(wall, CPU) seconds: the earlier sessions' and this one's since `start_clock`."""
        if self._started is None:
            return self._wall0, self._cpu0
        t0, c0 = self._started
        return (round(self._wall0 + time.monotonic() - t0, 1), round(self._cpu0 + weak_bc.cpu_seconds() - c0, 1))

    def add(self, row: dict[str, Any], online_checkpoint: str | None = None) -> dict[str, Any]:
        row["wall_s"], row["cpu_s"] = self.elapsed()
        self.evaluations.append(row)
        self.online_checkpoint = online_checkpoint or self.online_checkpoint
        self.evaluated_now += 1
        self.save()
        return row

    def save(self) -> None:
        wall, cpu = self.elapsed()
        _write_json(self.path, {"evaluations": self.evaluations, "online_checkpoint": self.online_checkpoint,
                                "dataset_s": self.dataset_s, "wall_s": wall, "cpu_s": cpu})

    def done(self, phase: str) -> list[dict[str, Any]]:
        return [e for e in self.evaluations if e["phase"] == phase]


def _evaluate(model: Path, a: argparse.Namespace) -> dict[str, Any]:
    return weak_bc.evaluate_model(model, a.eval_episodes, a.task, a.eval_seed, env_name=a.env)


def offline_phase(a: argparse.Namespace, work: Path, dataset: Path, progress: Progress,
                  report: Callable[[dict[str, Any]], None]) -> Path:
    """Drift BC + critic to --offline-steps (or checkpoints trained elsewhere, --offline-from), evaluated at each
    checkpoint; returns the last checkpoint."""
    run_dir = work / "offline"
    ckpt = run_dir / "checkpoints" / "last"
    done = {e["offline_steps"] for e in progress.done("offline")}
    for k in checkpoints(a.eval_every, a.offline_steps):
        if k in done:
            continue
        if a.offline_from:
            import_checkpoint(Path(a.offline_from), k, a, ckpt)
        else:
            train_to(k, a, run_dir, dataset, work)
        ev = _evaluate(weak_bc.export_model(ckpt, work / "models" / "offline_eval.onnx", a.num_candidates), a)
        row = progress.add({"phase": "offline", "offline_steps": k, "online_env_steps": 0,
                            "success_rate": ev["success_rate"], "successes": ev["successes"],
                            "episodes": ev["episodes"], "cubes_placed": ev["cubes_placed"]})
        _log(f"offline step {k}: success {ev['success_rate']:.0%} ({ev['successes']}/{ev['episodes']})")
        report(row)
    return ckpt


def train_to(k: int, a: argparse.Namespace, run_dir: Path, dataset: Path, work: Path) -> None:
    """Drift BC + critic in this process, on from the last checkpoint to step `k`."""
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer

    # One Trainer per stretch, resumed from the last one's checkpoint (optimiser, RNG and step included).
    cfg = TrainConfig(root=str(dataset), output=str(run_dir), steps=k, batch_size=a.batch_size, seed=a.seed,
                      device=a.device, log_every=min(250, a.eval_every), checkpoint_every=a.eval_every,
                      done_key=SUCCESS_KEY, step_mode=a.learner_mode)
    trainer = Trainer(cfg, ModelConfig(actor_hidden=tuple(a.hidden), critic_hidden=tuple(a.hidden),
                                       use_critic=True), resume=True, progress=not a.no_progress)
    if trainer.step > k:
        raise OgbenchBenchError(f"{run_dir / 'checkpoints' / 'last'} is at step {trainer.step}, past the evaluation "
                                f"at {k} that {work / PROGRESS_FILE} lacks; choose another --work-dir")
    _log(f"offline: training to step {k} (from {trainer.step}), {len(trainer.data)} frames")
    trainer.run()


def import_checkpoint(folder: Path, k: int, a: argparse.Namespace, ckpt: Path) -> None:
    """`folder`/step_<k> (model and config, trained elsewhere with this run's settings), a folder or the .tar
    scripts/gpu_ogbench_offline.sh returns, becomes `ckpt`."""
    import tarfile

    from dfp_ros.learning.model import CONFIG_FILE as CKPT_CONFIG
    from dfp_ros.learning.model import WEIGHTS_FILE

    src, names = folder / f"step_{k:07d}", (WEIGHTS_FILE, CKPT_CONFIG)
    files: dict[str, bytes] = {}
    if src.is_dir():
        files = {name: (src / name).read_bytes() for name in names if (src / name).is_file()}
    elif src.with_suffix(".tar").is_file():
        src = src.with_suffix(".tar")
        try:
            with tarfile.open(src) as tar:  # only the two files, by name: nothing else is written
                files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name in names and m.isfile()}
        except tarfile.TarError as e:
            raise OgbenchBenchError(f"--offline-from: {src} is not a readable tar ({e})") from e
    if set(files) != set(names):
        raise OgbenchBenchError(f"--offline-from: no checkpoint {src} ({' + '.join(names)}, a folder or a .tar) "
                                f"for the evaluation at {k} steps")
    saved = json.loads(files[CKPT_CONFIG])
    train, model = saved.get("train_config", {}), saved.get("model_config", {})
    found = {"step": saved.get("step"), "hidden": model.get("actor_hidden"), "batch size": train.get("batch_size"),
             "done key": train.get("done_key"), "critic": model.get("use_critic")}
    wanted = {"step": k, "hidden": list(a.hidden), "batch size": a.batch_size, "done key": SUCCESS_KEY,
              "critic": True}
    differ = [f"{name} {found[name]!r} (this run: {wanted[name]!r})" for name in wanted if found[name] != wanted[name]]
    if differ:
        raise OgbenchBenchError(f"--offline-from: {src} was trained otherwise: {'; '.join(differ)}")
    shutil.rmtree(ckpt, ignore_errors=True)
    ckpt.mkdir(parents=True)
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    _log(f"offline step {k}: checkpoint trained elsewhere, {src}")


def online_phase(a: argparse.Namespace, work: Path, dataset: Path, start: Path, progress: Progress,
                 report: Callable[[dict[str, Any]], None]) -> None:
    """Fine-tuning in the simulator for --online-env-steps from `start`, or from the last online checkpoint."""
    import torch
    from tqdm import tqdm

    from dfp_ros.learning.dataset import ChunkDataset
    from dfp_ros.learning.online import OnlineConfig, OnlineLearner
    from dfp_ros.learning.replay_buffer import ReplayBuffer
    from dfp_ros.learning.transitions import TransitionJoiner
    from dfp_ros.sim.cube_env import CubeSim
    from dfp_ros.tools.sim_finetuning import SimFinetuner, UpdateSchedule, export_acting_model, learner_folder

    online_dir = work / "online"
    saved = online_dir / progress.online_checkpoint if progress.online_checkpoint else None
    learner, _ = OnlineLearner.load(learner_folder(saved) if saved else start, OnlineConfig(
        num_candidates=a.num_candidates, top_k=a.top_k, batch_size=a.batch_size), a.device, step_mode=a.learner_mode)
    if saved is None:  # a fresh start seeds the learner the way the learner loop does
        learner.rng = np.random.default_rng(a.seed)
        torch.manual_seed(a.seed)
    meta = learner.model.meta
    offline = ChunkDataset("", str(dataset), horizon=meta.horizon, state_keys=[s.key for s in meta.state],
                           image_keys=[], done_key=SUCCESS_KEY, progress=False)
    # Chunk transitions are fewer than env steps: the ring never overwrites within the budget.
    replay = ReplayBuffer(meta.state_dim, meta.horizon, meta.action_dim, capacity=max(1, a.online_env_steps),
                          offline=offline)
    joiner = TransitionJoiner(meta.horizon, robot="ogbench", reward_mode="per_step")
    train_seed = weak_bc.TRAIN_SEED + a.seed * SEED_STRIDE
    tuner = SimFinetuner(learner, replay, joiner, UpdateSchedule(a.warmup_steps, a.updates_per_step, a.batch_size,
                                                                 a.export_every, a.num_candidates),
                         snapshot=online_dir / "acting.onnx", act_rng=np.random.default_rng(train_seed))
    done = progress.done("online")
    train_successes = done[-1]["train_successes"] if done else 0
    if saved is not None:
        tuner.restore(saved)
        _log(f"online: resumed at {tuner.env_steps} env steps, {learner.updates} updates")
    pending = [c for c in checkpoints(a.eval_every, a.online_env_steps) if c > tuner.env_steps]
    bar = tqdm(total=a.online_env_steps, initial=tuner.env_steps, unit="step", desc="online", mininterval=5.0,
               disable=a.no_progress, file=sys.stderr)
    with CubeSim(a.env, task_id=a.task, seed=train_seed) as sim:
        while tuner.env_steps < a.online_env_steps:
            # Episode i is reset with its own seed, so a resumed run meets the scenes an uninterrupted one would.
            rec = tuner.episode(sim, seed=train_seed + tuner.episodes)
            train_successes += int(rec.success)
            bar.update(rec.steps)
            bar.set_postfix(updates=learner.updates, successes=train_successes, refresh=False)
            if not (pending and pending[0] <= tuner.env_steps) and tuner.env_steps < a.online_env_steps:
                continue
            pending = [c for c in pending if c > tuner.env_steps]
            ev = _evaluate(export_acting_model(learner, work / "models" / "online_eval.onnx", a.num_candidates), a)
            name = f"checkpoint-{tuner.env_steps}"
            shutil.rmtree(online_dir / name, ignore_errors=True)  # left by a session stopped before recording it
            tuner.save(online_dir / name)
            row = progress.add({"phase": "online", "offline_steps": a.offline_steps,
                                "online_env_steps": tuner.env_steps, "success_rate": ev["success_rate"],
                                "successes": ev["successes"], "episodes": ev["episodes"],
                                "cubes_placed": ev["cubes_placed"], "updates": learner.updates,
                                "train_episodes": tuner.episodes,
                                "train_successes": train_successes, "models_swapped": tuner.models_swapped,
                                "replay_online": replay.size, "dropped": dict(joiner.dropped),
                                **{k: round(v, 5) for k, v in tuner.losses().items()
                                   if k in ("critic_loss", "q_mean", "topk_q")}}, online_checkpoint=name)
            for old in online_dir.glob("checkpoint-*"):
                if old.name != name:
                    shutil.rmtree(old)
            _log(f"online {tuner.env_steps} env steps ({tuner.episodes} episodes, {train_successes} successful; "
                 f"{learner.updates} updates): success {ev['success_rate']:.0%} ({ev['successes']}/{ev['episodes']})")
            report(row)
    bar.close()


def write_curve(work: Path, evaluations: list[dict[str, Any]]) -> None:
    with (work / "curve.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(evaluations)


def _steps_label(x: float, _pos: int | None = None) -> str:
    """A step count as a short label: 500, 10k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def plot_curve(path: Path, evaluations: list[dict[str, Any]], env: str, title: str) -> None:
    """Two panels, log steps: success vs offline steps, then vs online env steps; QC's points as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ref = QC_REFERENCE.get(env, {})
    fig, (ax_off, ax_on) = plt.subplots(1, 2, figsize=(10, 4.3), sharey=True)
    for ax, phase, x_key, xlabel in ((ax_off, "offline", "offline_steps", "offline training steps"),
                                     (ax_on, "online", "online_env_steps", "online environment steps")):
        rows = [e for e in evaluations if e["phase"] == phase]
        if rows:
            xs = [e[x_key] for e in rows]
            (line,) = ax.plot(xs, [e["success_rate"] for e in rows], marker="o", label="DFP success (this run)")
            if all("cubes_placed" in e for e in rows):  # partial progress, where success is still rare
                ax.plot(xs, [e["cubes_placed"] for e in rows], marker=".", linestyle="--", color=line.get_color(),
                        alpha=0.6, label="DFP: share of cubes placed at the episode's end")
        points = ref.get(phase, {})
        if points:
            after = "; after its 1M offline steps" if phase == "online" else ""
            ax.plot(list(points), list(points.values()), linestyle="none", marker="s", color="black",
                    label=f"QC ({ref['source']}{after})")
        ax.set_xscale("log")
        # "10k", "1M" rather than 10^4, 10^6: easier to read beside QC's step counts, and no mathtext to typeset.
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    offline_rows = [e for e in evaluations if e["phase"] == "offline"]
    if offline_rows:
        ax_on.axhline(offline_rows[-1]["success_rate"], linestyle="--", color="gray", linewidth=1,
                      label="DFP at the end of offline")
    if "online_end" in ref:
        ax_on.axhline(ref["online_end"], linestyle=":", color="black", label="QC after online (steps not given)")
    ax_off.set_ylabel("success rate / cubes placed (seeded eval episodes)")
    ax_off.set_ylim(-0.02, 1.02)
    for ax in (ax_off, ax_on):
        if ax.has_data():
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def prepare_dataset(a: argparse.Namespace, root: Path, progress: Progress) -> None:
    """The play dataset in the work dir, made (or completed) with OGBench's procedure."""
    from dfp_ros.sim.play_datasets import PlayConfig, make_play_dataset

    t0 = time.monotonic()
    s = make_play_dataset(root, a.dataset_episodes, PlayConfig(env_name=a.env, task_id=a.task),
                          progress=not a.no_progress)
    if s.frames_added:
        progress.dataset_s = round(progress.dataset_s + time.monotonic() - t0, 1)
        progress.save()
        _log(f"dataset {root}: {s.episodes} play episodes ({s.frames_added} frames made in {s.seconds:.0f} s)")


def run(a: argparse.Namespace, on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole bench (see the module docstring); `on_evaluation(row)` after each evaluation is recorded."""
    import torch

    check_arguments(a)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise OgbenchBenchError("--device cuda: no CUDA device is visible to torch")
    work = work_dir(a)
    made_here = a.dataset is None
    dataset = work / "dataset" if made_here else Path(a.dataset)
    config = run_config(a, dataset, made_here)
    check_work_dir(work, config)
    if not made_here:
        check_dataset(dataset, a.env, a.task)
    work.mkdir(parents=True, exist_ok=True)
    (work / "models").mkdir(exist_ok=True)
    _write_json(work / CONFIG_FILE, config)
    torch.set_num_threads(a.torch_threads)
    progress = Progress(work)
    if made_here:
        prepare_dataset(a, dataset, progress)
        check_dataset(dataset, a.env, a.task)
    progress.start_clock()
    ref = QC_REFERENCE.get(a.env)
    online_part = (f" then online (K={a.top_k} of N={a.num_candidates}, {a.updates_per_step:g} updates/step)"
                   if a.online_env_steps else ", no online phase")
    title = (f"{a.env} task {a.task}: DFP offline (drift BC + critic, {'x'.join(map(str, a.hidden))}, batch "
             f"{a.batch_size}){online_part}\n{a.eval_episodes} seeded eval episodes per point; squares: "
             + (f"QC, {ref['source']}" if ref else "no published QC points for this scene"))

    def report(row: dict[str, Any]) -> None:
        write_curve(work, progress.evaluations)
        plot_curve(work / "curve.png", progress.evaluations, a.env, title)
        if on_evaluation is not None:
            on_evaluation(row)

    ckpt = offline_phase(a, work, dataset, progress, report)
    online = progress.done("online")
    if a.online_env_steps > 0 and not (online and online[-1]["online_env_steps"] >= a.online_env_steps):
        online_phase(a, work, dataset, ckpt, progress, report)
        online = progress.done("online")
    write_curve(work, progress.evaluations)
    plot_curve(work / "curve.png", progress.evaluations, a.env, title)
    wall, cpu = progress.elapsed()
    final = progress.evaluations[-1]
    result = {
        "env": a.env, "task": a.task, "offline_steps": a.offline_steps, "online_env_steps": a.online_env_steps,
        "evaluations": progress.evaluations, "final_success_rate": final["success_rate"],
        "evaluated_now": progress.evaluated_now, "device": a.device,
        "online": {k: online[-1][k] for k in ("updates", "train_episodes", "train_successes", "models_swapped",
                                              "replay_online", "dropped")} if online else {},
        "learner_mode": a.learner_mode, "torch_threads": a.torch_threads, "wall_s": wall, "cpu_s": cpu,
        "dataset_s": progress.dataset_s, "config": config, "qc_reference": _json_reference(ref),
        "paper_averages": PAPER_AVERAGES, "work_dir": str(work), "csv": str(work / "curve.csv"),
        "png": str(work / "curve.png"),
    }
    _write_json(work / "summary.json", result)
    return result


def _json_reference(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """QC's points with string step keys, as JSON writes them (so summary.json and the JSON line agree)."""
    if ref is None:
        return None
    return {k: ({str(s): v for s, v in val.items()} if isinstance(val, dict) else val) for k, val in ref.items()}


def summary(r: dict[str, Any]) -> str:
    def steps(e: dict[str, Any]) -> str:
        return f"offline {e['offline_steps']}" if e["phase"] == "offline" else f"online +{e['online_env_steps']}"

    lines = [f"{r['env']} task {r['task']}: " + ", ".join(
        f"{steps(e)}: {e['success_rate']:.0%}" + (f" ({e['cubes_placed']:.0%} of cubes placed)"
                                                  if e.get("cubes_placed") is not None else "")
        for e in r["evaluations"])]
    ref = r["qc_reference"]
    if ref:
        qc = [f"offline {s}: {v:.0%}" for s, v in ref["offline"].items()]
        qc += [f"online +{s}: {v:.0%}" for s, v in ref.get("online", {}).items()]
        qc += [f"after online: {ref['online_end']:.0%}"] if "online_end" in ref else []
        lines.append(f"QC ({ref['source']}): " + ", ".join(qc))
    lines.append(f"{r['evaluated_now']} evaluations this session; wall {r['wall_s'] / 60:.1f} min, CPU "
                 f"{r['cpu_s'] / 60:.1f} min (dataset {r['dataset_s']:.0f} s apart); curve {r['csv']}, plot {r['png']}")
    return "\n".join(lines)


def to_json(r: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the curve and its reference, without the run's details (those are in summary.json)."""
    evaluations = [{"phase": e["phase"], "steps": e["offline_steps" if e["phase"] == "offline" else "online_env_steps"],
                    "success_rate": e["success_rate"], "cubes_placed": e.get("cubes_placed")} for e in r["evaluations"]]
    return {"env": r["env"], "task": r["task"], "offline_steps": r["offline_steps"],
            "online_env_steps": r["online_env_steps"], "evaluations": evaluations,
            "final_success_rate": r["final_success_rate"], "device": r["device"],
            "cpu_minutes": round(r["cpu_s"] / 60, 2), "qc_reference": r["qc_reference"]}


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("ogbench", run, a, summary, errors=(*BENCH_ERRORS, ValueError), to_json=to_json)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.ogbench_bench", __doc__, add_arguments, run_from_args, argv,
                           formatter=HelpFormatter)


if __name__ == "__main__":
    raise SystemExit(main())
