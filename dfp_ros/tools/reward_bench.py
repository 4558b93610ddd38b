"""`dfp bench reward`: RL fine-tuning of a camera policy whose only reward is a learned success detector.

What a robot without a reward oracle does, on the simulator's cameras (front + wrist), end to end:

1. Labelled episodes (`dfp_ros.sim.detector_episodes`): oracle successes that go on for a few frames after
   the cube lands, and near misses (the cube put down 6-12 cm beside its target); joint positions + two
   64 px cameras; each frame labelled from the state it shows — the labels a person gives on a robot.
2. The detector: `dfp train-reward` on those episodes, a fifth of them held out (by episode). Reported:
   frame precision/recall at the exported threshold, and the episode figures of the node's rule
   (`SuccessDetector`, `debounce` positive frames in a row), replayed through the exported ONNX over
   every held-out episode: recall = successful episodes with a success event, precision = success events
   in episodes that did succeed, and the event's lag after the first success frame.
3. The starting policy: `dfp train` (BC + critic) on the same episodes, successes and near misses alike:
   demonstrations of mixed quality, so it places the cube beside its target about as often as on it. The
   critic learns from the labels (0 on a success frame, -1 otherwise), never from the simulator.
4. Fine-tuning in one process (as `dfp bench ablation`: `OnlineLearner`, `ReplayBuffer` seeded with the
   episodes, `TransitionJoiner`, acting through `PolicyRuntime` with best-of-N): the simulator stepped in
   lock-step on training seeds, frames rendered at every step. With `--reward detector` (the figure that
   counts) the rewards are the detector's on each new frame and its debounced success event ends the
   episode — the simulator's reward and success are never read (its own episode end only stops its time
   limit: the arm steps on until the detector says success or 200 steps pass). With `sim` the same
   session uses the simulator's reward and end, for comparison.
5. Success of the policy before and after, judged by the simulator on the same seeded episodes (disjoint
   from the training seeds), in lock-step, in this process.

Everything already in --work-dir is reused (labelled episodes, detector, starting policy), so a second run
only fine-tunes and evaluates. Prints a JSON line last (detector_precision, detector_recall, ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.arg_types import int_list
from dfp_ros.tools.bench_main import run_and_report, standalone_main

DEFAULT_WORK_DIR = "outputs/bench_reward"
CAMERAS = ["front", "wrist"]
IMAGE_SIZE = 64
EVAL_SEED = 100_000
TRAIN_SEED = 200_000
STEP_NS = 50_000_000  # one 20 Hz step of simulated time: the stamps of the in-process robot
MAX_STEPS = 200  # cube-single's time limit, kept for detector-ended episodes too
REWARD_SOURCES = ("detector", "sim")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="labelled episodes, detector, models, curves")
    p.add_argument("--successes", type=int, default=60, help="labelled successful episodes")
    p.add_argument("--near-misses", type=int, default=60, help="labelled near-miss episodes")
    p.add_argument("--detector-steps", type=int, default=3000, help="dfp train-reward steps")
    p.add_argument("--debounce", type=int, default=3, help="positive frames in a row for a success event")
    p.add_argument("--bc-steps", type=int, default=3000, help="BC + critic training steps of the starting policy")
    p.add_argument("--hidden", type=int_list, default=(256, 256, 256), help="actor, critic hidden layers")
    p.add_argument("--reward", nargs="+", default=list(REWARD_SOURCES), choices=REWARD_SOURCES,
                   help="fine-tuning sessions to run: the detector's reward, the simulator's (comparison)")
    p.add_argument("--env-steps", type=int, default=6000, help="environment steps of fine-tuning per session")
    p.add_argument("--warmup-steps", type=int, default=500, help="environment steps before the first update")
    p.add_argument("--updates-per-step", type=float, default=0.5, help="learner updates per environment step")
    p.add_argument("--batch-size", type=int, default=64, help="learner batch")
    p.add_argument("--num-candidates", type=int, default=16, help="N: chunks drawn per state (top-K, best-of-N)")
    p.add_argument("--export-every", type=int, default=250, help="updates between swaps of the acting model")
    p.add_argument("--eval-episodes", type=int, default=50, help="seeded episodes per evaluation")
    p.add_argument("--task-id", type=int, default=1, help="cube-single task")
    p.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads (1 on a busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)


def _log(msg: str) -> None:
    print(f"[bench reward] {msg}", file=sys.stderr, flush=True)


def camera_observation(sim: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What the camera policy and the detector see: joint positions and one frame per camera."""
    return sim.joint_positions().astype(np.float32), {c: sim.render(c) for c in CAMERAS}


