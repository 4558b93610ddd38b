"""Chunk-level transitions joined from what a robot publishes: observations, action chunks, rewards, episode events.

ROS-free: the finetune node turns messages into calls of `TransitionJoiner` (one per robot), which
returns finished transitions at each episode end. Nothing is guessed: a piece that cannot be joined
exactly is counted under a reason and dropped.

Join rules. All stamps of one robot come from one clock (ns): header stamps, or the time the
publisher sent a header-less message (the finetune node passes DDS source timestamps).
- An episode is the stamp window [start event, end event); it is joined `grace_s` after its end event
  arrived, so the order in which different topics' messages are handled does not matter.
- Observations: step i of an episode goes from observation o_i to o_{i+1}. An observation equal to
  the previous one with no reward in between is a re-publication (a simulator waiting for a command),
  not a step ("republished", not a drop). An observation is a state vector plus, for a camera
  model, one RGB uint8 image per camera; both travel into the transition (`images`,
  `next_images`). The first observation given for a stamp is kept: with parts that share one stamp
  (a robot stamping its joints and camera frame alike) every later combination under that stamp
  mixes in an older part.
- Chunks, two ways: by stamp (the contract: a chunk's `header.stamp` is its observation's stamp;
  exact match or "chunk_without_observation"), or causally (lock-step: the newest observation
  published before the chunk; two chunks on one observation are "ambiguous_chunk").
- Rewards: step i's reward is the one stamped in (o_i, o_{i+1}] (the last step: up to the end event).
  `reward_mode="per_step"` (a simulator) wants exactly one reward per step, otherwise the chunk
  holding that step is dropped ("reward_mismatch"); `reward_mode="sum"` (sparse rewards: a human, a
  success detector) sums what came, missing = 0.
- A transition is (o_i, the H actions of the chunk at o_i, the H rewards, o_{i+H}, mask). The policy
  must have executed the whole chunk: the next chunk comes H steps later, or the episode ends inside
  the chunk; otherwise "partial_chunk" (re-planned early, or cut by a pause).
- Episode end inside the chunk: `success`/`failure` are terminal (mask 0, rewards past the end are 0,
  like the offline dataset); `timeout` is a truncation, with no next observation to bootstrap from,
  so the chunk is dropped ("truncated").
- Chunks before the first `start` seen (the learner joined mid-episode) are "partial_episode".
- Stamp join: a chunk the policy published after the episode's end event (its observation is from
  before the end, its actions were never executed in that episode) is "chunk_after_end".

Steps by time (`step_ns`, stamp join only): a real robot often publishes its joint states faster
than the policy acts (a 100 Hz joint_state_broadcaster, a 20 Hz policy timer), so observations are
not steps. Then a step is `step_ns` (1/fps) of stamp time: the chunk stamped c executes its H
actions over (c, c + H*step]; it was executed in full when the next chunk is stamped c + H*step
(within half a step: the policy observed the newest joint state at its tick), whose observation
is the next observation; a next chunk earlier than that replaced it ("partial_chunk"), none in
time means the policy paused ("partial_chunk"), unless the episode ended inside the chunk
(terminal: mask 0, after the steps begun at least half a step before the end; time-out:
"truncated"). A reward stamped t in (c, next chunk's stamp] (or the end) belongs to the chunk's step
floor((t - c - 1) / step), the last executed step taking any later ones; per_step wants exactly one
per executed step, which a reward published a few ms off its step's boundary breaks: prefer `sum`
for a robot on a timer. An episode's steps are its duration in steps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dfp_ros.contracts import CameraSpec

TERMINAL_EVENTS = ("success", "failure")
END_EVENTS = ("success", "failure", "timeout")
REWARD_MODES = ("per_step", "sum")


@dataclass
class Transition:
    state: np.ndarray  # [S] raw units
    chunk: np.ndarray  # [H, A] raw units, as executed
    rewards: np.ndarray  # [H] per-step rewards, 0 past a terminal end
    next_state: np.ndarray  # [S] observation H steps later (the last one when terminal; masked out)
    mask: float  # 0 when the episode terminated inside the chunk
    stamp_ns: int = 0  # stamp of `state`
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint8 [h, w, 3] at `state`
    next_images: dict[str, np.ndarray] = field(default_factory=dict)  # ... at `next_state`

    def discounted_return(self, gamma: float) -> float:
        return float((self.rewards * gamma ** np.arange(len(self.rewards))).sum())


def transition_image_bytes(cameras: Sequence[CameraSpec]) -> int:
    """Bytes of one transition's images: observation + next observation, uint8 RGB, per camera."""
    return 2 * sum(c.height * c.width * 3 for c in cameras)


