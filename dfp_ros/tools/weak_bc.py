"""The starting point of both fine-tuning benchmarks: a deliberately weak BC policy + critic, and its evaluation.

`dfp bench finetune` (through the ROS graph) and `dfp bench ablation` (in one process) start from the
same checkpoint (`prepare_weak_bc`), export it the way the robot gets it (`export_model`) and score it
on the same seeded episodes (`evaluate_model`).
"""

from __future__ import annotations

import argparse
import resource
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.arg_types import int_list

EVAL_SEED = 100_000
TRAIN_SEED = 1_000
DEFAULT_WORK_DIR = "outputs/bench_finetune"


def add_weak_bc_arguments(p: argparse.ArgumentParser) -> None:
    """The weak BC starting point and its evaluation."""
    p.add_argument("--demos", type=int, default=20, help="oracle demonstrations for the weak BC policy")
    p.add_argument("--bc-steps", type=int, default=500, help="offline BC (+ critic) training steps")
    p.add_argument("--hidden", default="256,256,256", help="actor and critic MLP widths")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    p.add_argument("--task-id", type=int, default=1)


def add_learner_arguments(p: argparse.ArgumentParser) -> None:
    """Online learner settings of both benchmarks (the ablation sweeps --top-k / --lam itself)."""
    p.add_argument("--warmup-steps", type=int, default=2000)
    p.add_argument("--updates-per-step", type=float, default=0.5)
    # 64, not the reference's 256: the learner then keeps up with the simulator on 2 CPU cores.
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-candidates", type=int, default=16)
    p.add_argument("--export-every", type=int, default=500, help="learner updates between models swapped in")


def evaluate_model(model: Path, episodes: int, task_id: int, seed: int,
                   env_name: str = "cube-single-v0") -> dict[str, Any]:
    """Success over `episodes` seeded episodes, best-of-N through the runtime the robot uses."""
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.evaluate import evaluate

    rt = PolicyRuntime(model, device="cpu")
    rng = np.random.default_rng(seed)
    res = evaluate(lambda s: rt.act(s, None, rng).chunk, episodes, env_name=env_name, task_id=task_id, seed=seed)
    return {**res, "model_sha256": rt.sha256}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def export_model(ckpt: Path, out: Path, num_candidates: int) -> Path:
    """A checkpoint exported as `dfp export` does it: with its critic, best-of-`num_candidates`, float32."""
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    export_onnx(model, out, num_samples=num_candidates, with_critic=model.critic is not None)
    return out


def prepare_weak_bc(work: Path, demos: int, bc_steps: int, hidden: str, task_id: int,
                    log: Callable[[str], None]) -> tuple[Path, Path]:
    """A deliberately weak BC policy + critic: (dataset folder, checkpoint folder) under `work`.

    `demos` oracle demonstrations (with rewards) -> BC + critic training for `bc_steps` steps. What is
    already in `work` is reused, so several benchmarks can start from the very same policy.
    """
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer
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
        cfg = TrainConfig(root=str(data), output=str(run_dir), steps=bc_steps, batch_size=256, log_every=250,
                          checkpoint_every=bc_steps)
        mcfg = ModelConfig(actor_hidden=int_list(hidden), critic_hidden=int_list(hidden), use_critic=True)
        Trainer(cfg, mcfg, progress=False).run()
    return data, ckpt
