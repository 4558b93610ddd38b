"""The static-buffer learner step (dfp_ros.learning.graphed_step) and the device replay (device_replay): the same
updates as the eager learner, fresh noise on every step, the host replay's rows and split. The CUDA cases (a real
CUDA graph) run where torch sees a GPU (scripts/gpu_learner_check.sh) and are skipped elsewhere."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_online import tiny_batch, tiny_model

from dfp_ros.learning.dataset import ChunkBatch, ChunkDataset
from dfp_ros.learning.device_replay import DeviceReplay
from dfp_ros.learning.graphed_step import WARMUP_STEPS, StaticStep, bc_step, empty_batch_like
from dfp_ros.learning.online import OnlineConfig, OnlineLearner, to_floats
from dfp_ros.learning.replay_buffer import ReplayBuffer
from dfp_ros.learning.transitions import Transition

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
CFG = OnlineConfig(num_candidates=8, top_k=2, num_gen=4, critic_samples=4)
STEPS = WARMUP_STEPS + 3  # on CUDA: the warm-ups, the captured step, two replays


def learner_state(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    """Everything an update changes: networks, target critic, EMA actor, Adam's moments."""
    out = {f"model.{k}": v for k, v in learner.model.state_dict().items()}
    out.update({f"target.{k}": v for k, v in learner.target_critic.state_dict().items()})
    out.update({f"ema.{k}": v for k, v in learner.ema_actor.state_dict().items()})
    for name, opt in (("actor_opt", learner.actor_opt), ("critic_opt", learner.critic_opt)):
        for i, s in enumerate(opt.state.values()):
            out[f"{name}.{i}.exp_avg"] = s["exp_avg"]
    return {k: v.detach().cpu() for k, v in out.items()}


def run_learner(device: str, step_mode: str, steps: int = STEPS, cfg: OnlineConfig = CFG
                ) -> tuple[OnlineLearner, list[dict[str, float]]]:
    learner = OnlineLearner(tiny_model(), cfg, device, seed=5, step_mode=step_mode)
    infos = [to_floats(learner.update(tiny_batch(8, seed=i))) for i in range(steps)]
    return learner, infos


@pytest.mark.parametrize("device", DEVICES)
def test_the_static_step_updates_like_the_eager_learner(device, caplog):
    caplog.set_level(logging.INFO, logger="dfp_ros.learning.graphed_step")
    eager, eager_infos = run_learner(device, "eager")
    graphed, graphed_infos = run_learner(device, "graphed")
    assert graphed.updates == eager.updates == STEPS
    assert graphed.static_step is not None
    if device == "cuda":
        assert graphed.static_step.captured and "captured as a CUDA graph" in caplog.text
    else:
        assert graphed.static_step.mode == "eager" and "no CUDA graphs on cpu" in caplog.text
    for a, b in zip(eager_infos, graphed_infos, strict=True):
        assert a.keys() == b.keys()
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-4, abs=1e-5)
    want, got = learner_state(eager), learner_state(graphed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_consecutive_steps_draw_fresh_noise(device):
    # A learning rate this small leaves the networks as they were, so two steps on one batch differ only by
    # their noise: the generated chunks' distance to the batch's chunk and the TD target's best-of-N sample.
    learner = OnlineLearner(tiny_model(), OnlineConfig(num_candidates=8, top_k=2, num_gen=4, critic_samples=4,
                                                       lr=1e-12), device, step_mode="graphed")
    batch = tiny_batch(8, seed=0)
    infos = [to_floats(learner.update(batch)) for _ in range(STEPS)]
    if device == "cuda":
        assert learner.static_step is not None and learner.static_step.captured
    replays = infos[WARMUP_STEPS:]  # the captured step and its replays (on CUDA)
    for key in ("nearest_pos", "critic_loss"):
        values = [i[key] for i in replays]
        assert len(set(values)) == len(values), (key, values)
    # q_mean does not depend on noise: the same batch and networks give the same Q, replay after replay.
    assert [i["q_mean"] for i in replays] == pytest.approx([replays[0]["q_mean"]] * len(replays), rel=1e-5)

    # The offline drift-BC step too (a plain SGD at lr 0 freezes the actor exactly).
    model = tiny_model().to(device)
    opt = torch.optim.SGD(model.actor.parameters(), lr=0.0)
    step = StaticStep(bc_step(model, opt, "drift", 4, (0.05, 0.5)), empty_batch_like(batch, device), "graphed",
                      optimizers=(opt,))
    losses = [float(step(batch)["nearest_pos"]) for _ in range(STEPS)]
    assert len(set(losses[WARMUP_STEPS:])) == len(losses) - WARMUP_STEPS, losses


@pytest.mark.parametrize("device", DEVICES)
def test_a_graphed_learner_saves_and_resumes_and_an_eager_one_reads_its_checkpoint(device, tmp_path):
    a, _ = run_learner(device, "graphed")
    a.save(tmp_path / "learner")
    after = to_floats(a.update(tiny_batch(8, seed=99)))
    b, _ = OnlineLearner.load(tmp_path / "learner", CFG, device, step_mode="graphed")
    assert b.updates == STEPS
    assert list(to_floats(b.update(tiny_batch(8, seed=99))).values()) == pytest.approx(list(after.values()),
                                                                                        rel=1e-4, abs=1e-5)
    # Adam state saved by a graphed (capturable) optimiser still steps on the CPU, eagerly.
    c, _ = OnlineLearner.load(tmp_path / "learner", CFG, "cpu")
    assert all(np.isfinite(v) for v in to_floats(c.update(tiny_batch(8, seed=99))).values())


def test_a_batch_of_another_shape_is_refused_and_changes_nothing():
    learner, _ = run_learner("cpu", "graphed", steps=1)
    before = learner_state(learner)
    with pytest.raises(ValueError, match=r"field state is float32 \(5, 4\), the step's buffer is float32 \(8, 4\)"):
        learner.update(tiny_batch(5))
    assert learner.updates == 1
    for k, v in learner_state(learner).items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="step_mode"):
        OnlineLearner(tiny_model(), CFG, step_mode="compiled")


