"""Joining chunk transitions from observation / chunk / reward / episode streams (dfp_ros.learning.transitions)."""

from __future__ import annotations

import numpy as np
import pytest

from dfp_ros.learning.transitions import TransitionJoiner

DT = 50_000_000  # 20 Hz in ns
H = 3


def _run_episode(j: TransitionJoiner, steps: int, end: str, t0: int = 0, chunk_every: int = H,
                 reward: float = -1.0, skip_reward: int | None = None, shuffle: bool = False, seed: int = 0,
                 causal: bool = False):
    """Feed what a lock-step simulator + policy publish for one episode of `steps` steps (stamps k*DT)."""
    calls = [("event", "start", t0)]
    for i in range(steps):
        t = t0 + i * DT
        calls.append(("obs", t, np.full(2, i, np.float32)))
        if i % chunk_every == 0:  # causal: stamped when published, after its observation
            calls.append(("chunk", t + DT // 3 if causal else t, np.full((H, 1), i, np.float32)))
        if i != skip_reward:
            calls.append(("reward", t + DT, reward if i < steps - 1 or end != "success" else 0.0))
    calls.append(("event", end, t0 + steps * DT))
    if shuffle:  # separate DDS readers: the order between topics is arbitrary
        order = np.random.default_rng(seed).permutation(len(calls))
        calls = [calls[k] for k in order]
        # Events of one topic still arrive in order.
        events = [c for c in calls if c[0] == "event"]
        events.sort(key=lambda c: c[2])
        it = iter(events)
        calls = [next(it) if c[0] == "event" else c for c in calls]
    for c in calls:
        if c[0] == "obs":
            j.add_observation(c[1], c[2])
        elif c[0] == "chunk":
            j.add_chunk(c[1], c[2], causal=causal)
        elif c[0] == "reward":
            j.add_reward(c[1], c[2])
        else:
            j.add_event(c[1], c[2], now=0.0)
    return j.flush()


def test_a_successful_episode_joins_every_chunk_with_a_terminal_mask_at_the_end():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=7, end="success")  # chunks at 0, 3, 6; success after step 6
    assert rec.steps == 7 and rec.chunks == 3 and rec.success
    assert rec.episode_return == -6.0
    t0, t1, t2 = rec.transitions
    assert t0.state[0] == 0 and t0.chunk[0, 0] == 0 and t0.next_state[0] == 3 and t0.mask == 1.0
    np.testing.assert_array_equal(t0.rewards, [-1, -1, -1])
    assert t1.state[0] == 3 and t1.next_state[0] == 6 and t1.mask == 1.0
    # The last chunk ran one step (step 6) before the episode terminated: rewards past the end are 0.
    assert t2.state[0] == 6 and t2.mask == 0.0
    np.testing.assert_array_equal(t2.rewards, [0, 0, 0])
    assert rec.dropped == {} and j.joined == 3


def test_terminal_inside_a_chunk_zeroes_the_rewards_after_the_end():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=5, end="success")  # chunks at 0, 3; the second runs steps 3, 4
    last = rec.transitions[-1]
    assert last.mask == 0.0
    np.testing.assert_array_equal(last.rewards, [-1, 0, 0])  # step 3: -1, step 4 (success): 0, then nothing


def test_a_timeout_drops_the_last_chunk_as_truncated():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=6, end="timeout")
    assert [t.state[0] for t in rec.transitions] == [0]  # chunk at 3 has no observation at 6
    assert rec.dropped == {"truncated": 1}
    assert all(t.mask == 1.0 for t in rec.transitions)


def test_discounted_return_of_a_transition():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=7, end="success")
    assert rec.transitions[0].discounted_return(0.5) == pytest.approx(-1 - 0.5 - 0.25)


