"""The fine-tuning learner as a loop in its own process (ROS-free; the finetune node starts it).

Why a process, not a thread: the ROS side stamps header-less messages with the clock at receipt
(the policy node's rule, which the join relies on), so its executor must never wait behind a
training step holding the GIL. The node sends finished episodes (joined transitions) and
pause/resume/stop commands through `inbox`; the loop sends back status, log lines and exported
models through `outbox`.

Per episode: transitions -> replay buffer (interventions flagged: they are demonstrations too, see
replay_buffer.py), a learning-curve row with the episode's intervention rate. Learning: after `warmup_steps`
online environment steps, `updates_per_step` updates per environment step (the reference: 1).
Every `export_every` updates (or `export_every_s` seconds): export policy + critic to ONNX
(best-of-N), validate it (contract, parity, a finite in-range inference on replay states) and send
its path. Every `checkpoint_every` updates, at a stop, and when the node process disappears: the
whole learner state (networks, optimisers, target critic, EMA, counters, RNG, the online replay).

Camera models: episodes carry one uint8 image per camera for each transition's observation and
next observation; the replay keeps them (bounded by `replay_image_memory_gb`) and, when a dataset
seeds it, decodes the dataset's frames of the model's cameras at the model's size.

Update statistics stay device tensors (`OnlineLearner.update`); they become floats only when a
status message or a learning-curve row is written (a few times a second), so a GPU learner is not
made to wait for the device after every update.
"""

from __future__ import annotations

import copy
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LEARNER_DIR = "learner"
REPLAY_FILE = "replay_online.npz"
MODELS_DIR = "models"
KEEP_MODELS = 3


@dataclass
class LoopConfig:
    init_checkpoint: str
    output_dir: str
    dataset_root: str = ""
    dataset_repo_id: str = ""
    warmup_steps: int = 5000
    updates_per_step: float = 1.0
    export_every: int = 1000
    export_every_s: float = 0.0
    export_num_samples: int = 16
    export_weights: str = "float32"  # or "int8": smaller, ~2x faster models for a policy node on a CPU
    checkpoint_every: int = 1000
    replay_capacity: int = 1_000_000
    replay_image_memory_gb: float = 8.0  # camera models: refuse a replay whose images would exceed this
    online_fraction: float = -1.0  # < 0: uniform over offline + online (the reference)
    device: str = "cpu"
    learner_mode: str = "eager"  # contracts.LEARNER_STEP_MODES
    torch_threads: int = 1
    seed: int = 0
    online: dict[str, Any] = field(default_factory=dict)  # OnlineConfig fields


def seed_image_size(cameras: list[Any]) -> tuple[int, int]:
    """The (height, width) a seeding dataset is decoded at: the model's, one size for all its cameras.

    ValueError when the cameras differ in size (ChunkDataset decodes every camera at one size).
    """
    sizes = {(c.height, c.width) for c in cameras}
    if len(sizes) > 1:
        raise ValueError(f"the model's cameras have different sizes {sorted(sizes)}: seeding the replay from a "
                         "dataset needs one size; fine-tune without dataset_root / dataset_repo_id")
    return next(iter(sizes), (96, 96))  # no camera: the size is not used


def _msg(outbox: Any, kind: str, **payload: Any) -> None:
    try:
        outbox.put_nowait((kind, payload))
    except Exception:  # the node is gone or its queue full: nothing to tell anyone
        pass