# --- 1 + 2: labelled episodes and the detector -----------------------------------------------------------------
def labelled_episodes(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    from dfp_ros.sim.detector_episodes import episode_plan, write_labelled_episodes

    root, summary_file = work / "labelled", work / "labelled.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    _log(f"[1/5] labelled episodes: {a.successes} successes + {a.near_misses} near misses, {'+'.join(CAMERAS)} "
         f"at {IMAGE_SIZE} px")
    s = write_labelled_episodes(root, episode_plan(a.successes, a.near_misses, a.seed), CAMERAS, IMAGE_SIZE,
                                a.task_id)
    out = {"root": str(root), "episodes": s.episodes, "kinds": s.kinds, "success_episodes": s.success_episodes,
           "frames": s.frames, "success_frames": s.success_frames, "seconds": round(s.seconds, 1)}
    summary_file.write_text(json.dumps(out))
    return out


def train_detector(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    from dfp_ros.learning.reward_classifier import RewardTrainConfig, RewardTrainer

    out_dir = work / "detector"
    summary_file = out_dir / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    _log(f"[2/5] detector: dfp train-reward, {a.detector_steps} steps")
    cfg = RewardTrainConfig(root=str(work / "labelled"), output=str(out_dir), steps=a.detector_steps,
                            image_size=(IMAGE_SIZE, IMAGE_SIZE), seed=a.seed, device="cpu",
                            torch_threads=a.torch_threads)
    r = RewardTrainer(cfg, progress=True).run()
    out = {"model": r["model"], "threshold": r["threshold"], "validation": r["validation"],
           "train_cpu_seconds": round(r["train_cpu_seconds"], 1), "pr_curve": r["pr_curve"]}
    summary_file.write_text(json.dumps(out))
    return out


@dataclass
class EpisodeJudgement:
    succeeded: bool  # a frame of the episode shows success
    event_at: int | None  # frame index of the detector's success event
    first_success: int | None  # frame index of the first success frame


def judge_episodes(model: Path, root: Path, episodes: list[int], debounce: int) -> list[EpisodeJudgement]:
    """The node's rule replayed over recorded episodes: every frame scored by the exported model through
    `SuccessDetector`, one episode at a time, as reward_node runs it."""
    from dfp_ros.learning.dataset import ChunkDataset

    detector = DetectorReward(model, debounce)
    cameras = detector.detector.runtime.meta.cameras
    data = ChunkDataset("", str(root), horizon=1, image_size=(cameras[0].height, cameras[0].width),
                        done_key="next.success", progress=False)
    out = []
    frames = 0  # stamps run on across episodes, as on a robot (the detector scores only newer frames)
    for ep in episodes:
        rows = np.flatnonzero(data.episode_index == ep)
        detector.start()
        event_at = None
        for i, row in enumerate(rows):
            frames += 1
            _, success = detector.judge({c.name: data.images[c.name][row] for c in cameras}, frames * STEP_NS)
            if success and event_at is None:
                event_at = i
        labels = data.dones[rows].astype(bool)
        first = int(np.argmax(labels)) if labels.any() else None
        out.append(EpisodeJudgement(bool(labels.any()), event_at, first))
    return out


def episode_figures(judged: list[EpisodeJudgement]) -> dict[str, Any]:
    events = [j for j in judged if j.event_at is not None]
    succeeded = [j for j in judged if j.succeeded]
    lags = [j.event_at - j.first_success for j in events if j.succeeded]
    return {"held_out_episodes": len(judged), "successful": len(succeeded), "events": len(events),
            "episode_precision": sum(j.succeeded for j in events) / len(events) if events else float("nan"),
            "episode_recall": sum(j.event_at is not None for j in succeeded) / len(succeeded) if succeeded
            else float("nan"),
            "event_lag_frames_min": min(lags) if lags else None, "event_lag_frames_max": max(lags) if lags else None}


# --- 3: the starting policy --------------------------------------------------------------------------------------
def train_policy(work: Path, a: argparse.Namespace) -> Path:
    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer

    run_dir = work / "bc"
    ckpt = run_dir / "checkpoints" / "last"
    if (ckpt / "config.json").is_file():
        return ckpt
    _log(f"[3/5] starting policy: BC + critic on every labelled episode, {a.bc_steps} steps")
    cfg = TrainConfig(root=str(work / "labelled"), output=str(run_dir), image_size=(IMAGE_SIZE, IMAGE_SIZE),
                      steps=a.bc_steps, batch_size=64, seed=a.seed, log_every=250, checkpoint_every=a.bc_steps,
                      device="cpu")
    mcfg = ModelConfig(actor_hidden=tuple(a.hidden), critic_hidden=tuple(a.hidden), image_channels=(16, 32, 32, 32),
                       image_feature_dim=64, use_critic=True)
    Trainer(cfg, mcfg, progress=True).run()
    return ckpt


def export_policy(model: Any, path: Path, num_candidates: int) -> Path:
    from dfp_ros.learning.export import export_onnx

    export_onnx(copy.deepcopy(model).to("cpu"), path, num_samples=num_candidates, with_critic=True)
    return path


def evaluate_policy(model: Path, episodes: int, task_id: int, seed: int) -> dict[str, Any]:
    """True success (the simulator's) over `episodes` seeded lock-step episodes, whole chunks executed."""
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.cube_env import CubeSim

    runtime = PolicyRuntime(model, device="cpu")
    rng = np.random.default_rng(seed)
    successes = 0
    with CubeSim(task_id=task_id, render=True, image_size=IMAGE_SIZE) as sim:
        for i in range(episodes):
            sim.reset(seed=seed + i)
            done = False
            while not done:
                state, images = camera_observation(sim)
                for action in runtime.act(state, images, rng).chunk:
                    _, _, terminated, truncated, _ = sim.step(action)
                    if terminated or truncated:
                        successes += int(terminated)
                        done = True
                        break
    return {"success_rate": successes / episodes, "successes": successes, "episodes": episodes}


# --- 4: fine-tuning -----------------------------------------------------------------------------------------------
class DetectorReward:
    """The detector's judgement of each new observation: reward and (debounced) success."""

    def __init__(self, model: Path, debounce: int):
        from dfp_ros.runtime.reward_runtime import RewardRuntime, SuccessDetector

        self.detector = SuccessDetector(RewardRuntime(model), [], max_frame_age_s=0.0, max_state_age_s=0.0,
                                        debounce_frames=debounce, episode_timeout_s=0.0, reward_mode="sparse",
                                        threshold=-1.0)

    def start(self) -> None:
        self.detector.on_episode("start", 0)

    def judge(self, images: dict[str, np.ndarray], stamp: int) -> tuple[float, bool]:
        scored = None
        for camera, rgb in images.items():
            scored = self.detector.on_image(camera, rgb, stamp, stamp, 0.0)
        assert scored is not None, "every camera of the observation was given"
        return scored.reward, scored.event == "success"


def run_training_episode(sim: Any, runtime: Any, joiner: Any, rng: np.random.Generator, clock: list[int],
                         seed: int, detector: DetectorReward | None) -> tuple[Any, bool]:
    """One training episode, whole chunks executed; (the joined episode record, true success).

    `detector` None: the simulator's reward and end. Otherwise the detector's reward on every new frame
    and its success event end the episode; the simulator's own end only stops its time limit (the arm
    steps on, outside its episode)."""
    sim.reset(seed=seed)
    if detector is not None:
        detector.start()
    joiner.add_event("start", clock[0] * STEP_NS)
    state, images = camera_observation(sim)
    joiner.add_observation(clock[0] * STEP_NS, state, images)
    in_sim, true_success, steps = True, False, 0
    while True:
        chunk = runtime.act(state, images, rng).chunk
        joiner.add_chunk(clock[0] * STEP_NS, chunk)
        for action in chunk:
            if in_sim:
                _, reward, terminated, truncated, _ = sim.step(action)
                true_success |= terminated
                in_sim = not (terminated or truncated)
            else:
                sim.step_outside_episode(action)
                terminated = truncated = False
            clock[0] += 1
            steps += 1
            stamp = clock[0] * STEP_NS
            state, images = camera_observation(sim)
            if detector is None:
                end = "success" if terminated else "timeout" if truncated else None
            else:
                reward, success = detector.judge(images, stamp)
                end = "success" if success else "timeout" if steps >= MAX_STEPS else None
            joiner.add_reward(stamp, float(reward))
            if end is not None:  # the rest of the chunk is dropped, as evaluation does
                joiner.add_event(end, stamp)
                (record,) = joiner.flush()
                return record, true_success
            joiner.add_observation(stamp, state, images)


def finetune(work: Path, ckpt: Path, source: str, detector_model: Path, a: argparse.Namespace,
             before: float) -> dict[str, Any]:
    """One fine-tuning session (rewards from `source`); success after, judged by the simulator."""
    import torch
    from tqdm import tqdm

    from dfp_ros.learning.dataset import ChunkDataset
    from dfp_ros.learning.online import OnlineConfig, OnlineLearner
    from dfp_ros.learning.replay_buffer import ReplayBuffer
    from dfp_ros.learning.transitions import TransitionJoiner
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.cube_env import CubeSim
    from dfp_ros.tools.weak_bc import cpu_seconds

    cpu0, t0 = cpu_seconds(), time.monotonic()
    learner, _ = OnlineLearner.load(ckpt, OnlineConfig(num_candidates=a.num_candidates, batch_size=a.batch_size))
    learner.rng = np.random.default_rng(a.seed)
    torch.manual_seed(a.seed)
    meta = learner.model.meta
    offline = ChunkDataset("", str(work / "labelled"), horizon=meta.horizon, image_size=(IMAGE_SIZE, IMAGE_SIZE),
                           progress=False)
    replay = ReplayBuffer(meta.state_dim, meta.horizon, meta.action_dim, capacity=a.env_steps + MAX_STEPS,
                          offline=offline, cameras=meta.cameras)
    joiner = TransitionJoiner(meta.horizon, robot=source, reward_mode="per_step")
    detector = DetectorReward(detector_model, a.debounce) if source == "detector" else None
    models = work / f"finetune_{source}"
    models.mkdir(parents=True, exist_ok=True)
    runtime = PolicyRuntime(export_policy(learner.model, models / "acting.onnx", a.num_candidates), device="cpu")
    act_rng = np.random.default_rng(TRAIN_SEED)
    env_steps = episodes = true_successes = detector_successes = false_successes = missed_successes = 0
    clock = [0]
    bar = tqdm(total=a.env_steps, desc=f"fine-tuning ({source} reward)", unit="step", dynamic_ncols=True)
    with CubeSim(task_id=a.task_id, render=True, image_size=IMAGE_SIZE) as sim:
        while env_steps < a.env_steps:
            record, true_success = run_training_episode(sim, runtime, joiner, act_rng, clock,
                                                        TRAIN_SEED + episodes, detector)
            for t in record.transitions:
                replay.add(t)
            env_steps += record.steps
            episodes += 1
            true_successes += int(true_success)
            detector_successes += int(record.success)
            # The verdict that ended the episode against the truth (the detector on the policy's own attempts).
            false_successes += int(record.success and not true_success)
            missed_successes += int(true_success and not record.success)
            target = a.updates_per_step * max(0, env_steps - a.warmup_steps)
            while env_steps >= a.warmup_steps and learner.updates < target:
                learner.update(replay.sample(a.batch_size, learner.rng))
                if learner.updates % a.export_every == 0:
                    runtime = PolicyRuntime(export_policy(learner.model, models / "acting.onnx", a.num_candidates),
                                            device="cpu")
            bar.update(record.steps)
            bar.set_postfix(episodes=episodes, true_success=f"{true_successes}/{episodes}", updates=learner.updates)
    bar.close()
    finetune_cpu = cpu_seconds() - cpu0
    after = evaluate_policy(export_policy(learner.model, models / "after.onnx", a.num_candidates),
                            a.eval_episodes, a.task_id, EVAL_SEED)
    out = {"source": source, "before": before, "after": after["success_rate"], "env_steps": env_steps,
           "episodes": episodes, "updates": learner.updates,
           "train_true_success_rate": round(true_successes / max(episodes, 1), 3),
           "train_ended_by_success_event": detector_successes, "train_false_success_events": false_successes,
           "train_missed_successes": missed_successes, "cpu_minutes": round(finetune_cpu / 60, 1),
           "wall_minutes": round((time.monotonic() - t0) / 60, 1)}
    (models / "summary.json").write_text(json.dumps(out))
    return out


# --- the chain --------------------------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dfp_ros.learning.model import load_checkpoint
    from dfp_ros.tools.weak_bc import cpu_seconds

    if a.torch_threads > 0:
        torch.set_num_threads(a.torch_threads)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cpu0 = cpu_seconds()
    labelled = labelled_episodes(work, a)
    detector = train_detector(work, a)
    judged = episode_figures(judge_episodes(Path(detector["model"]), work / "labelled",
                                            detector["validation"]["episodes"], a.debounce))
    _log(f"      detector: frame precision {detector['validation']['precision']:.3f} recall "
         f"{detector['validation']['recall']:.3f}; episodes: precision {judged['episode_precision']:.3f} recall "
         f"{judged['episode_recall']:.3f} ({judged['held_out_episodes']} held out)")
    ckpt = train_policy(work, a)
    before_file = work / "before.json"
    if not before_file.is_file():
        _log(f"[4/5] starting policy on {a.eval_episodes} seeded episodes")
        model, _ = load_checkpoint(ckpt)
        before_file.write_text(json.dumps(evaluate_policy(export_policy(model, work / "before.onnx",
                                                                        a.num_candidates),
                                                          a.eval_episodes, a.task_id, EVAL_SEED)))
    before = json.loads(before_file.read_text())["success_rate"]
    _log(f"      before fine-tuning: {before:.0%}")
    sessions = {}
    for source in a.reward:
        _log(f"[5/5] fine-tuning with the {source}'s reward: {a.env_steps} environment steps")
        sessions[source] = finetune(work, ckpt, source, Path(detector["model"]), a, before)
        _log(f"      after ({source} reward): {sessions[source]['after']:.0%}")
    val = detector["validation"]
    return {
        "detector_precision": round(val["precision"], 4), "detector_recall": round(val["recall"], 4),
        "detector_threshold": round(detector["threshold"], 4),
        "detector_episode_precision": judged["episode_precision"], "detector_episode_recall": judged["episode_recall"],
        "detector_event_lag_frames": [judged["event_lag_frames_min"], judged["event_lag_frames_max"]],
        "held_out_episodes": judged["held_out_episodes"], "held_out_frames": val["frames"],
        "held_out_success_frames": val["positives"], "debounce_frames": a.debounce,
        "labelled_episodes": labelled["episodes"], "labelled_frames": labelled["frames"],
        "finetune_before": before,
        "finetune_after": sessions["detector"]["after"] if "detector" in sessions else None,
        "finetune_after_with_sim_reward": sessions["sim"]["after"] if "sim" in sessions else None,
        "sessions": sessions, "episodes_per_eval": a.eval_episodes, "env_steps": a.env_steps,
        "finetune_cpu_minutes": {s: r["cpu_minutes"] for s, r in sessions.items()},
        "cpu_minutes": round((cpu_seconds() - cpu0) / 60, 1), "pr_curve": detector["pr_curve"],
    }


def summary(r: dict[str, Any]) -> str:
    return (f"detector: precision {r['detector_precision']}, recall {r['detector_recall']} (frames), episodes "
            f"{r['detector_episode_precision']}/{r['detector_episode_recall']}; fine-tuning from the detector's "
            f"reward: {r['finetune_before']} -> {r['finetune_after']} (simulator's reward: "
            f"{r['finetune_after_with_sim_reward']}) over {r['episodes_per_eval']} episodes; "
            f"{r['cpu_minutes']} CPU-min")


def run_from_args(a: argparse.Namespace) -> int:
    return run_and_report("reward", run, a, summary)


def main(argv: list[str] | None = None) -> int:
    return standalone_main("python -m dfp_ros.tools.reward_bench", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