def test_a_missing_reward_drops_only_the_chunk_that_contains_that_step():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=7, end="success", skip_reward=4)
    assert [t.state[0] for t in rec.transitions] == [0, 6]
    assert rec.dropped == {"reward_mismatch": 1}
    # Sparse rewards (a human, a detector): missing means 0, nothing dropped.
    j2 = TransitionJoiner(H, reward_mode="sum")
    (rec2,) = _run_episode(j2, steps=7, end="success", skip_reward=4)
    assert len(rec2.transitions) == 3 and rec2.dropped == {}
    np.testing.assert_array_equal(rec2.transitions[1].rewards, [-1, 0, -1])


def test_a_chunk_replaced_early_is_dropped_as_partial():
    j = TransitionJoiner(H)
    (rec,) = _run_episode(j, steps=7, end="success", chunk_every=2)  # re-plans every 2 steps < H
    assert rec.transitions == [] or all(t.mask == 0.0 for t in rec.transitions)
    assert rec.dropped.get("partial_chunk", 0) >= 3


def test_a_chunk_without_its_observation_is_counted_and_dropped_never_guessed():
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    for i in range(4):
        j.add_observation(i * DT, np.zeros(2))
        j.add_reward((i + 1) * DT, -1.0)
    j.add_chunk(0, np.zeros((H, 1)))
    j.add_chunk(DT + 7, np.zeros((H, 1)))  # a stamp no observation has
    j.add_event("timeout", 4 * DT)
    (rec,) = j.flush()
    assert rec.dropped["chunk_without_observation"] == 1


def test_arrival_order_between_topics_does_not_matter():
    ref = _run_episode(TransitionJoiner(H), steps=10, end="success")[0]
    for seed in range(5):
        rec = _run_episode(TransitionJoiner(H), steps=10, end="success", shuffle=True, seed=seed)[0]
        assert len(rec.transitions) == len(ref.transitions) == 4 and rec.dropped == {}
        for a, b in zip(rec.transitions, ref.transitions, strict=True):
            np.testing.assert_array_equal(a.state, b.state)
            np.testing.assert_array_equal(a.rewards, b.rewards)
            assert a.mask == b.mask


def test_consecutive_episodes_and_a_late_joiner():
    j = TransitionJoiner(H)
    # Joined mid-episode: no start seen, its chunks are counted as a partial episode.
    j.add_observation(0, np.zeros(2))
    j.add_chunk(0, np.zeros((H, 1)))
    j.add_event("timeout", DT)
    assert j.flush() == [] and j.dropped["partial_episode"] == 1
    recs = _run_episode(j, 7, "success", t0=DT) + _run_episode(j, 6, "timeout", t0=8 * DT)
    assert [len(r.transitions) for r in recs] == [3, 1]
    assert j.joined == 4 and j.episodes == 2


def test_poll_waits_for_the_grace_period():
    j = TransitionJoiner(H, grace_s=0.5)
    j.add_event("start", 0, now=0.0)
    j.add_observation(0, np.zeros(2))
    j.add_chunk(0, np.zeros((H, 1)))
    j.add_event("success", DT, now=10.0)
    assert j.poll(10.2) == []
    j.add_reward(DT, 0.0)  # the last reward arrives after the end event (another reader)
    (rec,) = j.poll(10.6)
    assert len(rec.transitions) == 1 and rec.dropped == {}


def test_causal_join_attaches_a_chunk_to_the_newest_observation_published_before_it():
    for seed in range(3):
        rec = _run_episode(TransitionJoiner(H), steps=10, end="success", causal=True, shuffle=True, seed=seed)[0]
        assert [t.state[0] for t in rec.transitions] == [0, 3, 6, 9] and rec.dropped == {}
        assert all(t.chunk[0, 0] == t.state[0] for t in rec.transitions)


def test_two_causal_chunks_on_one_observation_are_ambiguous_and_dropped():
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    for i in range(6):
        j.add_observation(i * DT + 1, np.zeros(2))
        j.add_reward(i * DT + 2, -1.0)
    j.add_chunk(3, np.zeros((H, 1)), causal=True)
    j.add_chunk(4, np.zeros((H, 1)), causal=True)  # a second chunk before the next observation
    j.add_chunk(3 * DT + 3, np.zeros((H, 1)), causal=True)
    j.add_event("success", 6 * DT)
    (rec,) = j.flush()
    assert rec.dropped["ambiguous_chunk"] == 2 and rec.chunks == 3


