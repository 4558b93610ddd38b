"""Training objectives on a batch: DFP behaviour cloning, the MSE baseline, and the chunk critic.

Each function takes the model and a batch already on the right device, returns a scalar loss and
a dict of 0-d tensors worth logging (tensors, not floats: reading a number off a GPU waits for it,
so the trainer converts them only on the steps it logs). Optimiser steps belong to the caller (offline trainer or the
on-robot learner), so both use the same math.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dfp_ros.learning.critic import ChunkCritic, best_of_n, chunk_td_target
from dfp_ros.learning.dataset import ChunkBatch
from dfp_ros.learning.drift_loss import drift_loss
from dfp_ros.learning.model import DFPModel


def _generate(model: DFPModel, batch: ChunkBatch, num_gen: int) -> torch.Tensor:
    noise = torch.randn(batch.state.shape[0], num_gen, model.meta.noise_dim, device=batch.state.device)
    return model.actor(batch.state, batch.images, noise)


def _positives(model: DFPModel, batch: ChunkBatch) -> torch.Tensor:
    return model.normalize_actions(batch.chunk.flatten(1)).unsqueeze(1)  # [B, 1, D]


def drift_bc_loss(model: DFPModel, batch: ChunkBatch, num_gen: int,
                  temperatures: Sequence[float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DFP behaviour cloning: G generated chunks per state drift towards the dataset chunk."""
    gen = _generate(model, batch, num_gen)
    pos = _positives(model, batch)
    stats: dict[str, torch.Tensor] = {}
    loss = drift_loss(gen, pos, temperatures=temperatures, stats=stats).mean()
    info = {"loss": loss.detach(), "nearest_pos": stats["nearest_pos"]}
    info.update({f"force_rms_T{t:g}": v for t, v in zip(temperatures, stats["force_rms"], strict=True)})
    return loss, info


def mse_bc_loss(model: DFPModel, batch: ChunkBatch, num_gen: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The regression baseline: the same network and noise input, squared error to the dataset chunk."""
    gen = _generate(model, batch, num_gen)
    pos = _positives(model, batch)
    loss = F.mse_loss(gen, pos.expand_as(gen))
    with torch.no_grad():
        nearest = (gen - pos).norm(dim=-1).mean()
    return loss, {"loss": loss.detach(), "nearest_pos": nearest}


def critic_loss(model: DFPModel, target_critic: ChunkCritic, batch: ChunkBatch, gamma: float,
                num_samples: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Chunked n-step TD loss; the next chunk is the best of `num_samples` actor samples."""
    assert model.critic is not None and batch.rewards is not None and batch.mask is not None
    with torch.no_grad():
        cand = model.sample(batch.next_state, batch.next_images, num_samples)  # [B, N, D]
        q_now = model.critic(batch.next_state, batch.next_images, cand).mean(0)  # [B, N]
        nxt = best_of_n(q_now, cand).unsqueeze(1)
        next_q = target_critic(batch.next_state, batch.next_images, nxt).mean(0).squeeze(1)
        target = chunk_td_target(batch.rewards, batch.mask, next_q, gamma)
    q = model.critic(batch.state, batch.images, _positives(model, batch)).squeeze(-1)  # [E, B]
    loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q))
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "target_mean": target.mean()}
