"""`dfp bench train`: training throughput at the reference configuration: drift BC step vs MSE BC step vs the
loss alone, and the fine-tuning learner's update."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dfp_ros.contracts import ModelMetadata, StateSpec
from dfp_ros.tools.arg_types import int_list
from dfp_ros.tools.bench_main import run_and_report, standalone_main

if TYPE_CHECKING:  # torch is imported where the measurements run: `dfp --help` builds this bench's arguments
    import torch

# cube-single shapes: 28 state numbers, 5 action dimensions, H = 5.
STATE_DIM, ACTION_DIM = 28, 5


def _rate(fn: Callable[[], None], seconds: float, device: torch.device) -> float:
    import torch

    for _ in range(3):  # warm-up (allocator, kernels, cuDNN autotune)
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync()
    return n / (time.perf_counter() - t0)


def _meta(horizon: int, has_critic: bool) -> ModelMetadata:
    return ModelMetadata(state=[StateSpec("observation.state", STATE_DIM)], cameras=[], action_key="action",
                         action_names=[f"a{i}" for i in range(ACTION_DIM)], horizon=horizon,
                         action_dim=ACTION_DIM, fps=20.0, num_samples=1, has_critic=has_critic,
                         action_low=[-1.0] * ACTION_DIM, action_high=[1.0] * ACTION_DIM)


def bench_online_update(device: torch.device, seconds: float, batch: int, hidden: tuple[int, ...],
                        horizon: int) -> float:
    """Fine-tuning learner updates/s: critic TD step (best-of-16 target) + top-4-of-16 actor step + EMA."""
    import torch

    from dfp_ros.learning.config import ModelConfig
    from dfp_ros.learning.dataset import ChunkBatch
    from dfp_ros.learning.model import DFPModel
    from dfp_ros.learning.online import OnlineConfig, OnlineLearner

    model = DFPModel(_meta(horizon, True), ModelConfig(horizon=horizon, actor_hidden=hidden, critic_hidden=hidden,
                                                        use_critic=True))
    learner = OnlineLearner(model, OnlineConfig(batch_size=batch), device=device)
    data = ChunkBatch(state=torch.randn(batch, STATE_DIM), images={},
                      chunk=torch.rand(batch, horizon, ACTION_DIM) * 2 - 1, rewards=torch.zeros(batch, horizon),
                      next_state=torch.randn(batch, STATE_DIM), mask=torch.ones(batch)).to(device)
    return _rate(lambda: learner.update(data), seconds, device)


def bench_training(device: torch.device, seconds: float = 5.0, batch: int = 256, num_gen: int = 8,
                   hidden: tuple[int, ...] = (512, 512, 512, 512), horizon: int = 5,
                   temperatures: tuple[float, ...] | None = None) -> dict[str, float]:
    import torch

    from dfp_ros.learning.config import DEFAULT_TEMPERATURES, ModelConfig
    from dfp_ros.learning.dataset import ChunkBatch
    from dfp_ros.learning.drift_loss import drift_loss, enable_compile
    from dfp_ros.learning.model import DFPModel
    from dfp_ros.learning.objectives import drift_bc_loss, mse_bc_loss

    temperatures = DEFAULT_TEMPERATURES if temperatures is None else temperatures
    meta = _meta(horizon, False)
    model = DFPModel(meta, ModelConfig(horizon=horizon, actor_hidden=hidden)).to(device)
    opt = torch.optim.Adam(model.actor.parameters(), lr=3e-4)
    data = ChunkBatch(state=torch.randn(batch, STATE_DIM, device=device), images={},
                      chunk=torch.rand(batch, horizon, ACTION_DIM, device=device) * 2 - 1)

    def step(objective: Callable) -> Callable[[], None]:
        def run() -> None:
            loss, _ = objective()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    gen = torch.randn(batch, num_gen, meta.noise_dim, device=device, requires_grad=True)
    pos = torch.randn(batch, 1, meta.noise_dim, device=device)

    def loss_only() -> None:
        drift_loss(gen, pos, temperatures=temperatures).mean().backward()

    # Three alternating rounds, best of each: a background load then hits all three alike.
    fns = {"drift": step(lambda: drift_bc_loss(model, data, num_gen, temperatures)),
           "mse": step(lambda: mse_bc_loss(model, data, num_gen)), "alone": loss_only}
    best = dict.fromkeys(fns, 0.0)
    for _ in range(3):
        for k, fn in fns.items():
            best[k] = max(best[k], _rate(fn, seconds / 3, device))
    drift, mse, alone = best["drift"], best["mse"], best["alone"]
    extra = {}
    if device.type == "cuda":  # the trainer compiles the loss on CUDA; measure that too
        enable_compile(True)
        extra = {"drift_bc_compiled_steps_per_s": round(_rate(fns["drift"], seconds, device), 2),
                 "drift_loss_alone_compiled_per_s": round(_rate(loss_only, seconds, device), 2)}
        extra["drift_compiled_overhead_pct"] = round(100.0 * (mse / extra["drift_bc_compiled_steps_per_s"] - 1), 1)
        enable_compile(False)
    extra["online_update_per_s"] = round(bench_online_update(device, seconds, batch, hidden, horizon), 2)
    return {
        "device": str(device), "batch": batch, "num_gen": num_gen, "hidden": list(hidden),
        "temperatures": list(temperatures), "threads": torch.get_num_threads(),
        "drift_bc_steps_per_s": round(drift, 2), "mse_bc_steps_per_s": round(mse, 2),
        "drift_loss_alone_per_s": round(alone, 2),
        "drift_overhead_pct": round(100.0 * (mse / drift - 1.0), 1), **extra,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    p.add_argument("--hidden", type=int_list, default=(512, 512, 512, 512))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-gen", type=int, default=8)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dfp_ros.learning.trainer import select_device

    res: dict[str, Any] = bench_training(select_device(a.device), seconds=a.seconds, batch=a.batch_size,
                                         num_gen=a.num_gen, hidden=tuple(a.hidden))
    res["torch"] = torch.__version__
    res["cpu_count"] = os.cpu_count()
    return res


def summary(res: dict[str, Any]) -> str:
    lines = [f"training throughput on {res['device']} (batch {res['batch']} x {res['num_gen']}, "
             f"actor {res['hidden']}):",
             f"  drift BC step   {res['drift_bc_steps_per_s']:8.1f} steps/s",
             f"  MSE BC step     {res['mse_bc_steps_per_s']:8.1f} steps/s",
             f"  drift loss only {res['drift_loss_alone_per_s']:8.1f} calls/s",
             f"  drift overhead over MSE: {res['drift_overhead_pct']:.1f}% (goal <= 25%)",
             f"  fine-tuning learner update (critic + top-4-of-16 actor + EMA) {res['online_update_per_s']:8.1f} /s"]
    if "drift_bc_compiled_steps_per_s" in res:
        lines.append(f"  drift BC step, compiled loss {res['drift_bc_compiled_steps_per_s']:8.1f} steps/s "
                     f"(overhead {res['drift_compiled_overhead_pct']:.1f}%)")
    return "\n".join(lines)


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("train", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.train_bench", __doc__.splitlines()[0], add_arguments,
                           run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
