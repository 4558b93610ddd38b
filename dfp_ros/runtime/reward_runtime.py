"""A learned success detector at run time, without torch or ROS: `RewardRuntime` (load + check a reward
model, score frames) and `SuccessDetector` (frames in; scores, rewards and episode events out).

The model contract (docs/architecture.md, "The reward model"): inputs `state` float32 [B, S] (S may be
0) and `image.<camera>` uint8 [B, H, W, 3] RGB, output `score` float32 [B] in [0, 1]; the metadata
(`RewardModelMetadata`, kind "reward_classifier") names the cameras, the state and the default
threshold. Like a policy, the file carries its own acceptance test (fixed inputs, torch's scores),
re-run by every loader on its own provider.

`SuccessDetector` rules (what reward_node runs; unit tests drive it with a fake clock):
- A camera frame whose header stamp is older than `max_frame_age_s` on the node's clock is stale:
  not stored, not scored, counted (`dropped_stale`). 0 turns the check off (sim time without
  use_sim_time).
- An observation is scored once, when the newest frames of all the model's cameras carry stamps within
  `max_stamp_skew_s` of each other (0: one stamp, as a robot or the simulator stamps one step's frames)
  and that set is newer than the last one scored; state parts (if the model takes state) are the newest
  fresh ones. One reward per scored observation: `sparse` 0 for a positive frame (score >= threshold)
  and -1 otherwise (the simulator's convention), or `score` the score itself.
- Episodes (when `episodes` is on): a `start` event opens one; `debounce_frames` consecutive positive
  frames in it emit `success`, and `episode_timeout_s` (> 0) after its start without one emit
  `timeout`; either ends it, as does any end event heard (success, failure, timeout, reset, discard —
  our own success echoed back included). Without episodes, success is emitted once per run of positive
  frames (re-armed by a negative one) and there are no time-outs.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros import contracts
from dfp_ros.contracts import OUTPUT_SCORE, ContractError, RewardModelMetadata
from dfp_ros.runtime.acceptance import AcceptanceResult, AcceptanceTest, read_acceptance, stored_inputs_output
from dfp_ros.runtime.observation import (
    RAW_ENCODINGS,
    ObservationAssembler,
    ObservationError,
    StateSource,
    build_plans,
)
from dfp_ros.runtime.policy_runtime import (
    check_io,
    check_observation,
    observation_feeds,
    observation_inputs,
    open_session,
    read_metadata_dict,
)
from dfp_ros.runtime.providers import ProviderOptions

REWARD_MODES = ("sparse", "score")
SPARSE_SUCCESS, SPARSE_FAILURE = 0.0, -1.0  # the simulator's reward: 0 at success, -1 otherwise
# The acceptance test of a reward model stores its reference scores where a policy's stores actions; the
# tolerance is in score units (a probability): far below any threshold's resolution.
SCORE_TOLERANCE = 0.01
COLOUR_ENCODINGS = tuple(e for e in RAW_ENCODINGS if e != "mono8")
EPISODE_ENDS = ("success", "failure", "timeout", "reset", contracts.EPISODE_DISCARD)
LATENCY_WINDOW = 1000


class RewardRuntime:
    """An exported reward model in an ONNX Runtime session."""

    def __init__(self, model: str | Path | bytes, *, device: str | ProviderOptions = "cpu", threads: int = 1,
                 verify: bool = True):
        """Raises ContractError when the file is not a reward model of this contract (a policy, say) or,
        `verify`, fails its own acceptance test on this provider (`self.acceptance` holds the figures)."""
        opened = open_session(model, device, threads)
        self.session, self.source, self.sha256 = opened.session, opened.source, opened.sha256
        self.providers, self.provider_fallback = opened.providers, opened.provider_fallback
        try:
            self.meta = RewardModelMetadata.from_dict(read_metadata_dict(self.session, self.source))
        except (TypeError, ValueError) as e:  # ContractError included
            raise ContractError(f"{self.source}: {e}") from e
        if not self.meta.cameras:
            raise ContractError(f"{self.source}: a reward model needs at least one camera; its metadata names none")
        if not 0.0 <= self.meta.threshold <= 1.0:
            raise ContractError(f"{self.source}: threshold {self.meta.threshold} is not a score in [0, 1]")
        check_io(self.session, observation_inputs(self.meta), [OUTPUT_SCORE], self.source)
        self.acceptance: AcceptanceResult | None = None
        test = read_acceptance(self.session.get_modelmeta().custom_metadata_map, self.source)
        self.has_acceptance_test = test is not None
        if verify and test is not None:
            self.acceptance = self._run_acceptance(test)

    def run(self, state: np.ndarray, images: dict[str, np.ndarray]) -> np.ndarray:
        """Batched scores [B]: state [B, S], camera -> uint8 [B, h, w, 3] at the model's size."""
        return self.session.run([OUTPUT_SCORE], observation_feeds(self.meta, state, images))[0]

    def score(self, state: np.ndarray, images: dict[str, np.ndarray]) -> float:
        """One observation's score; ValueError naming what is wrong with it."""
        state = np.asarray(state, np.float32)
        check_observation(self.meta, state, images)
        return float(self.run(state[None], {k: v[None] for k, v in images.items()})[0])

    def _run_acceptance(self, test: AcceptanceTest) -> AcceptanceResult:
        provider = self.providers[0]
        scores = stored_inputs_output(test, lambda feeds: {OUTPUT_SCORE: self.session.run([OUTPUT_SCORE], feeds)[0]},
                                      OUTPUT_SCORE, self.source)
        diff = np.abs(scores.astype(np.float32) - test.actions)
        result = AcceptanceResult(float(diff.max()) if np.isfinite(diff).all() else float("inf"), test.tolerance,
                                  provider)
        if not result.passed:
            raise ContractError(f"{self.source} fails its acceptance test on {provider}: its scores differ from the "
                                f"{test.reference} reference by {result.max_action_error:.3g} (tolerance "
                                f"{test.tolerance:g})")
        return result


