"""A scripted stand-in for the person beside the robot during human-in-the-loop RL (no ROS).

`ScriptedOperator` watches the published states while the policy drives, takes the robot over when the
policy has made no progress for a while, drives it with OGBench's scripted expert (`StateOracle`) for a
while, and hands it back. oracle_teleop_node runs it in its `operator` role: engaged -> `teleop/engaged`
true and the commands on `teleop/command`, so policy_node's safety filter applies to them and its
`~/executed` labels those ticks `human`.

Progress means reaching the next subgoal (`TaskProgress.stage`, from the published state alone): the
cube grasped (fingers closed on it, its centre within 2 cm of the pinch point), lifted (held, 3 cm off
the table), placed (within 4 cm of its target; then the next cube's subgoals, in multi-cube scenes).
The distances (pinch point -> cube, cube height, cube -> target) say where the robot is in between, for
the log; they are not counted as progress because OGBench's arm sags 2-4 cm/s under zero commands (its
position target is re-based on the current pose every step): a policy that does nothing would seem to
approach the cube. A stage lost (the cube dropped) must be regained and passed within the same time.

Rules:
- The watch starts at an episode's first state and again at each hand-back (from that state's stage:
  the policy is judged on what it does from there).
- The next subgoal not reached `takeover_after_s` after the watch started or the last subgoal was
  reached -> takeover: the plan is made afresh from this state (the plan clock restarts; a cube already
  held is carried on, not dropped: see state_oracle) and the operator commands every state until the
  hand-back.
- Hand-back after `hand_back_after_s` of control (0: keep control until the episode ends). A fixed
  stretch rather than "until the cube is lifted": a correction of known length, after which the policy
  is watched again from wherever the operator left the robot.
- An episode's end releases the robot; interventions are counted per episode.

Time: `now` is the robot's time in seconds, one control period per published state (the node counts
them), so the same settings mean the same thing in lock-step (where the simulator runs faster than the
wall clock) and in real time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dfp_ros.data.state_oracle import TaskProgress

TAKEOVER, HAND_BACK = "takeover", "hand_back"


class Planner(Protocol):
    """What the operator needs of `StateOracle`."""

    def reset(self) -> None: ...
    def act(self, state: np.ndarray) -> np.ndarray: ...
    def progress(self, state: np.ndarray) -> TaskProgress: ...


@dataclass(frozen=True)
class OperatorStep:
    """The operator's answer to one state."""

    engaged: bool  # the operator holds the robot after this state
    command: np.ndarray | None  # its command for this state (only while engaged)
    event: str | None = None  # TAKEOVER or HAND_BACK when control changed at this state
    progress: TaskProgress | None = None  # the state's progress figures (for the log line of an event)


class ScriptedOperator:
    """Watch, take over, hand back; see the module docstring. Not thread-safe (one node callback)."""

    def __init__(self, planner: Planner, takeover_after_s: float = 2.0, hand_back_after_s: float = 2.0) -> None:
        if not takeover_after_s > 0:
            raise ValueError(f"takeover_after_s must be > 0, got {takeover_after_s}")
        if hand_back_after_s < 0:
            raise ValueError(f"hand_back_after_s must be >= 0 (0 = keep control until the episode ends), got "
                             f"{hand_back_after_s}")
        self.planner = planner
        self.takeover_after_s = float(takeover_after_s)
        self.hand_back_after_s = float(hand_back_after_s)
        self.engaged = False
        self.interventions = 0  # in the current episode
        self.operator_states = 0  # states the operator answered in the current episode
        self.total_interventions = 0
        self._best: int | None = None  # the highest stage since the watch started; None: the next state starts it
        self._since = 0.0  # last progress (watching) or the takeover (engaged)

    def start_episode(self) -> None:
        """A new episode: watch the policy from its first state."""
        self.engaged = False
        self._best = None
        self.interventions = self.operator_states = 0

    def end_episode(self) -> bool:
        """The episode ended; True when the operator held the robot (the caller sends engaged false)."""
        held, self.engaged = self.engaged, False
        self._best = None
        return held

    def on_state(self, state: np.ndarray, now: float) -> OperatorStep:
        """The answer to one published state at robot time `now` (seconds). ValueError on a state of the
        wrong size (from the planner)."""
        progress = self.planner.progress(state)
        if self.engaged:
            if self.hand_back_after_s and now - self._since >= self.hand_back_after_s:
                self.engaged = False
                self._watch(progress, now)
                return OperatorStep(False, None, HAND_BACK, progress)
            return OperatorStep(True, self._command(state))
        if self._best is None or progress.stage > self._best:
            self._watch(progress, now)
        elif now - self._since >= self.takeover_after_s:
            self.engaged, self._since = True, now
            self.interventions += 1
            self.total_interventions += 1
            self.planner.reset()  # plan from this state, the plan clock at 0
            return OperatorStep(True, self._command(state), TAKEOVER, progress)
        return OperatorStep(False, None)

    def no_progress_s(self, now: float) -> float:
        """Robot time since the last progress (0 while the operator holds the robot)."""
        return 0.0 if self.engaged or self._best is None else now - self._since

    def _watch(self, progress: TaskProgress, now: float) -> None:
        self._best, self._since = progress.stage, now

    def _command(self, state: np.ndarray) -> np.ndarray:
        self.operator_states += 1
        return self.planner.act(state)
