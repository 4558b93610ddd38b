"""`dfp`: train a Drifting Field Policy on a LeRobot dataset, export it to ONNX, benchmark it.

Heavy imports (torch, lerobot) happen inside the subcommands, so `dfp --help` is instant and the
deploy profile (no torch) can still run `dfp bench latency`.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from dfp_ros import contracts
from dfp_ros.contracts import ContractError
from dfp_ros.tools.arg_types import int_list, name_list, positive_float_list

EPILOG = """examples:
  dfp train --root data/cube --output outputs/cube --steps 5000
  dfp train --root data/cube --output outputs/cube --resume        # continue from the last checkpoint
  dfp export outputs/cube/checkpoints/last models/cube.onnx --num-samples 16
  dfp check models/cube.onnx                                       # validate and describe a model
  dfp train-reward --root data/cube_cams --output outputs/reward   # success detector -> outputs/reward/reward.onnx
  dfp bench train                                                  # throughput, reference size
  dfp bench learner --device cuda                                  # updates/s: eager vs one CUDA graph per update
  dfp bench latency                                                # policy node in a real ROS graph
  dfp bench finetune                                               # weak BC policy -> RL through ROS
  dfp bench ablation --seeds 0,1                                   # success vs env steps: BC, K=1,2,4,8
  dfp bench realtime --episodes 20                                 # success vs added inference delay, real time
  dfp convert-bag my_bag data/my_bag --fps 20 --state-topic /joint_states --action-topic /cmd  # bag -> dataset
  dfp replay models/cube.onnx data/my_bag                          # model vs recorded actions, open loop
  dfp pack-dataset --root data/cube --out data/cube.npz           # one arrays file, trainable without LeRobot
