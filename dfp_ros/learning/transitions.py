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
- `discard` (the operator's word) throws the open episode away (or, with none open, the last ended one
  not joined yet): its chunks are "discarded", nothing of it is learned from. A robot that runs on to
  its own end event (a simulator) has the chunks up to that end counted "discarded" too.

What was executed (`add_executed`, the policy node's `~/executed`: one message per command published,
saying whether the policy, the human or the watchdog's hold produced it). Each such message labels
one step: by its stamp (stamp join: its observation's stamp) or causally (the newest observation
published before it). Without any, every step is unlabelled and the rules above are all there is.
With them, human takeovers become transitions too (HIL-SERL's interventions) instead of being lost
or, worse, joined as if the policy had executed its chunk:
- A policy chunk whose steps were all executed by the policy (or are unlabelled) is joined exactly as
  above. A chunk planned at a step the policy did not command (the human held the robot; the policy
  plans on meanwhile) was never executed: "chunk_not_executed".
- Windows with human steps are built from the executed commands: the policy chunk cut by a takeover
  (its window [c, c + H) holds human steps), and each stretch of human steps cut into H-step windows
  from its first step (the takeover point); the last one may run on into the policy's steps after the
  hand-back. Such a transition is (o_d, the H executed commands from d, their rewards, o_{d+H}, mask)
  with `intervention` set; the episode ending inside it follows the rules above (terminal: mask 0 and
  the last command repeated past the end, as the offline dataset pads; time-out: "truncated").
- A "hold" step (the watchdog repeated a command: the teleop device late or silent, stale
  observations) ends a window: a window holding one is dropped ("hold_step"), and so is one with an
  unlabelled step ("executed_missing") or a step two messages label differently ("executed_conflict").
- An episode's `human_steps` / `steps` is its intervention rate.

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
for a robot on a timer. An episode's steps are its duration in steps. Executed messages (by their
stamps) only guard the policy's chunks here: a chunk whose span holds a human tick is dropped
("cut_by_takeover"), one planned while the human held the robot is "chunk_not_executed", a hold
tick drops it ("hold_step"); no windows are built from executed commands with steps by time, and the
human ticks still make the episode's intervention rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dfp_ros.runtime.takeover import HOLD, HUMAN, POLICY

if TYPE_CHECKING:
    from dfp_ros.contracts import CameraSpec

TERMINAL_EVENTS = ("success", "failure")
END_EVENTS = ("success", "failure", "timeout")
REWARD_MODES = ("per_step", "sum")
DISCARD = "discard"  # the operator's word: the episode is not learned from (contracts.EPISODE_DISCARD)
# A step's label from `~/executed` (np.int8 per step): nothing known, who commanded it, or two messages
# that disagree.
_UNKNOWN, _POLICY, _HUMAN, _HOLD, _CONFLICT = range(5)
_LABELS = {POLICY: _POLICY, HUMAN: _HUMAN, HOLD: _HOLD}


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
    intervention: bool = False  # built from executed commands, some of them the human's

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
    human_steps: int = 0  # steps the human commanded (`~/executed`)
    human_windows: int = 0  # windows cut from human stretches (joined or dropped, besides `chunks`)
    labelled_steps: int = 0  # steps with an executed message
    discarded: bool = False  # the operator's `discard`: nothing of it is learned from

    @property
    def success(self) -> bool:
        return self.event == "success"

    @property
    def interventions(self) -> int:
        """Transitions built from executed commands with human steps."""
        return sum(t.intervention for t in self.transitions)

    @property
    def intervention_rate(self) -> float:
        """Human steps / steps."""
        return self.human_steps / self.steps if self.steps else 0.0


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
        self.discarded = 0  # episodes the operator discarded
        self.executed_unplaced = 0  # executed messages with no observation of the episode to label
        self._obs: dict[int, np.ndarray] = {}
        self._images: dict[int, dict[str, np.ndarray]] = {}  # camera images of the observation at a stamp
        self._chunks: dict[int, np.ndarray] = {}
        self._sent: dict[int, int] = {}  # chunk stamp -> when the policy published it (when known)
        self._causal: list[tuple[int, np.ndarray]] = []  # (publish time, actions): joined at the episode end
        self._rewards: list[tuple[int, float]] = []
        # (stamp, or publish time when causal; command [A]; who; causal; publish time when known)
        self._executed: list[tuple[int, np.ndarray, str, bool, int | None]] = []
        self._start_ns: int | None = None
        self._after_discard = False  # an open episode was discarded: its tail up to the next start too
        self._pending: list[list] = []  # [start, end, event, arrival time, discarded]

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

    def add_executed(self, stamp_ns: int, command: np.ndarray, source: str, causal: bool = False,
                     sent_ns: int | None = None) -> None:
        """One command the policy node published (`~/executed`) and who produced it (policy | human | hold).

        Stamped with the observation its tick acted on, or, `causal`, with the time it was published
        (placed on the newest observation published before it, as a causal chunk). `sent_ns` (stamp
        join): a tick after the episode's end event acting on an older observation is not the episode's.
        """
        if source not in _LABELS:
            raise ValueError(f"executed source {source!r} is not one of {sorted(_LABELS)}")
        if causal and self.step_ns is not None:
            raise ValueError("steps by time (step_ns) place executed commands by their stamps, not causally")
        self._executed.append((int(stamp_ns), np.asarray(command, np.float32).reshape(-1).copy(), source, causal,
                               None if sent_ns is None else int(sent_ns)))
        self._bound()

    def add_event(self, event: str, stamp_ns: int, now: float = 0.0) -> None:
        """`start` opens an episode at `stamp_ns`; an end event closes it (joined by `poll` after the grace)."""
        stamp_ns = int(stamp_ns)
        if event == "start":
            if self._start_ns is not None:  # a start without an end: nothing before it can be attributed
                self._discard_before(stamp_ns, "partial_episode")
            self._start_ns, self._after_discard = stamp_ns, False
        elif event in END_EVENTS:
            if self._start_ns is None:  # we joined mid-episode, or the operator discarded this one
                self._discard_before(stamp_ns, "discarded" if self._after_discard else "partial_episode")
                self._after_discard = False
                return
            self._pending.append([self._start_ns, stamp_ns, event, now, False])
            self._start_ns = None
        elif event == DISCARD:
            if self._start_ns is not None:
                self._pending.append([self._start_ns, stamp_ns, event, now, True])
                self._start_ns, self._after_discard = None, True
            elif self._pending:  # pressed just after the end, before the episode was joined
                self._pending[-1][4] = True
            else:
                self.dropped["discard_without_episode"] += 1

    def poll(self, now: float) -> list[EpisodeRecord]:
        """Join the episodes that ended at least `grace_s` before `now` (same clock as add_event's `now`)."""
        out = []
        while self._pending and self._pending[0][3] + self.grace_s <= now:
            start, end, event, _, discarded = self._pending.pop(0)
            out.append(self._discard(start, end, event) if discarded else self._finish(start, end, event))
        return out

    def flush(self) -> list[EpisodeRecord]:
        return self.poll(float("inf"))

    def _discard_before(self, stamp_ns: int, reason: str) -> None:
        """Drop what came before `stamp_ns` outside any episode; an ended episode waiting for its grace
        period keeps its own messages (everything up to its end)."""
        floor = self._pending[-1][1] if self._pending else -1

        def outside(s: int) -> bool:
            return floor <= s < stamp_ns

        n = sum(1 for s in self._chunks if outside(s)) + sum(1 for s, _ in self._causal if outside(s))
        if n:
            self.dropped[reason] += n
        self._obs = {s: v for s, v in self._obs.items() if not outside(s)}
        self._images = {s: v for s, v in self._images.items() if not outside(s)}
        self._chunks = {s: v for s, v in self._chunks.items() if not outside(s)}
        self._sent = {s: v for s, v in self._sent.items() if s in self._chunks}
        self._causal = [(s, a) for s, a in self._causal if not outside(s)]
        self._rewards = [(s, r) for s, r in self._rewards if not floor < s <= stamp_ns]
        self._executed = [e for e in self._executed if not outside(e[0])]

    def _keep_observations_from(self, stamp_ns: int) -> None:
        self._obs = {s: v for s, v in self._obs.items() if s >= stamp_ns}
        self._images = {s: v for s, v in self._images.items() if s >= stamp_ns}

    def _bound(self) -> None:
        # No episode events at all (a silent episode topic): never grow without bound.
        if len(self._obs) + len(self._chunks) + len(self._causal) + len(self._rewards) + len(self._executed) \
                > self.max_buffered:
            self.dropped["buffer_overflow"] += len(self._chunks) + len(self._causal)
            self._obs.clear()
            self._images.clear()
            self._chunks.clear()
            self._sent.clear()
            self._causal.clear()
            self._rewards.clear()
            self._executed.clear()

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
            # A step's reward is stamped in (prev, s], as the join below counts it (a robot that stamps the
            # reward with the observation it led to, and holds perfectly still, still stepped).
            rewarded = np.searchsorted(reward_times, s, "right") > np.searchsorted(reward_times, prev, "right")
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
        src, commands = self._label_steps(stamps, start_ns, end_ns)

        def join(i: int, actions: np.ndarray, intervention: bool) -> None:
            """The window of H steps from step i with these actions, unless it cannot be joined."""
            ends_inside = i + H >= n  # no observation H steps later: the episode ended inside the window
            if ends_inside and not terminal:
                dropped["truncated"] += 1  # a time-out: nothing to bootstrap from, and not terminal
                return
            steps = min(H, n - i)
            if bad_step[i:i + steps].any():
                dropped["reward_mismatch"] += 1
                return
            r = np.zeros(H, np.float32)
            r[:steps] = rewards[i:i + steps]
            now_s, next_s, mask = stamps[i], stamps[n - 1 if ends_inside else i + H], 0.0 if ends_inside else 1.0
            out.append(Transition(self._obs[now_s], actions, r, self._obs[next_s], mask, now_s,
                                  self._images.get(now_s, {}), self._images.get(next_s, {}), intervention))

        human_windows = _human_window_starts(src, H)
        executed_windows = list(human_windows)
        for j, i in enumerate(chunk_steps):
            nxt = chunk_steps[j + 1] if j + 1 < len(chunk_steps) else None
            labels = src[i:i + H]
            if src[i] not in (_UNKNOWN, _POLICY):
                dropped["chunk_not_executed"] += 1  # planned while the human held the robot
            elif (labels == _HUMAN).any():
                executed_windows.append(i)  # cut by a takeover
            elif (bad := _window_fault(labels, allow_unknown=True)) is not None:
                dropped[bad] += 1
            elif nxt is not None and nxt != i + H:
                dropped["partial_chunk"] += 1  # replaced before it was executed in full
            elif nxt is None and i + H < n:
                dropped["partial_chunk"] += 1  # no next chunk although the episode went on
            else:
                join(i, chunks[stamps[i]], False)
        for d in executed_windows:
            steps = min(H, n - d)
            if (bad := _window_fault(src[d:d + steps], allow_unknown=False)) is not None:
                dropped[bad] += 1
                continue
            actions = np.stack(commands[d:d + steps])  # (every step is labelled: checked above)
            join(d, np.concatenate([actions, np.repeat(actions[-1:], H - steps, 0)]), True)
        out.sort(key=lambda t: t.stamp_ns)
        rec = self._record(end_ns, event, n, float(rewards.sum()), n_chunks, out, dropped)
        return self._labelled(rec, src, len(human_windows))

    def _label_steps(self, stamps: list[int], start_ns: int, end_ns: int) -> tuple[np.ndarray, list]:
        """Per step of the episode: who commanded it (_UNKNOWN, _POLICY, _HUMAN, _HOLD, _CONFLICT) and the
        command (None where unknown); see the module docstring."""
        src = np.full(len(stamps), _UNKNOWN, np.int8)
        commands: list[np.ndarray | None] = [None] * len(stamps)
        starts = np.asarray(stamps, np.int64)
        for t, command, who, causal, sent in sorted(self._executed, key=lambda e: (e[0], e[4] or 0)):
            if causal:
                if not start_ns < t < end_ns:
                    continue
                k = int(np.searchsorted(starts, t, "left")) - 1
            else:
                if not start_ns <= t < end_ns or (sent is not None and sent > end_ns):
                    continue  # another episode's, or a tick after the end on an older observation
                # A re-published observation's stamp labels the step it repeats.
                k = int(np.searchsorted(starts, t, "right")) - 1 if t in self._obs else -1
            if k < 0:
                self.executed_unplaced += 1
            elif src[k] in (_UNKNOWN, _LABELS[who]):
                src[k], commands[k] = _LABELS[who], command
            else:
                src[k] = _CONFLICT
        return src, commands

    def _labelled(self, rec: EpisodeRecord, src: np.ndarray, human_windows: int) -> EpisodeRecord:
        rec.human_steps = int((src == _HUMAN).sum())
        rec.labelled_steps = int((src != _UNKNOWN).sum())
        rec.human_windows = human_windows
        return rec

    def _discard(self, start_ns: int, end_ns: int, event: str) -> EpisodeRecord:
        """The operator discarded the episode [start, end): counted, nothing joined."""
        self.discarded += 1
        n_chunks = (sum(1 for s in self._chunks if start_ns <= s < end_ns)
                    + sum(1 for t, _ in self._causal if start_ns < t < end_ns))
        if self.step_ns is None:
            steps = len(self._without_republished(sorted(s for s in self._obs if start_ns <= s < end_ns)))
        else:
            steps = round((end_ns - start_ns) / self.step_ns)
        episode_return = sum(r for t, r in self._rewards if start_ns < t <= end_ns)
        rec = self._record(end_ns, event, steps, episode_return, n_chunks, [], Counter(discarded=n_chunks))
        rec.discarded = True
        return rec

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
        self._executed = [e for e in self._executed if e[0] > end_ns or (not e[3] and e[0] == end_ns)]
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
        executed = [(t, _LABELS[who]) for t, _, who, _, sent in self._executed
                    if start_ns <= t < end_ns and (sent is None or sent <= end_ns)]
        ex_t = np.array([t for t, _ in executed], np.int64)
        ex_src = np.array([w for _, w in executed], np.int8)
        out: list[Transition] = []
        for k, c in enumerate(chunk_stamps):
            if c not in self._obs:
                dropped["chunk_without_observation"] += 1
                continue
            # The ticks of its span (by their observations' stamps): steps by time build no windows from
            # executed commands (module docstring), but a chunk the human cut or held is never joined.
            inside = (ex_t >= c - tol) & (ex_t < c + span - tol)
            labels = ex_src[inside][np.argsort(ex_t[inside])]
            if labels.size and labels[0] != _POLICY:
                dropped["chunk_not_executed"] += 1
                continue
            if (labels == _HUMAN).any():
                dropped["cut_by_takeover"] += 1
                continue
            if (bad := _window_fault(labels, allow_unknown=True)) is not None:
                dropped[bad] += 1
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
        rec = self._record(end_ns, event, n_steps, float(reward_v.sum()), n_chunks, out, dropped)
        return self._labelled(rec, ex_src, 0)


def _human_window_starts(src: np.ndarray, horizon: int) -> list[int]:
    """Each stretch of human steps cut into windows of `horizon` steps from its first step."""
    human = np.concatenate([[False], src == _HUMAN, [False]])
    edges = np.flatnonzero(human[1:] != human[:-1])  # run starts and ends, alternating
    return [d for a, b in zip(edges[::2], edges[1::2], strict=True) for d in range(int(a), int(b), horizon)]


def _window_fault(labels: np.ndarray, allow_unknown: bool) -> str | None:
    """Why a window with these step labels cannot be joined (a drop reason), or None."""
    if (labels == _HOLD).any():
        return "hold_step"
    if (labels == _CONFLICT).any():
        return "executed_conflict"
    if not allow_unknown and (labels == _UNKNOWN).any():
        return "executed_missing"
    return None
