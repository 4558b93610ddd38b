"""The online DFP update (docs/architecture.md, "Online fine-tuning"), ROS-free.

One update on a replay batch:
1. From the old policy — an EMA of the actor (tau 1e-4), reset to the actor when fine-tuning
   starts — draw N = 16 chunks per state, score them with the critic (ensemble mean), keep the top
   K = 4 as positives (no gradient).
2. Draw G = 8 fresh chunks from the current actor.
3. Actor loss = 1.0 x drift(G vs the replay chunk) + lambda x drift(G vs the top-K), the same G for
   both; lambda = 0.5. No Q-gradient reaches the actor: the critic only ranks candidates.
4. Critic: chunked n-step TD with best-of-N next chunk and a Polyak target (objectives.critic_loss,
   the same math the offline trainer uses); then the EMA update.

`OnlineLearner` owns the networks, optimisers, target critic and EMA actor, and saves/loads all of it
(plus counters and RNG) so a restarted learner continues where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfp_ros.learning.config import DEFAULT_TEMPERATURES
from dfp_ros.learning.critic import polyak_update, top_k
from dfp_ros.learning.dataset import ChunkBatch
from dfp_ros.learning.drift_loss import drift_loss
from dfp_ros.learning.graphed_step import STEP_MODES, StaticStep, empty_batch_like, set_capturable
from dfp_ros.learning.model import DFPModel, load_checkpoint, load_training_state, save_checkpoint
from dfp_ros.learning.objectives import critic_loss

LEARNER_STATE_VERSION = 1


@dataclass
class OnlineConfig:
    """Hyper-parameters of the online update; defaults are the reference implementation's."""

    num_candidates: int = 16  # N: chunks drawn from the EMA policy per state
    top_k: int = 4  # K: the highest-Q of them become positives
    lam: float = 0.5  # weight of the top-K drift term
    ema_tau: float = 1e-4
    num_gen: int = 8  # G
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic
    critic_samples: int = 16  # best-of-N for the TD target's next chunk
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.num_candidates:
            raise ValueError(f"top_k must be in 1..num_candidates ({self.num_candidates}), got {self.top_k}")
        self.temperatures = tuple(float(t) for t in self.temperatures)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ema_reset(ema: nn.Module, actor: nn.Module) -> None:
    """The old policy starts as an exact copy of the actor (fine-tuning start)."""
    ema.load_state_dict(actor.state_dict())


def ema_update(ema: nn.Module, actor: nn.Module, tau: float) -> None:
    """ema <- (1 - tau) ema + tau actor (buffers, i.e. normalisation stats, are copied)."""
    polyak_update(ema, actor, tau)


