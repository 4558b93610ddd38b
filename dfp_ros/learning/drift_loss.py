"""The drift loss of Drifting Field Policy, with the reference semantics (docs/architecture.md, "Algorithm").

For each state, G generated samples are pulled towards positives and pushed away from negatives
(the generated samples themselves plus optional extra negatives) by a kernel-weighted force.
The network is regressed onto `x + force` with the goal's gradient stopped, so gradient flows only
through the generated samples.

The steps, per state (all temperatures at once):
1. distances from each generated sample x to every target (generated, negatives, positives);
2. one scale for the batch: the weighted mean distance; coordinates and distances normalised by it;
3. a sample never acts on itself (its self-distance is pushed far away);
4. logits -dist / T per temperature T;
5. affinity = sqrt(softmax over targets * softmax over samples), weighted by the targets' weights;
6. force = attraction to positives (weighted by the total affinity to negatives) minus repulsion
   from negatives (weighted by the total affinity to positives);
7. each temperature's force normalised to unit RMS, then summed;
8. loss = mean squared distance between x and the stopped goal x + force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SELF_MASK = 100.0  # added to the normalised self-distance so a sample never acts on itself
SCALE_FLOOR = 1e-3
AFFINITY_FLOOR = 1e-6
SQDIST_FLOOR = 1e-8
RMS_FLOOR = 1e-8


def _weights(w: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return like.new_ones(like.shape[:2], dtype=torch.float32)
    if w.shape != like.shape[:2]:
        raise ValueError(f"weights must have shape {tuple(like.shape[:2])}, got {tuple(w.shape)}")
    return w.detach().float()  # weights are data: no gradient flows into them


def drift_loss(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    *,
    temperatures: Sequence[float] = (0.1,),
    weight_gen: torch.Tensor | None = None,
    weight_pos: torch.Tensor | None = None,
    weight_neg: torch.Tensor | None = None,
    stats: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-state drift loss.

    gen [B, G, D] generated samples (with gradient), pos [B, P, D] positives, neg [B, M, D]
    optional extra negatives; weights are [B, G] / [B, P] / [B, M] (default 1). Returns [B] in float32.
    If `stats` is a dict, it is filled with diagnostics: `force_rms` [T] (per temperature, before
    normalisation, in scaled units) and `nearest_pos` (mean distance from a generated sample to its
    nearest positive, in input units) — the loss value itself stays near len(temperatures).
    """
    if gen.dim() != 3 or pos.dim() != 3:
        raise ValueError(f"gen and pos must be [B, N, D]; got {tuple(gen.shape)} and {tuple(pos.shape)}")
    B, _, D = gen.shape
    if pos.shape[0] != B or pos.shape[2] != D:
        raise ValueError(f"pos {tuple(pos.shape)} does not match gen {tuple(gen.shape)}")
    if pos.shape[1] == 0:
        raise ValueError("pos must hold at least one positive per state")
    if not temperatures:
        raise ValueError("temperatures must not be empty")
    if neg is None:
        if weight_neg is not None:
            raise ValueError("weight_neg given without neg")
        neg = gen.new_zeros(B, 0, D)
        weight_neg = gen.new_zeros(B, 0)
    elif neg.dim() != 3 or neg.shape[0] != B or neg.shape[2] != D:
        raise ValueError(f"neg {tuple(neg.shape)} does not match gen {tuple(gen.shape)}")

    # The loss is computed in float32 whatever the input precision.
    w = torch.cat([_weights(weight_gen, gen), _weights(weight_neg, neg), _weights(weight_pos, pos)], 1)
    core = _compiled_core if _compile_enabled and gen.is_cuda else _drift_core
    loss, rms, nearest = core(gen.float(), neg.detach().float(), pos.detach().float(), w, tuple(temperatures))
    if stats is not None:
        stats["force_rms"] = rms
        stats["nearest_pos"] = nearest
    return loss


def _drift_core(gen: torch.Tensor, neg: torch.Tensor, pos: torch.Tensor, w: torch.Tensor,
                temperatures: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-8 of the module docstring on validated float32 inputs; returns (loss [B], force_rms [T], nearest_pos)."""
    _, G, D = gen.shape
    x = gen.detach()
    targets = torch.cat([x, neg, pos], dim=1)  # [B, targets, D]
    n_neg = G + neg.shape[1]

    sq = (x.unsqueeze(2) - targets.unsqueeze(1)).pow(2).sum(-1)  # [B, G, targets]
    dist = sq.clamp_min(SQDIST_FLOOR).sqrt()
    # One scale for the whole batch: the weighted mean distance.
    scale = (dist * w.unsqueeze(1)).mean() / w.mean()
    coord_scale = (scale / math.sqrt(D)).clamp_min(SCALE_FLOOR)
    x_s = x / coord_scale
    targets_s = targets / coord_scale
    dist_n = dist / scale.clamp_min(SCALE_FLOOR)
    self_mask = torch.zeros(G, targets.shape[1], device=x.device, dtype=x.dtype)
    self_mask[:, :G] = torch.eye(G, device=x.device, dtype=x.dtype) * SELF_MASK
    dist_n = dist_n + self_mask

    # All temperatures at once ([T, B, G, targets]): one kernel per op instead of one per temperature.
    # (Built with stack, not a tensor of temperatures: a host-to-device copy would stall a GPU step.)
    logits = torch.stack([dist_n * (-1.0 / r) for r in temperatures])
    aff = (logits.softmax(-1) * logits.softmax(-2)).clamp_min(AFFINITY_FLOOR).sqrt()
    aff = aff * w.unsqueeze(1)
    a_neg, a_pos = aff[..., :n_neg], aff[..., n_neg:]
    coeff = torch.cat([-a_neg * a_pos.sum(-1, keepdim=True), a_pos * a_neg.sum(-1, keepdim=True)], dim=-1)
    force = coeff @ targets_s - coeff.sum(-1, keepdim=True) * x_s  # [T, B, G, D]
    rms = force.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp_min(RMS_FLOOR).sqrt()
    total = (force / rms).sum(0)

    goal = (x_s + total).detach()
    loss = (gen / coord_scale - goal).pow(2).mean(-1).mean(-1)
    nearest = dist[..., n_neg:].min(-1).values.mean().detach()
    return loss, rms.flatten().detach(), nearest


# On a GPU the eager loss is launch-bound (dozens of tiny kernels); torch.compile fuses them.
_compile_enabled = False
_compiled_core = None


def enable_compile(enabled: bool = True) -> None:
    """Use a torch.compile'd loss for CUDA tensors (first call compiles, ~a minute)."""
    global _compile_enabled, _compiled_core
    _compile_enabled = enabled
    if enabled and _compiled_core is None:
        _compiled_core = torch.compile(_drift_core, dynamic=False)