def load_reward_model(source: str | bytes, device: str | ProviderOptions = "cpu") -> tuple[RewardRuntime, float]:
    """Load, check and warm up a reward model; returns it and the load + warm-up time (s)."""
    t0 = time.perf_counter()
    runtime = RewardRuntime(source, device=device)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in runtime.meta.cameras}
    try:
        runtime.score(np.zeros(runtime.meta.state_dim, np.float32), images)
    except Exception as e:
        raise ContractError(f"{runtime.source}: warm-up inference failed ({type(e).__name__}: {e})") from e
    return runtime, time.perf_counter() - t0


def swap_mismatch(old: RewardModelMetadata, new: RewardModelMetadata, sources: list[StateSource]) -> str | None:
    """Why a reward model `new` cannot replace `old` on a running node (None when it can): the node
    subscribed to `old`'s cameras and to `sources` (sizes may differ: frames are resized)."""
    if [c.name for c in old.cameras] != [c.name for c in new.cameras]:
        return f"its cameras {[c.name for c in new.cameras]} differ from the running model's " \
               f"{[c.name for c in old.cameras]}"
    try:
        build_plans(new, sources)  # type: ignore[arg-type]  # reads .state, .state_dim only
    except ValueError as e:
        return f"its state does not fit the node's state sources: {e}"
    return None


@dataclass
class Scored:
    """One scored observation."""

    score: float
    positive: bool
    reward: float
    stamp_ns: int  # the newest camera stamp of the observation
    event: str | None  # "success" when this frame completes the debounce, else None


