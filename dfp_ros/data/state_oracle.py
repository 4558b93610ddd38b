"""OGBench's scripted cube expert acting on the simulator's *published* state vector only.

`CubeSim.oracle()` reads the planner's inputs from the live MuJoCo model (its `info` dict and the
target mocap bodies). A teleop node on the ROS graph has no such access; it sees the 28-number
`sim/state`. Everything the planner reads is in that vector (OGBench's `compute_observation`
layout): effector position (scaled by 10 around (0.425, 0, 0)), effector yaw as cos/sin, gripper
opening (x 3), and per cube its position (same scaling), quaternion and yaw as cos/sin. The only
other inputs are the task's goal - fixed per OGBench single task (goal_xyzs, yaw 0), so read once
from a CubeSim of the same task that is never stepped - and the plan clock, which advances one
control period per action issued (what OGBench's `info["time"]` does per step).

The plan clock starts at 0 at `reset()` and advances one control period per `act()`, whatever the
simulator's own time: a plan made when someone takes over mid-episode (the scripted operator,
`dfp_ros.data.scripted_operator`) starts from the state of that moment. OGBench's planner always starts
with a pick, opening the gripper first; when the published state shows the cube already held (fingers
closed on it, the cube at the pinch point), the plan starts from the carry instead, so taking over from
a robot that holds the cube does not drop it.

So the demonstrations depend on nothing but what a real robot would publish, plus the task
definition. (The state is float32 on the wire; the planner's arithmetic in float64 differs from the
in-process oracle by ~1e-7 m, far below its own noise.) Noise is OGBench's plan noise with the
datasets' defaults (0.1, smoothing 0.5), drawn from a private seeded stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# OGBench CubeEnv.compute_observation constants.
_XYZ_CENTER = np.array([0.425, 0.0, 0.0])
_XYZ_SCALER = 10.0
_GRIPPER_SCALER = 3.0
_SUCCESS_RADIUS = 0.04  # m, OGBench's cube success threshold
_CUBE_REST_Z = 0.02  # m, a cube's centre resting on the table (half its 4 cm edge)
# Held: fingers closed past this opening (0 open .. 1 shut; ~0.56 on a cube) with the cube's centre within
# this distance of the pinch point (measured on OGBench's own grasps: <= 4 mm while carrying).
_HELD_OPENING = 0.3
_HELD_DISTANCE = 0.02  # m
# Layout: 6 joint pos, 6 joint vel, effector xyz (12:15), yaw cos/sin (15:17), gripper opening (17),
# gripper contact (18), then per cube 9 numbers: xyz, quat wxyz, yaw cos, yaw sin.
_EFF, _YAW, _GRIP, _CUBES, _PER_CUBE = slice(12, 15), slice(15, 17), 17, 19, 9


def info_from_state(state: np.ndarray, num_cubes: int, time_s: float) -> dict[str, Any]:
    """The `info` keys OGBench's plan oracle reads, rebuilt from a published state vector."""
    s = np.asarray(state, dtype=np.float64)
    if s.shape != (_CUBES + _PER_CUBE * num_cubes,):
        raise ValueError(f"state has shape {s.shape}; expected ({_CUBES + _PER_CUBE * num_cubes},) for "
                         f"{num_cubes} cube(s)")
    info: dict[str, Any] = {
        "proprio/effector_pos": s[_EFF] / _XYZ_SCALER + _XYZ_CENTER,
        "proprio/effector_yaw": np.array([np.arctan2(s[_YAW][1], s[_YAW][0])]),
        "proprio/gripper_opening": np.array([s[_GRIP] / _GRIPPER_SCALER]),
        "time": np.array([time_s]),
    }
    for i in range(num_cubes):
        c = s[_CUBES + _PER_CUBE * i: _CUBES + _PER_CUBE * (i + 1)]
        info[f"privileged/block_{i}_pos"] = c[0:3] / _XYZ_SCALER + _XYZ_CENTER
        info[f"privileged/block_{i}_quat"] = c[3:7]
        info[f"privileged/block_{i}_yaw"] = np.array([np.arctan2(c[8], c[7])])
    return info


# Task stages per cube, in order (TaskProgress.stage).
REACH, GRASPED, LIFTED = 0, 1, 2
STAGES_PER_CUBE = 3
_LIFTED_M = 0.03  # m above the resting height: off the table, held


@dataclass(frozen=True)
class TaskProgress:
    """How far the task has come in a published state: the cubes already on their targets, and for the
    first one that is not, where it is (metres)."""

    cubes_placed: int
    gripper_to_cube: float  # pinch point to the cube's centre
    cube_height: float  # cube centre above its resting height on the table
    cube_to_target: float  # cube centre to its goal
    held: bool  # the fingers are closed on the cube

    @property
    def stage(self) -> int:
        """Subgoals reached, counted over the whole task: per cube reach -> grasped (held) -> lifted (held,
        3 cm up) -> placed (the next cube's reach)."""
        here = (LIFTED if self.cube_height >= _LIFTED_M else GRASPED) if self.held else REACH
        return STAGES_PER_CUBE * self.cubes_placed + here


