"""Scenes kept for reuse: an evaluation on a scene that ran other episodes is the evaluation on a new one."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ogbench", reason="the simulator needs ogbench and mujoco")

from dfp_ros.sim.evaluate import evaluate
from dfp_ros.sim.scene_pool import borrowed_scene, release_scenes


def _recording_policy(seen: list[np.ndarray]):
    """A fixed policy whose actions depend on the state, so any difference in a scene's episodes shows."""
    weights = np.random.default_rng(3).normal(0, 0.5, (5, 28)).astype(np.float32)

    def policy(state: np.ndarray) -> np.ndarray:
        seen.append(state.copy())
        return np.tanh(weights @ state)[None].repeat(5, 0)

    return policy


def test_an_evaluation_on_a_reused_scene_sees_the_states_a_new_scene_gives():
    release_scenes()
    first: list[np.ndarray] = []
    fresh = evaluate(_recording_policy(first), 2, seed=11)
    with borrowed_scene() as sim:
        kept = sim
    evaluate(_recording_policy([]), 1, seed=40)  # other episodes in between, on the same scene
    again: list[np.ndarray] = []
    reused = evaluate(_recording_policy(again), 2, seed=11)
    with borrowed_scene() as sim:
        assert sim is kept  # no scene was built for the later evaluations
    assert reused == fresh
    assert len(again) == len(first) > 10
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_borrowers_at_once_get_their_own_scenes_and_one_is_kept():
    release_scenes()
    with borrowed_scene() as a, borrowed_scene() as b:
        assert a is not b
    with borrowed_scene() as c:
        assert c is b  # given back first; a came back to a full place and was closed
    assert release_scenes() == 1


def test_a_scene_left_by_an_error_is_not_kept():
    release_scenes()
    with pytest.raises(RuntimeError), borrowed_scene() as broken:
        broken.reset(seed=0)
        raise RuntimeError("policy failed mid-episode")
    with borrowed_scene() as sim:
        assert sim is not broken


def test_scenes_are_kept_per_scene_and_task():
    release_scenes()
    with borrowed_scene("cube-single-v0", 1) as one, borrowed_scene("cube-single-v0", 2) as two:
        assert (one.task_id, two.task_id) == (1, 2)
    with borrowed_scene("cube-single-v0", 2) as sim:
        assert sim is two
    assert release_scenes() == 2