def test_a_still_robot_whose_rewards_carry_the_observations_stamp_still_steps():
    """Rewards stamped with the observation each step led to (as an in-process robot stamps them): a robot
    holding perfectly still sends equal observations, each after a step's reward, so none is a re-publication."""
    j = TransitionJoiner(1)
    j.add_event("start", 0)
    j.add_observation(0, np.zeros(2, np.float32))
    for t in range(1, 5):
        j.add_chunk((t - 1) * DT, np.zeros((1, 1), np.float32))
        j.add_reward(t * DT, -1.0)
        j.add_observation(t * DT, np.zeros(2, np.float32))  # the same state: the arm did not move
    j.add_chunk(4 * DT, np.zeros((1, 1), np.float32))
    j.add_reward(5 * DT, 0.0)
    j.add_event("success", 5 * DT)
    (rec,) = j.flush()
    assert j.republished == 0 and rec.steps == 5 and rec.dropped == {}, rec.dropped
    assert [tr.rewards.tolist() for tr in rec.transitions] == [[-1.0]] * 4 + [[0.0]]


def test_a_republished_observation_is_not_a_step():
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    t = 0
    for i in range(6):
        t += 10
        j.add_observation(t, np.full(2, i, np.float32))
        if i == 2:  # the simulator waits and sends the same observation again
            t += 10
            j.add_observation(t, np.full(2, i, np.float32))
        if i in (0, 3):
            j.add_chunk(t + 1, np.full((H, 1), i, np.float32), causal=True)
        j.add_reward(t + 2, -1.0)
    j.add_event("success", t + 5)
    (rec,) = j.flush()
    assert rec.steps == 6 and j.republished == 1
    assert [tr.state[0] for tr in rec.transitions] == [0, 3] and rec.dropped == {}


def _frame(v: int) -> np.ndarray:
    return np.full((4, 6, 3), v, np.uint8)


def test_camera_images_travel_with_their_observation_into_the_transition():
    """A camera model's observation is state + images; the transition carries both ends' images."""
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    for i in range(7):  # chunks at 0, 3, 6; success after step 6
        t = i * DT
        j.add_observation(t, np.full(2, i, np.float32), {"front": _frame(i), "wrist": _frame(100 + i)})
        if i % H == 0:
            j.add_chunk(t, np.full((H, 1), i, np.float32))
        j.add_reward(t + DT, -1.0)
    j.add_event("success", 7 * DT)
    (rec,) = j.flush()
    assert [int(t.state[0]) for t in rec.transitions] == [0, 3, 6]
    for t in rec.transitions:
        i = int(t.state[0])
        nxt = int(t.next_state[0])
        assert sorted(t.images) == ["front", "wrist"] and sorted(t.next_images) == ["front", "wrist"]
        assert (t.images["front"] == i).all() and (t.images["wrist"] == 100 + i).all()
        assert (t.next_images["front"] == nxt).all() and (t.next_images["wrist"] == 100 + nxt).all()
    assert rec.transitions[-1].mask == 0.0 and int(rec.transitions[-1].next_state[0]) == 6


def test_the_first_observation_given_for_a_stamp_is_kept():
    # Parts sharing one stamp (joints + camera of one step): a later combination under that stamp
    # pairs one of them with an older or newer part and must not replace the complete one.
    j = TransitionJoiner(H)
    j.add_observation(0, np.zeros(2, np.float32), {"front": _frame(1)})
    j.add_observation(0, np.ones(2, np.float32), {"front": _frame(2)})
    j.add_event("start", 0)
    j.add_chunk(0, np.zeros((H, 1), np.float32))
    for i in range(1, 3):
        j.add_observation(i * DT, np.full(2, i, np.float32), {"front": _frame(i)})
    for i in range(3):
        j.add_reward((i + 1) * DT, -1.0)
    j.add_event("success", 3 * DT)
    (rec,) = j.flush()
    (t,) = rec.transitions
    assert t.state[0] == 0 and (t.images["front"] == 1).all()


