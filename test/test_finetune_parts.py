"""The ROS-free parts of finetune_node: one robot's feed into the join, the learner process' messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
from dfp_ros.learning.robot_feed import RobotFeed, check_join
from dfp_ros.nodes.learner_process import episode_message, loop_config, model_meta, should_hold
from dfp_ros.runtime.observation import StateSource

H = 2
MS = 1_000_000


def _meta(camera: bool = False) -> ModelMetadata:
    cams = [CameraSpec("front", "observation.images.front", 8, 8)] if camera else []
    return ModelMetadata(state=[StateSpec("observation.state", 3, ["elbow.pos", "wrist.pos", "wrist.vel"])],
                         cameras=cams, action_key="action", action_names=["a0", "a1"], horizon=H, action_dim=2,
                         fps=20.0, num_samples=1, has_critic=True, action_low=[-1.0] * 2, action_high=[1.0] * 2)


def _put_array(feed: RobotFeed, k: int, sent_ns: int, now: float) -> None:
    values = np.full(3, float(k), np.float32)
    feed.observe("sim/state", lambda asm, t: asm.put_array(0, values, feed.stamp(sent_ns), t), now)


def test_a_causal_feed_joins_a_lockstep_episode_and_packs_it_for_the_learner():
    meta = _meta()
    feed = RobotFeed("robot1", meta, [StateSource("sim/state", "float32_array", "observation.state")],
                     grace_s=0.1)
    t = 0

    def tick() -> int:
        nonlocal t
        t += MS
        return t

    feed.event("start", tick(), now=0.0)
    for k in range(4):
        _put_array(feed, k, tick(), now=0.0)
        if k % H == 0:
            feed.chunk(np.full((H, 2), 0.1 * k, np.float32), 0, tick(), now=0.0)
        feed.reward(-1.0, tick(), now=0.0)
    feed.event("success", tick(), now=0.0)
    assert feed.joiner.poll(0.05) == []  # within the grace period
    (rec,) = feed.joiner.poll(1.0)
    assert (rec.robot, rec.event, rec.steps, rec.chunks, len(rec.transitions)) == ("robot1", "success", 4, 2, 2)
    ep = episode_message(rec, meta)
    assert ep["state"].shape == (2, 3) and ep["chunk"].shape == (2, H, 2) and ep["rewards"].shape == (2, H)
    np.testing.assert_array_equal(ep["state"][:, 0], [0.0, 2.0])
    np.testing.assert_array_equal(ep["next_state"][0], [2.0, 2.0, 2.0])
    assert ep["mask"].tolist() == [1.0, 0.0] and ep["images"] == {} and ep["success"]


def test_bad_messages_are_dropped_and_counted_per_kind():
    warnings: list[str] = []
    feed = RobotFeed("", _meta(), [StateSource("sim/state", "float32_array", "observation.state")],
                     warn=lambda text, s: warnings.append(text))
    feed.observe("sim/state", lambda asm, t: asm.put_array(0, np.zeros(5, np.float32), 1, t), 0.0)
    feed.observe("sim/state", lambda asm, t: asm.put_array(0, np.full(3, np.nan, np.float32), 1, t), 0.0)
    feed.reward(float("inf"), 2, 0.0)
    feed.chunk(np.zeros((H, 3), np.float32), 0, 3, 0.0)
    assert dict(feed.dropped_messages) == {"wrong_size": 2, "non_finite": 2}
    assert len(warnings) == 4 and warnings[0].startswith("[/] sim/state dropped (wrong_size)")


def test_stamp_join_takes_header_stamps_reports_another_clock_and_refuses_mixed_instants():
    warnings: list[str] = []
    meta = _meta(camera=True)
    sources = [StateSource("joint_states", "joint_state", "observation.state")]
    feed = RobotFeed("", meta, sources, join="stamp", warn=lambda text, s: warnings.append(text))
    sent = 1_000 * 1_000_000_000
    assert feed.stamp(sent, 0) == sent  # no header stamp: the send time
    assert feed.stamp(sent, sent - 3 * MS) == sent - 3 * MS
    assert feed.stamp(sent, 100 * 1_000_000_000) == 100 * 1_000_000_000 and feed.counts["stamp_clock_mismatch"] == 1
    assert "another clock" in warnings[-1]

    fields = {"position": np.array([0.1, 0.2]), "velocity": np.array([0.0, 0.3]), "effort": np.zeros(0)}
    frame = np.zeros((8, 8, 3), np.uint8)
    feed.observe("joint_states", lambda asm, t: asm.put_joint_state(0, ["elbow", "wrist"], fields, 10 * MS, t), 0.0)
    feed.observe("camera front", lambda asm, t: asm.put_image("front", frame, 11 * MS, t), 0.0)
    assert feed.counts["unpaired_stamps"] == 1  # parts of two instants: not an observation

    skewed = RobotFeed("", meta, sources, join="stamp", max_stamp_skew_s=0.002)
    skewed.observe("joint_states", lambda asm, t: asm.put_joint_state(0, ["elbow", "wrist"], fields, 10 * MS, t), 0.0)
    skewed.observe("camera front", lambda asm, t: asm.put_image("front", frame, 11 * MS, t), 0.0)
    assert skewed.counts["unpaired_stamps"] == 0


def test_silence_is_judged_only_while_observations_arrive():
    feed = RobotFeed("", _meta(), [StateSource("sim/state", "float32_array", "observation.state")])
    limits = {"reward": 1.0, "episode": 60.0}
    assert feed.silent(10.0, limits) == []  # nothing heard: the robot is quiet, not its reward topic
    _put_array(feed, 0, MS, now=10.0)
    assert feed.silent(10.0, limits) == []  # the watch starts now
    _put_array(feed, 1, 2 * MS, now=11.5)
    assert feed.silent(11.5, limits) == [("reward", 1.5)]
    feed.reward(-1.0, 3 * MS, now=11.6)
    assert feed.silent(11.7, limits) == []
    assert feed.silent(20.0, limits) == []  # observations stopped too: not judged
    feed.restart_silence_clocks(30.0)
    assert feed.last["reward"] == 30.0


def test_join_modes_refuse_what_they_cannot_place_exactly():
    joints = [StateSource("joint_states", "joint_state", "observation.state")]
    array = [StateSource("sim/state", "float32_array", "observation.state")]
    check_join(_meta(), array, "causal")
    check_join(_meta(camera=True), joints, "stamp")
    with pytest.raises(ValueError, match="join: causal places each observation"):
        check_join(_meta(camera=True), array, "causal")
    with pytest.raises(ValueError, match="Float32MultiArray"):
        check_join(_meta(), array, "stamp")


def test_pacing_holds_past_the_lag_and_releases_at_half_of_it():
    assert not should_hold(False, 300, 100, 200)
    assert should_hold(False, 301, 100, 200)
    assert should_hold(True, 201, 100, 200)
    assert not should_hold(True, 200, 100, 200)


def test_learner_configuration_and_checkpoint_metadata(tmp_path):
    from dfp_ros.nodes.finetune_node import PARAMS

    params = {p.name: p.default for p in PARAMS}
    params.update(init_checkpoint="ckpt", output_dir=tmp_path, temperatures=[0.5, 1])
    cfg = loop_config(params)
    assert cfg.output_dir == str(tmp_path) and cfg.init_checkpoint == "ckpt" and cfg.export_weights == "float32"
    assert cfg.online["temperatures"] == (0.5, 1.0) and cfg.online["top_k"] == 4

    with pytest.raises(ValueError, match="no DFP checkpoint"):
        model_meta(tmp_path)
    meta = _meta()
    (tmp_path / "config.json").write_text(json.dumps({"model_config": {"use_critic": False},
                                                      "metadata": meta.to_dict()}))
    with pytest.raises(ValueError, match="has no critic"):
        model_meta(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_config": {"use_critic": True},
                                                      "metadata": meta.to_dict()}))
    assert model_meta(tmp_path).action_names == ["a0", "a1"]

