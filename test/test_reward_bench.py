"""Learning without a reward oracle, in the simulator: labelled camera episodes for a success detector, and the
training episode of `dfp bench reward` whose reward and end come from a detector, never from the simulator.

The simulator and the detectors are real (CubeSim rendering, exported ONNX reward models run by SuccessDetector);
the acting policy is OGBench's scripted oracle, so that the episodes reach true success."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("lerobot", reason="the episodes are written as a LeRobot dataset")

from model_files import constant_reward_model

from dfp_ros.learning.transitions import TransitionJoiner
from dfp_ros.sim.cube_env import CubeSim
from dfp_ros.sim.detector_episodes import NEAR_MISS, SUCCESS, EpisodeSpec, episode_plan, write_labelled_episodes
from dfp_ros.tools import reward_bench
from dfp_ros.tools.reward_bench import DetectorReward, EpisodeJudgement, episode_figures, run_training_episode


def _skip_without_rendering() -> None:
    import os

    if os.environ.get("MUJOCO_GL") not in ("egl", "osmesa") and not os.environ.get("DISPLAY"):
        pytest.skip("no off-screen rendering here (install libegl1 libgl1 libgl1-mesa-dri)")


def test_episode_plan_interleaves_the_kinds_and_refuses_an_empty_plan():
    plan = episode_plan(4, 2, seed=10)
    assert [s.seed for s in plan] == list(range(10, 16))
    assert sorted(s.kind for s in plan) == [NEAR_MISS] * 2 + [SUCCESS] * 4
    assert {s.kind for s in plan[:3]} == {SUCCESS, NEAR_MISS}  # a leading part holds both
    with pytest.raises(ValueError, match="at least one episode"):
        episode_plan(0, 0, seed=0)


def test_success_frames_follow_the_cube_landing_and_a_near_miss_has_none(tmp_path):
    from dfp_ros.learning.dataset import ChunkDataset

    _skip_without_rendering()
    plan = [EpisodeSpec(SUCCESS, 3), EpisodeSpec(NEAR_MISS, 4)]
    s = write_labelled_episodes(tmp_path / "labelled", plan, cameras=["front"], image_size=32, tail_steps=6,
                                progress=False)
    assert s.kinds == {SUCCESS: 1, NEAR_MISS: 1} and s.success_episodes == 1, s
    data = ChunkDataset("", str(tmp_path / "labelled"), horizon=1, image_size=(32, 32), done_key="next.success",
                        progress=False)
    assert data.state_dim == 7 and [c.name for c in data.cameras] == ["front"]  # joint positions, no cube pose
    success = data.dones.astype(bool)
    ok, miss = (np.flatnonzero(data.episode_index == e) for e in (0, 1))
    first = np.argmax(success[ok])
    # The cube lands, stays, and the tail of zero commands keeps showing it: success to the episode's end.
    assert 6 <= ok.size - first <= 8 and success[ok][first:].all() and not success[ok][:first].any()
    assert not success[miss].any() and miss.size > 40  # carried and put down, beside the target
    np.testing.assert_array_equal(data.rewards[ok].ravel(), np.where(success[ok], 0.0, -1.0))


def _constant_detector(path: Path, logit: float) -> Path:
    return constant_reward_model(path, reward_bench.CAMERAS, reward_bench.IMAGE_SIZE, logit)


class OraclePolicy:
    """OGBench's scripted expert behind the policy runtime's `act` (one action per chunk): an episode that
    reaches true success."""

    def __init__(self, sim: CubeSim):
        self.sim, self.oracle = sim, sim.oracle(noise=0.0, seed=0)

    def act(self, state, images, rng) -> SimpleNamespace:
        assert state.shape == (7,) and set(images) == set(reward_bench.CAMERAS)
        if self.sim.elapsed_steps == 0:
            self.oracle.reset()
        return SimpleNamespace(chunk=self.oracle.select_action()[None])


@pytest.fixture(scope="module")
def sim():
    _skip_without_rendering()
    with CubeSim(render=True, image_size=reward_bench.IMAGE_SIZE) as s:
        yield s


def _episode(sim: CubeSim, detector: DetectorReward | None):
    joiner = TransitionJoiner(1, reward_mode="per_step")
    return run_training_episode(sim, OraclePolicy(sim), joiner, np.random.default_rng(0), [0], 7, detector)


def test_a_detector_that_never_fires_keeps_the_episode_going_past_the_true_success(sim, tmp_path):
    with_sim, true_success = _episode(sim, None)
    assert true_success and with_sim.event == "success" and with_sim.steps < 150, with_sim
    never = DetectorReward(_constant_detector(tmp_path / "never.onnx", -20.0), debounce=3)
    record, true_success = _episode(sim, never)
    # The simulator's success (same seed, same expert) is neither reward nor end: the time limit ends it.
    assert true_success and record.event == "timeout" and record.steps == reward_bench.MAX_STEPS, record
    assert all(t.rewards.tolist() == [-1.0] for t in record.transitions)


def test_the_detectors_debounced_success_ends_the_episode_with_its_rewards(sim, tmp_path):
    always = DetectorReward(_constant_detector(tmp_path / "always.onnx", 20.0), debounce=3)
    record, true_success = _episode(sim, always)
    assert record.event == "success" and record.steps == 3 and not true_success, record
    assert [t.rewards.tolist() for t in record.transitions] == [[0.0]] * 3
    assert [t.mask for t in record.transitions] == [1.0, 1.0, 0.0]  # terminal at the detector's success


def test_episode_figures_count_events_against_what_the_frames_showed():
    judged = [EpisodeJudgement(True, 12, 10), EpisodeJudgement(True, None, 30), EpisodeJudgement(False, 50, None),
              EpisodeJudgement(False, None, None)]
    f = episode_figures(judged)
    assert (f["episode_precision"], f["episode_recall"], f["events"]) == (0.5, 0.5, 2)
    assert f["event_lag_frames_min"] == f["event_lag_frames_max"] == 2
