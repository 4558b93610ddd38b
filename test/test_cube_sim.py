"""The simulated robot (OGBench cube scene), its oracle, oracle datasets and the evaluator."""

from __future__ import annotations

import os

# Read by huggingface_hub when it is first imported: local datasets must never reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ogbench", reason="the simulator needs ogbench and mujoco (training profile)")

from dfp_ros.sim.cube_env import ACTION_NAMES, CubeSim
from dfp_ros.sim.evaluate import evaluate
from dfp_ros.sim.mesh_decimation import cluster_faces, decimate_visual_meshes

UR5E_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
               "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]


@pytest.fixture(scope="module")
def sim() -> CubeSim:
    s = CubeSim("cube-single-v0", task_id=1, seed=0)
    yield s
    s.close()


def _render_or_skip(size: int = 64) -> tuple[CubeSim, np.ndarray]:
    s = CubeSim(render=True, image_size=size)
    s.reset()
    try:
        return s, s.render()
    except RuntimeError as err:
        s.close()
        pytest.skip(f"no off-screen rendering here (needs Debian libegl1, libgl1; MUJOCO_GL=egl): {err}")


def test_shapes_limits_and_names(sim: CubeSim) -> None:
    assert sim.env_id == "cube-single-singletask-task1-v0"
    assert (sim.state_dim, sim.action_dim) == (28, 5)
    assert sim.fps == pytest.approx(20.0)
    assert sim.max_episode_steps == 200
    np.testing.assert_array_equal(sim.action_low, -np.ones(5, np.float32))
    np.testing.assert_array_equal(sim.action_high, np.ones(5, np.float32))
    assert sim.joint_names[:6] == UR5E_JOINTS
    assert len(sim.joint_names) == 7 and "driver" in sim.joint_names[6]  # the Robotiq gripper joint
    assert len(sim.state_names) == 28 and len(set(sim.state_names)) == 28
    assert sim.state_names[0] == "shoulder_pan_joint.pos" and sim.state_names[19] == "cube0.x"
    assert sim.action_names == list(ACTION_NAMES)

    state = sim.reset(seed=3)
    assert state.shape == (28,) and state.dtype == np.float32
    # The first six state numbers are the arm's joint positions: the same as read from MuJoCo.
    np.testing.assert_allclose(state[:6], sim.joint_positions()[:6], atol=1e-6)
    state, reward, terminated, truncated, info = sim.step(np.zeros(5))
    assert state.shape == (28,) and isinstance(reward, float)
    assert isinstance(info["success"], bool) and not (terminated or truncated)
    assert sim.joint_positions().shape == (7,)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((1, 5)), np.array([0, 0, np.nan, 0, 0]),
                                 [0, 0, 0, np.inf, 0], "abcde"])
def test_bad_action_raises_value_error(sim: CubeSim, bad: object) -> None:
    sim.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        sim.step(bad)


def test_out_of_range_action_is_clipped_not_rejected(sim: CubeSim) -> None:
    sim.reset(seed=0)
    sim.step(np.full(5, 7.0))  # a policy overshoot saturates like a real controller


def test_same_seed_same_episode(sim: CubeSim) -> None:
    def roll() -> np.ndarray:
        sim.reset(seed=11)
        oracle = sim.oracle(seed=5)
        oracle.reset()
        return np.stack([sim.step(oracle.select_action())[0] for _ in range(30)])

    np.testing.assert_array_equal(roll(), roll())


def test_step_after_episode_end_raises() -> None:
    with CubeSim(seed=0) as s:
        s.reset()
        for _ in range(s.max_episode_steps):
            _, _, terminated, truncated, _ = s.step(np.zeros(5))
            if terminated or truncated:
                break
        assert truncated  # doing nothing never succeeds: a time-out at 200 steps
        with pytest.raises(RuntimeError, match="reset"):
            s.step(np.zeros(5))


def test_oracle_solves_cube_single_task1(sim: CubeSim) -> None:
    oracle = sim.oracle(noise=0.1, smoothing=0.5, seed=0)
    state_before = np.random.get_state()[1].copy()
    successes = 0
    for ep in range(5):
        state = sim.reset(seed=100 + ep)
        oracle.reset(state, sim.info)
        while True:
            action = oracle.select_action(state, sim.info)
            assert action.shape == (5,) and np.all(np.abs(action) <= 1.0)
            state, _, terminated, truncated, info = sim.step(action)
            if terminated or truncated:
                break
        successes += info["success"]
    assert successes >= 4, f"oracle succeeded in {successes}/5 episodes"
    # The oracle's randomness comes from its own stream, not numpy's global one.
    np.testing.assert_array_equal(np.random.get_state()[1], state_before)


