"""Simulator + oracle teleop + collect node as three real processes over DDS.

sim_robot_node runs lock-step (one step per command); oracle_teleop_node answers each published
state; collect_node records one frame per command (sample_on: action) and follows the simulator's
/episode events (auto_episodes), stopping after 5 saved episodes. The test listens on the same
graph and checks the dataset against what was really published.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
pytest.importorskip("lerobot", reason="lerobot is not installed (training profile)")

from ros_graph import RosGraph, domain_id, latched_qos, ros_env, start_node, stop  # noqa: E402
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String  # noqa: E402

from dfp_ros import contracts  # noqa: E402

EPISODES = 5
STARTUP_S = 60.0


def collect_params(root, **extra) -> dict:
    params = {"root": str(root), "repo_id": "local/sim_oracle", "fps": 20, "sample_on": "action",
              "auto_episodes": True, "max_episodes": EPISODES, "task": "cube-single task 1",
              "state_topics": [contracts.TOPIC_SIM_STATE], "state_types": ["float32_array"], "state_dims": [28],
              "state_qos": "latched",
              "progress_period_s": 1.0,
              # Lock-step: a state stays current until the next command, however long the teleop takes.
              "max_age_s": 10.0, "start_on_first_command": True}
    params.update(extra)
    return params


def test_sim_oracle_collect_records_episodes_that_match_what_was_published(tmp_path):
    dom = domain_id(100)
    env = ros_env(dom)
    root = tmp_path / "ds"
    procs = []
    try:
        with RosGraph(dom) as g:
            states = g.collect(contracts.TOPIC_SIM_STATE, Float32MultiArray, latched_qos(1000))
            commands = g.collect(contracts.TOPIC_POLICY_COMMAND, Float64MultiArray)
            events = g.collect(contracts.TOPIC_EPISODE, String)
            sim = start_node("dfp_ros.nodes.sim_robot_node", {"mode": "lockstep", "seed": 3}, env, log_dir=tmp_path)
            procs.append(sim)
            assert states.wait_for(1, timeout=STARTUP_S), sim.log()
            collect = start_node("dfp_ros.nodes.collect_node", collect_params(root), env, log_dir=tmp_path)
            procs.append(collect)
            # The first episode started before the recorder existed: it starts recording at the first
            # command (start_on_first_command); the following ones start on the simulator's events.
            assert collect.wait_for_log("recording to", STARTUP_S), collect.log()
            # Everyone listening to the sim's state before the first command (the state topic is latched,
            # but later states are not resent), and the oracle waits for its 3 command subscribers.
            assert g.spin_until(lambda: g.node.count_subscribers(contracts.TOPIC_SIM_STATE) >= 2, STARTUP_S)
            oracle = start_node("dfp_ros.nodes.oracle_teleop_node", {"seed": 3, "wait_for_subscribers": 3}, env,
                                log_dir=tmp_path)
            procs.append(oracle)
            assert g.spin_until(lambda: collect.poll() is not None, timeout=90.0), \
                f"collect did not finish:\n{collect.log()}\n{sim.log()}\n{oracle.log()}"
            assert collect.returncode == 0, collect.log()
    finally:
        for p in reversed(procs):
            stop(p)
    log = collect.log()
    assert "collect summary" in log, log

    # --- the dataset loads, with 5 episodes as long as the simulator's --------------------------
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/sim_oracle", root=root)
    assert ds.num_episodes == EPISODES
    ep = np.asarray(ds.hf_dataset["episode_index"])
    lengths = [int((ep == i).sum()) for i in range(EPISODES)]
    sim_lengths = [int(n) for n in re.findall(r"episode \d+ (?:success|timeout) after (\d+) steps", sim.log())]
    assert len(sim_lengths) >= EPISODES, sim.log()
    for mine, theirs in zip(lengths, sim_lengths[:EPISODES], strict=True):
        assert abs(mine - theirs) <= 1, (lengths, sim_lengths)
    assert tuple(ds.meta.features["observation.state"]["shape"]) == (28,)
    assert set(np.asarray(ds.hf_dataset["task_index"]).tolist()) == {0}

    # --- the values are what was published, in order -------------------------------------------
    rec_state = np.stack([np.asarray(x, np.float32) for x in ds.hf_dataset["observation.state"]])
    rec_action = np.stack([np.asarray(x, np.float32) for x in ds.hf_dataset["action"]])
    n = len(rec_action)
    pub_action = np.array([m.data for m in commands.messages], dtype=np.float32)
    np.testing.assert_array_equal(rec_action, pub_action[:n])
    pub_state = [np.asarray(m.data, np.float32) for m in states.messages]
    dedup = [s for i, s in enumerate(pub_state) if i == 0 or not np.array_equal(s, pub_state[i - 1])]
    pub = np.stack(dedup[:n])
    bad = np.where((rec_state != pub).any(1))[0]
    assert len(bad) == 0, f"frames {bad.tolist()} hold another state than the one their command answered"
    assert "success" in [m.data for m in events.messages]  # the oracle solves the task

    # --- dfp train runs on it ------------------------------------------------------------------
    from dfp_ros.tools.cli import main

    out = tmp_path / "run"
    assert main(["train", "--root", str(root), "--output", str(out), "--steps", "3", "--hidden", "32,32",
                 "--batch-size", "16", "--num-gen", "4", "--no-progress", "--log-every", "1"]) == 0
    assert (out / "checkpoints" / "last").is_dir()
