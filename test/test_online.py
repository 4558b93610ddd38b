"""The online DFP update on tiny cases (dfp_ros.learning.online): top-K, n-step target, EMA, combined loss, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfp_ros.contracts import ModelMetadata, StateSpec
from dfp_ros.learning import online
from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.critic import chunk_td_target, top_k
from dfp_ros.learning.dataset import ChunkBatch
from dfp_ros.learning.model import DFPModel
from dfp_ros.learning.online import OnlineConfig, OnlineLearner, ema_reset, ema_update, to_floats, topk_positives

H, A, S = 3, 2, 4


def tiny_model(seed: int = 0) -> DFPModel:
    torch.manual_seed(seed)
    meta = ModelMetadata(state=[StateSpec("observation.state", S)], cameras=[], action_key="action",
                         action_names=["a0", "a1"], horizon=H, action_dim=A, fps=20.0, num_samples=1,
                         has_critic=True, action_low=[-2.0, -2.0], action_high=[2.0, 2.0])
    cfg = ModelConfig(horizon=H, actor_hidden=(16, 16), critic_hidden=(16, 16), use_critic=True)
    return DFPModel(meta, cfg)


def tiny_batch(b: int = 5, seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    return ChunkBatch(state=torch.randn(b, S, generator=g), images={}, chunk=torch.rand(b, H, A, generator=g) * 2 - 1,
                      rewards=-torch.ones(b, H), next_state=torch.randn(b, S, generator=g), mask=torch.ones(b))


def test_top_k_keeps_the_k_highest_q_candidates_best_first():
    q = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]])
    cand = torch.arange(8.0).reshape(2, 4, 1)
    np.testing.assert_array_equal(top_k(q, cand, 2).squeeze(-1).numpy(), [[1, 3], [4, 6]])


def test_topk_positives_are_the_critics_favourites_among_ema_samples(monkeypatch):
    model = tiny_model()
    ema = model.actor
    batch = tiny_batch(3)
    pos, q = topk_positives(model, ema, batch, num_candidates=16, k=4)
    assert pos.shape == (3, 4, H * A) and q.shape == (3, 4)
    assert not pos.requires_grad
    # Each kept positive scores at least as high as every candidate not kept: re-score them.
    with torch.no_grad():
        q_pos = model.critic(batch.state, {}, pos).mean(0)
    torch.testing.assert_close(q_pos, q)
    assert (q[:, :-1] >= q[:, 1:]).all()  # best first


def test_chunked_n_step_target_masks_the_bootstrap_at_episode_end():
    r = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([1.0, 0.0])
    next_q = torch.tensor([10.0, 10.0])
    y = chunk_td_target(r, mask, next_q, gamma=0.5)
    torch.testing.assert_close(y, torch.tensor([-1 - 0.5 - 0.25 + 0.125 * 10, -1.0]))


def test_ema_reset_copies_and_update_moves_by_tau():
    a, e = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema_reset(e, a)
    for p, q in zip(e.parameters(), a.parameters(), strict=True):
        assert torch.equal(p, q)
    before = [p.clone() for p in e.parameters()]
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    ema_update(e, a, tau=0.25)
    for b, p, q in zip(before, e.parameters(), a.parameters(), strict=True):
        torch.testing.assert_close(p, 0.75 * b + 0.25 * q)


def test_combined_loss_calls_drift_with_the_bc_positive_and_the_top_k_with_the_same_generated_samples(monkeypatch):
    model = tiny_model()
    calls = []
    real = online.drift_loss

    def spy(gen, pos, neg=None, **kw):
        calls.append((gen, pos, neg))
        return real(gen, pos, neg, **kw)

    monkeypatch.setattr(online, "drift_loss", spy)
    cfg = OnlineConfig(num_candidates=8, top_k=3, num_gen=5, lam=0.5)
    batch = tiny_batch(4)
    loss, info = online.online_actor_loss(model, model.actor, batch, cfg)
    assert len(calls) == 2
    (g1, p1, n1), (g2, p2, n2) = calls
    assert g1 is g2 and g1.shape == (4, 5, H * A) and g1.requires_grad  # the same G for both terms
    torch.testing.assert_close(p1, model.normalize_actions(batch.chunk.flatten(1)).unsqueeze(1))  # BC: P = 1
    assert p2.shape == (4, 3, H * A) and not p2.requires_grad  # top-K of the EMA policy
    assert n1 is None and n2 is None
    # lambda weights the second term.
    torch.manual_seed(0)
    l_a, _ = online.online_actor_loss(model, model.actor, batch, OnlineConfig(num_candidates=8, top_k=3, num_gen=5,
                                                                               lam=0.0))
    assert torch.isfinite(loss) and torch.isfinite(l_a) and "topk_q" in info


def test_no_q_gradient_reaches_the_actor():
    model = tiny_model()
    loss, _ = online.online_actor_loss(model, model.actor, tiny_batch(), OnlineConfig(num_candidates=8, top_k=2))
    loss.backward()
    assert all(p.grad is None for p in model.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.actor.parameters())


def test_learner_update_moves_actor_critic_target_and_ema(tmp_path):
    model = tiny_model()
    cfg = OnlineConfig(num_candidates=8, top_k=2, ema_tau=0.1, tau=0.1, critic_samples=4)
    learner = OnlineLearner(model, cfg)
    ema0 = [p.clone() for p in learner.ema_actor.parameters()]
    info = to_floats(learner.update(tiny_batch(8)))
    assert learner.updates == 1 and np.isfinite(info["critic_loss"]) and np.isfinite(info["actor_loss"])
    moved = [not torch.equal(a, b) for a, b in zip(ema0, learner.ema_actor.parameters(), strict=True)]
    assert any(moved)
    for p_ema, p_old, p_new in zip(learner.ema_actor.parameters(), ema0, learner.model.actor.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_new)


def test_checkpoint_resume_continues_exactly(tmp_path):
    cfg = OnlineConfig(num_candidates=8, top_k=2, critic_samples=4)
    a = OnlineLearner(tiny_model(), cfg, seed=3)
    a.update(tiny_batch(8, seed=1))
    a.save(tmp_path / "learner", extra={"env_steps": 42})
    info_a = a.update(tiny_batch(8, seed=2))
    b, extra = OnlineLearner.load(tmp_path / "learner", cfg)
    assert extra == {"env_steps": 42} and b.updates == 1
    info_b = b.update(tiny_batch(8, seed=2))
    assert to_floats(info_a) == pytest.approx(to_floats(info_b), rel=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_an_offline_checkpoint_starts_fine_tuning_with_the_ema_equal_to_the_actor(tmp_path):
    from dfp_ros.learning.model import save_checkpoint

    model = tiny_model()
    save_checkpoint(tmp_path / "offline", model, {"step": 100}, {"actor_opt": {}, "numpy_rng": None})
    learner, extra = OnlineLearner.load(tmp_path / "offline", OnlineConfig())
    assert extra == {} and learner.updates == 0
    for p, q in zip(learner.ema_actor.parameters(), learner.model.actor.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_model_without_critic_is_refused():
    m = tiny_model()
    m.critic = None
    with pytest.raises(ValueError, match="critic"):
        OnlineLearner(m, OnlineConfig())


def test_top_k_larger_than_n_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        OnlineConfig(num_candidates=4, top_k=8)


def test_update_returns_detached_scalar_tensors_that_convert_to_floats_once():
    """No float() inside update (it would wait for a GPU every step); the caller converts when it logs."""
    learner = OnlineLearner(tiny_model(), OnlineConfig(num_candidates=8, top_k=2, critic_samples=4))
    info = learner.update(tiny_batch(8))
    assert {"critic_loss", "q_mean", "actor_loss", "nearest_pos", "topk_q"} <= set(info)
    for name, v in info.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, name
        assert v.device == learner.device
    floats = to_floats(info)
    assert list(floats) == list(info) and all(type(x) is float for x in floats.values())
    assert floats == {k: float(v) for k, v in info.items()}  # what a caller doing float(v) gets, too
    assert to_floats({}) == {}


def test_an_update_on_camera_batches_trains_the_image_encoders_of_actor_and_critic():
    from dfp_ros.contracts import CameraSpec

    torch.manual_seed(0)
    meta = ModelMetadata(state=[StateSpec("observation.state", S)],
                         cameras=[CameraSpec("front", "observation.images.front", 16, 16)], action_key="action",
                         action_names=["a0", "a1"], horizon=H, action_dim=A, fps=20.0, num_samples=1,
                         has_critic=True, action_low=[-2.0, -2.0], action_high=[2.0, 2.0])
    cfg = ModelConfig(horizon=H, actor_hidden=(16,), critic_hidden=(16,), use_critic=True, image_channels=(8,),
                      image_feature_dim=8)
    learner = OnlineLearner(DFPModel(meta, cfg), OnlineConfig(num_candidates=4, top_k=2, critic_samples=2, num_gen=4))
    batch = tiny_batch(6)
    g = torch.Generator().manual_seed(1)
    batch.images = {"front": torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=g)}
    batch.next_images = {"front": torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=g)}
    actor_cnn = [p.clone() for p in learner.model.actor.encoder.images.parameters()]
    critic_cnn = [p.clone() for p in learner.model.critic.encoder.images.parameters()]
    info = to_floats(learner.update(batch))
    assert all(np.isfinite(v) for v in info.values()), info
    assert any(not torch.equal(a, b) for a, b in zip(actor_cnn, learner.model.actor.encoder.images.parameters(),
                                                       strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic_cnn, learner.model.critic.encoder.images.parameters(),
                                                       strict=True))
    # A batch without the model's camera is an error, not a silently state-only update.
    batch.images = {}
    with pytest.raises(KeyError, match="front"):
        learner.update(batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_update_never_makes_the_host_wait_for_the_device():
    learner = OnlineLearner(tiny_model(), OnlineConfig(num_candidates=8, top_k=2, critic_samples=4), device="cuda")
    batch = tiny_batch(8)  # on the host, as the replay buffer samples it
    learner.update(batch)  # warm-up: allocators, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        info = learner.update(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda for v in info.values())
    assert np.isfinite(list(to_floats(info).values())).all()  # the one sync, when the caller logs
