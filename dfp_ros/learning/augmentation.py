"""Image augmentation for training camera policies: random shifts.

A policy trained from a few hundred demonstrations on raw frames memorises pixel positions; shifting
each frame by a few pixels (edge-padded, then cropped back to its size, a different shift per frame)
is the augmentation that made pixel-based control work in DrQ and is what robot-learning stacks use by
default. It runs on the uint8 batch before the network, in training only: the exported graph sees
the camera's frame as it is.
"""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, H, W, C] -> the same shape, each frame shifted by up to `pad` pixels in x and y."""
    if pad <= 0:
        return images
    if images.ndim != 4:
        raise ValueError(f"random_shift expects [B, H, W, C] images, got shape {tuple(images.shape)}")
    b, h, w, _ = images.shape
    dev = images.device
    # Clamped indices = edge padding: the border continues instead of a black band the network could key on.
    dy = torch.randint(-pad, pad + 1, (b, 1), generator=generator, device=dev)
    dx = torch.randint(-pad, pad + 1, (b, 1), generator=generator, device=dev)
    rows = (dy + torch.arange(h, device=dev)).clamp(0, h - 1)  # [B, H]
    cols = (dx + torch.arange(w, device=dev)).clamp(0, w - 1)  # [B, W]
    return images[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
