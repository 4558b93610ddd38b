"""Online fine-tuning in the simulator, in one process: what `dfp bench ablation` and `dfp bench ogbench` share.

- acting: the learner's weights exported to ONNX (`export_onnx`, policy + critic, best-of-N) and run through
  `PolicyRuntime.act`, the policy node's runtime; whole chunks are executed, the acting model swapped every
  `export_every` learner updates;
- transitions: each episode's observations, chunks, per-step rewards and end event go through
  `TransitionJoiner` (stamped with lock-step simulation time, chunks with their observation's stamp), so the
  replay gets exactly what the finetune node would join: (o, executed chunk, H rewards, o+H, mask), terminal
  on success, time-outs inside a chunk dropped;
- learning: after `warmup_steps` environment steps, `updates_per_step` updates per environment step, made
  at episode ends (env steps are counted when an episode ends, as the learner loop counts them).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from dfp_ros.learning.online import OnlineLearner
    from dfp_ros.learning.replay_buffer import ReplayBuffer
    from dfp_ros.learning.transitions import EpisodeRecord, TransitionJoiner
    from dfp_ros.runtime.policy_runtime import PolicyRuntime
    from dfp_ros.sim.cube_env import CubeSim

STEP_NS = 50_000_000  # lock-step stamps: one 20 Hz step of simulated time (sim_robot_node's clock)
_STATE_FILE = "finetuner.json"
_ACTING_FILE = "acting.onnx"
_REPLAY_FILE = "replay.npz"
_LEARNER_DIR = "learner"


def export_acting_model(learner: OnlineLearner, path: Path, num_candidates: int) -> Path:
    """The learner's current weights as the robot would get them: ONNX policy + critic, best-of-N."""
    from dfp_ros.learning.export import export_onnx

    # A copy, as the learner loop exports one: export_onnx switches its model to eval mode.
    export_onnx(copy.deepcopy(learner.model).to("cpu"), path, num_samples=num_candidates, with_critic=True)
    return path


def acting_runtime(learner: OnlineLearner, path: Path, num_candidates: int) -> PolicyRuntime:
    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    return PolicyRuntime(export_acting_model(learner, path, num_candidates), device="cpu")


def run_episode(sim: CubeSim, runtime: PolicyRuntime, joiner: TransitionJoiner, rng: np.random.Generator,
                clock: list[int], seed: int | None = None) -> EpisodeRecord:
    """One lock-step episode (reset with `seed`; None goes on from the sim's stream), whole chunks executed,
    joined into transitions by the finetune node's rules.

    Stamps follow sim_robot_node in lock-step: an observation carries the simulated time after the
    steps so far (`clock[0]` steps, kept across episodes), the step's reward is stamped at the
    observation it leads to, the end event at the time of the last step; a chunk carries its
    observation's stamp.
    """
    state = sim.reset(seed=seed)
    joiner.add_event("start", clock[0] * STEP_NS)
    joiner.add_observation(clock[0] * STEP_NS, state)
    while True:
        chunk = runtime.act(state, None, rng).chunk
        joiner.add_chunk(clock[0] * STEP_NS, chunk)
        for action in chunk:
            state, reward, terminated, truncated, info = sim.step(action)
            clock[0] += 1
            joiner.add_reward(clock[0] * STEP_NS, reward)
            if terminated or truncated:  # the rest of the chunk is dropped, as evaluate() does
                success = bool(info["success"]) or terminated
                joiner.add_event("success" if success else "timeout", clock[0] * STEP_NS)
                (record,) = joiner.flush()
                return record
            joiner.add_observation(clock[0] * STEP_NS, state)


@dataclass(frozen=True)
class UpdateSchedule:
    """When the learner updates and when the acting model is swapped."""

    warmup_steps: int
    updates_per_step: float
    batch_size: int
    export_every: int  # learner updates between acting models
    num_candidates: int  # best-of-N of the exported acting model


class SimFinetuner:
    """One fine-tuning run's moving parts: learner, replay, joiner, acting model and counters.

    `episode(sim)` plays one episode with the current acting model, adds its transitions to the replay
    and makes the updates the schedule owes; `save` / `load` keep all of it between episodes (the
    learner, the online replay, the acting model in use, the counters and the acting noise's stream).
    """

    def __init__(self, learner: OnlineLearner, replay: ReplayBuffer, joiner: TransitionJoiner,
                 schedule: UpdateSchedule, snapshot: Path, act_rng: np.random.Generator) -> None:
        self.learner, self.replay, self.joiner, self.schedule = learner, replay, joiner, schedule
        self.snapshot = snapshot  # the acting model in use: each new one is exported here
        self.act_rng = act_rng
        self.runtime = acting_runtime(learner, snapshot, schedule.num_candidates)
        self.env_steps = self.episodes = self.models_swapped = 0
        self.clock = [0]
        self.last_info: dict[str, torch.Tensor] = {}  # the latest update's numbers, as the learner gave them

    def episode(self, sim: CubeSim, seed: int | None = None) -> EpisodeRecord:
        s = self.schedule
        rec = run_episode(sim, self.runtime, self.joiner, self.act_rng, self.clock, seed)
        for t in rec.transitions:
            self.replay.add(t)
        self.env_steps += rec.steps
        self.episodes += 1
        target = s.updates_per_step * max(0, self.env_steps - s.warmup_steps)
        while self.env_steps >= s.warmup_steps and self.learner.updates < target:
            self.last_info = self.learner.update(self.replay.sample(s.batch_size, self.learner.rng))
            if self.learner.updates % s.export_every == 0:  # the graph's "models swapped in"
                self.runtime = acting_runtime(self.learner, self.snapshot, s.num_candidates)
                self.models_swapped += 1
        return rec

    def losses(self) -> dict[str, float]:
        """The latest update's critic loss, Q and the like as floats (one device sync; empty before any update)."""
        from dfp_ros.learning.online import to_floats

        return to_floats(self.last_info)

    # --- between episodes: everything a resumed run needs ----------------------------------------
    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.learner.save(folder / _LEARNER_DIR)
        self.replay.save(folder / _REPLAY_FILE)
        shutil.copyfile(self.snapshot, folder / _ACTING_FILE)
        state = {"env_steps": self.env_steps, "episodes": self.episodes, "models_swapped": self.models_swapped,
                 "clock": self.clock[0], "act_rng": self.act_rng.bit_generator.state,
                 "dropped": dict(self.joiner.dropped)}
        (folder / _STATE_FILE).write_text(json.dumps(state))
        return folder

    def restore(self, folder: Path) -> None:
        """The replay, acting model, counters and noise saved by `save` (the learner is loaded by the caller:
        `OnlineLearner.load(learner_folder(folder), ...)`)."""
        from dfp_ros.runtime.policy_runtime import PolicyRuntime

        state = json.loads((folder / _STATE_FILE).read_text())
        self.replay.load(folder / _REPLAY_FILE)
        shutil.copyfile(folder / _ACTING_FILE, self.snapshot)
        self.runtime = PolicyRuntime(self.snapshot, device="cpu")
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.models_swapped, self.clock[0] = int(state["models_swapped"]), int(state["clock"])
        self.act_rng.bit_generator.state = state["act_rng"]
        self.joiner.dropped = Counter(state["dropped"])


def learner_folder(saved: Path) -> Path:
    """Where `SimFinetuner.save` put the learner's checkpoint (for `OnlineLearner.load`)."""
    return saved / _LEARNER_DIR