# --- the device replay ---------------------------------------------------------------------------------------

RING, INTERVENTIONS = 300, 100  # online transitions, of which the last INTERVENTIONS are interventions


def _t(v: float, intervention: bool = False) -> Transition:
    return Transition(np.full(2, v, np.float32), np.full((5, 2), v, np.float32), np.full(5, -1.0, np.float32),
                      np.full(2, v + 1, np.float32), 1.0, intervention=intervention)


@pytest.fixture(scope="module")
def offline(request):
    pytest.importorskip("lerobot")  # a GPU machine may lack it: the CUDA cases then run without a dataset
    return ChunkDataset("", request.getfixturevalue("multimodal_dataset"), horizon=5, progress=False)


@pytest.fixture(scope="module")
def host_replay(offline) -> ReplayBuffer:
    buf = ReplayBuffer(2, 5, 2, capacity=1000, offline=offline)
    for i in range(RING):
        buf.add(_t(1000.0 + i, intervention=i >= RING - INTERVENTIONS))
    return buf


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_replay_draws_the_host_replays_rows_with_its_split(device, offline, host_replay):
    replay = DeviceReplay.from_buffer(host_replay, device)
    assert len(replay) == len(host_replay) and replay.demo_size == host_replay.demo_size
    batches = [replay.sample_flagged(256) for _ in range(20)]
    batch = ChunkBatch(**{k: torch.cat([getattr(b, k) for b, _ in batches]).cpu()
                          for k in ("state", "chunk", "rewards", "next_state", "mask")}, images={})
    flags = torch.cat([f for _, f in batches]).cpu().numpy()
    v = batch.state[:, 0].numpy()
    ring = v >= 1000.0
    # Ring rows are whole transitions as added, flagged exactly when they are interventions.
    np.testing.assert_array_equal(batch.chunk[ring][:, 0, 0].numpy(), v[ring])
    np.testing.assert_array_equal(batch.next_state[ring][:, 0].numpy(), v[ring] + 1)
    np.testing.assert_array_equal(flags, v >= 1000.0 + RING - INTERVENTIONS)
    # Dataset rows are the dataset's own transitions, critic targets included.
    idx = np.array([np.flatnonzero((offline.state == s).all(1))[0] for s in batch.state[~ring].numpy()])
    want = offline.batch_at(idx, with_critic_targets=True)
    for k in ("chunk", "rewards", "next_state", "mask"):
        np.testing.assert_array_equal(getattr(batch, k)[~ring].numpy(), getattr(want, k).numpy(), err_msg=k)
    # The split: a row is online with p = ring / (ring + demonstrations), a demonstration is an intervention
    # with p = interventions / demonstrations (0.02 is 5 standard deviations of these shares over 5120 rows).
    demos = len(offline) + INTERVENTIONS
    p_on = RING / (RING + demos)
    assert (~ring).mean() == pytest.approx((1 - p_on) * len(offline) / demos, abs=0.02)
    assert flags.mean() == pytest.approx(p_on * INTERVENTIONS / RING + (1 - p_on) * INTERVENTIONS / demos, abs=0.02)
    rng = np.random.default_rng(0)
    host_flags = np.concatenate([host_replay.sample_flagged(256, rng)[1] for _ in range(20)])
    assert flags.mean() == pytest.approx(host_flags.mean(), abs=0.03)
    # A fixed online share: exactly that many ring rows, first; the rest are demonstrations.
    replay.online_fraction = 0.25
    fixed, fixed_flags = replay.sample_flagged(256)
    v, f = fixed.state[:, 0].cpu().numpy(), fixed_flags.cpu().numpy()
    assert (v[:64] >= 1000.0).all() and not ((v[64:] >= 1000.0) & ~f[64:]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_ring_wraps_and_a_graphed_step_samples_it_inside_the_graph(device):
    replay = DeviceReplay(2, 5, 2, capacity=3, device=device)
    with pytest.raises(ValueError, match="empty"):
        replay.sample(4)
    for v in range(5):
        replay.add(_t(float(v), intervention=v == 4))
    assert len(replay) == 3 and replay.added == 5 and replay.demo_size == 1
    bad = _t(9.0)
    bad.chunk = bad.chunk[:4]
    with pytest.raises(ValueError, match=r"transition chunk has shape \(4, 2\), this replay stores \(5, 2\)"):
        replay.add(bad)
    assert replay.added == 5
    assert set(replay.sample(256).state[:, 0].cpu().tolist()) == {2.0, 3.0, 4.0}  # the oldest two were overwritten
    # A step whose source is the replay: a graph replays the draw too, so each step sees a new batch (an
    # order-weighted sum of the rows' values tells batches apart).
    replay = DeviceReplay(2, 5, 2, capacity=100, device=device)
    for v in range(100):
        replay.add(_t(float(v)))
    weights = torch.arange(1.0, 65.0, device=device)
    step = StaticStep(lambda b: {"rows": (b.state[:, 0] * weights).sum()}, replay.empty_batch(64), "graphed",
                      source=replay.sample_into)
    seen = [float(step()["rows"]) for _ in range(STEPS)]
    assert step.captured == (device == "cuda")
    assert len(set(seen[WARMUP_STEPS:])) == STEPS - WARMUP_STEPS, seen


def test_dfp_bench_learner_prints_both_paths_in_its_json_line(capsys):
    from dfp_ros.tools.cli import main

    assert main(["bench", "learner", "--device", "cpu", "--hidden", "16", "--batch-size", "8", "--num-gen", "2",
                 "--seconds", "0.2", "--rounds", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["device"] == "cpu" and res["mode"] == "eager" and res["requested_mode"] == "graphed"
    for key in ("online_updates_per_s", "offline_steps_per_s", "mse_steps_per_s", "eager_online_updates_per_s",
                "eager_offline_steps_per_s", "eager_mse_steps_per_s", "online_updates_per_s_host_replay"):
        assert res[key] > 0, key
    assert res["drift_overhead"] == pytest.approx(res["mse_steps_per_s"] / res["offline_steps_per_s"] - 1, abs=1e-3)


def test_dfp_bench_learner_refuses_cuda_without_a_gpu_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from dfp_ros.tools.cli import main

    assert main(["bench", "learner", "--device", "cuda", "--hidden", "16", "--seconds", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sees no CUDA device" in err


def test_the_trainers_static_step_trains_like_its_eager_step(tmp_path):
    """`dfp train --step-mode graphed` on the CPU: the offline step (drift BC, critic TD, Polyak) over static buffers,
    camera frames shifted, gives the eager run's losses and weights; the buffers keep their tensors."""
    pytest.importorskip("lerobot", reason="datasets need lerobot (training profile)")
    from synthetic_datasets import write_image_reward_dataset

    from dfp_ros.learning.config import ModelConfig, TrainConfig
    from dfp_ros.learning.trainer import Trainer

    root = write_image_reward_dataset(tmp_path / "ds")

    def train(mode: str) -> tuple[Trainer, list[dict[str, float]]]:
        cfg = TrainConfig(root=str(root), output=str(tmp_path / mode), steps=STEPS, batch_size=4, seed=3,
                          device="cpu", num_gen=4, critic_samples=4, image_shift=2, step_mode=mode)
        trainer = Trainer(cfg, ModelConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), image_channels=(8, 8),
                                           image_feature_dim=16, use_critic=True), progress=False)
        return trainer, [to_floats(trainer.train_step()) for _ in range(STEPS)]

    eager, eager_infos = train("eager")
    graphed, graphed_infos = train("graphed")
    static = graphed._static_step
    assert eager._static_step is None and static is not None and static.steps == STEPS
    assert static.static.images["front"].shape == (4, 96, 96, 3)
    for a, b in zip(eager_infos, graphed_infos, strict=True):
        assert a.keys() == b.keys() and "critic_loss" in a
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-4, abs=1e-5)
    for name in ("model", "target_critic"):
        want, got = getattr(eager, name).state_dict(), getattr(graphed, name).state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    frames = static.static.images["front"].data_ptr()
    graphed.train_step()
    assert static.static.images["front"].data_ptr() == frames
    graphed.save()  # capturable Adam state is saved like any other
    resumed = Trainer(graphed.cfg, ModelConfig(), resume=True, progress=False)
    assert resumed.step == STEPS + 1 and resumed._static_step is not None