class SuccessDetector:
    """The detector loop of one reward node (rules in the module docstring). Not thread-safe: the node
    calls it from one executor thread. `now_ns` is the node's ROS clock (stamps' clock); `received` and
    `now` are its monotonic clock in seconds (receipt, rates)."""

    def __init__(self, runtime: RewardRuntime, sources: list[StateSource], *, max_frame_age_s: float,
                 max_state_age_s: float, debounce_frames: int, episode_timeout_s: float, reward_mode: str,
                 threshold: float, max_stamp_skew_s: float = 0.0, episodes: bool = True):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode {reward_mode!r} is not one of {REWARD_MODES}")
        if debounce_frames < 1:
            raise ValueError(f"debounce_frames must be >= 1, got {debounce_frames}")
        self.sources = list(sources)
        self.max_frame_age_s, self.max_state_age_s = float(max_frame_age_s), float(max_state_age_s)
        self.debounce_frames, self.episode_timeout_s = int(debounce_frames), float(episode_timeout_s)
        self.reward_mode, self.threshold_param = reward_mode, float(threshold)
        self.max_stamp_skew_ns = int(max_stamp_skew_s * 1e9)
        self.episodes = episodes
        self.swap(runtime)
        # Episode: "waiting" for a start, "active", or "ended"; without episodes always "active".
        self.episode = "waiting" if episodes else "active"
        self._episode_start_ns = 0
        self._consecutive = 0
        self._armed = True  # without episodes: a success needs a negative frame since the last one
        self._last_scored_ns = -1
        self._dropped: dict[str, int] = {}
        self.scored = self.successes = self.timeouts = 0
        self.last_score = float("nan")
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._stamp_to_reward: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._rate_mark = (time.monotonic(), 0)

    # --- model -------------------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The threshold in use: the parameter, or the model's own when the parameter is < 0."""
        return self.runtime.meta.threshold if self.threshold_param < 0 else self.threshold_param

    def swap(self, runtime: RewardRuntime) -> None:
        """Use `runtime` from the next frame on (its frames are assembled at its own sizes)."""
        self.runtime = runtime
        self._asm = ObservationAssembler(runtime.meta, self.sources, self.max_state_age_s)  # type: ignore[arg-type]
        self._camera_stamps: dict[str, int] = {}

    def set_options(self, **options: Any) -> None:
        """Run-time changes: threshold, debounce_frames, episode_timeout_s, max_frame_age_s, reward_mode."""
        for name, value in options.items():
            if name == "threshold":
                self.threshold_param = float(value)
            elif name in ("debounce_frames", "episode_timeout_s", "max_frame_age_s", "reward_mode"):
                setattr(self, name, value)
            else:
                raise ValueError(f"{name} cannot be changed on a running detector")

    # --- inputs ------------------------------------------------------------------------------------------
    def reject(self, error: ObservationError) -> None:
        """Count a dropped message under its kind (dropped_<kind> in the stats)."""
        self._dropped[error.kind] = self._dropped.get(error.kind, 0) + 1

    def on_state_array(self, index: int, values: np.ndarray, stamp_ns: int, received: float) -> None:
        self._asm.put_array(index, values, stamp_ns, received)

    def on_joint_state(self, index: int, names: list[str], fields: dict[str, np.ndarray], stamp_ns: int,
                       received: float) -> None:
        self._asm.put_joint_state(index, names, fields, stamp_ns, received)

    def on_image(self, camera: str, rgb: np.ndarray, stamp_ns: int, now_ns: int, received: float) -> Scored | None:
        """Store a decoded frame; score the observation it completes. Raises ObservationError (stale,
        wrong size) for a frame that must be dropped and counted."""
        age_s = (now_ns - stamp_ns) / 1e9
        if self.max_frame_age_s > 0 and age_s > self.max_frame_age_s:
            raise ObservationError("stale", f"camera {camera}: frame stamped {age_s:.3f} s ago "
                                            f"(> max_frame_age_s {self.max_frame_age_s:g})")
        self._asm.put_image(camera, rgb, stamp_ns, received)
        self._camera_stamps[camera] = stamp_ns
        if len(self._camera_stamps) < len(self.runtime.meta.cameras):
            return None
        stamps = self._camera_stamps.values()
        newest = max(stamps)
        if newest - min(stamps) > self.max_stamp_skew_ns or newest <= self._last_scored_ns:
            return None
        obs = self._asm.ready(received)
        if obs is None:  # a state source missing or stale
            self._dropped["incomplete"] = self._dropped.get("incomplete", 0) + 1
            return None
        self._last_scored_ns = newest
        score = self.runtime.score(obs.state, obs.images)
        return self._judge(score, newest, now_ns)

    def _judge(self, score: float, stamp_ns: int, now_ns: int) -> Scored:
        positive = score >= self.threshold
        self.scored += 1
        self.last_score = score
        self._stamp_to_reward.append((now_ns - stamp_ns) / 1e9)
        self._consecutive = self._consecutive + 1 if positive else 0
        event = None
        if not positive:
            self._armed = True
        elif self.episode == "active" and self._armed and self._consecutive >= self.debounce_frames:
            event = "success"
            self.successes += 1
            if self.episodes:
                self.episode = "ended"
            else:
                self._armed = False
        reward = score if self.reward_mode == "score" else SPARSE_SUCCESS if positive else SPARSE_FAILURE
        return Scored(score, positive, float(reward), stamp_ns, event)

    def record_latency(self, seconds: float) -> None:
        """Frame receipt to reward published, as the node measured it."""
        self._latencies.append(seconds)

    # --- episodes ----------------------------------------------------------------------------------------
    def on_episode(self, event: str, now_ns: int) -> None:
        if not self.episodes:
            return
        if event == "start":
            self.episode, self._episode_start_ns, self._consecutive = "active", now_ns, 0
        elif event in EPISODE_ENDS:
            self.episode = "ended"

    def poll(self, now_ns: int) -> str | None:
        """"timeout" when the open episode has run `episode_timeout_s` without success (it ends), else None."""
        if (self.episodes and self.episode == "active" and self.episode_timeout_s > 0
                and now_ns - self._episode_start_ns > self.episode_timeout_s * 1e9):
            self.episode = "ended"
            self.timeouts += 1
            return "timeout"
        return None

    # --- statistics --------------------------------------------------------------------------------------
    def stats(self, now: float) -> dict[str, Any]:
        """What the node publishes as diagnostics; `rate_hz` is over the time since the last call."""
        mark_time, mark_count = self._rate_mark
        self._rate_mark = (now, self.scored)
        rt = self.runtime
        values: dict[str, Any] = {
            "model_sha256": rt.sha256[:12], "provider": rt.providers[0], "threshold": self.threshold,
            "rate_hz": (self.scored - mark_count) / (now - mark_time) if now > mark_time else 0.0,
            "latency_p50_ms": _percentile_ms(self._latencies, 50),
            "latency_p99_ms": _percentile_ms(self._latencies, 99),
            "stamp_to_reward_p50_ms": _percentile_ms(self._stamp_to_reward, 50),
            "score": self.last_score, "consecutive_positive": self._consecutive, "frames_scored": self.scored,
            "episode": self.episode, "successes": self.successes, "timeouts": self.timeouts,
            "reward_mode": self.reward_mode, "torch_imported": "torch" in sys.modules,
        }
        for kind in ("stale", "wrong_size", "wrong_encoding", "unknown_encoding", "decode", "incomplete"):
            values[f"dropped_{kind}"] = self._dropped.get(kind, 0)
        values.update({f"dropped_{k}": v for k, v in self._dropped.items()})
        values["frames_dropped"] = sum(v for k, v in self._dropped.items() if k != "incomplete")
        return values


def _percentile_ms(values: deque, q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) * 1e3 if values else float("nan")


def encoding_mismatch(camera: str, encoding: str) -> str | None:
    """Why a camera declared with `encoding` cannot feed a reward model (None when it can)."""
    if encoding == "mono8":
        return (f"camera {camera} is declared mono8, but the model scores colour frames: grey frames are not "
                f"what it was trained on (declare one of {COLOUR_ENCODINGS})")
    if encoding not in COLOUR_ENCODINGS:
        return f"camera {camera}: encoding {encoding!r} is not one of {COLOUR_ENCODINGS}"
    return None


def check_encoding(camera: str, encoding: str, expected: str) -> None:
    """A raw frame must come in the encoding its camera was declared with (a driver switched to mono8
    would feed the model grey frames it never saw): ObservationError("wrong_encoding") otherwise."""
    if encoding != expected:
        raise ObservationError("wrong_encoding", f"camera {camera}: frame encoding {encoding!r}, the camera is "
                                                 f"declared {expected!r}")