def test_an_observation_with_the_same_state_but_a_new_image_is_a_step_not_a_republication():
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    same = np.zeros(2, np.float32)
    for i in range(3):  # the arm does not move, the scene does: three real steps, rewards stamped later
        j.add_observation(i * DT, same, {"front": _frame(i)})
    j.add_observation(3 * DT, same, {"front": _frame(2)})  # this one is a re-publication of step 2
    j.add_chunk(0, np.zeros((H, 1), np.float32))
    j.add_event("timeout", 4 * DT)
    (rec,) = j.flush()
    assert rec.steps == 3 and j.republished == 1


# --- steps by time (a robot publishing joint states faster than the policy acts) ------------------------
MS = 1_000_000
STEP = 50 * MS  # 20 Hz policy


def _timed_episode(j: TransitionJoiner, t0: int, chunk_ticks: list[int], ticks: int, end: str, end_ms: float = 3.0,
                   reward_every_step: bool = True, seed: int = 0, skip_obs_of_chunk: int | None = None) -> list:
    """Joint states every 10 ms (+-1 ms jitter), a policy on a 20 Hz timer planning at `chunk_ticks`
    (its chunk stamped with the newest joint state, 0-9 ms old), a reward 2 ms before each step ends.
    The state encodes its stamp in ms, so a test can tell which observation a transition got."""
    rng = np.random.default_rng(seed)
    j.add_event("start", t0)
    end_t = t0 + ticks * STEP + int(end_ms * MS)
    obs = [t0 + 1 * MS + k * 10 * MS + int(rng.integers(-MS, MS)) for k in range((end_t - t0) // (10 * MS))]
    for s in obs:
        j.add_observation(s, np.array([(s - t0) / MS], np.float32))
    for n, tick in enumerate(chunk_ticks):
        newest = max(s for s in obs if s <= t0 + tick * STEP + 2 * MS)
        if n == skip_obs_of_chunk:
            j._obs.pop(newest)
        j.add_chunk(newest, np.full((H, 1), tick, np.float32))
    for k in range(ticks):
        if reward_every_step or k == ticks - 1:
            value = -1.0 if reward_every_step else 1.0
            j.add_reward(t0 + (k + 1) * STEP - 2 * MS + int(rng.integers(0, 2 * MS)), value)
    j.add_event(end, end_t)
    return j.flush()


def test_steps_by_time_join_fully_executed_chunks_of_a_fast_joint_state_stream():
    j = TransitionJoiner(H, step_ns=STEP)  # H = 3 steps = 150 ms per chunk
    (rec,) = _timed_episode(j, 0, chunk_ticks=[0, 3, 6, 9], ticks=11, end="success")
    assert rec.steps == 11 and rec.chunks == 4 and rec.dropped == {}
    assert rec.episode_return == -11.0
    t0, t1, t2, t3 = rec.transitions
    # Each chunk's observation is the joint state it was stamped with; the next one is the next chunk's.
    for t, nxt in ((t0, t1), (t1, t2), (t2, t3)):
        assert t.mask == 1.0 and t.next_state[0] == nxt.state[0] and t.next_state[0] - t.state[0] == pytest.approx(
            150, abs=12)
        np.testing.assert_array_equal(t.rewards, [-1, -1, -1])
    # The last chunk ran 2 steps (ticks 9, 10) before the success: mask 0, no reward past the end.
    assert t3.mask == 0.0 and t3.chunk[0, 0] == 9
    np.testing.assert_array_equal(t3.rewards, [-1, -1, 0])
    # Without steps by time every 10 ms joint state would be a step: nothing would join.
    (plain,) = _timed_episode(TransitionJoiner(H), 0, chunk_ticks=[0, 3, 6, 9], ticks=11, end="success")
    assert plain.transitions == [] and plain.steps > 50


def test_steps_by_time_drop_replaced_paused_truncated_and_unobserved_chunks_by_reason():
    j = TransitionJoiner(H, step_ns=STEP, reward_mode="sum")
    # Re-planned after 2 ticks (0 -> 2), a pause (2 -> 8: 6 ticks), then 8 -> 11, and a time-out inside 11.
    (rec,) = _timed_episode(j, 0, chunk_ticks=[0, 2, 8, 11], ticks=13, end="timeout", reward_every_step=False)
    assert rec.dropped == {"partial_chunk": 2, "truncated": 1} and len(rec.transitions) == 1
    (t,) = rec.transitions
    assert t.chunk[0, 0] == 8 and t.mask == 1.0 and rec.episode_return == 1.0
    np.testing.assert_array_equal(t.rewards, [0, 0, 0])  # sum mode: the sparse reward came in chunk 11
    # A chunk whose observation never arrived is dropped, and so is the chunk before it (no next observation).
    (rec,) = _timed_episode(j, 10**12, chunk_ticks=[0, 3, 6], ticks=8, end="success", skip_obs_of_chunk=1)
    assert rec.dropped == {"chunk_without_observation": 2} and [t.chunk[0, 0] for t in rec.transitions] == [6]


def test_steps_by_time_per_step_rewards_need_one_reward_per_executed_step():
    j = TransitionJoiner(H, step_ns=STEP)
    j.add_event("start", 0)
    for c in (1 * MS, 151 * MS):
        j.add_observation(c, np.zeros(1, np.float32))
        j.add_chunk(c, np.zeros((H, 1), np.float32))
    j.add_observation(301 * MS, np.zeros(1, np.float32))
    j.add_chunk(301 * MS, np.zeros((H, 1), np.float32))
    for k in (0, 1, 2, 3, 5, 6, 7, 8):  # step 4 (inside the second chunk) has no reward
        j.add_reward((k + 1) * STEP, -1.0)
    j.add_event("success", 9 * STEP + MS)
    (rec,) = j.flush()
    assert rec.dropped == {"reward_mismatch": 1} and len(rec.transitions) == 2
    with pytest.raises(ValueError, match="causal chunk"):
        j.add_chunk(0, np.zeros((H, 1), np.float32), causal=True)
    with pytest.raises(ValueError, match="step_ns must be > 0"):
        TransitionJoiner(H, step_ns=0)


def test_a_chunk_sent_after_the_end_event_is_not_part_of_that_episode():
    # A policy that clears its queue at the end event re-plans at its next tick on the newest state it
    # has — one from before the end. That chunk was never executed in the ended episode: it must not
    # take the last real chunk's place (nor its success reward).
    for step_ns in (None, STEP):
        j = TransitionJoiner(H, step_ns=step_ns, reward_mode="sum")
        j.add_event("start", 0)
        for i in range(5):  # observations every step, chunks at 0 and 3, success after step 4
            j.add_observation(i * STEP + MS, np.full(1, i, np.float32))
        j.add_chunk(MS, np.zeros((H, 1), np.float32), sent_ns=2 * MS)
        j.add_chunk(3 * STEP + MS, np.ones((H, 1), np.float32), sent_ns=3 * STEP + 2 * MS)
        j.add_chunk(4 * STEP + MS, np.full((H, 1), 9.0, np.float32), sent_ns=5 * STEP + 5 * MS)  # after the end
        j.add_reward(5 * STEP, 1.0)
        j.add_event("success", 5 * STEP + MS)
        (rec,) = j.flush()
        assert rec.dropped == {"chunk_after_end": 1} and rec.chunks == 3, step_ns
        assert [t.chunk[0, 0] for t in rec.transitions] == [0.0, 1.0]
        last = rec.transitions[-1]
        assert last.mask == 0.0 and last.rewards.sum() == 1.0, (step_ns, last.rewards)


# --- what was executed: human takeovers (the policy node's ~/executed) ------------------------------------
WHO = {"p": "policy", "h": "human", "d": "hold"}


def _labelled_episode(j: TransitionJoiner, labels: str, chunk_steps: tuple[int, ...], end: str = "success",
                      causal: bool = False, t0: int = 0) -> list:
    """A lock-step episode whose step i was commanded by labels[i] (p policy, h human, d hold, - no
    executed message): observation i, the chunk planned on it, then the command published. The command
    encodes its step: i for the policy's, 100 + i for the human's."""
    j.add_event("start", t0)
    for i, who in enumerate(labels):
        t = t0 + i * DT
        j.add_observation(t, np.full(2, i, np.float32))
        if i in chunk_steps:
            j.add_chunk(t + DT // 4 if causal else t, np.full((H, 1), i, np.float32), causal=causal)
        if who != "-":
            j.add_executed(t + DT // 2 if causal else t, np.array([100 + i if who == "h" else i], np.float32),
                           WHO[who], causal=causal)
        j.add_reward(t + DT, -1.0 if i < len(labels) - 1 or end != "success" else 0.0)
    j.add_event(end, t0 + len(labels) * DT)
    return j.flush()


@pytest.mark.parametrize("causal", [False, True], ids=["stamp", "causal"])
def test_a_takeover_cuts_a_chunk_and_the_human_stretch_becomes_flagged_windows_of_executed_commands(causal):
    j = TransitionJoiner(H)
    # The human takes over at step 4 (cutting the chunk planned at 3) and hands back at step 10; the
    # policy plans on meanwhile (chunks at 4 and 7, never executed) and again at the hand-back.
    (rec,) = _labelled_episode(j, "pppphhhhhhpp", chunk_steps=(0, 3, 4, 7, 10), causal=causal)
    got = {int(t.state[0]): t for t in rec.transitions}
    assert sorted(got) == [0, 3, 4, 7, 10]
    assert [got[i].intervention for i in sorted(got)] == [False, True, True, True, False]
    np.testing.assert_array_equal(got[0].chunk[:, 0], [0, 0, 0])  # the policy's chunk, joined as before
    np.testing.assert_array_equal(got[3].chunk[:, 0], [3, 104, 105])  # cut: the commands really executed
    np.testing.assert_array_equal(got[4].chunk[:, 0], [104, 105, 106])
    np.testing.assert_array_equal(got[7].chunk[:, 0], [107, 108, 109])
    assert [got[i].next_state[0] for i in (3, 4, 7)] == [6, 7, 10] and got[7].mask == 1.0
    np.testing.assert_array_equal(got[7].rewards, [-1, -1, -1])
    assert got[10].mask == 0.0 and got[10].chunk[0, 0] == 10  # the hand-back's chunk, terminal inside
    assert rec.dropped == {"chunk_not_executed": 2}
    assert rec.chunks == 5 and rec.human_windows == 2
    assert len(rec.transitions) + sum(rec.dropped.values()) == rec.chunks + rec.human_windows
    assert rec.human_steps == 6 and rec.intervention_rate == pytest.approx(0.5) and rec.labelled_steps == 12


def test_a_hold_ends_a_window_a_missing_label_drops_it_and_a_terminal_window_repeats_its_last_command():
    j = TransitionJoiner(H)
    # Steps 3-4 human, 5 a hold (the device late), 6-8 human, the policy back from 9.
    (rec,) = _labelled_episode(j, "ppphhdhhhppp", chunk_steps=(0, 3, 6, 9))
    assert [(int(t.state[0]), t.intervention) for t in rec.transitions] == [(0, False), (6, True), (9, False)]
    assert rec.dropped == {"chunk_not_executed": 2, "hold_step": 1}
    # A human window with a step no executed message labels is dropped, never guessed.
    (rec,) = _labelled_episode(j, "ppphh-hhh", chunk_steps=(0, 3, 6), t0=10**12)
    assert rec.dropped == {"chunk_not_executed": 2, "executed_missing": 1}
    assert [int(t.state[0]) for t in rec.transitions] == [0, 6]
    # The episode terminates inside a human window: mask 0, the last command repeated past the end.
    (rec,) = _labelled_episode(j, "ppphhhhh", chunk_steps=(0, 3, 6), t0=2 * 10**12)
    last = rec.transitions[-1]
    assert last.intervention and last.mask == 0.0 and last.state[0] == 6 and last.next_state[0] == 7
    np.testing.assert_array_equal(last.chunk[:, 0], [106, 107, 107])
    np.testing.assert_array_equal(last.rewards, [-1, 0, 0])
    # ... and a time-out there truncates it, as it does a policy chunk.
    (rec,) = _labelled_episode(j, "ppphhhhh", chunk_steps=(0, 3, 6), end="timeout", t0=3 * 10**12)
    assert rec.dropped == {"chunk_not_executed": 2, "truncated": 1} and len(rec.transitions) == 2


def test_policy_only_labels_join_exactly_what_the_unlabelled_join_does():
    plain = _run_episode(TransitionJoiner(H), steps=10, end="success")[0]
    (labelled,) = _labelled_episode(TransitionJoiner(H), "p" * 10, chunk_steps=(0, 3, 6, 9))
    assert len(plain.transitions) == len(labelled.transitions) == 4 and labelled.dropped == plain.dropped == {}
    for a, b in zip(plain.transitions, labelled.transitions, strict=True):
        for name in ("state", "chunk", "rewards", "next_state"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.mask == b.mask and not b.intervention
    assert labelled.human_steps == 0 and labelled.labelled_steps == 10 and plain.labelled_steps == 0


def test_discard_throws_the_episode_away_and_counts_it():
    j = TransitionJoiner(H)
    j.add_event("start", 0)
    for i in range(5):
        j.add_observation(i * DT, np.full(2, i, np.float32))
        if i % H == 0:
            j.add_chunk(i * DT, np.zeros((H, 1), np.float32))
        j.add_reward((i + 1) * DT, -1.0)
    j.add_event("discard", 5 * DT)
    j.add_chunk(6 * DT, np.zeros((H, 1), np.float32))  # the robot went on until the simulator's own end
    j.add_event("timeout", 7 * DT)
    (rec,) = j.flush()
    assert rec.discarded and rec.transitions == [] and rec.dropped == {"discarded": 2} and rec.steps == 5
    assert j.dropped == {"discarded": 3} and j.discarded == 1 and j.episodes == 0
    # Pressed just after an episode ended, before it was joined: that episode is discarded.
    recs = _run_episode(j, 7, "success", t0=10 * DT)
    assert len(recs) == 1 and not recs[0].discarded  # (flushed at once: nothing pending any more)
    j.add_event("start", 20 * DT)
    j.add_observation(20 * DT, np.zeros(2, np.float32))
    j.add_chunk(20 * DT, np.zeros((H, 1), np.float32))
    j.add_event("success", 21 * DT, now=1.0)
    j.add_event("discard", 21 * DT + 5, now=1.1)
    (rec,) = j.poll(2.0)
    assert rec.discarded and rec.event == "success" and rec.dropped == {"discarded": 1}
    j.add_event("discard", 30 * DT)  # nothing to discard
    assert j.dropped["discard_without_episode"] == 1


def test_a_causal_feed_places_executed_commands_packs_the_flag_and_counts_bad_ones():
    from dfp_ros.contracts import ModelMetadata, StateSpec
    from dfp_ros.learning.robot_feed import LearningPause, RobotFeed, episode_line
    from dfp_ros.nodes.learner_process import episode_message
    from dfp_ros.runtime.observation import StateSource

    meta = ModelMetadata(state=[StateSpec("observation.state", 2)], cameras=[], action_key="action",
                         action_names=["a0"], horizon=H, action_dim=1, fps=20.0, num_samples=1, has_critic=True,
                         action_low=[-1.0], action_high=[1.0])
    warnings: list[str] = []
    feed = RobotFeed("", meta, [StateSource("sim/state", "float32_array", "observation.state")], grace_s=0.0,
                     warn=lambda text, s: warnings.append(text))
    # Lock-step, by publish times: observation, chunk (when planned), command; human from step 3 on.
    feed.event("start", 0, 0.0)
    for i, who in enumerate("ppphhh"):
        t = (i + 1) * DT
        values = np.full(2, i, np.float32)
        feed.observe("sim/state", lambda asm, now, t=t, v=values: asm.put_array(0, v, t, now), 0.0)
        if i in (0, 3):
            feed.chunk(np.full((H, 1), i, np.float32), 0, t + 10, 0.0)
        feed.executed(np.array([100.0 + i]), WHO[who], 0, t + 20, 0.0)
        feed.reward(-1.0, t + 30, 0.0)
    feed.executed(np.array([1.0]), "teleop", 0, 7 * DT, 0.0)  # not a source the policy node writes
    feed.executed(np.array([1.0, 2.0]), "human", 0, 7 * DT, 0.0)
    feed.event("success", 7 * DT, 0.0)
    (rec,) = feed.poll(1.0, "policy_node/executed")
    assert dict(feed.dropped_messages) == {"unknown_source": 1, "wrong_size": 1}
    assert [(int(t.state[0]), t.intervention) for t in rec.transitions] == [(0, False), (3, True)]
    assert rec.human_steps == 3 and rec.dropped == {"chunk_not_executed": 1}
    assert len(warnings) == 2 and "executed dropped (unknown_source)" in warnings[0]
    ep = episode_message(rec, meta)
    assert ep["intervention"].tolist() == [False, True] and ep["human_steps"] == 3
    assert ep["intervention_rate"] == pytest.approx(0.5)
    assert episode_line(rec, 1).endswith("intervention rate 0.50 (3 human steps)")
    # An episode with chunks but no executed message at all while the topic is read: said once.
    feed.event("start", 8 * DT, 0.0)
    feed.observe("sim/state", lambda asm, now: asm.put_array(0, np.zeros(2, np.float32), 9 * DT, now), 0.0)
    feed.chunk(np.zeros((H, 1), np.float32), 0, 9 * DT + 10, 0.0)
    feed.event("success", 10 * DT, 0.0)
    assert len(feed.poll(2.0, "policy_node/executed")) == 1 and "takeovers cannot be told" in warnings[-1]

    # Learning pauses for silence or the operator; one message when it stops or starts again.
    pause = LearningPause()
    assert pause.set(operator=True) == "the operator paused learning"
    assert pause.set(silence="reward silent for 6 s") is None  # already paused
    assert pause.set(operator=False) is None and pause.reason == "reward silent for 6 s"
    assert pause.set(silence="") == ""


def test_steps_by_time_keep_the_humans_ticks_out_of_the_policys_chunks():
    j = TransitionJoiner(H, step_ns=STEP)
    j.add_event("start", 0)
    obs = [MS + 10 * MS * k for k in range(60)]  # joint states at 100 Hz
    for s in obs:
        j.add_observation(s, np.array([s / MS], np.float32))

    def newest(tick: int) -> int:  # the joint state a tick at tick * STEP + 2 ms acts on
        return max(s for s in obs if s <= tick * STEP + 2 * MS)

    for tick in (0, 3, 4, 7, 10):  # 3 is cut by the takeover at 4; 4 is planned while the human holds it
        j.add_chunk(newest(tick), np.full((H, 1), tick, np.float32))
    for tick in range(12):
        j.add_executed(newest(tick), np.zeros(1), "human" if 4 <= tick <= 6 else "policy")
        j.add_reward((tick + 1) * STEP - 2 * MS, -1.0)
    j.add_event("success", 12 * STEP - MS)
    (rec,) = j.flush()
    assert rec.dropped == {"cut_by_takeover": 1, "chunk_not_executed": 1}
    assert [t.chunk[0, 0] for t in rec.transitions] == [0, 7, 10] and not any(t.intervention for t in rec.transitions)
    assert rec.human_steps == 3