def learner_main(cfg: LoopConfig, inbox: Any, outbox: Any, parent_pid: int) -> None:
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the node asks us to save and stop instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _Loop(cfg, inbox, outbox, parent_pid).run()
    except Exception as e:  # say why in the node's log, then die: the node keeps the policy running
        _msg(outbox, "fatal", text=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise


class _Loop:
    def __init__(self, cfg: LoopConfig, inbox: Any, outbox: Any, parent_pid: int):
        import torch

        from dfp_ros.learning.learning_curve import LearningCurve
        from dfp_ros.learning.online import OnlineConfig, OnlineLearner
        from dfp_ros.learning.replay_buffer import ReplayBuffer

        torch.set_num_threads(max(1, cfg.torch_threads))
        self.cfg, self.inbox, self.outbox, self.parent_pid = cfg, inbox, outbox, parent_pid
        self.out = Path(cfg.output_dir)
        self.ckpt = self.out / LEARNER_DIR
        self.models = self.out / MODELS_DIR
        self.models.mkdir(parents=True, exist_ok=True)
        ocfg = OnlineConfig(**cfg.online)
        resume = (self.ckpt / "training_state.pt").is_file()
        source = self.ckpt if resume else Path(cfg.init_checkpoint)
        self.learner, extra = OnlineLearner.load(source, ocfg, cfg.device, step_mode=cfg.learner_mode)
        if not resume:
            self.learner.rng = np.random.default_rng(cfg.seed)
            torch.manual_seed(cfg.seed)
        meta = self.learner.model.meta
        offline = None
        if cfg.dataset_root or cfg.dataset_repo_id:
            from dfp_ros.learning.dataset import ChunkDataset

            offline = ChunkDataset(cfg.dataset_repo_id, cfg.dataset_root or None, horizon=meta.horizon,
                                   state_keys=[s.key for s in meta.state], image_keys=[c.key for c in meta.cameras],
                                   image_size=seed_image_size(meta.cameras), progress=False)
        self.replay = ReplayBuffer(meta.state_dim, meta.horizon, meta.action_dim, cfg.replay_capacity, offline,
                                   None if cfg.online_fraction < 0 else cfg.online_fraction, cameras=meta.cameras,
                                   max_image_bytes=int(cfg.replay_image_memory_gb * 1024**3))
        if resume and (self.ckpt / REPLAY_FILE).is_file():
            self.replay.load(self.ckpt / REPLAY_FILE)
        self.env_steps = int(extra.get("env_steps", 0))
        self.episodes = int(extra.get("episodes", 0))
        self.exports = int(extra.get("exports", 0))
        self.curve = LearningCurve(self.out)
        self.paused: str = ""
        self.last: dict[str, Any] = {}  # the last update's statistics: 0-d device tensors
        self.batch_interventions = 0.0  # share of interventions in the last batch (BC and critic alike)
        self._last_floats: dict[str, float] | None = {}
        self.last_export_t = time.monotonic()
        self.last_status_t = 0.0
        self.last_plot_t = 0.0
        self.stop = False
        where = f"resumed from {self.ckpt} at update {self.learner.updates}" if resume else \
            f"started from {cfg.init_checkpoint}"
        _msg(outbox, "log", level="info", text=(
            f"learner {where}: {self.env_steps} env steps, {self.replay.size} online + {self.replay.offline_size} "
            f"offline transitions; warm-up {cfg.warmup_steps} steps, {cfg.updates_per_step:g} updates/step, "
            f"N={ocfg.num_candidates} K={ocfg.top_k} lambda={ocfg.lam:g}"))
        _msg(outbox, "resumed" if resume else "started", updates=self.learner.updates, env_steps=self.env_steps)

    # --- loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop:
            if os.getppid() != self.parent_pid:  # the node died: keep what we learned, then go
                self.save()
                return
            self._drain(block=not self._should_update())
            if self._should_update():
                for _ in range(8):  # a few updates, then look at the inbox again
                    if not self._should_update():
                        break
                    self._update()
            self._status()
        self.save()
        _msg(self.outbox, "log", level="info", text=f"learner stopped at update {self.learner.updates}; saved")

    def _target_updates(self) -> float:
        return self.cfg.updates_per_step * max(0, self.env_steps - self.cfg.warmup_steps)

    def _should_update(self) -> bool:
        return (not self.paused and len(self.replay) > 0 and self.env_steps >= self.cfg.warmup_steps
                and self.learner.updates < self._target_updates())

    def _drain(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.1) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "episode":
                self._episode(payload)
            elif kind == "pause":
                self.paused = payload["reason"]
            elif kind == "resume":
                self.paused = ""
            elif kind == "stop":
                self.stop = True
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _episode(self, ep: dict[str, Any]) -> None:
        from dfp_ros.learning.transitions import Transition

        n = len(ep["mask"])
        images, next_images = ep.get("images", {}), ep.get("next_images", {})
        intervention = ep.get("intervention", np.zeros(n, bool))
        for i in range(n):
            self.replay.add(Transition(ep["state"][i], ep["chunk"][i], ep["rewards"][i], ep["next_state"][i],
                                       float(ep["mask"][i]), images={k: v[i] for k, v in images.items()},
                                       next_images={k: v[i] for k, v in next_images.items()},
                                       intervention=bool(intervention[i])))
        self.env_steps += int(ep["steps"])
        self.episodes += 1
        self.curve.add({
            "time_s": round(time.time(), 3), "robot": ep["robot"], "env_steps": self.env_steps,
            "updates": self.learner.updates, "episode_return": ep["episode_return"], "success": int(ep["success"]),
            "steps": ep["steps"], "chunks": ep["chunks"], "joined": n, "dropped": sum(ep["dropped"].values()),
            "human_steps": ep.get("human_steps", 0), "intervention_rate": round(ep.get("intervention_rate", 0.0), 4),
            "intervened": int(np.sum(intervention)),
            "learning": int(self._should_update()),
            **{k: v for k, v in self.last_floats().items() if k in ("critic_loss", "q_mean", "topk_q", "nearest_pos")},
        })
        if time.monotonic() - self.last_plot_t > 10.0:
            self.curve.plot()
            self.last_plot_t = time.monotonic()

    def _update(self) -> None:
        batch, interventions = self.replay.sample_flagged(self.learner.cfg.batch_size, self.learner.rng)
        self.batch_interventions = float(interventions.mean())
        self.last = self.learner.update(batch)
        self._last_floats = None
        u = self.learner.updates
        due_s = self.cfg.export_every_s > 0 and time.monotonic() - self.last_export_t >= self.cfg.export_every_s
        if (self.cfg.export_every > 0 and u % self.cfg.export_every == 0) or due_s:
            self.export()
        if self.cfg.checkpoint_every > 0 and u % self.cfg.checkpoint_every == 0:
            self.save()

    def last_floats(self) -> dict[str, float]:
        """The last update's statistics as floats (converted once per update, when first asked for)."""
        if self._last_floats is None:
            from dfp_ros.learning.online import to_floats

            self._last_floats = to_floats(self.last)
        return self._last_floats

    def _status(self) -> None:
        now = time.monotonic()
        if now - self.last_status_t < 0.25:
            return
        self.last_status_t = now
        _msg(self.outbox, "status", updates=self.learner.updates, env_steps=self.env_steps, episodes=self.episodes,
             replay_online=self.replay.size, replay_offline=self.replay.offline_size, exports=self.exports,
             replay_interventions=len(self.replay.demos), batch_interventions=round(self.batch_interventions, 4),
             target_updates=int(self._target_updates()),
             learning=self._should_update(), paused=self.paused, **self.last_floats())

    # --- export and checkpoint -------------------------------------------------------------------------
    def export(self) -> Path | None:
        from dfp_ros.learning.export import export_onnx
        from dfp_ros.runtime.policy_runtime import PolicyRuntime

        self.last_export_t = time.monotonic()
        u = self.learner.updates
        path = self.models / f"policy_u{u:08d}.onnx"
        t0 = time.perf_counter()
        try:
            model = copy.deepcopy(self.learner.model).to("cpu")
            export_onnx(model, path, num_samples=self.cfg.export_num_samples, with_critic=True,
                        weights=self.cfg.export_weights)
            self._validate(PolicyRuntime(path, device="cpu"))
        except Exception as e:  # a model that fails a check is never handed to the policy
            path.unlink(missing_ok=True)
            _msg(self.outbox, "log", level="error", text=f"export at update {u} failed validation, not sent: {e}")
            return None
        self.exports += 1
        _msg(self.outbox, "exported", path=str(path), updates=u, seconds=time.perf_counter() - t0)
        for old in sorted(self.models.glob("policy_u*.onnx"))[:-KEEP_MODELS]:
            old.unlink(missing_ok=True)  # the policy node has loaded it already (it keeps the bytes)
        return path

    def _validate(self, runtime: Any) -> None:
        meta = runtime.meta
        n = min(self.replay.size, 8)
        if n:
            states, images = self.replay.state[:n], self.replay.images
        else:  # nothing online yet: one blank observation
            states = np.zeros((1, meta.state_dim), np.float32)
            images = {c.name: np.zeros((1, c.height, c.width, 3), np.uint8) for c in meta.cameras}
        low, high = np.asarray(meta.action_low), np.asarray(meta.action_high)
        rng = np.random.default_rng(0)
        for i, s in enumerate(states):
            chunk = runtime.act(s, {k: v[i] for k, v in images.items()}, rng).chunk
            if not np.isfinite(chunk).all():
                raise ValueError("non-finite actions on a replay state")
            if (chunk < low - 1e-4).any() or (chunk > high + 1e-4).any():
                raise ValueError("actions outside the model's action range on a replay state")

    def save(self) -> None:
        extra = {"env_steps": self.env_steps, "episodes": self.episodes, "exports": self.exports}
        self.learner.save(self.ckpt, extra)
        self.replay.save(self.ckpt / REPLAY_FILE)
        self.curve.plot()
