"""Offline training of a DFP policy (and optionally its critic) on a LeRobot dataset."""

from __future__ import annotations

import copy
import dataclasses
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dfp_ros.contracts import ModelMetadata
from dfp_ros.learning.augmentation import random_shift
from dfp_ros.learning.config import ModelConfig, TrainConfig
from dfp_ros.learning.critic import polyak_update
from dfp_ros.learning.dataset import ChunkBatch, ChunkDataset, DatasetError
from dfp_ros.learning.drift_loss import enable_compile
from dfp_ros.learning.graphed_step import STEP_MODES, StaticStep, empty_batch_like
from dfp_ros.learning.model import DFPModel, load_checkpoint, load_training_state, save_checkpoint
from dfp_ros.learning.objectives import critic_loss, drift_bc_loss, mse_bc_loss
from dfp_ros.learning.training_log import TrainingLog

LAST = "last"


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def metadata_for(data: ChunkDataset, cfg: ModelConfig) -> ModelMetadata:
    return ModelMetadata(
        state=data.state_specs, cameras=data.cameras, action_key=data.action_key,
        action_names=data.action_names, horizon=cfg.horizon, action_dim=data.action_dim, fps=data.fps,
        num_samples=1, has_critic=cfg.use_critic, action_low=data.action_low.tolist(),
        action_high=data.action_high.tolist(), dataset=data.repo_id, git_revision=git_revision(),
    )


class Trainer:
    """Owns model, optimisers, data and logs for one run; `run()` trains to `cfg.steps`."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output)
        self.device = select_device(cfg.device)
        enable_compile(cfg.compile and self.device.type == "cuda")
        seed_everything(cfg.seed)
        if cfg.loss not in ("drift", "mse"):
            raise ValueError(f"loss must be 'drift' or 'mse', got {cfg.loss!r}")
        self.data = ChunkDataset(
            cfg.dataset, cfg.root, horizon=model_cfg.horizon, state_keys=cfg.state_keys or None,
            image_keys=cfg.image_keys, action_key=cfg.action_key, image_size=cfg.image_size,
            reward_key=cfg.reward_key, done_key=cfg.done_key, progress=progress)
        # An arrays file brings its own reward and terminal columns: the checkpoint records those.
        self.cfg = cfg = dataclasses.replace(cfg, reward_key=self.data.reward_key, done_key=self.data.done_key)
        if model_cfg.use_critic and not self.data.has_rewards:
            raise DatasetError(f"--critic needs a reward column {cfg.reward_key!r}; the dataset has none")
        self.step = 0
        self.rng = np.random.default_rng(cfg.seed)
        ckpt = self.out / "checkpoints" / LAST
        if resume and (ckpt / "config.json").is_file():
            self.model, saved = load_checkpoint(ckpt)
            self.model.to(self.device)
            self._build_optimisers()
            self._load_training_state(ckpt, saved)
        else:
            meta = metadata_for(self.data, model_cfg)
            self.model = DFPModel(meta, model_cfg, torch.from_numpy(self.data.state_mean),
                                  torch.from_numpy(self.data.state_std)).to(self.device)
            self._build_optimisers()
        self._static_step = self._make_static_step()
        self.log = TrainingLog(self.out, resume=resume)
        self.log.truncate_after(self.step)

    def _build_optimisers(self) -> None:
        self.actor_opt = torch.optim.Adam(self.model.actor.parameters(), lr=self.cfg.lr)
        self.critic_opt = self.target_critic = None
        if self.model.critic is not None:
            self.critic_opt = torch.optim.Adam(self.model.critic.parameters(), lr=self.cfg.lr)
            self.target_critic = copy.deepcopy(self.model.critic).requires_grad_(False)

    def _load_training_state(self, ckpt: Path, saved: dict) -> None:
        state = load_training_state(ckpt)
        if state is None:
            return
        self.step = int(saved.get("step", 0))
        self.actor_opt.load_state_dict(state["actor_opt"])
        if self.critic_opt is not None and "critic_opt" in state:
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.target_critic.load_state_dict(state["target_critic"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self) -> Path:
        training_state = {
            "actor_opt": self.actor_opt.state_dict(), "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        if self.critic_opt is not None:
            training_state["critic_opt"] = self.critic_opt.state_dict()
            training_state["target_critic"] = self.target_critic.state_dict()
        extra = {"train_config": self.cfg.to_dict(), "step": self.step}
        folder = self.out / "checkpoints" / LAST
        save_checkpoint(folder, self.model, extra, training_state)
        return folder

    def train_step(self) -> dict[str, torch.Tensor]:
        batch = self.data.sample(self.cfg.batch_size, self.rng,
                                 with_critic_targets=self.model.critic is not None)
        if self._static_step is None:
            info = self.update_on(batch.to(self.device))
        else:
            info = self._static_step(batch)
        self.step += 1
        return info

    def _make_static_step(self) -> StaticStep | None:
        """With step_mode "graphed", the update over static buffers (a CUDA graph on a GPU; on the CPU the same
        maths eagerly, so the run is the eager one, step for step)."""
        if self.cfg.step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {self.cfg.step_mode!r}")
        if self.cfg.step_mode == "eager":
            return None
        example = self.data.batch_at(np.zeros(self.cfg.batch_size, np.int64),
                                     with_critic_targets=self.model.critic is not None)
        optimizers = [o for o in (self.actor_opt, self.critic_opt) if o is not None]
        return StaticStep(self.update_on, empty_batch_like(example, self.device), self.cfg.step_mode,
                          optimizers=optimizers, name="offline step")

    def update_on(self, batch: ChunkBatch) -> dict[str, torch.Tensor]:
        """One update on a batch already on the device: the actor's BC step, then the critic's TD step."""
        if self.cfg.image_shift > 0:  # shifted copies: a static step's buffers must keep their tensors
            shift = self.cfg.image_shift
            batch = dataclasses.replace(batch, images={k: random_shift(v, shift) for k, v in batch.images.items()},
                                        next_images={k: random_shift(v, shift) for k, v in batch.next_images.items()})
        if self.cfg.loss == "drift":
            loss, info = drift_bc_loss(self.model, batch, self.cfg.num_gen, self.cfg.temperatures)
        else:
            loss, info = mse_bc_loss(self.model, batch, self.cfg.num_gen)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        if self.model.critic is not None:
            c_loss, c_info = critic_loss(self.model, self.target_critic, batch, self.cfg.gamma,
                                         self.cfg.critic_samples)
            self.critic_opt.zero_grad(set_to_none=True)
            c_loss.backward()
            self.critic_opt.step()
            polyak_update(self.target_critic, self.model.critic, self.cfg.tau)
            info.update(c_info)
        return info

    def run(self) -> Path:
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="dfp train", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        t0, s0 = time.perf_counter(), self.step
        try:
            while self.step < self.cfg.steps:
                info = self.train_step()
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    info = {k: float(v) for k, v in info.items()}
                    rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                    t0, s0 = time.perf_counter(), self.step
                    info["steps_per_s"] = rate
                    self.log.log(self.step, info)
                    shown = {k: info[k] for k in ("nearest_pos", "loss", "critic_loss") if k in info}
                    bar.set_postfix({**{k: f"{v:.3g}" for k, v in shown.items()}, "it/s": f"{rate:.1f}"})
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                    self.log.flush()
        finally:
            bar.close()
        folder = self.save()
        self.log.close()
        return folder
