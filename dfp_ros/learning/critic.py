"""Chunk critic (Q-chunking style): an ensemble of LayerNorm MLPs on (observation, action chunk).

Target for a chunk of H actions (chunked n-step TD, as in Q-chunking):
    y = sum_{i<H} gamma^i r_i + gamma^H * mask * mean_ensemble Q_target(s', a'),
with a' the best of N samples of the actor under the current critic.
"""

from __future__ import annotations

import torch
from torch import nn

from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.networks import ObservationEncoder, mlp


class ChunkCritic(nn.Module):
    """Q(s, a_chunk) for E ensemble members; actions are normalised and flattened [.., H*A]."""

    def __init__(self, encoder: ObservationEncoder, chunk_dim: int, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.members = nn.ModuleList(
            mlp(encoder.out_dim + chunk_dim, cfg.critic_hidden, 1, layer_norm=True)
            for _ in range(cfg.critic_ensemble)
        )

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor],
                chunks: torch.Tensor) -> torch.Tensor:
        """chunks [B, N, D] -> Q [E, B, N]."""
        return self.from_features(self.encoder(state, images), chunks)

    def from_features(self, feat: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        x = torch.cat([feat.unsqueeze(1).expand(-1, chunks.shape[1], -1), chunks], dim=-1)
        return torch.stack([m(x).squeeze(-1) for m in self.members])


def discounted_chunk_return(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """rewards [B, H] -> sum_i gamma^i r_i [B]."""
    powers = gamma ** torch.arange(rewards.shape[-1], device=rewards.device, dtype=rewards.dtype)
    return (rewards * powers).sum(-1)


def chunk_td_target(rewards: torch.Tensor, mask: torch.Tensor, next_q: torch.Tensor,
                    gamma: float) -> torch.Tensor:
    """rewards [B, H], mask [B] (0 where the episode terminated inside the chunk), next_q [B]."""
    horizon = rewards.shape[-1]
    return discounted_chunk_return(rewards, gamma) + gamma**horizon * mask * next_q


def best_of_n(q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """q [B, N], candidates [B, N, D] -> the argmax-Q candidate [B, D]."""
    idx = q.argmax(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), idx]


def top_k(q: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """q [B, N], candidates [B, N, D] -> the K highest-Q candidates [B, K, D] (best first)."""
    idx = q.topk(k, dim=1).indices
    return torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameters and buffers alike."""
    targets, sources = list(target.parameters()), list(source.parameters())
    if len(targets) != len(sources):
        raise ValueError(f"target has {len(targets)} parameter tensors, source {len(sources)}")
    # One fused call instead of one kernel launch per tensor (dozens per update on a GPU).
    torch._foreach_lerp_(targets, sources, tau)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