"""


def build_parser() -> argparse.ArgumentParser:
    from dfp_ros.learning.config import DEFAULT_TEMPERATURES, ModelConfig, TrainConfig

    tc, mc = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(prog="dfp", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,export,check,train-reward,bench,convert-bag,replay,make-play-dataset,pack-dataset}")

    t = sub.add_parser("train", help="train a DFP policy (and optionally a critic) on a LeRobot dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--dataset", default="", help="LeRobot repo id (read from the local cache, offline)")
    t.add_argument("--root", default=None, help="local dataset folder (the one holding meta/info.json), or an "
                                                "arrays file from `dfp pack-dataset` (*.npz; read without LeRobot)")
    t.add_argument("--output", default=tc.output, help="run folder: checkpoints, log.csv, curves.png")
    t.add_argument("--state-keys", type=name_list, default=[],
                   help="comma-separated state features to concatenate (default: observation.state "
                        "and observation.environment_state, when present)")
    t.add_argument("--image-keys", type=name_list, default=None,
                   help="comma-separated camera features (default: all the dataset's cameras; '' for none)")
    t.add_argument("--action-key", default=tc.action_key)
    t.add_argument("--image-size", type=int_list, default=tc.image_size, help="model image size H,W")
    t.add_argument("--horizon", type=int, default=mc.horizon, help="action chunk length H")
    t.add_argument("--hidden", type=int_list, default=mc.actor_hidden, help="actor MLP widths")
    t.add_argument("--critic", action="store_true", help="also train a chunk critic (needs a reward column)")
    t.add_argument("--critic-hidden", type=int_list, default=mc.critic_hidden)
    t.add_argument("--steps", type=int, default=tc.steps)
    t.add_argument("--batch-size", type=int, default=tc.batch_size, help="states per batch")
    t.add_argument("--num-gen", type=int, default=tc.num_gen, help="generated chunks per state (G)")
    t.add_argument("--lr", type=float, default=tc.lr)
    t.add_argument("--temperatures", type=positive_float_list, default=DEFAULT_TEMPERATURES,
                   help="drift kernel temperatures (the reference uses 0.1 alone; see README)")
    t.add_argument("--loss", choices=("drift", "mse"), default=tc.loss,
                   help="'mse' trains the regression baseline with the same network")
    t.add_argument("--seed", type=int, default=tc.seed)
    t.add_argument("--device", default=tc.device, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    t.add_argument("--log-every", type=int, default=tc.log_every)
    t.add_argument("--checkpoint-every", type=int, default=tc.checkpoint_every)
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last")
    t.add_argument("--compile", action="store_true",
                   help="on CUDA, torch.compile the drift loss (~a minute to compile; gains were not consistent)")
    t.add_argument("--step-mode", choices=contracts.LEARNER_STEP_MODES, default=tc.step_mode,
                   help="graphed: on CUDA each step (actor, critic, Polyak) is one CUDA graph replay over static "
                        "buffers, the same updates with far fewer launches; on the CPU it runs eagerly "
                        "(default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    e = sub.add_parser("export", help="export a checkpoint to ONNX (checked and compared with torch)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("checkpoint", help="checkpoint folder, e.g. outputs/run/checkpoints/last")
    e.add_argument("output", help="ONNX file to write")
    e.add_argument("--num-samples", type=int, default=None,
                   help="candidates N per call (default 16 with a critic, else 1)")
    crit = e.add_mutually_exclusive_group()
    crit.add_argument("--critic", dest="critic", action="store_true", default=None,
                      help="include the critic (outputs q and best); default: when the checkpoint has one")
    crit.add_argument("--no-critic", dest="critic", action="store_false")
    e.add_argument("--int8", action="store_true",
                   help="store weights as int8 (ONNX Runtime dynamic quantisation): ~4x smaller, about half the "
                        "CPU inference time; refused if actions move by more than 5%% of their range")

    c = sub.add_parser("check", help="validate an exported model (contract, one inference) and describe it")
    c.add_argument("model", help="ONNX file")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (ONNX Runtime execution provider)")

    add_train_reward_arguments(sub.add_parser(
        "train-reward", help="train a success detector (reward classifier) on camera frames; export it to ONNX",
        description="A small CNN scores camera frames (optionally + state) as success. Labels: the dataset's "
                    "success column (frames at and after an episode's first success), its reward column with "
                    "--reward-threshold, or the episode outcome (--success-episodes, --label-last-frames). Held-out "
                    "episodes (--val-fraction) give the precision/recall curve (PNG) and the threshold (F1 "
                    "optimum) stored in the model. Writes OUTPUT/reward.onnx for reward_node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter))

    b = sub.add_parser("bench", help="benchmarks; each prints a JSON line last")
    bsub = b.add_subparsers(dest="bench", required=True,
                            metavar="{train,learner,latency,finetune,hil,ablation,ogbench,realtime,vision,data,reward}")
    bt = bsub.add_parser("train", help="training steps/s: drift BC vs MSE BC vs drift loss alone",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bln = bsub.add_parser("learner", help="learner updates/s: today's eager path vs the static-buffer step "
                                          "(one CUDA graph per update on a GPU) fed by the device replay",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bl = bsub.add_parser("latency", help="policy node in a real ROS graph: observation->chunk latency, "
                                         "tick jitter, CPU, RSS (state model best-of-16; 96x96 image model)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bf = bsub.add_parser("finetune", help="weak BC policy -> on-robot fine-tuning through the ROS graph; "
                                          "success before/after over >= 50 seeded episodes",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bh = bsub.add_parser("hil", help="human-in-the-loop RL session, unattended: weak BC policy -> fine-tuning through "
                                     "the ROS graph with a scripted operator taking over, vs without; success "
                                     "before/after, intervention rate over the session",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ba = bsub.add_parser("ablation", help="success rate vs environment steps for BC only, DFP (K=4) and K in "
                                          "{1,2,8} (+ lambda=0), in one process without ROS; CSV + PNG",
                         description="Fine-tuning ablation in-process (no ROS graph): the same weak BC start, "
                                     "learner, replay, transition join and best-of-N acting as `dfp bench "
                                     "finetune`, evaluated every --eval-every env steps over seeded episodes. "
                                     "One run per arm and seed; see dfp_ros/tools/finetune_ablation.py for how "
                                     "it differs from the ROS graph.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bo = bsub.add_parser("ogbench", help="DFP on an OGBench single task (play dataset): success vs offline steps, "
                                         "then vs online env steps, beside Q-chunking's published points; resumable",
                         description=bench_module("ogbench").__doc__,
                         formatter_class=bench_module("ogbench").HelpFormatter)
    br = bsub.add_parser("realtime", help="simulator in real time + policy with 0-200 ms of added inference delay: "
                                          "success rate per delay for lock-step, real time as shipped and the "
                                          "hand-over modes, chunk boundary jumps; PNG",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bv = bsub.add_parser("vision", help="camera policy end to end: render timing, demonstrations through the ROS "
                                        "graph, decode + train + export, success of policy_node against the "
                                        "simulator from joint states + cameras only, lock-step and real time",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bd = bsub.add_parser("data", help="camera dataset data path: decode frames/s (cached vs frame by frame), batch "
                                      "sampling vs the training step, start to first step cold and warm",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bw = bsub.add_parser("reward", help="RL without a reward oracle: labelled camera episodes -> success detector "
                                        "(precision/recall) -> camera policy fine-tuned from the detector's reward "
                                        "only, success before/after (and with the simulator's reward)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, parser in (("train", bt), ("learner", bln), ("latency", bl), ("finetune", bf), ("hil", bh),
                         ("ablation", ba), ("ogbench", bo), ("realtime", br), ("vision", bv), ("data", bd),
                         ("reward", bw)):
        bench_module(name).add_arguments(parser)

    cb = sub.add_parser("convert-bag", help="a rosbag2 recording (sqlite3 or MCAP) -> a LeRobot v3 dataset",
                        description=bench_module("convert-bag").__doc__)
    rp = sub.add_parser("replay", help="an exported model open-loop over a dataset's (or bag's) observations: "
                                       "error of its chunks vs the recorded actions",
                        description=bench_module("replay").__doc__)
    for name, parser in (("convert-bag", cb), ("replay", rp)):
        bench_module(name).add_arguments(parser)
    bench_module("make-play-dataset").add_arguments(sub.add_parser(
        "make-play-dataset", help="an OGBench-style play dataset (cube scenes, scripted noisy oracle) as a LeRobot "
                                  "dataset, with a single task's rewards; resumable",
        description="Generates OGBench's 'play' data the way its generate_manipspace.py does (random cube\n"
                    "targets, CubePlanOracle with plan noise, 1001-step episodes) and labels it with OGBench's\n"
                    "single-task reward of --task. Rerun with the same settings to add missing episodes.\n"
                    "Prints a JSON line last. See docs/ogbench_datasets.md.",
        epilog="examples:\n  dfp make-play-dataset --env cube-double-v0 --task 2 --episodes 100 "
               "--root outputs/play/cube-double-task2\n"
               "  dfp make-play-dataset --relabel-from outputs/play/cube-double-task2 --task 1 "
               "--root outputs/play/cube-double-task1   # the same episodes, task 1's rewards",
        formatter_class=argparse.RawDescriptionHelpFormatter))

    pk = sub.add_parser("pack-dataset", help="a state-only LeRobot dataset -> one arrays file that `dfp train "
                                             "--root FILE.npz` reads without LeRobot (e.g. on a GPU machine)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pk.add_argument("--dataset", default="", help="LeRobot repo id (read from the local cache, offline)")
    pk.add_argument("--root", default=None, help="local dataset folder (the one holding meta/info.json)")
    pk.add_argument("--out", required=True, help="the arrays file to write (*.npz)")
    pk.add_argument("--state-keys", type=name_list, default=[],
                    help="comma-separated state features (default: observation.state and "
                         "observation.environment_state, when present)")
    pk.add_argument("--action-key", default=tc.action_key)
    pk.add_argument("--reward-key", default=tc.reward_key, help="per-frame reward column (kept when present)")
    pk.add_argument("--done-key", default=tc.done_key,
                    help="per-frame terminal column (next.success for an OGBench play dataset's task)")
    pk.add_argument("--float16", action="store_true",
                    help="store states and actions as float16: half the size, a relative rounding of 5e-4 "
                         "(e.g. to fit a dataset into a 64 MiB transfer); statistics stay exact")
    return p


def add_train_reward_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--dataset", default="", help="LeRobot repo id (read from the local cache, offline)")
    r.add_argument("--root", default=None, help="local dataset folder (the one holding meta/info.json)")
    r.add_argument("--output", default="outputs/reward", help="run folder: reward.onnx, pr_curve.png, log.csv, "
                                                              "checkpoint/")
    r.add_argument("--cameras", type=name_list, default=None,
                   help="comma-separated camera names, e.g. front,wrist (default: every camera of the dataset)")
    r.add_argument("--state-keys", type=name_list, default=[],
                   help="comma-separated state features to add to the frames, e.g. observation.state (default: none)")
    r.add_argument("--image-size", type=int_list, default=(64, 64), help="model image size H,W")
    r.add_argument("--success-key", default="next.success", help="per-frame success column")
    r.add_argument("--reward-key", default="next.reward", help="per-frame reward column (with --reward-threshold)")
    r.add_argument("--reward-threshold", type=float, default=None,
                   help="label from the reward column: reward > this is a success (when there is no success column)")
    r.add_argument("--success-episodes", type=int_list, default=None,
                   help="label by episode outcome: these episodes succeeded (their last --label-last-frames frames "
                        "are successes, every other frame is not); overrides the dataset's columns")
    r.add_argument("--label-last-frames", type=int, default=None,
                   help="the last K frames of each successful episode are successes (all episodes without "
                        "--success-episodes; default 1 with it)")
    r.add_argument("--val-fraction", type=float, default=0.2, help="share of episodes held out for the threshold")
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--batch-size", type=int, default=64, help="frames per batch, half of them successes")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--image-shift", type=int, default=4, help="random-shift augmentation in pixels (0 = none)")
    r.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations (log.csv)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def cmd_train_reward(a: argparse.Namespace) -> int:
    from dfp_ros.learning.reward_classifier import LabelRule, RewardTrainConfig, RewardTrainer

    if not a.dataset and not a.root:
        raise ContractError("give --root (a local dataset folder) or --dataset (a repo id in the cache)")
    if len(a.image_size) != 2:
        raise ContractError(f"--image-size takes H,W; got {a.image_size}")
    if a.steps < 1 or a.batch_size < 2:
        raise ContractError(f"--steps >= 1 and --batch-size >= 2 are needed, got {a.steps} and {a.batch_size}")
    rule = LabelRule(success_key=a.success_key, reward_key=a.reward_key, reward_threshold=a.reward_threshold,
                     success_episodes=None if a.success_episodes is None else list(a.success_episodes),
                     last_frames=a.label_last_frames)
    cfg = RewardTrainConfig(dataset=a.dataset, root=a.root, output=a.output, cameras=a.cameras,
                            state_keys=a.state_keys, image_size=tuple(a.image_size), labels=rule,
                            val_fraction=a.val_fraction, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                            image_shift=a.image_shift, eval_every=max(a.eval_every, 1), seed=a.seed, device=a.device,
                            torch_threads=a.threads)
    trainer = RewardTrainer(cfg, progress=not a.no_progress)
    d = trainer.data
    print(f"dfp train-reward: {len(d)} frames, {d.num_episodes} episodes ({len(trainer.train_eps)} training, "
          f"{len(trainer.val_eps)} held out), cameras {[c.name for c in d.cameras]} at {cfg.image_size}, state "
          f"{trainer.model.meta.state_dim}; labels: {trainer.label_text} ({int(trainer.labels.sum())} success "
          f"frames); device {trainer.device}")
    res = trainer.run()
    v = res["validation"]
    print(f"dfp train-reward: {res['steps']} steps in {res['train_seconds']:.1f} s ({res['train_cpu_seconds']:.1f} s "
          f"CPU); held-out episodes: precision "
          f"{v['precision']:.3f}, recall {v['recall']:.3f}, F1 {v['f1']:.3f} at threshold {res['threshold']:.3f} "
          f"(average precision {v['average_precision']:.3f}, {v['positives']} success frames of {v['frames']})")
    ex = res["export"]
    print(f"dfp train-reward: wrote {res['model']} (hash {ex['metadata']['content_hash'][:12]}); onnx.checker ok; "
          f"ONNX Runtime vs torch max abs error {ex['max_abs_error']:.2e}; acceptance test stored and passed; "
          f"precision/recall curve {res['pr_curve']}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer

    if not a.dataset and not a.root:
        raise ContractError("give --root (a local dataset folder) or --dataset (a repo id in the cache)")
    if len(a.image_size) != 2:
        raise ContractError(f"--image-size takes H,W; got {a.image_size}")
    cfg = TrainConfig(dataset=a.dataset, root=a.root, output=a.output, state_keys=a.state_keys,
                      image_keys=a.image_keys,
                      action_key=a.action_key, image_size=tuple(a.image_size), steps=a.steps,
                      batch_size=a.batch_size, num_gen=a.num_gen, lr=a.lr, temperatures=a.temperatures,
                      loss=a.loss, seed=a.seed, device=a.device, log_every=a.log_every,
                      checkpoint_every=a.checkpoint_every, compile=a.compile, step_mode=a.step_mode)
    mcfg = ModelConfig(horizon=a.horizon, actor_hidden=tuple(a.hidden), critic_hidden=tuple(a.critic_hidden),
                       use_critic=a.critic)
    trainer = Trainer(cfg, mcfg, resume=a.resume, progress=not a.no_progress)
    print(f"dfp train: {len(trainer.data)} frames, {trainer.data.num_episodes} episodes, state "
          f"{trainer.data.state_dim}, cameras {[c.name for c in trainer.data.cameras]}, action "
          f"{trainer.data.action_dim} x H={mcfg.horizon}, device {trainer.device}, from step {trainer.step}")
    folder = trainer.run()
    print(f"dfp train: checkpoint {folder}; log {trainer.log.csv_path}; curves {trainer.log.png_path}")
    return 0


def cmd_pack_dataset(a: argparse.Namespace) -> int:
    from dfp_ros.learning.dataset import ARRAYS_SUFFIX, ChunkDataset

    if not a.dataset and not a.root:
        raise ContractError("give --root (a local dataset folder) or --dataset (a repo id in the cache)")
    if not a.out.endswith(ARRAYS_SUFFIX):
        raise ContractError(f"--out names an arrays file *{ARRAYS_SUFFIX}, got {a.out!r}")
    data = ChunkDataset(a.dataset, a.root, horizon=1, state_keys=a.state_keys or None, image_keys=[],
                        action_key=a.action_key, reward_key=a.reward_key, done_key=a.done_key)
    path = data.save_arrays(a.out, float16=a.float16)
    print(f"dfp pack-dataset: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB"
          f"{', float16' if a.float16 else ''}): {len(data)} frames, "
          f"{data.num_episodes} episodes, state {data.state_dim} {[s.key for s in data.state_specs]}, action "
          f"{data.action_dim}, rewards {'yes' if data.has_rewards else 'no'}, terminals "
          f"{data.done_key if data.dones is not None else 'none'}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import load_checkpoint

    model, _ = load_checkpoint(a.checkpoint)
    with_critic = a.critic if a.critic is not None else model.critic is not None
    n = a.num_samples or (16 if with_critic else 1)
    res = export_onnx(model, a.output, num_samples=n, with_critic=with_critic,
                      weights="int8" if a.int8 else "float32")
    meta = res["metadata"]
    print(f"dfp export: wrote {res['path']} (N={n}, critic={with_critic}, weights {meta['weights']}, "
          f"hash {meta['content_hash'][:12]}); onnx.checker ok; ONNX Runtime vs torch max abs error "
          f"{res['max_abs_error']:.2e}")
    if "int8" in res:
        q = res["int8"]
        pick = f", same best-of-{n} pick {q['same_best_pick']:.0%}" if "same_best_pick" in q else ""
        print(f"dfp export: int8 weights: largest action change {q['max_action_error']:.3f} of the half-range{pick}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    import numpy as np

    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    rt = PolicyRuntime(a.model, device=a.device)
    m = rt.meta
    rng = np.random.default_rng(0)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in m.cameras}
    res = rt.act(np.zeros(m.state_dim, np.float32), images, rng)
    print(f"{a.model}: dfp_ros model format {m.format_version}, sha256 {rt.sha256[:12]}")
    print(f"  state {m.state_dim} from {[s.key for s in m.state]}; cameras "
          f"{[(c.name, c.height, c.width) for c in m.cameras]}")
    print(f"  actions {m.action_names} x H={m.horizon} at {m.fps:g} Hz; N={m.num_samples}; critic {m.has_critic}; "
          f"{m.weights} weights")
    print(f"  dataset {m.dataset!r}, git {m.git_revision or '?'}, created {m.created}")
    print(f"  providers {rt.providers}; test inference ok, chunk shape {res.chunk.shape}")
    acc = rt.acceptance
    print(f"  acceptance test: passed on {acc.provider}, actions within {acc.max_action_error:.2g} of the "
          f"exporter's reference (tolerance {acc.tolerance:g} of the half-range)" if acc else
          "  acceptance test: none stored (exported by an older dfp_ros)")
    return 0


def bench_module(name: str) -> ModuleType:
    """The module of `dfp bench <name>`, imported only when asked for (each imports what it needs itself, torch
    included, inside its functions, so `dfp --help` is instant and the deploy profile can run `dfp bench latency`)."""
    if name == "train":
        from dfp_ros.tools import train_bench as module
    elif name == "learner":
        from dfp_ros.tools import learner_bench as module
    elif name == "latency":
        from dfp_ros.tools import latency_bench as module
    elif name == "finetune":
        from dfp_ros.tools import finetune_bench as module
    elif name == "hil":
        from dfp_ros.tools import hil_bench as module
    elif name == "ablation":
        from dfp_ros.tools import finetune_ablation as module
    elif name == "ogbench":
        from dfp_ros.tools import ogbench_bench as module
    elif name == "realtime":
        from dfp_ros.tools import realtime_bench as module
    elif name == "vision":
        from dfp_ros.tools import vision_bench as module
    elif name == "data":
        from dfp_ros.tools import data_bench as module
    elif name == "reward":
        from dfp_ros.tools import reward_bench as module
    # Not benchmarks, but commands built the same way (add_arguments, run_from_args):
    elif name == "convert-bag":
        from dfp_ros.tools import convert_bag as module
    elif name == "replay":
        from dfp_ros.tools import replay as module
    elif name == "make-play-dataset":
        from dfp_ros.sim import play_datasets as module
    else:
        raise ValueError(f"no benchmark {name!r}")
    return module


def cmd_bench(a: argparse.Namespace) -> int:
    return bench_module(a.bench).run_from_args(a)


def cmd_tool(a: argparse.Namespace) -> int:
    return bench_module(a.command).run_from_args(a)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "export": cmd_export, "check": cmd_check, "train-reward": cmd_train_reward,
                "bench": cmd_bench,
                "convert-bag": cmd_tool, "replay": cmd_tool, "make-play-dataset": cmd_tool,
                "pack-dataset": cmd_pack_dataset}
    try:
        return handlers[args.command](args)
    except ContractError as e:  # user errors: one clear line, no traceback
        print(f"dfp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dfp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