def test_oracle_dataset_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("lerobot", reason="writing datasets needs lerobot (training profile)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from dfp_ros.sim.oracle_demos import collect_oracle_dataset

    root = tmp_path / "demos"
    summary = collect_oracle_dataset(root, "local/cube_demo", episodes=2, seed=0, progress=False)
    assert summary.root == root and summary.successes == 2

    ds = LeRobotDataset("local/cube_demo", root=root)
    assert ds.num_episodes == 2 and ds.num_frames == summary.frames
    sim = CubeSim()
    assert ds.features["observation.state"]["names"] == sim.state_names
    assert tuple(ds.features["observation.state"]["shape"]) == (28,)
    assert tuple(ds.features["action"]["shape"]) == (5,)
    for key in ("next.reward", "next.done", "next.success"):
        assert key in ds.features
    assert ds.fps == 20
    table = ds.hf_dataset.with_format("numpy")
    ep = np.asarray(table["episode_index"])
    done = np.asarray(table["next.done"]).reshape(-1)
    success = np.asarray(table["next.success"]).reshape(-1)
    for e in (0, 1):
        # Each episode ends exactly once, at its last frame, and (the oracle being good) in success.
        assert done[ep == e].sum() == 1 and done[ep == e][-1] and success[ep == e][-1]
    assert ds[0]["task"] == "cube-single task 1"

    # The first frame is the seeded reset state of episode 0.
    np.testing.assert_allclose(ds[0]["observation.state"].numpy(), sim.reset(seed=0), atol=1e-6)
    sim.close()


def test_existing_root_is_refused(tmp_path: Path) -> None:
    from dfp_ros.sim.oracle_demos import collect_oracle_dataset

    with pytest.raises(FileExistsError):
        collect_oracle_dataset(tmp_path, "local/x", episodes=1, progress=False)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    from dfp_ros.sim.oracle_demos import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--episodes" in capsys.readouterr().out


def test_render_image() -> None:
    s, img = _render_or_skip(64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    s.close()


def _uv_sphere(rings: int = 40, radius: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    theta, phi = np.meshgrid(np.linspace(0.1, np.pi - 0.1, rings), np.linspace(0, 2 * np.pi, 2 * rings, endpoint=False),
                             indexing="ij")
    vertices = radius * np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    ring = np.arange(vertices.shape[0] * vertices.shape[1]).reshape(vertices.shape[:2])
    nxt = np.roll(ring, -1, axis=1)
    faces = np.concatenate([np.stack([ring[:-1], ring[1:], nxt[1:]], -1), np.stack([ring[:-1], nxt[1:], nxt[:-1]], -1)])
    return vertices.reshape(-1, 3), faces.reshape(-1, 3)


def test_cluster_faces_keeps_a_coarser_valid_surface() -> None:
    vertices, faces = _uv_sphere()
    new, source = cluster_faces(vertices, faces, cell=0.01)
    assert 0 < len(new) < len(faces) / 4 and new.shape[1] == 3 and len(source) == len(new)
    assert new.min() >= 0 and new.max() < len(vertices)
    assert (new[:, 0] != new[:, 1]).all() and (new[:, 1] != new[:, 2]).all() and (new[:, 0] != new[:, 2]).all()
    # Still the sphere: every kept corner is an original vertex, so all lie on its surface.
    np.testing.assert_allclose(np.linalg.norm(vertices[new], axis=-1), 0.05, rtol=1e-6)
    # A cell smaller than any edge changes nothing.
    same, source = cluster_faces(vertices, faces, cell=1e-6)
    np.testing.assert_array_equal(same, faces)
    np.testing.assert_array_equal(source, np.arange(len(faces)))
    with pytest.raises(ValueError, match="cell"):
        cluster_faces(vertices, faces, cell=0.0)
    with pytest.raises(ValueError, match="outside"):
        cluster_faces(vertices, faces + len(vertices), cell=0.01)


def test_decimation_rewrites_only_visual_meshes_faces() -> None:
    import mujoco

    vertices, faces = _uv_sphere()
    text = {k: " ".join(map(str, a.ravel().tolist())) for k, a in (("v", vertices), ("f", faces))}
    model = mujoco.MjModel.from_xml_string(f"""<mujoco><asset>
        <mesh name="seen" vertex="{text['v']}" face="{text['f']}"/>
        <mesh name="hit" vertex="{text['v']}" face="{text['f']}"/>
      </asset><worldbody><body><freejoint/>
        <geom type="mesh" mesh="seen" contype="0" conaffinity="0" group="2"/><geom type="mesh" mesh="hit" group="3"/>
      </body></worldbody></mujoco>""")
    before = {k: getattr(model, k).copy() for k in ("mesh_face", "mesh_facenum", "mesh_vert", "mesh_normal",
                                                     "mesh_graph", "body_inertia")}
    result = decimate_visual_meshes(model, cells_per_mesh=16)
    assert (result.meshes, result.faces_before) == (1, before["mesh_facenum"][0])
    assert 0 < model.mesh_facenum[0] == result.faces_after < before["mesh_facenum"][0] / 2
    assert model.mesh_facenum[1] == before["mesh_facenum"][1]  # the collision-only mesh is left alone
    hit = slice(model.mesh_faceadr[1], model.mesh_faceadr[1] + model.mesh_facenum[1])
    np.testing.assert_array_equal(model.mesh_face[hit], before["mesh_face"][hit])
    for key in ("mesh_vert", "mesh_normal", "mesh_graph", "body_inertia"):  # what physics reads
        np.testing.assert_array_equal(getattr(model, key), before[key])


def test_decimated_visual_meshes_leave_physics_unchanged() -> None:
    """'fast' rendering decimates the arm's and gripper's visual meshes (some also serve collision
    geoms); a seeded oracle rollout through the grasp gives bit-identical states with and without."""
    def rollout(sim: CubeSim) -> np.ndarray:
        state = sim.reset(seed=4)
        oracle = sim.oracle(seed=4)
        oracle.reset(state, sim.info)
        states = []
        for _ in range(45):  # approach, grasp (contacts with the fingers) and lift
            state, *_ = sim.step(oracle.select_action(state, sim.info))
            states.append(state)
        return np.stack(states)

    with CubeSim(render=True) as decimated, CubeSim(render=False) as original:
        assert decimated.decimation is not None and original.decimation is None
        assert decimated.decimation.faces_after < decimated.decimation.faces_before / 3
        assert decimated.env.unwrapped.model.mesh_facenum.sum() < original.env.unwrapped.model.mesh_facenum.sum() / 3
        states = rollout(decimated)
        assert states[-1, 21] > states[0, 21] + 0.5  # cube0.z (x10): the cube was lifted
        np.testing.assert_array_equal(states, rollout(original))


def test_wrist_camera_looks_from_the_gripper() -> None:
    """The wrist camera is another view than the front one, moves with the gripper, and has the cube in
    view (more and more of it) while the oracle approaches and grasps it."""
    s, front = _render_or_skip(64)
    wrist = s.render("wrist")
    assert wrist.shape == (64, 64, 3) and wrist.dtype == np.uint8 and wrist.std() > 5
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    np.testing.assert_array_equal(s.render("wrist"), wrist)  # nothing moved, nothing changes

    def cube_pixels(img: np.ndarray) -> int:  # the cube is bright red-pink; its target marker is dark
        r, g, b = (img[..., i].astype(int) for i in range(3))
        return int(((r > 150) & (r > g + 60) & (r > b + 60)).sum())

    oracle = s.oracle(seed=0)
    oracle.reset()
    seen = {}
    for t in range(25):
        if t in (10, 18, 24):  # above the cube, lower, grasping
            seen[t] = s.render("wrist")
        s.step(oracle.select_action())
    assert np.abs(seen[18].astype(int) - wrist.astype(int)).mean() > 5
    counts = [cube_pixels(seen[t]) for t in (10, 18, 24)]
    assert counts[0] >= 30 and counts[2] > 2 * counts[0], counts
    assert cube_pixels(s.render("front")) < counts[0]  # far smaller from the front
    with pytest.raises(ValueError, match="camera"):
        s.render("side")
    s.close()


def test_fast_rendering_drops_only_shadows_and_multisampling() -> None:
    """'fast' (the default) and 'full' show the same scene from the same camera (the background, the top
    rows, matches), but 'full' keeps OGBench's look: shadow-mapped lights (brighter overall here)."""
    fast, img_fast = _render_or_skip(64)
    fast.close()
    with CubeSim(render=True, image_size=64, render_quality="full") as full:
        img_full = full.render()
    assert img_fast.shape == img_full.shape == (64, 64, 3)
    diff = np.abs(img_fast.astype(int) - img_full.astype(int)).max(axis=2)
    assert np.median(diff[:16]) <= 2  # the same scene and camera
    assert img_full.mean() > img_fast.mean() + 2  # rendered differently
    with pytest.raises(ValueError, match="render_quality"):
        CubeSim(render=True, render_quality="ultra")


def test_render_disabled_says_how() -> None:
    with CubeSim(render=False) as s, pytest.raises(RuntimeError, match="render=True"):
        s.render()


def test_image_dataset_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("lerobot", reason="writing datasets needs lerobot (training profile)")
    _render_or_skip(32)[0].close()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from dfp_ros.sim.oracle_demos import collect_oracle_dataset, image_key

    with pytest.raises(ValueError, match="cameras"):
        collect_oracle_dataset(tmp_path / "bad", "local/x", episodes=1, cameras=["front", "side"], progress=False)
    root = tmp_path / "img"
    summary = collect_oracle_dataset(root, "local/cube_img", episodes=1, cameras=["front", "wrist"], image_size=32,
                                     progress=False, max_steps=6)
    assert summary.frames == 6
    ds = LeRobotDataset("local/cube_img", root=root, video_backend="pyav")  # no system FFmpeg for torchcodec
    keys = [image_key("front"), image_key("wrist")]
    assert ds.num_frames == 6 and sorted(ds.meta.video_keys) == keys
    front, wrist = (ds[5][k] for k in keys)
    assert tuple(front.shape) == tuple(wrist.shape) == (3, 32, 32)
    assert (front - wrist).abs().mean() > 0.02  # two views, not one recorded twice


def test_evaluate_executes_whole_chunks() -> None:
    calls = []

    def still(state: np.ndarray) -> np.ndarray:
        calls.append(state.shape)
        return np.zeros((5, 5), np.float32)

    out = evaluate(still, episodes=1, seed=0, chunk_execution=True)
    assert out == {"success_rate": 0.0, "episodes": 1, "successes": 0, "env_steps": 200, "cubes_placed": 0.0}
    assert len(calls) == 40 and calls[0] == (28,)  # 200 steps / H=5

    calls.clear()
    out = evaluate(still, episodes=1, seed=0, chunk_execution=False)
    assert out["env_steps"] == 200 and len(calls) == 200


def test_evaluate_reports_the_share_of_cubes_placed_at_the_end() -> None:
    # cube-double task 1 starts with one of its two cubes on its target: a robot that does not move fails
    # the task but ends every episode with half the cubes placed.
    out = evaluate(lambda s: np.zeros((5, 5), np.float32), episodes=2, env_name="cube-double-v0", task_id=1)
    assert out["success_rate"] == 0.0 and out["cubes_placed"] == 0.5 and out["env_steps"] == 1000


def test_evaluate_rejects_bad_chunks() -> None:
    with pytest.raises(ValueError, match=r"\[H, 5\]"):
        evaluate(lambda s: np.zeros((5, 4)), episodes=1)


@pytest.mark.parametrize("cue", [False, True])
def test_a_placed_cube_keeps_its_colour_unless_the_benchmark_cue_is_asked_for(cue: bool) -> None:
    with CubeSim(task_id=1, seed=0, success_cue=cue) as sim:
        u = sim.env.unwrapped
        geoms = u._cube_geom_ids_list[0]
        state = sim.reset(seed=100)
        oracle = sim.oracle(seed=0)
        oracle.reset(state, sim.info)
        base = [u._model.geom(g).rgba[:3].copy() for g in geoms]
        success = False
        while not success:
            state, _, terminated, truncated, info = sim.step(oracle.select_action(state, sim.info))
            success = info["success"]
            assert success or not (terminated or truncated), "the oracle did not place the cube"
        now = [u._model.geom(g).rgba[:3] for g in geoms]
        changed = any(not np.allclose(a, b) for a, b in zip(now, base, strict=True))
        assert changed == cue  # OGBench lightens a placed cube; our default scene does not
