"""DFPModel: actor (+ optional critic) with the action normalisation, and its checkpoint format.

A checkpoint is a folder: `model.safetensors` (weights), `config.json` (model config, metadata,
training config, step) and `training_state.pt` (optimisers and RNG, for resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dfp_ros.contracts import ContractError, ModelMetadata
from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.critic import ChunkCritic
from dfp_ros.learning.networks import DFPActor, ObservationEncoder

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
ACTION_RANGE_FLOOR = 1e-6


class CheckpointError(ContractError):
    """A checkpoint folder is missing, incomplete or corrupted."""


class DFPModel(nn.Module):
    """Policy f_theta(eps, s) and, when configured, a chunk critic, for one observation layout."""

    def __init__(self, meta: ModelMetadata, cfg: ModelConfig,
                 state_mean: torch.Tensor | None = None, state_std: torch.Tensor | None = None):
        super().__init__()
        self.meta = meta
        self.cfg = cfg
        s = meta.state_dim
        mean = torch.zeros(s) if state_mean is None else state_mean
        std = torch.ones(s) if state_std is None else state_std
        self.actor = DFPActor(ObservationEncoder(mean, std, meta.cameras, cfg), meta.noise_dim, cfg)
        self.critic = (ChunkCritic(ObservationEncoder(mean, std, meta.cameras, cfg), meta.noise_dim, cfg)
                       if cfg.use_critic else None)
        low = torch.tensor(meta.action_low, dtype=torch.float32)
        high = torch.tensor(meta.action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_range", ((high - low) / 2).clamp_min(ACTION_RANGE_FLOOR))

    # Actions: raw robot units <-> [-1, 1], per action dimension, chunks flattened [.., H*A].
    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        shape = chunk.shape
        a = chunk.reshape(*shape[:-1], -1, self.meta.action_dim)
        return ((a - self.action_center) / self.action_half_range).clamp(-1, 1).reshape(shape)

    def denormalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        shape = chunk.shape
        a = chunk.reshape(*shape[:-1], -1, self.meta.action_dim).clamp(-1, 1)
        return (a * self.action_half_range + self.action_center).reshape(shape)

    def sample(self, state: torch.Tensor, images: dict[str, torch.Tensor], num: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised chunks [B, num, H*A], clipped to [-1, 1]."""
        noise = torch.randn(state.shape[0], num, self.meta.noise_dim, generator=generator,
                            device=state.device)
        return self.actor(state, images, noise).clamp(-1, 1)


def save_checkpoint(folder: Path, model: DFPModel, extra: dict[str, Any],
                    training_state: dict[str, Any] | None = None) -> None:
    """Write every file under a temporary name first, then rename them one after the other, so a
    process killed while saving leaves the previous checkpoint (or, within microseconds, a mix of
    two consecutive ones), never a half-written file. config.json (with the step) is renamed last, so
    it never claims a newer step than the training state a resume reads."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [WEIGHTS_FILE] + ([TRAINING_STATE_FILE] if training_state is not None else []) + [CONFIG_FILE]
    tmp = {name: folder / (name + ".tmp") for name in names}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp[WEIGHTS_FILE]))
    config = {"model_config": model.cfg.to_dict(), "metadata": model.meta.to_dict(), **extra}
    tmp[CONFIG_FILE].write_text(json.dumps(config, indent=2))
    if training_state is not None:
        torch.save(training_state, tmp[TRAINING_STATE_FILE])
    for name in names:
        tmp[name].replace(folder / name)


def load_checkpoint(folder: Path | str, map_location: str = "cpu") -> tuple[DFPModel, dict[str, Any]]:
    """Rebuild a DFPModel from a checkpoint folder; raises CheckpointError with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} has no {name}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        meta = ModelMetadata.from_dict(config["metadata"])
        cfg = ModelConfig.from_dict(config["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}/{CONFIG_FILE} is not a valid dfp_ros config ({e})") from e
    try:
        weights = load_file(str(folder / WEIGHTS_FILE), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}/{WEIGHTS_FILE} is corrupted ({e})") from e
    model = DFPModel(meta, cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {folder} weights do not fit its config: {first}") from e
    return model, config


def load_training_state(folder: Path) -> dict[str, Any] | None:
    path = folder / TRAINING_STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupted ({type(e).__name__}: {e})") from e