@torch.no_grad()
def topk_positives(model: DFPModel, ema_actor: nn.Module, batch: ChunkBatch, num_candidates: int,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N chunks per state from the EMA policy, ranked by the critic: (top-K [B, K, D] normalised, their Q [B, K])."""
    assert model.critic is not None
    noise = torch.randn(batch.state.shape[0], num_candidates, model.meta.noise_dim, device=batch.state.device)
    cand = ema_actor(batch.state, batch.images, noise).clamp(-1, 1)
    q = model.critic(batch.state, batch.images, cand).mean(0)  # [B, N]
    return top_k(q, cand, k), q.topk(k, dim=1).values


def online_actor_loss(model: DFPModel, ema_actor: nn.Module, batch: ChunkBatch,
                      cfg: OnlineConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BC drift + lambda x top-K drift with the same G generated chunks (no Q-gradient to the actor)."""
    positives, top_q = topk_positives(model, ema_actor, batch, cfg.num_candidates, cfg.top_k)
    noise = torch.randn(batch.state.shape[0], cfg.num_gen, model.meta.noise_dim, device=batch.state.device)
    gen = model.actor(batch.state, batch.images, noise)  # [B, G, D], one set for both terms
    bc_pos = model.normalize_actions(batch.chunk.flatten(1)).unsqueeze(1)  # [B, 1, D]
    stats_bc: dict[str, torch.Tensor] = {}
    stats_top: dict[str, torch.Tensor] = {}
    loss_bc = drift_loss(gen, bc_pos, temperatures=cfg.temperatures, stats=stats_bc).mean()
    loss_top = drift_loss(gen, positives, temperatures=cfg.temperatures, stats=stats_top).mean()
    loss = loss_bc + cfg.lam * loss_top
    info = {"actor_loss": loss.detach(), "nearest_pos": stats_bc["nearest_pos"],
            "nearest_topk": stats_top["nearest_pos"], "topk_q": top_q.mean()}
    return loss, info


def pinned(batch: ChunkBatch) -> ChunkBatch:
    """The batch in page-locked host memory: its copy to a GPU is then asynchronous, whereas a copy
    from ordinary (pageable) memory can make the host wait for the device."""
    def pin(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v if v.is_pinned() or v.device.type != "cpu" else v.pin_memory()
        if isinstance(v, dict):
            return {k: pin(x) for k, x in v.items()}
        return v

    return ChunkBatch(**{f.name: pin(getattr(batch, f.name)) for f in fields(batch)})


def to_floats(info: dict[str, torch.Tensor]) -> dict[str, float]:
    """`OnlineLearner.update`'s tensors as floats, for a log line or a message (one device sync)."""
    if not info:
        return {}
    values = torch.stack([v.reshape(()).float() for v in info.values()]).cpu().tolist()
    return dict(zip(info, values, strict=True))


class OnlineLearner:
    """Networks + optimisers + target critic + EMA actor of one fine-tuning run."""

    def __init__(self, model: DFPModel, cfg: OnlineConfig, device: str | torch.device = "cpu", seed: int = 0,
                 step_mode: str = "eager"):
        """step_mode "graphed": each update replays one CUDA graph (`graphed_step`; eager on the CPU)."""
        if model.critic is None:
            raise ValueError("online fine-tuning needs a critic: pre-train one with `dfp train --critic`")
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.actor_opt = torch.optim.Adam(self.model.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.model.critic.parameters(), lr=cfg.lr)
        self.target_critic = copy.deepcopy(self.model.critic).requires_grad_(False)
        self.ema_actor = copy.deepcopy(self.model.actor).requires_grad_(False)
        ema_reset(self.ema_actor, self.model.actor)
        self.updates = 0
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.step_mode = step_mode
        # Built at the first update, after `load` has set the optimiser state: a graph holds it by address.
        self.static_step: StaticStep | None = None

    def update(self, batch: ChunkBatch) -> dict[str, torch.Tensor]:
        """One critic + actor + target + EMA update; returns detached 0-d tensors (on the device).

        Tensors, not floats: `float()` on a GPU tensor waits for the device, which would serialise
        every update with the host. Callers convert only what they log, when they log it
        (`to_floats`).
        """
        batch = pinned(batch) if self.device.type == "cuda" else batch
        if self.step_mode == "graphed":
            if self.static_step is None:
                self.static_step = StaticStep(self.update_on, empty_batch_like(batch, self.device), "graphed",
                                              optimizers=(self.actor_opt, self.critic_opt), name="online update")
            info = self.static_step(batch)
        else:
            info = self.update_on(batch.to(self.device))
        self.updates += 1
        return info

    def update_on(self, batch: ChunkBatch) -> dict[str, torch.Tensor]:
        """The maths of one update on a batch already on the device (no counter): what `update` runs, eagerly or
        captured in a graph."""
        c_loss, c_info = critic_loss(self.model, self.target_critic, batch, self.cfg.gamma, self.cfg.critic_samples)
        self.critic_opt.zero_grad(set_to_none=True)
        c_loss.backward()
        self.critic_opt.step()
        a_loss, a_info = online_actor_loss(self.model, self.ema_actor, batch, self.cfg)
        self.actor_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.actor_opt.step()
        polyak_update(self.target_critic, self.model.critic, self.cfg.tau)
        ema_update(self.ema_actor, self.model.actor, self.cfg.ema_tau)
        return {k: v.detach() for k, v in {**c_info, **a_info}.items()}

    # --- checkpoint ---------------------------------------------------------------------------------
    def save(self, folder: Path | str, extra: dict[str, Any] | None = None) -> Path:
        folder = Path(folder)
        state = {
            "version": LEARNER_STATE_VERSION, "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(), "target_critic": self.target_critic.state_dict(),
            "ema_actor": self.ema_actor.state_dict(), "updates": self.updates,
            "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "extra": extra or {},
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        save_checkpoint(folder, self.model, {"online_config": self.cfg.to_dict(), "step": self.updates}, state)
        return folder

    @classmethod
    def load(cls, folder: Path | str, cfg: OnlineConfig, device: str | torch.device = "cpu", step_mode: str = "eager"
             ) -> tuple[OnlineLearner, dict[str, Any]]:
        """Resume from `save` (returns the `extra` dict saved with it), or start from an offline checkpoint."""
        folder = Path(folder)
        model, _ = load_checkpoint(folder)
        learner = cls(model, cfg, device, step_mode=step_mode)
        state = load_training_state(folder)
        if state is None or state.get("version") != LEARNER_STATE_VERSION:
            # An offline `dfp train --critic` checkpoint: fine-tuning starts here (EMA = actor), with
            # the offline target critic when it was saved.
            if state is not None and "target_critic" in state:
                learner.target_critic.load_state_dict(state["target_critic"])
            return learner, {}
        learner.actor_opt.load_state_dict(state["actor_opt"])
        learner.critic_opt.load_state_dict(state["critic_opt"])
        for opt in (learner.actor_opt, learner.critic_opt):  # saved by a graphed learner, maybe on another device
            set_capturable(opt, False)
        learner.target_critic.load_state_dict(state["target_critic"])
        learner.ema_actor.load_state_dict(state["ema_actor"])
        learner.updates = int(state["updates"])
        learner.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if learner.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], learner.device)
        return learner, dict(state.get("extra", {}))