def check_image_memory(cameras: Sequence[CameraSpec], capacity: int, max_image_bytes: int) -> None:
    """Refuse (ValueError, saying what would fit) a capacity whose image rings would exceed `max_image_bytes`.

    The replay buffer's bound; here (torch-free) so the finetune node checks its parameters at start.
    """
    per = transition_image_bytes(cameras)
    if per and per * capacity > max_image_bytes:
        raise ValueError(
            f"replay capacity {capacity} with cameras {[(c.name, c.height, c.width) for c in cameras]} needs "
            f"{per * capacity / 1024**3:.1f} GiB of images ({per} bytes per transition: observation + next "
            f"observation, uint8), more than the limit of {max_image_bytes / 1024**3:.1f} GiB; lower the capacity "
            f"to at most {max_image_bytes // per} or raise the limit")


@dataclass
class EpisodeRecord:
    """What one finished episode produced (the learning curve logs these)."""

    robot: str
    event: str
    steps: int
    episode_return: float
    chunks: int
    transitions: list[Transition] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.event == "success"


class TransitionJoiner:
    """Joins one robot's streams into chunk transitions; see the module docstring for the rules.

    Messages of different topics may be handled in any order (separate DDS readers), so nothing
    depends on arrival order: an episode is the stamp window [start, end) of its events, and it is
    joined only `grace_s` after its end event arrived, when its last reward and observations are in.
    """

    def __init__(self, horizon: int, robot: str = "", reward_mode: str = "per_step", grace_s: float = 0.5,
                 max_buffered: int = 100_000, step_ns: int | None = None):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if step_ns is not None and step_ns <= 0:
            raise ValueError(f"step_ns must be > 0 (one control period in ns) or None, got {step_ns}")
        self.horizon = horizon
        self.step_ns = step_ns  # None: each observation is a step; else steps by time (module docstring)
        self.robot = robot
        self.reward_mode = reward_mode
        self.grace_s = grace_s
        self.max_buffered = max_buffered
        self.dropped: Counter[str] = Counter()
        self.joined = 0
        self.episodes = 0
        self.republished = 0  # observations sent again without a step (not transitions; not dropped)
        self._obs: dict[int, np.ndarray] = {}
        self._images: dict[int, dict[str, np.ndarray]] = {}  # camera images of the observation at a stamp
        self._chunks: dict[int, np.ndarray] = {}
        self._sent: dict[int, int] = {}  # chunk stamp -> when the policy published it (when known)
        self._causal: list[tuple[int, np.ndarray]] = []  # (publish time, actions): joined at the episode end
        self._rewards: list[tuple[int, float]] = []
        self._start_ns: int | None = None
        self._pending: list[tuple[int, int, str, float]] = []  # (start, end, event, arrival time)

    # --- inputs ------------------------------------------------------------------------------------
    def add_observation(self, stamp_ns: int, state: np.ndarray,
                        images: dict[str, np.ndarray] | None = None) -> None:
        """The observation stamped `stamp_ns`; the first one given for a stamp is kept.

        `images` (camera -> uint8 [h, w, 3]) are kept by reference, not copied — one camera frame is
        often shared by several observations — so the caller must not modify them afterwards.
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._obs:
            return
        self._obs[stamp_ns] = np.asarray(state, np.float32).copy()
        if images:
            self._images[stamp_ns] = dict(images)
        self._bound()

    def add_chunk(self, stamp_ns: int, actions: np.ndarray, causal: bool = False, sent_ns: int | None = None) -> None:
        """A chunk stamped with its observation's stamp; or, `causal`, with the time it was published.

        `sent_ns` (stamp join): when the policy published it, same clock as the events. A chunk sent
        after its episode's end event was planned on an observation from before the end but never
        executed in that episode (a policy re-planning on a stale state once its queue was cleared):
        it is dropped ("chunk_after_end") and does not cut short the chunk before it.

        Causal join (lock-step): the policy acted on the newest observation published before its chunk
        (the simulator waits for the command, so no newer one can exist) — exact, not a guess, as
        long as all stamps come from one clock (publishers' source timestamps on one host).
        """
        if causal and self.step_ns is not None:
            raise ValueError("steps by time (step_ns) join chunks by their stamps; a causal chunk has none")
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 2 or actions.shape[0] != self.horizon:
            self.dropped["chunk_wrong_shape"] += 1
            return
        if causal:
            self._causal.append((int(stamp_ns), actions.copy()))
        else:
            self._chunks[int(stamp_ns)] = actions.copy()
            if sent_ns is not None:
                self._sent[int(stamp_ns)] = int(sent_ns)
        self._bound()

    def add_reward(self, stamp_ns: int, value: float) -> None:
        self._rewards.append((int(stamp_ns), float(value)))
        self._bound()

    def add_event(self, event: str, stamp_ns: int, now: float = 0.0) -> None:
        """`start` opens an episode at `stamp_ns`; an end event closes it (joined by `poll` after the grace)."""
        stamp_ns = int(stamp_ns)
        if event == "start":
            if self._start_ns is not None:  # a start without an end: nothing before it can be attributed
                self._discard_before(stamp_ns, "partial_episode")
            self._start_ns = stamp_ns
        elif event in END_EVENTS:
            if self._start_ns is None:  # we joined mid-episode
                self._discard_before(stamp_ns, "partial_episode")
                return
            self._pending.append((self._start_ns, stamp_ns, event, now))
            self._start_ns = None

    def poll(self, now: float) -> list[EpisodeRecord]:
        """Join the episodes that ended at least `grace_s` before `now` (same clock as add_event's `now`)."""
        out = []
        while self._pending and self._pending[0][3] + self.grace_s <= now:
            start, end, event, _ = self._pending.pop(0)
            out.append(self._finish(start, end, event))
        return out

    def flush(self) -> list[EpisodeRecord]:
        return self.poll(float("inf"))

    def _discard_before(self, stamp_ns: int, reason: str) -> None:
        n = sum(1 for s in self._chunks if s < stamp_ns)
        if n:
            self.dropped[reason] += n
        self.dropped[reason] += sum(1 for s, _ in self._causal if s < stamp_ns)
        self._keep_observations_from(stamp_ns)
        self._chunks = {s: v for s, v in self._chunks.items() if s >= stamp_ns}
        self._sent = {s: v for s, v in self._sent.items() if s in self._chunks}
        self._causal = [(s, a) for s, a in self._causal if s >= stamp_ns]
        self._rewards = [(s, r) for s, r in self._rewards if s > stamp_ns]

    def _keep_observations_from(self, stamp_ns: int) -> None:
        self._obs = {s: v for s, v in self._obs.items() if s >= stamp_ns}
        self._images = {s: v for s, v in self._images.items() if s >= stamp_ns}

    def _bound(self) -> None:
        # No episode events at all (a silent episode topic): never grow without bound.
        if len(self._obs) + len(self._chunks) + len(self._causal) + len(self._rewards) > self.max_buffered:
            self.dropped["buffer_overflow"] += len(self._chunks) + len(self._causal)
            self._obs.clear()
            self._images.clear()
            self._chunks.clear()
            self._sent.clear()
            self._causal.clear()
            self._rewards.clear()

    # --- joining -----------------------------------------------------------------------------------
    def _without_republished(self, stamps: list[int]) -> list[int]:
        """Drop re-publications: an observation equal to the previous one with no reward in between.

        A simulator waiting for a command (or a paused robot) sends its observation again; a real step
        always brings a reward (per_step mode), so this is the same observation, not a new step.
        """
        if self.reward_mode != "per_step" or len(stamps) < 2:
            return stamps
        reward_times = np.sort(np.array([t for t, _ in self._rewards], dtype=np.int64))
        keep = [stamps[0]]
        for s in stamps[1:]:
            prev = keep[-1]
            rewarded = np.searchsorted(reward_times, s, "left") > np.searchsorted(reward_times, prev, "right")
            if not rewarded and self._same_observation(s, prev):
                self.republished += 1
                continue
            keep.append(s)
        return keep

    def _same_observation(self, a: int, b: int) -> bool:
        if not np.array_equal(self._obs[a], self._obs[b]):
            return False
        ia, ib = self._images.get(a, {}), self._images.get(b, {})
        return ia.keys() == ib.keys() and all(ia[k] is ib[k] or np.array_equal(ia[k], ib[k]) for k in ia)

    def _finish(self, start_ns: int, end_ns: int, event: str) -> EpisodeRecord:
        if self.step_ns is not None:
            return self._finish_timed(start_ns, end_ns, event)
        self.episodes += 1
        dropped: Counter[str] = Counter()
        # Observations of the episode: [start, end). The next episode's first one carries the end stamp.
        stamps = sorted(s for s in self._obs if start_ns <= s < end_ns)
        stamps = self._without_republished(stamps)
        n = len(stamps)
        # Step i goes o_i -> o_{i+1}; the last step ends at the end event: rewards stamped in (o_i, o_{i+1}].
        bounds = np.array([*stamps, end_ns], dtype=np.int64)
        rewards = np.zeros(n, np.float64)
        counts = np.zeros(n, np.int64)
        for t, r in self._rewards:
            if not start_ns < t <= end_ns:
                continue
            i = int(np.searchsorted(bounds, t, side="left")) - 1
            if 0 <= i < n:
                rewards[i] += r
                counts[i] += 1
            else:
                dropped["reward_before_first_observation"] += 1
        bad_step = counts != 1 if self.reward_mode == "per_step" else np.zeros(n, bool)
        index = {s: i for i, s in enumerate(stamps)}
        stamped = self._episode_chunks(start_ns, end_ns, dropped)
        chunks = {s: self._chunks[s] for s in stamped}
        n_chunks = len(chunks) + dropped["chunk_after_end"]
        # Causal chunks: the newest observation published before each; two on one observation are ambiguous.
        causal = [(t, a) for t, a in self._causal if start_ns < t < end_ns]
        n_chunks += len(causal)
        resolved: dict[int, list[np.ndarray]] = {}
        for t, a in causal:
            k = int(np.searchsorted(bounds[:n], t, side="left")) - 1
            if k < 0:
                dropped["chunk_without_observation"] += 1
            else:
                resolved.setdefault(stamps[k], []).append(a)
        for s_, arrs in resolved.items():
            if len(arrs) > 1 or s_ in chunks:
                dropped["ambiguous_chunk"] += len(arrs) + int(s_ in chunks)
                chunks.pop(s_, None)
            else:
                chunks[s_] = arrs[0]
        chunk_steps = sorted(index[s] for s in chunks if s in index)
        dropped["chunk_without_observation"] += sum(1 for s in chunks if s not in index)
        terminal = event in TERMINAL_EVENTS
        H = self.horizon
        out: list[Transition] = []
        for j, i in enumerate(chunk_steps):
            nxt = chunk_steps[j + 1] if j + 1 < len(chunk_steps) else None
            ends_inside = i + H >= n  # no observation H steps later: the episode ended inside the chunk
            if nxt is not None and nxt != i + H:
                dropped["partial_chunk"] += 1  # replaced before it was executed in full
                continue
            if nxt is None and not ends_inside:
                dropped["partial_chunk"] += 1  # no next chunk although the episode went on
                continue
            if ends_inside and not terminal:
                dropped["truncated"] += 1  # a time-out: nothing to bootstrap from, and not terminal
                continue
            steps = min(H, n - i)
            if bad_step[i:i + steps].any():
                dropped["reward_mismatch"] += 1
                continue
            r = np.zeros(H, np.float32)
            r[:steps] = rewards[i:i + steps]
            now_s, next_s, mask = stamps[i], stamps[n - 1 if ends_inside else i + H], 0.0 if ends_inside else 1.0
            out.append(Transition(self._obs[now_s], chunks[now_s], r, self._obs[next_s], mask, now_s,
                                  self._images.get(now_s, {}), self._images.get(next_s, {})))
        return self._record(end_ns, event, n, float(rewards.sum()), n_chunks, out, dropped)

    def _episode_chunks(self, start_ns: int, end_ns: int, dropped: Counter[str]) -> list[int]:
        """Stamps of the stamped chunks of the episode [start, end), less those sent after its end."""
        stamps = sorted(s for s in self._chunks if start_ns <= s < end_ns)
        late = [s for s in stamps if self._sent.get(s, end_ns) > end_ns]
        dropped["chunk_after_end"] += len(late)
        return [s for s in stamps if s not in late]

    def _record(self, end_ns: int, event: str, steps: int, episode_return: float, n_chunks: int,
                out: list[Transition], dropped: Counter[str]) -> EpisodeRecord:
        self.joined += len(out)
        dropped = Counter({k: v for k, v in dropped.items() if v})
        self.dropped.update(dropped)
        # Everything up to this episode's end is used (or counted) now.
        self._keep_observations_from(end_ns)
        self._chunks = {s: v for s, v in self._chunks.items() if s >= end_ns}
        self._sent = {s: v for s, v in self._sent.items() if s in self._chunks}
        self._causal = [(s, a) for s, a in self._causal if s > end_ns]
        self._rewards = [(s, r) for s, r in self._rewards if s > end_ns]
        return EpisodeRecord(self.robot, event, steps, episode_return, n_chunks, out, dict(dropped))

    def _finish_timed(self, start_ns: int, end_ns: int, event: str) -> EpisodeRecord:
        """Steps by time: see "Steps by time" in the module docstring."""
        assert self.step_ns is not None
        self.episodes += 1
        step, H = self.step_ns, self.horizon
        span, tol = H * step, step // 2
        dropped: Counter[str] = Counter()
        obs = sorted(s for s in self._obs if start_ns <= s < end_ns)
        chunk_stamps = self._episode_chunks(start_ns, end_ns, dropped)
        rewards = [(t, r) for t, r in self._rewards if start_ns < t <= end_ns]
        reward_t = np.array([t for t, _ in rewards], dtype=np.int64)
        reward_v = np.array([r for _, r in rewards], dtype=np.float64)
        out: list[Transition] = []
        for k, c in enumerate(chunk_stamps):
            if c not in self._obs:
                dropped["chunk_without_observation"] += 1
                continue
            # The next chunk of any kind counts: one without its observation still replaced this one.
            nxt = chunk_stamps[k + 1] if k + 1 < len(chunk_stamps) else None
            if nxt is not None and abs(nxt - c - span) <= tol:  # executed in full
                if nxt not in self._obs:
                    dropped["chunk_without_observation"] += 1  # its next observation is missing
                    continue
                steps, stop, next_s, mask = H, nxt, nxt, 1.0
            elif nxt is None and end_ns - c <= span + tol:  # the episode ended inside the chunk
                if event not in TERMINAL_EVENTS:
                    dropped["truncated"] += 1
                    continue
                # Steps begun at least half a step before the end (an end just past a step boundary
                # closes the previous step); the newest observation is masked out anyway.
                steps = min(H, max(1, -(-(end_ns - c - tol) // step)))
                stop, next_s, mask = end_ns, obs[-1], 0.0
            else:  # replaced early, or no next chunk in time although the episode went on (a pause)
                dropped["partial_chunk"] += 1
                continue
            # Step j of this chunk: rewards stamped in (c + j*step, c + (j+1)*step], the last one up to `stop`.
            inside = (reward_t > c) & (reward_t <= stop)
            j = np.minimum((reward_t[inside] - c - 1) // step, steps - 1)
            if self.reward_mode == "per_step" and not (np.bincount(j, minlength=steps) == 1).all():
                dropped["reward_mismatch"] += 1
                continue
            r = np.zeros(H, np.float64)
            np.add.at(r, j, reward_v[inside])
            out.append(Transition(self._obs[c], self._chunks[c], r.astype(np.float32), self._obs[next_s], mask, c,
                                  self._images.get(c, {}), self._images.get(next_s, {})))
        n_steps = round((end_ns - start_ns) / step)
        n_chunks = len(chunk_stamps) + dropped["chunk_after_end"]
        return self._record(end_ns, event, n_steps, float(reward_v.sum()), n_chunks, out, dropped)
