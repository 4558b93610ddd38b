"""The DFP policy network a = f_theta(eps, s) and its observation encoder.

Networks take observations in raw units (state as float, images as uint8 [B, H, W, 3] RGB) and
normalise inside, so the exported ONNX graph has the same inputs as the torch module.
"""

from __future__ import annotations

import torch
from torch import nn

from dfp_ros.contracts import CameraSpec
from dfp_ros.learning.config import ModelConfig

STD_FLOOR = 1e-2  # a state dimension that never moves must not blow up after normalisation


def mlp(inp: int, hidden: tuple[int, ...], out: int, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(inp, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.GELU())
        inp = h
    layers.append(nn.Linear(inp, out))
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """Compact CNN trained from scratch (nothing is downloaded): uint8 HWC -> feature vector."""

    def __init__(self, height: int, width: int, channels: tuple[int, ...], out_dim: int):
        super().__init__()
        convs: list[nn.Module] = []
        c_in = 3
        for c in channels:
            convs += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*convs)
        with torch.no_grad():
            n = self.convs(torch.zeros(1, 3, height, width)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, out_dim), nn.LayerNorm(out_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
        return self.head(self.convs(x))


class ObservationEncoder(nn.Module):
    """Normalised state concatenated with one CNN feature vector per camera."""

    def __init__(self, state_mean: torch.Tensor, state_std: torch.Tensor,
                 cameras: list[CameraSpec], cfg: ModelConfig):
        super().__init__()
        self.register_buffer("state_mean", state_mean.float().clone())
        self.register_buffer("state_std", state_std.float().clamp_min(STD_FLOOR).clone())
        self.camera_names = [c.name for c in cameras]
        self.images = nn.ModuleDict({
            c.name: ImageEncoder(c.height, c.width, cfg.image_channels, cfg.image_feature_dim)
            for c in cameras
        })
        self.out_dim = state_mean.numel() + len(cameras) * cfg.image_feature_dim

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [(state.float() - self.state_mean) / self.state_std]
        feats += [self.images[name](images[name]) for name in self.camera_names]
        return torch.cat(feats, dim=-1)


class DFPActor(nn.Module):
    """f_theta(eps, s): noise [B, N, H*A] + observation -> normalised action chunks [B, N, H*A]."""

    def __init__(self, encoder: ObservationEncoder, noise_dim: int, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.noise_dim = noise_dim
        self.net = mlp(encoder.out_dim + noise_dim, cfg.actor_hidden, noise_dim)

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor],
                noise: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(state, images)
        return self.from_features(feat, noise)

    def from_features(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        feat = feat.unsqueeze(1).expand(-1, noise.shape[1], -1)
        return self.net(torch.cat([feat, noise], dim=-1))
