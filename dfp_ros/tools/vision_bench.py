"""`dfp bench vision`: the camera path end to end on the simulated robot, without the privileged state.

1. render: the simulator's frame time per camera (p50, p90) and lock-step steps/s with every camera
   rendered at every step (`CubeSim`, software EGL on a CPU).
2. collect: `--demos` demonstrations through the ROS graph: sim_robot_node (lock-step, cameras on,
   joint_states stamped like the frames) + oracle_teleop_node (the scripted expert: it reads the
   simulator's privileged state, as a person sees the scene) + collect_node (joint positions from
   joint_states and one video per camera: the dataset holds no cube pose).
3. data: the videos decoded once into the frame cache (frames/s), then the warm start.
4. train: `dfp train` on joint positions + cameras (random-shift augmentation), `--steps` steps.
5. export: `dfp export` (ONNX + parity + acceptance test).
6. evaluate: policy_node runs the exported model against sim_robot_node through DDS on `--eval-episodes`
   seeded episodes (seeds disjoint from the demonstrations'), in lock-step and in real time (the
   simulator at 20 Hz on the wall clock, config/policy.yaml as shipped).
Prints progress and a summary, writes the run into `--work-dir`, and prints one JSON object last. A
finished stage is reused when the work folder already holds it (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros import contracts
from dfp_ros.tools.arg_types import int_list, name_list
from dfp_ros.tools.bench_main import run_and_report, standalone_main
from dfp_ros.tools.graph import GraphMonitor, domain_or_inherited, graph_env, start_node, stop

DEFAULT_WORK_DIR = "outputs/bench_vision"
DEMO_SEED = 0
EVAL_SEED = 100_000
REPO_ID = "local/dfp_vision_demos"
STARTUP_S = 90.0
EPISODE_ENDS = ("success", "failure", "timeout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="dataset, run, model, logs")
    p.add_argument("--demos", type=int, default=150, help="demonstrations collected through the ROS graph")
    p.add_argument("--cameras", type=name_list, default=["front", "wrist"], help="simulated cameras recorded")
    p.add_argument("--image-size", type=int, default=64, help="camera frames (and model input): N x N pixels")
    p.add_argument("--steps", type=int, default=4000, help="training steps")
    p.add_argument("--batch-size", type=int, default=64, help="states per batch")
    p.add_argument("--hidden", type=int_list, default=(256, 256, 256), help="actor MLP widths")
    p.add_argument("--image-channels", type=int_list, default=(16, 32, 32, 32),
                   help="CNN channels per stride-2 layer of each camera's encoder")
    p.add_argument("--image-feature-dim", type=int, default=64, help="features per camera")
    p.add_argument("--image-shift", type=int, default=4, help="random-shift augmentation, pixels")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--modes", type=name_list, default=["lockstep", "realtime"],
                   help="evaluation modes: lockstep, realtime")
    p.add_argument("--task-id", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID; None: 1 + pid %% 100")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch threads for training (0: torch's default; 1 is faster on a machine already busy)")
    p.add_argument("--render-only", action="store_true", help="only stage 1 (render timing): for a quiet machine")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")


def _log(msg: str) -> None:
    print(f"[bench vision] {msg}", flush=True)


def render_figures(cameras: list[str], image_size: int, task_id: int, frames: int = 60) -> dict[str, Any]:
    """Frame time per camera and lock-step steps/s with all `cameras` rendered at each step."""
    from dfp_ros.sim.cube_env import CubeSim

    out: dict[str, Any] = {}
    with CubeSim("cube-single-v0", task_id=task_id, seed=0, render=True, image_size=image_size) as sim:
        state = sim.reset(seed=0)
        oracle = sim.oracle(seed=0)
        oracle.reset(state, sim.info)
        for camera in cameras:
            sim.render(camera)  # the first frame makes the GL context
        times: dict[str, list[float]] = {c: [] for c in cameras}
        t0 = time.perf_counter()
        for _ in range(frames):
            for camera in cameras:
                t = time.perf_counter()
                sim.render(camera)
                times[camera].append(time.perf_counter() - t)
            state, _, terminated, truncated, _ = sim.step(oracle.select_action(state, sim.info))
            if terminated or truncated:
                state = sim.reset()
                oracle.reset(state, sim.info)
        out["steps_per_s_with_camera"] = round(frames / (time.perf_counter() - t0), 1)
        for camera in cameras:
            out[f"render_ms_p50_{camera}"] = round(1e3 * float(np.percentile(times[camera], 50)), 2)
            out[f"render_ms_p90_{camera}"] = round(1e3 * float(np.percentile(times[camera], 90)), 2)
        out["render_ms_p50"] = out[f"render_ms_p50_{cameras[0]}"]
        out["triangles_before_after"] = (
            [sim.decimation.faces_before, sim.decimation.faces_after] if sim.decimation is not None else None)
    return out


def collect_params(root: Path, cameras: list[str], image_size: int, demos: int) -> dict[str, Any]:
    """collect_node: joint positions (no cube pose) + one video per camera, a frame per command."""
    from dfp_ros.sim.cube_env import CubeSim

    with CubeSim("cube-single-v0") as sim:
        joints = sim.joint_names
    params: dict[str, Any] = {
        "root": str(root), "repo_id": REPO_ID, "fps": 20, "sample_on": "action", "auto_episodes": True,
        "max_episodes": demos, "task": "pick the cube and place it on the target", "keyboard": False,
        "state_topics": [contracts.TOPIC_JOINT_STATES], "state_types": ["joint_state"], "joint_names": joints,
        "state_qos": "latched", "camera_names": cameras, "camera_qos": "reliable",
        # Lock-step: a state stays current until the next command, however long the teleop takes.
        "max_age_s": 30.0, "start_on_first_command": True, "progress_period_s": 10.0,
    }
    for camera in cameras:
        params.update({f"camera.{camera}.topic": contracts.sim_camera_topic(camera),
                       f"camera.{camera}.height": image_size, f"camera.{camera}.width": image_size})
    return params


def collect_demos(work: Path, demos: int, cameras: list[str], image_size: int, task_id: int,
                  domain: int) -> dict[str, Any]:
    """`demos` oracle demonstrations recorded by collect_node from the simulator's topics."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from tqdm import tqdm

    root, logs = work / "dataset", work / "logs" / "collect"
    if root.exists():  # an interrupted collection: start again
        shutil.rmtree(root)
    logs.mkdir(parents=True, exist_ok=True)
    env = graph_env(domain)
    sim_params = {"mode": "lockstep", "seed": DEMO_SEED, "task_id": task_id, "camera_rate_hz": 20.0,
                  "cameras": cameras, "image_size": image_size}
    ends: list[str] = []
    procs = {}
    t0 = time.monotonic()
    bar = tqdm(total=demos, desc="demonstrations", unit="ep")
    with GraphMonitor("vision_bench_collect", env) as monitor:
        node = monitor.node

        def on_event(msg: String) -> None:
            if msg.data in EPISODE_ENDS:
                ends.append(msg.data)
                bar.update(1)
                bar.set_postfix(success=f"{ends.count('success')}/{len(ends)}")

        node.create_subscription(String, contracts.TOPIC_EPISODE, on_event,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        try:
            procs["sim"] = start_node("dfp_ros.nodes.sim_robot_node", sim_params, env,
                                      log_path=logs / "sim_robot_node.log")
            procs["collect"] = start_node("dfp_ros.nodes.collect_node",
                                          collect_params(root, cameras, image_size, demos), env,
                                          log_path=logs / "collect_node.log")
            if not procs["collect"].wait_for_log("recording to", STARTUP_S):
                raise RuntimeError(f"collect_node did not start recording; see {logs}")
            # The recorder and the robot listen before the expert's first command.
            monitor.spin_until(lambda: node.count_subscribers(contracts.TOPIC_JOINT_STATES) >= 1, STARTUP_S)
            procs["oracle"] = start_node("dfp_ros.nodes.oracle_teleop_node",
                                         {"seed": DEMO_SEED, "task_id": task_id, "wait_for_subscribers": 2}, env,
                                         log_path=logs / "oracle_teleop_node.log")
            monitor.spin_until(lambda: procs["collect"].poll() is not None or procs["sim"].poll() is not None,
                               timeout=60.0 * demos)
            if procs["collect"].returncode != 0:
                raise RuntimeError(f"collect_node ended with {procs['collect'].returncode}; see {logs}")
        finally:
            bar.close()
            for name in ("oracle", "collect", "sim"):
                if name in procs:
                    stop(procs[name], timeout=30.0)
    return {"demos": demos, "demo_successes": ends[:demos].count("success"),
            "collect_s": round(time.monotonic() - t0, 1)}


def train_model(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Decode (cold, then warm), train, export; figures of the data path and the training."""
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.export import export_onnx
    from dfp_ros.learning.model import load_checkpoint
    from dfp_ros.learning.trainer import Trainer
    from dfp_ros.tools.data_bench import measure_data_path

    root, run_dir, model_path = work / "dataset", work / "run", work / "vision.onnx"
    size = (a.image_size, a.image_size)
    path = measure_data_path(root, REPO_ID, size, a.batch_size)
    out: dict[str, Any] = {k: path[k] for k in ("frames", "episodes", "data_frames_per_s", "sample_batches_per_s")}
    cfg = TrainConfig(root=str(root), dataset=REPO_ID, output=str(run_dir), image_size=size, steps=a.steps,
                      batch_size=a.batch_size, image_shift=a.image_shift, seed=a.seed, log_every=250,
                      checkpoint_every=max(a.steps // 4, 1), device="cpu")
    mcfg = ModelConfig(actor_hidden=tuple(a.hidden), image_channels=tuple(a.image_channels),
                       image_feature_dim=a.image_feature_dim)
    if a.torch_threads > 0:
        import torch

        torch.set_num_threads(a.torch_threads)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, mcfg, resume=True)  # decodes into the frame cache, or reads it
    out["trainer_start_s"] = round(time.perf_counter() - t0, 1)
    t0, s0 = time.perf_counter(), trainer.step
    ckpt = trainer.run()
    trained = trainer.step - s0
    out["train_steps_per_s"] = round(trained / (time.perf_counter() - t0), 2) if trained else None
    model, _ = load_checkpoint(ckpt)
    export_onnx(model, model_path, num_samples=1, with_critic=False)
    out["model"] = str(model_path)
    out["model_parameters"] = sum(p.numel() for p in model.parameters())
    return out


def evaluate_modes(model: Path, a: argparse.Namespace, domain: int) -> dict[str, Any]:
    """Success of the exported model run by policy_node against sim_robot_node, per mode."""
    from dfp_ros.tools.realtime_bench import run_one

    out: dict[str, Any] = {}
    for i, mode in enumerate(a.modes):
        _log(f"[6/6] evaluating {a.eval_episodes} episodes, {mode}, seeds {EVAL_SEED}..")
        sim_extra = {"camera_rate_hz": 20.0, "cameras": a.cameras, "image_size": a.image_size, "task_id": a.task_id}
        policy_extra: dict[str, Any] = {"state_topics": [contracts.TOPIC_JOINT_STATES], "state_types": ["joint_state"]}
        for camera in a.cameras:
            policy_extra[f"camera.{camera}.topic"] = contracts.sim_camera_topic(camera)
        r = run_one(mode, 0.0, a.eval_episodes, 1 + (domain + 1 + i) % 100, Path(a.work_dir) / "logs" / mode,
                    str(model), seed=EVAL_SEED, sim_extra=sim_extra, policy_extra=policy_extra)
        out[mode] = r
        _log(f"      {mode}: success {r['success_rate']:.0%} ({r['successes']}/{a.eval_episodes})")
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    from dfp_ros.tools.weak_bc import cpu_seconds

    unknown = [m for m in a.modes if m not in ("lockstep", "realtime")]
    if unknown:
        raise RuntimeError(f"unknown evaluation mode(s) {unknown}; choose lockstep and/or realtime")
    work = Path(a.work_dir)
    if a.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    domain = domain_or_inherited(a.domain)
    cpu0, t0 = cpu_seconds(), time.monotonic()
    _log(f"[1/6] render timing: cameras {a.cameras} at {a.image_size} px")
    figures = render_figures(a.cameras, a.image_size, a.task_id)
    _log(f"      {figures}")
    if a.render_only:
        return {**figures, "cameras": a.cameras, "image_size": a.image_size, "cpus": os.cpu_count()}
    if not (work / "dataset" / "meta" / "info.json").is_file():
        _log(f"[2/6] collecting {a.demos} demonstrations through the ROS graph (lock-step, cameras {a.cameras})")
        figures.update(collect_demos(work, a.demos, a.cameras, a.image_size, a.task_id, domain))
    _log("[3-5/6] decode, train, export")
    figures.update(train_model(work, a))
    evals = evaluate_modes(Path(figures["model"]), a, domain)
    return {
        **figures,
        "bc_success_rate": evals["lockstep"]["success_rate"] if "lockstep" in evals else None,
        "bc_success_rate_realtime": evals["realtime"]["success_rate"] if "realtime" in evals else None,
        "eval_episodes": a.eval_episodes, "eval_seeds": [EVAL_SEED, EVAL_SEED + a.eval_episodes - 1],
        "demonstrations": a.demos, "cameras": a.cameras, "image_size": a.image_size, "steps": a.steps,
        "batch_size": a.batch_size, "image_channels": list(a.image_channels), "image_shift": a.image_shift,
        "task_id": a.task_id, "eval_runs": evals,
        "wall_s": round(time.monotonic() - t0, 1), "cpu_minutes": round((cpu_seconds() - cpu0) / 60.0, 1),
        "cpus": os.cpu_count(),
    }


def summary(r: dict[str, Any]) -> str:
    if "bc_success_rate" not in r:
        return (f"render p50 {r['render_ms_p50']} ms ({'+'.join(r['cameras'])} at {r['image_size']} px), "
                f"{r['steps_per_s_with_camera']} lock-step steps/s with the cameras")
    return (f"vision policy ({'+'.join(r['cameras'])} at {r['image_size']} px, {r['demonstrations']} demos, "
            f"{r['steps']} steps): success lock-step {r['bc_success_rate']}, real time {r['bc_success_rate_realtime']} "
            f"over {r['eval_episodes']} episodes; render p50 {r['render_ms_p50']} ms, "
            f"{r['steps_per_s_with_camera']} steps/s with cameras; train {r['train_steps_per_s']} steps/s; "
            f"{r['cpu_minutes']} CPU-min")


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("vision", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.vision_bench", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
