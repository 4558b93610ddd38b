"""`dfp bench learner`: the learner's updates/s at the reference configuration, today's eager path against the
static-buffer step (`learning/graphed_step.py`) fed by the device replay (`learning/device_replay.py`).

Measured, in alternating rounds (a background load then hits every path alike; best round reported, all rounds
kept): the online update (critic TD step with the best-of-N target, top-K actor step, Polyak target, EMA), the
offline drift-BC step and the MSE-BC step. "eager_*" is what the learner and the trainer do today: a batch drawn
on the host from a `ReplayBuffer`, moved to the device, then eager PyTorch. The mode's figures draw the batch on
the device inside the step; with `--mode graphed` on CUDA the whole step is one CUDA graph replay.
`online_updates_per_s_host_replay` is `OnlineLearner(step_mode=mode)` fed from the host buffer, as the learner
process would run it with the option on.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dfp_ros import contracts
from dfp_ros.tools.arg_types import int_list
from dfp_ros.tools.bench_main import run_and_report, standalone_main
from dfp_ros.tools.train_bench import ACTION_DIM, STATE_DIM, _meta, _rate

if TYPE_CHECKING:  # torch is imported where the measurements run: `dfp --help` builds this bench's arguments
    import torch

    from dfp_ros.learning.replay_buffer import ReplayBuffer

HORIZON = 5
FILLED = 20_000  # transitions in the benchmark's replay (a tenth of them interventions, so the split is drawn)


def filled_replay(capacity: int, seed: int = 0) -> ReplayBuffer:
    """A host replay of random state transitions, a tenth of them interventions (demonstrations)."""
    import numpy as np

    from dfp_ros.learning.replay_buffer import ReplayBuffer
    from dfp_ros.learning.transitions import Transition

    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(STATE_DIM, HORIZON, ACTION_DIM, capacity=capacity)
    n = min(FILLED, capacity)
    states = rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32)
    chunks = rng.uniform(-1, 1, size=(n, HORIZON, ACTION_DIM)).astype(np.float32)
    for i in range(n):
        buf.add(Transition(states[i], chunks[i], -np.ones(HORIZON, np.float32), states[i + 1],
                           float(rng.random() > 0.05), intervention=bool(rng.random() < 0.1)))
    return buf


class _Setup:
    """The models, data and step functions of one measurement run."""

    def __init__(self, device: torch.device, mode: str, batch: int, hidden: tuple[int, ...], num_gen: int):
        import numpy as np
        import torch

        from dfp_ros.learning.config import DEFAULT_TEMPERATURES, ModelConfig
        from dfp_ros.learning.device_replay import DeviceReplay
        from dfp_ros.learning.model import DFPModel
        from dfp_ros.learning.online import OnlineConfig

        self.device, self.mode, self.batch, self.num_gen = device, mode, batch, num_gen
        self.temperatures = DEFAULT_TEMPERATURES
        torch.manual_seed(0)
        self.critic_model = DFPModel(_meta(HORIZON, True), ModelConfig(horizon=HORIZON, actor_hidden=hidden,
                                                                        critic_hidden=hidden, use_critic=True))
        self.actor_model = DFPModel(_meta(HORIZON, False), ModelConfig(horizon=HORIZON, actor_hidden=hidden))
        self.online_cfg = OnlineConfig(batch_size=batch, num_gen=num_gen)
        self.host = filled_replay(capacity=max(FILLED, 100_000))
        self.rng = np.random.default_rng(0)
        self.replay = DeviceReplay.from_buffer(self.host, device)

    def host_batch(self) -> Any:
        return self.host.sample(self.batch, self.rng)

    def online(self, step_mode: str, device_replay: bool) -> Callable[[], Any]:
        from dfp_ros.learning.graphed_step import StaticStep
        from dfp_ros.learning.online import OnlineLearner

        learner = OnlineLearner(copy.deepcopy(self.critic_model), self.online_cfg, self.device, step_mode=step_mode)
        if not device_replay:
            return lambda: learner.update(self.host_batch())
        step = StaticStep(learner.update_on, self.replay.empty_batch(self.batch), step_mode,
                          source=self.replay.sample_into, optimizers=(learner.actor_opt, learner.critic_opt),
                          name="online update")
        return step

    def offline(self, loss: str, step_mode: str | None) -> Callable[[], Any]:
        """step_mode None: today's trainer path (host batch moved to the device, eager)."""
        import torch

        from dfp_ros.learning.graphed_step import StaticStep, bc_step

        model = copy.deepcopy(self.actor_model).to(self.device)
        opt = torch.optim.Adam(model.actor.parameters(), lr=3e-4)
        fn = bc_step(model, opt, loss, self.num_gen, self.temperatures)
        if step_mode is None:
            return lambda: fn(self.host_batch().to(self.device))
        return StaticStep(fn, self.replay.empty_batch(self.batch), step_mode, source=self.replay.sample_into,
                          optimizers=(opt,), name=f"offline {loss} step")


