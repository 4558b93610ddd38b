"""The finetune node's learner child process, and what travels between them (ROS-free).

The learner (`dfp_ros.learning.learner_loop`) runs in a spawned process (a fresh interpreter: no
inherited DDS state, no training step ever holding the node's GIL). The node sends it finished
episodes and pause / resume / stop through one queue and reads status, log lines and exported
models from another; see docs/architecture.md.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.contracts import ModelMetadata
from dfp_ros.learning.learner_loop import LEARNER_DIR, LoopConfig, learner_main
from dfp_ros.learning.transitions import EpisodeRecord

# The finetune parameters that configure OnlineLearner (OnlineConfig fields of the same names).
ONLINE_PARAMS = ("num_candidates", "top_k", "lam", "ema_tau", "num_gen", "batch_size", "lr", "gamma", "tau",
                 "critic_samples", "temperatures")
# The finetune parameters that are LoopConfig fields of the same names.
LOOP_PARAMS = ("init_checkpoint", "dataset_root", "dataset_repo_id", "warmup_steps", "updates_per_step",
               "export_every", "export_every_s", "export_num_samples", "export_weights", "checkpoint_every",
               "replay_capacity", "online_fraction", "replay_image_memory_gb", "device", "learner_mode",
               "torch_threads", "seed")


def resuming(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a learner checkpoint to resume from."""
    return (Path(output_dir) / LEARNER_DIR / "config.json").is_file()


def model_meta(checkpoint: str | Path) -> ModelMetadata:
    """The model's metadata from a checkpoint's config.json (JSON only: no torch in the node's process)."""
    cfg = Path(checkpoint) / "config.json"
    if not cfg.is_file():
        raise ValueError(f"no DFP checkpoint at {checkpoint} (expected {cfg}); train one with `dfp train --critic`")
    config = json.loads(cfg.read_text())
    if not config.get("model_config", {}).get("use_critic"):
        raise ValueError(f"checkpoint {checkpoint} has no critic; fine-tuning needs one (`dfp train --critic`)")
    return ModelMetadata.from_dict(config["metadata"])


def loop_config(params: dict[str, Any]) -> LoopConfig:
    """The learner's configuration from the finetune node's parameter values."""
    online = {k: params[k] for k in ONLINE_PARAMS}
    online["temperatures"] = tuple(float(t) for t in online["temperatures"])
    return LoopConfig(output_dir=str(params["output_dir"]), online=online, **{k: params[k] for k in LOOP_PARAMS})


def episode_message(rec: EpisodeRecord, meta: ModelMetadata) -> dict[str, Any]:
    """One joined episode as the arrays the learner's replay takes."""
    ts = rec.transitions
    S, H, A = meta.state_dim, meta.horizon, len(meta.action_names)

    def frames(which: str, cam: Any) -> np.ndarray:  # uint8 [n, h, w, 3]
        return np.array([getattr(t, which)[cam.name] for t in ts], np.uint8).reshape(-1, cam.height, cam.width, 3)

    return {
        "robot": rec.robot, "event": rec.event, "success": rec.success, "steps": rec.steps,
        "episode_return": rec.episode_return, "chunks": rec.chunks, "dropped": rec.dropped,
        "human_steps": rec.human_steps, "intervention_rate": rec.intervention_rate,
        "intervention": np.array([t.intervention for t in ts], bool),
        "state": np.array([t.state for t in ts], np.float32).reshape(-1, S),
        "chunk": np.array([t.chunk for t in ts], np.float32).reshape(-1, H, A),
        "rewards": np.array([t.rewards for t in ts], np.float32).reshape(-1, H),
        "next_state": np.array([t.next_state for t in ts], np.float32).reshape(-1, S),
        "mask": np.array([t.mask for t in ts], np.float32),
        "images": {c.name: frames("images", c) for c in meta.cameras},
        "next_images": {c.name: frames("next_images", c) for c in meta.cameras},
    }


def should_hold(held: bool, target_updates: float, updates: int, max_lag: int) -> bool:
    """pace_robot: hold the robot while the learner is more than `max_lag` updates behind its target;
    once held, release only when it is back within half of that (no flapping at the threshold)."""
    lag = int(target_updates) - int(updates)
    return lag > (max_lag // 2 if held else max_lag)


class LearnerProcess:
    """The spawned learner: `send` work to it, `receive` what it reported, `stop` it (it saves first)."""

    def __init__(self, cfg: LoopConfig):
        ctx = mp.get_context("spawn")
        self._inbox: Any = ctx.Queue()
        self._outbox: Any = ctx.Queue()
        self.proc = ctx.Process(target=learner_main, args=(cfg, self._inbox, self._outbox, os.getpid()),
                                name="dfp_learner", daemon=True)
        self.proc.start()
        self.alive = True  # false once the process was seen gone: nothing more is sent

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        if self.alive:
            self._inbox.put((kind, payload))

    def receive(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything the learner reported since the last call."""
        out = []
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def exited(self) -> int | None:
        """The exit code the first time the process is found gone (None while it runs, and after)."""
        if not self.alive or self.proc.is_alive():
            return None
        self.alive = False
        return self.proc.exitcode

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the learner to save and stop; kill it after `timeout_s`."""
        if not self.proc.is_alive():
            return
        try:
            self._inbox.put(("stop", {}))
        except Exception:  # the queue's feeder is gone at interpreter shutdown: the join below still bounds us
            pass
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.kill()
