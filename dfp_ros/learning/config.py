"""Configuration of a DFP model and of its training, kept apart from the modelling code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The reference uses a single temperature (0.1). With it, samples collapse between far-apart
# action modes (docs/architecture.md, "Algorithm"); wider kernels keep the repulsion between generated samples alive,
# so every mode keeps its share. test_multimodality checks this default.
DEFAULT_TEMPERATURES = (0.02, 0.05, 0.2, 0.5, 1.0)


@dataclass
class ModelConfig:
    """Shape of the policy (and optional critic) networks."""

    horizon: int = 5
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    critic_ensemble: int = 2
    image_channels: tuple[int, ...] = (32, 64, 64, 64)
    image_feature_dim: int = 128
    use_critic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        for k in ("actor_hidden", "critic_hidden", "image_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class TrainConfig:
    """One `dfp train` run."""

    dataset: str = ""
    root: str | None = None
    output: str = "outputs/train"
    state_keys: list[str] = field(default_factory=list)  # empty: taken from the dataset
    image_keys: list[str] | None = None  # None: every camera of the dataset; []: none
    action_key: str = "action"
    image_size: tuple[int, int] = (96, 96)
    image_shift: int = 4  # random-shift augmentation of camera frames, in pixels (0 = none)
    steps: int = 20_000
    batch_size: int = 256
    num_gen: int = 8
    lr: float = 3e-4
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    loss: str = "drift"  # "drift" or "mse" (regression baseline)
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    checkpoint_every: int = 5_000
    compile: bool = False  # torch.compile the drift loss on CUDA (measured: no consistent gain)
    step_mode: str = "eager"  # "graphed": each step one CUDA graph replay over static buffers (graphed_step)
    gamma: float = 0.99
    tau: float = 0.005
    critic_samples: int = 16
    reward_key: str = "next.reward"
    done_key: str = "next.done"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        for k in ("image_size", "temperatures"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