def bench_learner(device: torch.device, mode: str = "graphed", seconds: float = 5.0, batch: int = 256,
                  hidden: tuple[int, ...] = (512, 512, 512, 512), num_gen: int = 8, rounds: int = 3
                  ) -> dict[str, Any]:
    import torch

    from dfp_ros.learning.graphed_step import WARMUP_STEPS

    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device cuda, but this torch ({torch.__version__}) sees no CUDA device")
    setup = _Setup(device, mode, batch, hidden, num_gen)
    effective = "graphed" if mode == "graphed" and device.type == "cuda" else "eager"
    fns: dict[str, Callable[[], Any]] = {
        "eager_online": setup.online("eager", device_replay=False),
        "online": setup.online(mode, device_replay=True),
        "online_host_replay": setup.online(mode, device_replay=False),
        "eager_offline": setup.offline("drift", None),
        "offline": setup.offline("drift", mode),
        "eager_mse": setup.offline("mse", None),
        "mse": setup.offline("mse", mode),
    }
    rates: dict[str, list[float]] = {k: [] for k in fns}
    first_s: dict[str, float] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            if r == 0:  # a graphed step's eager warm-ups; `_rate`'s own then capture and replay it
                for _ in range(WARMUP_STEPS):
                    fn()
            rate = _rate(fn, seconds / rounds, device)
            if r == 0:
                first_s[name] = round(time.perf_counter() - t0 - seconds / rounds, 2)
            rates[name].append(round(rate, 2))
    best = {k: max(v) for k, v in rates.items()}
    res: dict[str, Any] = {
        "device": str(device), "mode": effective, "requested_mode": mode, "batch": batch, "hidden": list(hidden),
        "num_candidates": setup.online_cfg.num_candidates, "top_k": setup.online_cfg.top_k, "num_gen": num_gen,
        "online_updates_per_s": best["online"], "offline_steps_per_s": best["offline"],
        "mse_steps_per_s": best["mse"], "drift_overhead": round(best["mse"] / best["offline"] - 1.0, 3),
        "online_updates_per_s_host_replay": best["online_host_replay"],
        "eager_online_updates_per_s": best["eager_online"], "eager_offline_steps_per_s": best["eager_offline"],
        "eager_mse_steps_per_s": best["eager_mse"],
        "eager_drift_overhead": round(best["eager_mse"] / best["eager_offline"] - 1.0, 3),
        "online_speedup": round(best["online"] / best["eager_online"], 3),
        "offline_speedup": round(best["offline"] / best["eager_offline"], 3),
        "rounds": rates, "warmup_s": first_s, "seconds": seconds,
    }
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
        res["cuda_max_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--mode", choices=contracts.LEARNER_STEP_MODES, default="graphed",
                   help="the static-buffer step's mode (graphed runs eagerly on a CPU)")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement, split over the rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", type=int_list, default=(512, 512, 512, 512))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-gen", type=int, default=8)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dfp_ros.learning.trainer import select_device

    if a.seconds <= 0 or a.rounds < 1 or a.batch_size < 1:
        raise RuntimeError("--seconds must be > 0, --rounds and --batch-size >= 1")
    res = bench_learner(select_device(a.device), mode=a.mode, seconds=a.seconds, batch=a.batch_size,
                        hidden=tuple(a.hidden), num_gen=a.num_gen, rounds=a.rounds)
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    res["cpu_count"] = os.cpu_count()
    return res


def summary(res: dict[str, Any]) -> str:
    def spread(name: str) -> str:
        v = res["rounds"][name]
        return f"(rounds {min(v):.1f}-{max(v):.1f})"

    mode = res["mode"] + (" (asked: graphed; no CUDA graphs on a CPU)" if res["mode"] != res["requested_mode"] else "")
    return "\n".join([
        f"learner throughput on {res['device']}, step mode {mode}, batch {res['batch']}, "
        f"actor/critics {res['hidden']}, N={res['num_candidates']} K={res['top_k']} G={res['num_gen']}:",
        "                           today (eager, host replay)      static step, device replay",
        f"  online update /s     {res['eager_online_updates_per_s']:10.1f} {spread('eager_online'):22s}"
        f"{res['online_updates_per_s']:10.1f} {spread('online')}",
        f"  offline drift-BC /s  {res['eager_offline_steps_per_s']:10.1f} {spread('eager_offline'):22s}"
        f"{res['offline_steps_per_s']:10.1f} {spread('offline')}",
        f"  offline MSE-BC /s    {res['eager_mse_steps_per_s']:10.1f} {spread('eager_mse'):22s}"
        f"{res['mse_steps_per_s']:10.1f} {spread('mse')}",
        f"  drift overhead over MSE: {100 * res['eager_drift_overhead']:.1f}% today, "
        f"{100 * res['drift_overhead']:.1f}% static",
        f"  online update with the learner's option ({res['mode']}, host replay): "
        f"{res['online_updates_per_s_host_replay']:.1f} /s {spread('online_host_replay')}",
    ])


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("learner", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.learner_bench", __doc__.splitlines()[0], add_arguments,
                           run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
