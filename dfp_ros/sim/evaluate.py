"""Success rate of a chunking policy in the simulated robot (`CubeSim`), the way DFP is evaluated.

The policy maps a state to an action chunk [H, A]; with `chunk_execution` every action of the chunk
is executed before the policy is asked again (open loop within a chunk, as the reference evaluates
action-chunking policies); without it only the chunk's first action is (receding horizon).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dfp_ros.sim.scene_pool import borrowed_scene

PolicyFn = Callable[[np.ndarray], np.ndarray]


def evaluate(
    policy_fn: PolicyFn,
    episodes: int,
    env_name: str = "cube-single-v0",
    task_id: int = 1,
    seed: int = 0,
    chunk_execution: bool = True,
    progress: bool = False,
) -> dict[str, float | int]:
    """Run `episodes` episodes (episode i reset with seed + i), each until success or time-out.

    The scene is borrowed from this process's kept scenes (`scene_pool`): a fresh one gives the same episodes.

    Returns dict(success_rate, episodes, successes, env_steps, cubes_placed): `cubes_placed` is the share of the
    cubes within 4 cm of their targets when an episode ends, averaged over the episodes (1 in a success; partial
    progress on a multi-cube task whose success rate is still 0).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    successes = env_steps = 0
    placed = 0.0
    with borrowed_scene(env_name, task_id) as sim:
        it = range(episodes)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"evaluate {sim.task}", unit="ep")
        for ep in it:
            state = sim.reset(seed=seed + ep)
            done = success = False
            while not done:
                chunk = _as_chunk(policy_fn(state), sim.action_dim)
                if not chunk_execution:
                    chunk = chunk[:1]
                for action in chunk:
                    state, _, terminated, truncated, info = sim.step(action)
                    env_steps += 1
                    success = success or info["success"]
                    done = terminated or truncated or success
                    if done:
                        break  # the rest of the chunk is dropped, as on a robot that reached its goal
            successes += int(success)
            placed += float(np.mean(sim.cube_successes()))
            if progress:
                it.set_postfix(success=f"{successes}/{ep + 1}")
    return {
        "success_rate": successes / episodes,
        "episodes": episodes,
        "successes": successes,
        "env_steps": env_steps,
        "cubes_placed": round(placed / episodes, 4),
    }


def _as_chunk(out: object, action_dim: int) -> np.ndarray:
    """Policy output -> float32 [H, A]; a single action [A] counts as a chunk of one."""
    chunk = np.asarray(out, dtype=np.float32)
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != action_dim:
        raise ValueError(f"policy returned shape {np.shape(out)}; expected an action chunk [H, {action_dim}]")
    return chunk
