"""`dfp bench ablation` (dfp_ros.tools.finetune_ablation): the in-process fine-tuning ablation, on a tiny budget."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("torch")

from dfp_ros.tools.finetune_ablation import run, run_episode


class _RandomChunks:
    """Stands in for PolicyRuntime.act: random chunks, remembered so the test can compare."""

    def __init__(self, horizon: int, action_dim: int):
        self.horizon, self.action_dim = horizon, action_dim
        self.acted: list[tuple[np.ndarray, np.ndarray]] = []

    def act(self, state, images, rng):
        chunk = rng.uniform(-1, 1, (self.horizon, self.action_dim)).astype(np.float32)
        self.acted.append((np.asarray(state).copy(), chunk))
        return type("Act", (), {"chunk": chunk})()


def test_episode_is_joined_into_chained_chunk_transitions():
    from dfp_ros.learning.transitions import TransitionJoiner
    from dfp_ros.sim.cube_env import CubeSim

    H = 5
    with CubeSim(task_id=1, seed=3) as sim:
        policy = _RandomChunks(H, sim.action_dim)
        joiner = TransitionJoiner(H, reward_mode="per_step")
        clock = [0]
        rec = run_episode(sim, policy, joiner, np.random.default_rng(0), clock)
        rec2 = run_episode(sim, policy, joiner, np.random.default_rng(1), clock)
    # Random actions do not place the cube: a 200-step time-out, 40 chunks; the last one ends with the
    # time-out (nothing to bootstrap from) and is dropped, like the finetune node drops it.
    assert (rec.event, rec.steps, rec.chunks) == ("timeout", 200, 40)
    assert len(rec.transitions) == 39 and rec.dropped == {"truncated": 1}
    for j, t in enumerate(rec.transitions):
        state, chunk = policy.acted[j]
        np.testing.assert_array_equal(t.state, state)
        np.testing.assert_array_equal(t.chunk, chunk)  # the executed chunk, in raw units
        np.testing.assert_array_equal(t.rewards, -np.ones(H, np.float32))  # one reward per step, none lost
        np.testing.assert_array_equal(t.next_state, policy.acted[j + 1][0])  # o_{i+H}: the next chunk's state
        assert t.mask == 1.0
    # The clock runs on across episodes (one simulated timeline, as sim_robot_node stamps it).
    assert clock[0] == 400 and rec2.steps == 200 and len(rec2.transitions) == 39
    assert not joiner.dropped.keys() - {"truncated"}


def test_ablation_runs_arms_learns_and_writes_curves(tmp_path):
    from dfp_ros.tools.cli import build_parser

    out = tmp_path / "ablation"
    a = build_parser().parse_args([
        "bench", "ablation", "--out-dir", str(out), "--bc-dir", str(tmp_path / "bc"), "--arms", "bc,k2,lam0",
        "--seeds", "0", "--env-steps", "300", "--eval-every", "200", "--eval-episodes", "1", "--demos", "2",
        "--bc-steps", "5", "--hidden", "32", "--warmup-steps", "100", "--updates-per-step", "0.05",
        "--batch-size", "16", "--num-candidates", "4", "--export-every", "5", "--no-progress",
        "--png", str(tmp_path / "docs" / "plot.png")])
    r = run(a)
    arms = r["arms"]
    assert list(arms) == ["bc", "k2", "lam0"]
    rows = list(csv.DictReader((out / "curves.csv").open()))
    for key in ("k2", "lam0"):
        mine = [row for row in rows if row["arm"] == key]
        # Step 0 (the BC policy), the 200-step checkpoint, and the budget.
        assert [int(row["checkpoint"]) for row in mine] == [0, 200, 300]
        last = mine[-1]
        steps, updates = int(last["env_steps"]), int(last["updates"])
        assert steps >= 300
        # Learning really happened: updates_per_step x (env steps - warm-up), on online transitions,
        # and the actor moved away from the BC checkpoint; new models were swapped in for acting.
        assert updates == int(np.ceil(0.05 * (steps - 100))) and updates > 0
        assert int(last["replay_online"]) > 0
        assert float(last["actor_param_delta"]) > 0.0
        assert int(last["models_swapped"]) == updates // 5
        assert float(mine[0]["success_rate"]) == r["before_success"] and float(mine[0]["actor_param_delta"]) == 0.0
    bc = [row for row in rows if row["arm"] == "bc"]
    assert {row["success_rate"] for row in bc} == {str(r["before_success"])} and bc[-1]["updates"] == "0"
    assert arms["k2"]["updates"][0] > 0 and arms["bc"]["updates"] == [0]
    for png in (out / "finetune_ablation.png", tmp_path / "docs" / "plot.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["arms"].keys() == arms.keys()
