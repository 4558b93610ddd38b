"""The whole offline pipeline on the simulated robot, in one command.

OGBench's scripted expert -> a LeRobot dataset -> training (as `dfp train`) -> ONNX export (as `dfp export`)
-> success rate of the
exported ONNX model in the simulator (through the same runtime loader the robot uses). With
`--bundle PATH` the exported model is also copied there: this is how models/cube_single.onnx is made.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from dfp_ros.contracts import ContractError
from dfp_ros.tools.arg_types import int_list


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dfp_ros.tools.train_demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", default="outputs/train_demo", help="work folder (dataset, run, model)")
    p.add_argument("--task-id", type=int, default=1, help="cube-single task")
    p.add_argument("--episodes", type=int, default=100, help="expert demonstrations")
    p.add_argument("--steps", type=int, default=5000, help="training steps")
    p.add_argument("--hidden", default="256,256,256,256", help="actor MLP widths")
    p.add_argument("--critic", action="store_true", help="also train the chunk critic (best-of-N acting)")
    p.add_argument("--eval-episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", default=None, help="copy the exported model to this path")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import load_checkpoint
    from dfp_ros.learning.trainer import Trainer
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.evaluate import evaluate
    from dfp_ros.sim.oracle_demos import collect_oracle_dataset

    out = Path(a.output)
    if a.fresh and out.exists():
        shutil.rmtree(out)
    data, run, model = out / "dataset", out / "run", out / "cube_single.onnx"
    t0 = time.perf_counter()
    if not (data / "meta" / "info.json").is_file():
        if data.exists():  # an interrupted collection: start it again
            shutil.rmtree(data)
        s = collect_oracle_dataset(data, "dfp_ros/cube_single_oracle", a.episodes, task_id=a.task_id, seed=a.seed)
        print(f"[1/4] {s.episodes} expert episodes ({s.successes} successful, {s.frames} frames) -> {data}")
    else:
        print(f"[1/4] reusing dataset {data}")
    t1 = time.perf_counter()
    cfg = TrainConfig(root=str(data), output=str(run), steps=a.steps, seed=a.seed, log_every=250,
                      checkpoint_every=1000)
    print("[2/4] training (progress bar below; curves in", run / "curves.png", ")")
    Trainer(cfg, ModelConfig(actor_hidden=int_list(a.hidden), use_critic=a.critic), resume=True).run()
    t2 = time.perf_counter()
    print("[3/4] exporting")
    # As `dfp export` does by default: the last checkpoint, best-of-16 with a critic, else one sample.
    trained, _ = load_checkpoint(run / "checkpoints" / "last")
    with_critic = trained.critic is not None
    exported = export_onnx(trained, model, num_samples=16 if with_critic else 1, with_critic=with_critic)
    print(f"exported {exported['path']}; ONNX Runtime vs torch max abs error {exported['max_abs_error']:.2e}")
    rt = PolicyRuntime(model)
    rng = np.random.default_rng(a.seed)
    print(f"[4/4] evaluating the ONNX model for {a.eval_episodes} episodes (whole chunks executed)")
    res = evaluate(lambda s: rt.act(s, None, rng).chunk, a.eval_episodes, task_id=a.task_id,
                   seed=10_000 + a.seed, progress=True)
    t3 = time.perf_counter()
    if a.bundle:
        Path(a.bundle).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, a.bundle)
        print(f"bundled model -> {a.bundle}")
    res.update(collect_s=round(t1 - t0, 1), train_s=round(t2 - t1, 1), eval_s=round(t3 - t2, 1),
               model=str(model), model_sha256=rt.sha256)
    print(f"success rate {res['success_rate']:.0%} over {res['episodes']} episodes of cube-single task "
          f"{a.task_id}; times: data {res['collect_s']} s, training {res['train_s']} s, eval {res['eval_s']} s")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ContractError as e:
        print(f"train_demo: error: {e}", file=sys.stderr)
        sys.exit(2)
