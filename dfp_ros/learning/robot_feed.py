"""One robot's streams into the fine-tuning join (ROS-free; the finetune node feeds it arrays).

Per robot: the policy node's observation assembly (same `StateSource`s, same `ObservationAssembler`,
so the same state vector), a `TransitionJoiner`, when each stream was last heard from (silence
checks), and what was dropped: messages per `ObservationError` kind, and observations whose parts
carry stamps of different instants (`unpaired_stamps`).

Stamps (`join`): `causal` places every message by the time its publisher sent it (the DDS source
timestamp); `stamp` places header-stamped messages by their header stamp and header-less ones
(rewards, episode events) by the time they were sent. A header stamp far from its send time comes
from another clock (sim time, an unsynchronised computer): such observations can never fall into
the rewards' windows, which is counted (`stamp_clock_mismatch`) and reported. The policy node's
`~/executed` (who commanded each step, and the command) is placed like a chunk: by its stamp, or by
the time it was sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from dfp_ros.contracts import ModelMetadata
from dfp_ros.learning.transitions import EpisodeRecord, TransitionJoiner
from dfp_ros.runtime.observation import ObservationAssembler, ObservationError, StateSource
from dfp_ros.runtime.takeover import HOLD, HUMAN, POLICY

JOIN_MODES = ("causal", "stamp")
STEPS_FROM = ("observations", "fps")
CLOCK_MISMATCH_NS = 5_000_000_000  # header stamp vs send time: beyond transport delay, another clock
LIVE_ROBOT_S = 2.5  # a waiting simulator re-sends its observation every second: judge a live robot over this

Warn = Callable[[str, float], None]  # (text, throttle seconds)


def check_join(meta: ModelMetadata, sources: list[StateSource], join: str) -> None:
    """Refuse the combinations whose observations the join could not place exactly (ValueError)."""
    if join == "causal":
        if len(sources) > 1 or meta.cameras:
            raise ValueError(
                f"join: causal places each observation by the time its message was sent, so it needs exactly one "
                f"observation message per step; this model reads {len(sources)} state topic(s) and cameras "
                f"{[c.name for c in meta.cameras]}. Use join: stamp with header-stamped JointState / Image topics")
        return
    headerless = [s.topic for s in sources if s.type != "joint_state"]
    if headerless:
        raise ValueError(
            f"join: stamp joins observations by their header stamp, but state topics {headerless} are "
            "Float32MultiArray (no header); use joint_state sources (sensor_msgs/JointState), or join: causal "
            "for a lock-step robot publishing one Float32MultiArray per step")


class RobotFeed:
    """One robot (namespace `ns`): messages as arrays in, joined episodes out via `joiner.poll`."""

    def __init__(self, ns: str, meta: ModelMetadata, sources: list[StateSource], *, join: str = "causal",
                 reward_mode: str = "per_step", grace_s: float = 0.5, steps_from: str = "observations",
                 max_obs_age_s: float = 1.0, max_stamp_skew_s: float = 0.0, warn: Warn | None = None):
        self.ns = ns
        self.label = ns or "/"
        self.causal = join == "causal"
        step_ns = round(1e9 / meta.fps) if steps_from == "fps" else None
        self.joiner = TransitionJoiner(meta.horizon, ns, reward_mode, grace_s, step_ns=step_ns)
        self.assembler = ObservationAssembler(meta, sources, max_obs_age_s)
        self.n_actions = len(meta.action_names)
        self.max_skew_ns = round(max_stamp_skew_s * 1e9)
        self.last: dict[str, float] = {}  # stream -> monotonic time of its last message
        self.counts: Counter[str] = Counter()  # unpaired_stamps, stamp_clock_mismatch
        self.dropped_messages: Counter[str] = Counter()  # per ObservationError kind
        self._warn = warn or (lambda text, throttle_s: None)

    # --- stamps --------------------------------------------------------------------------------------
    def stamp(self, sent_ns: int, header_ns: int = 0) -> int:
        """Where a message goes on the robot's time line: its header stamp (join: stamp, when it has a
        non-zero one), else the time its publisher sent it."""
        if self.causal or not header_ns:
            return sent_ns
        if abs(header_ns - sent_ns) > CLOCK_MISMATCH_NS:
            self.counts["stamp_clock_mismatch"] += 1
            self._warn(f"[{self.label}] header stamps are {(header_ns - sent_ns) / 1e9:+.1f} s from their publish "
                       "time: the publisher stamps with another clock (sim time? no chrony/PTP?), so observations "
                       "cannot be joined with rewards and episode events", 10.0)
        return header_ns

    # --- streams -------------------------------------------------------------------------------------
    def observe(self, what: str, store: Callable[[ObservationAssembler, float], None], now: float) -> None:
        """Store one part of the observation (`store(assembler, now)` may raise ObservationError); when
        every part is fresh, hand the observation to the join."""
        self.last["observation"] = now
        try:
            store(self.assembler, now)
        except ObservationError as e:
            self.drop(what, e)
            return
        obs = self.assembler.ready(now)
        if obs is None:
            return
        if not self.causal and obs.stamp_skew_ns > self.max_skew_ns:
            # Parts of different instants (a part of this step not here yet, or lost): not the
            # observation any policy acted on for this stamp. A chunk left without one is dropped.
            self.counts["unpaired_stamps"] += 1
            return
        self.joiner.add_observation(obs.stamp_ns, obs.state, obs.images)

    def chunk(self, actions: np.ndarray, header_ns: int, sent_ns: int, now: float) -> None:
        """A policy chunk [H, A] (action names' order): placed causally by its send time, or by its stamp."""
        self.last["chunk"] = now
        if actions.ndim != 2 or actions.shape[1] != self.n_actions:
            self.drop("chunk", ObservationError("wrong_size", f"chunk of shape {actions.shape}, expected "
                                                              f"[H, {self.n_actions}]"))
        elif self.causal:
            self.joiner.add_chunk(sent_ns, actions, causal=True)
        else:
            self.joiner.add_chunk(header_ns, actions, sent_ns=sent_ns)

    def executed(self, command: np.ndarray, source: str, header_ns: int, sent_ns: int, now: float) -> None:
        """One command the policy published [A] and who produced it (`~/executed`'s frame_id)."""
        self.last["executed"] = now
        if source not in (POLICY, HUMAN, HOLD):
            self.drop("executed", ObservationError("unknown_source", f"executed frame_id {source!r} is not one of "
                                                                     f"{POLICY}, {HUMAN}, {HOLD}"))
        elif command.shape != (self.n_actions,):
            self.drop("executed", ObservationError("wrong_size", f"executed command of shape {command.shape}, "
                                                                 f"expected [{self.n_actions}]"))
        elif not np.isfinite(command).all():
            self.drop("executed", ObservationError("non_finite", "executed command with NaN/inf"))
        elif self.causal:
            self.joiner.add_executed(sent_ns, command, source, causal=True)
        else:
            self.joiner.add_executed(header_ns, command, source, sent_ns=sent_ns)

    def reward(self, value: float, sent_ns: int, now: float) -> None:
        self.last["reward"] = now
        if not np.isfinite(value):
            self.drop("reward", ObservationError("non_finite", f"reward {value}"))
            return
        self.joiner.add_reward(sent_ns, float(value))

    def event(self, event: str, sent_ns: int, now: float) -> None:
        self.last["episode"] = now
        self.joiner.add_event(event, sent_ns, now=now)

    def poll(self, now: float, executed_topic: str = "") -> list[EpisodeRecord]:
        """The episodes joined by now (`joiner.poll`); a warning when `executed_topic` is read but an episode
        with chunks had no message on it (takeovers could not be told from the policy's steps)."""
        records = self.joiner.poll(now)
        if executed_topic and any(r.chunks and not r.labelled_steps and not r.discarded for r in records):
            self._warn(f"[{self.label}] no message on {executed_topic} in an episode with chunks: takeovers cannot be "
                       "told from the policy's steps (is the policy node's ~/executed there?)", 60.0)
        return records

    def drop(self, what: str, err: ObservationError) -> None:
        self.dropped_messages[err.kind] += 1
        self._warn(f"[{self.label}] {what} dropped ({err.kind}): {err}", 5.0)

    # --- silence -------------------------------------------------------------------------------------
    def silent(self, now: float, limits: dict[str, float]) -> list[tuple[str, float]]:
        """(stream, seconds silent) for each of `limits`' streams (reward, episode) silent for longer than its
        limit while observations arrive; a quiet robot (stopped, between sessions) is not judged."""
        seen = self.last.get("observation")
        if seen is None or now - seen > LIVE_ROBOT_S:
            return []
        out = []
        for stream, limit in limits.items():
            last = self.last.get(stream, self.last.setdefault(f"{stream}_watch", now))
            if now - last > limit:
                out.append((stream, now - last))
        return out

    def restart_silence_clocks(self, now: float) -> None:
        """After a hold of the robot: its streams were silent because we held it."""
        for stream in ("reward", "episode"):
            if stream in self.last:
                self.last[stream] = now


def feed_counts(feeds: Iterable[RobotFeed]) -> dict[str, int]:
    """The robots' join counts for /diagnostics: dropped per reason and per message kind, and the rest."""
    dropped: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for feed in feeds:
        dropped.update(feed.joiner.dropped)
        messages.update(feed.dropped_messages)
        counts.update(feed.counts)
        counts.update({"republished_observations": feed.joiner.republished, "episodes_discarded":
                       feed.joiner.discarded, "executed_unplaced": feed.joiner.executed_unplaced})
    return {"dropped_total": sum(dropped.values()) + sum(messages.values()),
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
            **{f"dropped_messages_{k}": v for k, v in sorted(messages.items())},
            **{k: counts[k] for k in ("republished_observations", "unpaired_stamps", "stamp_clock_mismatch",
                                      "episodes_discarded", "executed_unplaced")}}


def episode_line(rec: EpisodeRecord, index: int) -> str:
    """The log line of a joined episode (`index`: episodes joined so far) or of one the operator discarded."""
    where = f"[{rec.robot or '/'}] {rec.event} after {rec.steps} steps"
    if rec.discarded:
        return f"episode {where} discarded by the operator: {rec.chunks} chunks not learned from"
    return (f"episode {index} {where}, return {rec.episode_return:.1f}; chunks {rec.chunks}, joined "
            f"{len(rec.transitions)}" + (f", dropped {rec.dropped}" if rec.dropped else "")
            + f"; intervention rate {rec.intervention_rate:.2f} ({rec.human_steps} human steps)")


class LearningPause:
    """Why learning is paused: silent streams and the operator's `pause` / `resume` words, together."""

    def __init__(self) -> None:
        self.silence = ""
        self.operator = False

    @property
    def reason(self) -> str:
        return "; ".join(r for r in (self.silence, "the operator paused learning" if self.operator else "") if r)

    def set(self, silence: str | None = None, operator: bool | None = None) -> str | None:
        """Update a cause; when learning goes from running to paused or back, the reason ('' = learn again),
        else None (a cause added to a pause, or a silence growing longer, changes nothing)."""
        was = bool(self.reason)
        if silence is not None:
            self.silence = silence
        if operator is not None:
            self.operator = operator
        return None if bool(self.reason) == was else self.reason