def _held(info: dict[str, Any], cube: int) -> bool:
    gap = np.linalg.norm(info[f"privileged/block_{cube}_pos"] - info["proprio/effector_pos"])
    return bool(info["proprio/gripper_opening"][0] >= _HELD_OPENING and gap <= _HELD_DISTANCE)


def _make_planner(env: Any, noise: float, smoothing: float) -> Any:
    """OGBench's CubePlanOracle, able to start a plan from a cube already held (see the module doc)."""
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    class CarryingCubePlanner(CubePlanOracle):
        carrying = False  # set before each reset(): plan from the carry, skipping the pick

        def compute_keyframes(self, plan_input: dict) -> tuple[dict, dict, dict]:
            times, poses, grasps = super().compute_keyframes(plan_input)  # same random draws either way
            if not self.carrying:
                return times, poses, grasps
            # From the current (holding) pose straight to the clearance keyframe, on the same schedule.
            pick = ("pick", "pick_start", "pick_end", "postpick")
            shift = times["postpick"]
            keep = [name for name in times if name not in pick and name != "initial"]
            return ({"initial": 0.0, **{n: times[n] - shift for n in keep}},
                    {"initial": poses["initial"], **{n: poses[n] for n in keep}},
                    {"initial": 1.0, **{n: grasps[n] for n in keep}})

    return CarryingCubePlanner(env=env, segment_dt=0.4, noise=float(noise), noise_smoothing=float(smoothing))


class StateOracle:
    """OGBench `CubePlanOracle` for one cube task, driven by published states (see module doc).

    Call `reset()` at an episode's start, then `act(state)` once per control step.
    """

    def __init__(self, env_name: str = "cube-single-v0", task_id: int = 1, noise: float = 0.1,
                 smoothing: float = 0.5, seed: int = 0) -> None:
        from dfp_ros.sim.cube_env import CubeSim

        if noise < 0 or smoothing < 0:
            raise ValueError(f"noise and smoothing must be >= 0, got {noise}, {smoothing}")
        # Only the task definition and OGBench's action scaling are read from this env; it never steps.
        self._sim = CubeSim(env_name, task_id=task_id, seed=seed)
        self.num_cubes = self._sim.num_cubes
        self.state_dim = self._sim.state_dim
        self.dt = 1.0 / self._sim.fps
        self.targets = [self._sim.cube_target(i) for i in range(self.num_cubes)]
        self._low, self._high = self._sim.action_low, self._sim.action_high
        self._planner = _make_planner(self._sim.env, noise, smoothing)
        self._rng_state = np.random.RandomState(seed).get_state()
        self._steps = 0
        self._target: int | None = None
        self.episodes = 0

    def close(self) -> None:
        self._sim.close()

    def reset(self) -> None:
        """A new episode, or a takeover: plan afresh from the next state, the plan clock back at 0."""
        self._steps = 0
        self._target = None

    @property
    def carrying(self) -> bool:
        """Whether the current plan started from a cube already held."""
        return bool(self._planner.carrying)

    def progress(self, state: np.ndarray) -> TaskProgress:
        """Where the task stands in `state`, for the first cube off its target (cube 0 when all are on)."""
        info = info_from_state(state, self.num_cubes, 0.0)
        ok = self.cube_successes(info)
        cube = next((i for i, good in enumerate(ok) if not good), 0)
        pos = info[f"privileged/block_{cube}_pos"]
        return TaskProgress(
            cubes_placed=sum(ok), gripper_to_cube=float(np.linalg.norm(pos - info["proprio/effector_pos"])),
            cube_height=float(pos[2] - _CUBE_REST_Z),
            cube_to_target=float(np.linalg.norm(pos - self.targets[cube][0])),
            held=_held(info, cube))

    def cube_successes(self, info: dict[str, Any]) -> list[bool]:
        return [bool(np.linalg.norm(info[f"privileged/block_{i}_pos"] - pos) <= _SUCCESS_RADIUS)
                for i, (pos, _) in enumerate(self.targets)]

    def act(self, state: np.ndarray) -> np.ndarray:
        """The next action (float32 [5], within the limits) for this published state."""
        info = info_from_state(state, self.num_cubes, self._steps * self.dt)
        ok = self.cube_successes(info)
        if self._target is None or (self._planner.done and not all(ok)):
            self._plan(state, info, ok)
        a = np.asarray(self._planner.select_action(state, info), dtype=np.float32)
        self._steps += 1
        return np.clip(a, self._low, self._high)

    def _plan(self, state: np.ndarray, info: dict[str, Any], ok: list[bool]) -> None:
        off = [i for i, good in enumerate(ok) if not good]
        self._target = off[0] if off else 0
        from dfp_ros.sim.cube_env import aim_planner  # loaded with CubeSim in __init__ already

        pos, yaw = self.targets[self._target]
        self._planner.carrying = _held(info, self._target)
        self._rng_state = aim_planner(self._planner, self._target, pos, yaw, state, info, self._rng_state)
