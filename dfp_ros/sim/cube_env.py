"""OGBench's cube scenes (UR5e arm + Robotiq 2F-85 gripper in MuJoCo) as our simulated robot.

`CubeSim` wraps one *single-task* OGBench environment (`cube-single-singletask-task1-v0` for
`CubeSim("cube-single-v0", task_id=1)`) and gives it the vocabulary the rest of dfp_ros speaks:
named state numbers, the arm's real joint names, raw action limits, fps, and strict input checks.

Semantics worth knowing (they are OGBench's, kept so our numbers compare with published ones):
- state: OGBench's 28-number vector for cube-single (joint positions and velocities, effector
  position scaled by 10 around (0.425, 0, 0), effector yaw as cos/sin, gripper opening x3, gripper
  contact, and per cube: position (same scaling), quaternion wxyz, yaw as cos/sin).
- action: 5 numbers in [-1, 1]: effector dx, dy, dz (x 0.05 m), dyaw (x 0.3 rad), gripper delta.
- single-task envs use OGBench's `success_timing='pre'`: the reward, `terminated` and
  `info["success"]` returned by `step` describe the state the action was taken *in*, so an episode
  ends one step after the cube reaches its goal. Reward is 0 at success, -1 otherwise.
- episodes time out after the registered limit (200 steps for cube-single), at 20 Hz.

Cameras (`CubeSim.render(camera=...)`): "front", OGBench's scene camera, and "wrist", a camera bolted
to the gripper looking past the fingertips (see `_WRIST_CAMERA_POS`).

`CubeSim.oracle()` returns OGBench's scripted planner (`CubePlanOracle`), fed the task's goal in
the `privileged/target_*` keys it reads in OGBench's data-collection mode (task mode lacks them).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self


def _headless_egl_works() -> bool:
    """Whether an EGL device display can be initialised, probed the way dm_control does it."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
    except OSError:
        return False
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    query_ptr = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
    display_ptr = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
    if not query_ptr or not display_ptr:
        return False
    query_devices = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int))(query_ptr)
    platform_display = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p,
                                        ctypes.c_void_p)(display_ptr)
    egl.eglInitialize.restype = ctypes.c_uint
    egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    egl.eglTerminate.argtypes = [ctypes.c_void_p]
    devices = (ctypes.c_void_p * 16)()
    count = ctypes.c_int(0)
    if not query_devices(16, devices, ctypes.byref(count)):
        return False
    for i in range(count.value):
        display = platform_display(0x313F, devices[i], None)  # EGL_PLATFORM_DEVICE_EXT
        if display and egl.eglInitialize(display, None, None):
            egl.eglTerminate(display)
            return True
    return False


def _prefer_egl() -> None:
    """Select MuJoCo's headless EGL backend, if EGL works here, before mujoco is first imported.

    MuJoCo and dm_control (which ogbench imports) read MUJOCO_GL once, at import. A user's own
    choice wins. Where EGL cannot start (no libEGL, or no Mesa driver behind it) we leave MUJOCO_GL
    unset: with MUJOCO_GL=egl there, importing mujoco/dm_control itself fails, which would take the
    state-only simulator down too. render() then says what to install.
    """
    if "MUJOCO_GL" in os.environ or "mujoco" in sys.modules or not sys.platform.startswith("linux"):
        return
    try:
        usable = _headless_egl_works()
    except (OSError, AttributeError, TypeError, ValueError, ctypes.ArgumentError):
        # A broken GL stack must not stop the (state-only) simulator from importing.
        usable = False
    if usable:
        os.environ["MUJOCO_GL"] = "egl"


_prefer_egl()

# These must come after _prefer_egl(): they read MUJOCO_GL when imported.
import gymnasium  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import ogbench.manipspace  # noqa: E402, F401  (registers the cube-* gymnasium ids)
from ogbench.manipspace import lie  # noqa: E402

if TYPE_CHECKING:  # imported where an oracle is made: its scipy imports cost ~0.5 s a process otherwise
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

from dfp_ros.sim.mesh_decimation import DecimationResult, decimate_visual_meshes  # noqa: E402

# OGBench's relative end-effector action, in its own order (ManipSpaceEnv docstring).
ACTION_NAMES = ("effector_dx", "effector_dy", "effector_dz", "effector_dyaw", "gripper_delta")

# Off-screen rendering with software GL (llvmpipe, the usual case without a GPU): "full" is OGBench's
# look; "fast" drops shadows and multisampling (96x96 on 2 cores: ~95 -> ~18 ms per frame) and
# decimates the robot's ~185k visual triangles (mesh_decimation; -> ~5 ms), whatever the image size.
RENDER_QUALITIES = ("fast", "full")
CAMERAS = ("front", "wrist")

# The wrist camera, in the frame of the gripper's attachment site (z: down the gripper towards the
# fingertips, which meet at z = 0.156 m; x: the direction the fingers close in). It sits 8 cm to the
# side of the fingers' plane, 5 cm down the gripper, and looks at a point past the fingertips, so
# both fingertips are at the bottom of the image and what lies between and below them is in view.
_WRIST_CAMERA_POS = np.array([0.0, 0.08, 0.05])
_WRIST_CAMERA_TARGET = np.array([0.0, 0.0, 0.30])
_WRIST_CAMERA_UP = np.array([0.0, 1.0, 0.0])
_WRIST_CAMERA_FOVY_DEG = 70.0
_WRIST_CAMERA_NEAR = 0.01  # m; the model's near plane (7 cm) would cut the fingers off

# A cube counts as placed within this distance of its target (CubeEnv._compute_successes).
_CUBE_SUCCESS_RADIUS = 0.04

_RENDER_HELP = (
    "MuJoCo could not render an image ({err}). Off-screen rendering needs EGL: install the Debian "
    "packages libegl1 and libgl1 (they pull in Mesa's libegl-mesa0; software rendering also needs "
    "libgl1-mesa-dri), e.g. `apt-get install -y libegl1 libgl1 libgl1-mesa-dri`, and set MUJOCO_GL=egl "
    "before anything imports mujoco (now MUJOCO_GL={gl!r})."
)


def check_cameras(cameras: Sequence[str]) -> list[str]:
    """`cameras` as a list; ValueError unless each names one of CAMERAS, at most once."""
    names = [str(c) for c in cameras]
    if any(c not in CAMERAS for c in names) or len(set(names)) != len(names):
        raise ValueError(f"cameras {names} must name each of {CAMERAS} at most once")
    return names


def single_task_env_id(env_name: str, task_id: int) -> str:
    """'cube-single-v0', 1 -> 'cube-single-singletask-task1-v0' (OGBench's registered single-task id)."""
    m = re.fullmatch(r"(.+)-(v\d+)", env_name)
    if m is None:
        raise ValueError(f"env_name {env_name!r} is not an OGBench id like 'cube-single-v0'")
    return f"{m.group(1)}-singletask-task{int(task_id)}-{m.group(2)}"


class CubeSim:
    """One OGBench cube single-task environment with named state, joints and checked actions."""

    def __init__(
        self,
        env_name: str = "cube-single-v0",
        task_id: int = 1,
        seed: int = 0,
        render: bool = False,
        image_size: int = 96,
        render_quality: str = "fast",
        success_cue: bool = False,
    ) -> None:
        if not env_name.startswith("cube-"):
            # Visual variants observe pixels instead of state, and other scenes have other layouts.
            raise ValueError(f"CubeSim supports OGBench's state-based cube envs (cube-*), not {env_name!r}")
        m = re.fullmatch(r"(.+)-singletask-task(\d+)-(v\d+)", env_name)
        if m is not None:  # a full single-task id names its task itself
            env_name, task_id = f"{m.group(1)}-{m.group(3)}", int(m.group(2))
        elif "singletask" in env_name:
            raise ValueError(f"{env_name!r}: name the task, e.g. 'cube-single-singletask-task1-v0', or pass "
                             "'cube-single-v0' and task_id")
        if not 1 <= int(task_id) <= 5:
            raise ValueError(f"task_id must be in 1..5 (OGBench defines five tasks per scene), got {task_id}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        if render_quality not in RENDER_QUALITIES:
            raise ValueError(f"render_quality must be one of {RENDER_QUALITIES}, got {render_quality!r}")
        self.render_quality = render_quality
        # OGBench lightens a cube placed on its target: a cue no real scene has, and one a learned success
        # detector would read instead of the cube's pose. Off unless asked for.
        self.success_cue = bool(success_cue)
        self.env_name = env_name
        self.task_id = int(task_id)
        self.env_id = single_task_env_id(env_name, task_id)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self._render_enabled = bool(render)
        with warnings.catch_warnings():
            # OGBench builds its [-1, 1] Box from float64 arrays; gymnasium warns about the cast.
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            # width/height size MuJoCo's off-screen buffer; they cost nothing when we never render.
            self._env = gymnasium.make(self.env_id, width=self.image_size, height=self.image_size)
        self._u = self._env.unwrapped
        self.max_episode_steps: int = int(self._env.spec.max_episode_steps)
        self._fps = 1.0 / float(self._u._control_timestep)
        self._num_cubes: int = int(self._u._num_cubes)

        # The model is compiled on the first reset; everything read from it below needs that.
        self._info: dict[str, Any] = {}
        self._done = True
        self._first_reset = True
        state = self.reset()
        self._first_reset = True  # the constructor's reset should not consume the user's seed
        self._state_dim = int(state.shape[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            space = self._env.action_space
        self._action_dim = int(space.shape[0])
        self._action_low = np.asarray(space.low, dtype=np.float32).copy()
        self._action_high = np.asarray(space.high, dtype=np.float32).copy()

        model = self._u.model
        # Arm joints as ogbench lists them, plus the gripper's driver joint (opening = qpos / 0.8).
        self._joint_ids = [int(i) for i in self._u._arm_joint_ids] + [int(self._u._gripper_opening_joint_id)]
        self._joint_names = [self._ros_joint_name(model.joint(i).name) for i in self._joint_ids]
        self._qpos_adr = np.array([int(model.jnt_qposadr[i]) for i in self._joint_ids])
        self._target_mocap_ids = [int(model.body(f"object_target_{i}").mocapid[0]) for i in range(self._num_cubes)]
        self._state_names = self._make_state_names()
        self._step_count = 0
        self._wrist_site = int(model.site("ur5e/attachment_site").id)
        self._wrist_camera = mujoco.MjvCamera()
        self._wrist_camera.type = mujoco.mjtCamera.mjCAMERA_FREE  # placed by _place_wrist_camera
        # Before any GL context exists (it uploads the meshes once); physics never reads these triangles.
        self.decimation: DecimationResult | None = (
            decimate_visual_meshes(model) if self._render_enabled and render_quality == "fast" else None)

    # --- description ------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self._state_dim

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def action_low(self) -> np.ndarray:
        return self._action_low.copy()

    @property
    def action_high(self) -> np.ndarray:
        return self._action_high.copy()

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def num_cubes(self) -> int:
        return self._num_cubes

    @property
    def joint_names(self) -> list[str]:
        """UR5e joint names as the UR ROS driver publishes them, then the Robotiq driver joint."""
        return list(self._joint_names)

    @property
    def state_names(self) -> list[str]:
        return list(self._state_names)

    @property
    def action_names(self) -> list[str]:
        return list(ACTION_NAMES)

    @property
    def task(self) -> str:
        """Natural-language task label, e.g. for a LeRobot dataset's `task` column."""
        return f"{self.env_name.removesuffix('-v0')} task {self.task_id}"

    @property
    def info(self) -> dict[str, Any]:
        """The info dict of the last reset or step (OGBench's proprio/privileged keys, time, ...)."""
        return self._info

    @property
    def elapsed_steps(self) -> int:
        return self._step_count

    @property
    def env(self) -> gymnasium.Env:
        """The wrapped gymnasium env, for code that needs OGBench's own API."""
        return self._env

    # --- episode ----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, keep_arm: bool = False) -> np.ndarray:
        """Start an episode; with no seed the first reset uses the constructor's seed, later ones go on.

        `keep_arm`: only the cubes are placed anew (as OGBench samples them); the arm and gripper stay where
        they are, at the speed they have, as a real robot moved home by a reset controller would."""
        if seed is None and self._first_reset:
            seed = self.seed
        self._first_reset = False
        u = self._u
        robot_q, robot_v = self._robot_dofs() if keep_arm else (None, None)
        if keep_arm:
            qpos, qvel = u.data.qpos[robot_q].copy(), u.data.qvel[robot_v].copy()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            obs, info = self._env.reset(seed=seed)
        if keep_arm:
            u.data.qpos[robot_q], u.data.qvel[robot_v] = qpos, qvel
            # OGBench's own end of a reset (initialize_episode), for the restored arm: sites, success flags.
            u.pre_step()
            mujoco.mj_forward(u.model, u.data)
            u.post_step()
            obs, info = u.compute_observation(), u.get_reset_info()
        self._info = info
        self._done = False
        self._step_count = 0
        return np.asarray(obs, dtype=np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one action (clipped to the limits); returns (state, reward, terminated, truncated, info)."""
        a = self.check_action(action)
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated); call reset() first")
        # The policy may overshoot [-1, 1]; a real controller saturates, so clip like OGBench's scripts.
        a = np.clip(a, self._action_low, self._action_high)
        obs, reward, terminated, truncated, info = self._env.step(a.astype(np.float64))
        self._hide_success_cue()
        info["success"] = bool(info.get("success", False))
        self._info = info
        self._step_count += 1
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info

    def step_outside_episode(self, action: np.ndarray) -> np.ndarray:
        """After an episode's end, before the next reset: move the robot (one control step of `action`,
        clipped) with no reward, success or time limit; returns the new state. How a reset controller
        takes the arm home before `reset(keep_arm=True)`."""
        a = np.clip(self.check_action(action), self._action_low, self._action_high)
        obs, *_, info = self._u.step(a.astype(np.float64))  # the env itself: no TimeLimit count
        self._hide_success_cue()
        self._info = info
        return np.asarray(obs, dtype=np.float32)

    def check_action(self, action: Any) -> np.ndarray:
        """Return the action as float32 [action_dim], or raise ValueError naming the expected shape."""
        try:
            a = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be numbers of shape ({self._action_dim},): {err}") from None
        if a.shape != (self._action_dim,):
            raise ValueError(f"action has shape {a.shape}; expected ({self._action_dim},) = {ACTION_NAMES}")
        if not np.isfinite(a).all():
            raise ValueError(f"action {a.tolist()} holds NaN or inf; expected ({self._action_dim},) finite numbers")
        return a

    def _robot_dofs(self) -> tuple[np.ndarray, np.ndarray]:
        """qpos and qvel indices of everything but the cubes' free joints (the arm, the gripper's joints)."""
        model = self._u.model
        cube_q, cube_v = set(), set()
        for i in range(self._num_cubes):
            joint = model.joint(f"object_joint_{i}")
            cube_q.update(range(int(joint.qposadr[0]), int(joint.qposadr[0]) + 7))
            cube_v.update(range(int(joint.dofadr[0]), int(joint.dofadr[0]) + 6))
        return (np.array([i for i in range(model.nq) if i not in cube_q]),
                np.array([i for i in range(model.nv) if i not in cube_v]))

    def joint_positions(self) -> np.ndarray:
        """Current positions (rad) of `joint_names`, read from MuJoCo's qpos."""
        return np.asarray(self._u.data.qpos[self._qpos_adr], dtype=np.float64).copy()

    def cube_successes(self) -> list[bool]:
        """Whether each cube is now within 4 cm of its target (the state after the last step)."""
        data = self._u.data
        out = []
        for i in range(self._num_cubes):
            pos = data.joint(f"object_joint_{i}").qpos[:3]
            target = data.mocap_pos[self._target_mocap_ids[i]]
            out.append(bool(np.linalg.norm(pos - target) <= _CUBE_SUCCESS_RADIUS))
        return out

    def cube_target(self, cube: int) -> tuple[np.ndarray, float]:
        """Goal position (m) and yaw (rad) of one cube, read from its target mocap body."""
        data = self._u.data
        mid = self._target_mocap_ids[cube]
        yaw = float(lie.SO3(wxyz=np.asarray(data.mocap_quat[mid], dtype=np.float64)).compute_yaw_radians())
        return np.asarray(data.mocap_pos[mid], dtype=np.float64).copy(), yaw

    def render(self, camera: str = "front") -> np.ndarray:
        """RGB uint8 [image_size, image_size, 3] from `camera`: "front" (the scene's) or "wrist"."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; CubeSim has {CAMERAS}")
        if not self._render_enabled:
            raise RuntimeError("this CubeSim was built with render=False; pass render=True to get images")
        gl = os.environ.get("MUJOCO_GL", "").lower()
        if sys.platform.startswith("linux") and gl not in ("egl", "osmesa") and not os.environ.get("DISPLAY"):
            # MuJoCo would fall back to GLFW, which needs a display and can abort the process without one.
            raise RuntimeError(_RENDER_HELP.format(err="EGL could not start here and there is no display",
                                                   gl=os.environ.get("MUJOCO_GL")))
        try:
            if self._u._renderer is None and self.render_quality == "fast":
                # Read when the GL context is made: no multisampling (4x in OGBench's model).
                self._u._model.vis.quality.offsamples = 0
                self._u._initialize_renderer()
            if self.render_quality == "fast":
                # A 4096-pixel shadow map per light costs most of a software-rendered frame.
                self._u._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            if camera == "front":
                img = self._u.render()  # OGBench's 'front' camera for state-based envs
            else:
                img = self._u.render(camera=self._wrist_camera, scene_callback=self._place_wrist_camera)
        except Exception as err:  # GL failures surface as many types (ImportError, FatalError, ...)
            raise RuntimeError(_RENDER_HELP.format(err=err, gl=os.environ.get("MUJOCO_GL"))) from err
        return np.ascontiguousarray(img, dtype=np.uint8)

    def oracle(self, noise: float = 0.1, smoothing: float = 0.5, seed: int | None = None) -> CubeOracle:
        """OGBench's scripted expert for this scene (see `CubeOracle`)."""
        return CubeOracle(self, noise=noise, smoothing=smoothing, seed=self.seed if seed is None else seed)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------------
    def _hide_success_cue(self) -> None:
        if self.success_cue:
            return
        u = self._u
        for i, geoms in enumerate(u._cube_geom_ids_list):
            for gid in geoms:
                u._model.geom(gid).rgba[:3] = u._cube_colors[i, :3]

    def _place_wrist_camera(self, scene: mujoco.MjvScene) -> None:
        # A free camera cannot roll with the wrist, so the scene's eye is set directly instead.
        data = self._u.data
        rot = data.site_xmat[self._wrist_site].reshape(3, 3)
        origin = data.site_xpos[self._wrist_site]
        pos = origin + rot @ _WRIST_CAMERA_POS
        forward = rot @ (_WRIST_CAMERA_TARGET - _WRIST_CAMERA_POS)
        forward /= np.linalg.norm(forward)
        up = rot @ _WRIST_CAMERA_UP
        up -= forward * float(up @ forward)
        up /= np.linalg.norm(up)
        half_height = _WRIST_CAMERA_NEAR * np.tan(np.radians(_WRIST_CAMERA_FOVY_DEG) / 2)
        for eye in scene.camera:  # both eyes of the (mono) stereo pair
            eye.pos[:], eye.forward[:], eye.up[:] = pos, forward, up
            eye.frustum_near = _WRIST_CAMERA_NEAR
            eye.frustum_top, eye.frustum_bottom, eye.frustum_center = half_height, -half_height, 0.0

    @staticmethod
    def _ros_joint_name(mujoco_name: str) -> str:
        # 'ur5e/shoulder_pan_joint' -> 'shoulder_pan_joint' (the UR driver's name);
        # 'ur5e/robotiq/right_driver_joint' -> 'robotiq_right_driver_joint'.
        name = mujoco_name.removeprefix("ur5e/")
        return name.replace("/", "_")

    def _make_state_names(self) -> list[str]:
        # The layout of CubeEnv.compute_observation; fall back to indices if a future ogbench differs.
        arm = self._joint_names[:-1]
        names = [f"{j}.pos" for j in arm] + [f"{j}.vel" for j in arm]
        names += ["effector.x", "effector.y", "effector.z", "effector.yaw_cos", "effector.yaw_sin",
                  "gripper.opening", "gripper.contact"]
        for i in range(self._num_cubes):
            names += [f"cube{i}.{k}" for k in ("x", "y", "z", "qw", "qx", "qy", "qz", "yaw_cos", "yaw_sin")]
        if len(names) != self._state_dim:
            return [f"state_{i}" for i in range(self._state_dim)]
        return names


def aim_planner(planner: CubePlanOracle, target: int, pos: np.ndarray, yaw: float, obs: np.ndarray | None,
                info: dict[str, Any], rng_state: Any) -> Any:
    """Plan OGBench's cube planner towards cube `target` at (`pos`, `yaw`); returns the new `rng_state`.

    The planner reads its goal from `privileged/target_block*` keys that OGBench only fills in its
    data-collection mode, so they are added here. It samples keyframes and noise from numpy's global
    RNG: the caller's private stream is swapped in meanwhile, so runs are reproducible from a seed
    and the caller's global RNG is left untouched.
    """
    goal_info = dict(info)
    goal_info["privileged/target_task"] = "cube"
    goal_info["privileged/target_block"] = target
    goal_info["privileged/target_block_pos"] = pos
    goal_info["privileged/target_block_yaw"] = np.array([yaw])
    saved = np.random.get_state()
    np.random.set_state(rng_state)
    try:
        planner.reset(obs, goal_info)
    finally:
        rng_state = np.random.get_state()
        np.random.set_state(saved)
    return rng_state


class CubeOracle:
    """OGBench's `CubePlanOracle` driving a `CubeSim` in task mode.

    The planner reads the target in `privileged/target_block*` keys that OGBench only fills in its
    data-collection mode; here they are added from the task's goal (the target mocap bodies). When a
    plan ends with cubes still off target (a dropped cube, or the next cube of a multi-cube task), it
    plans again for the first such cube, so it also retries. Noise is OGBench's plan noise: Gaussian,
    scaled per action dimension by (0.05, 0.05, 0.05, 0.3, 1.0) x `noise`, smoothed over time with
    sigma `smoothing` steps - exactly how OGBench collects its 'play' data with this oracle; actions
    are clipped to the action limits. Multi-cube tasks are handled greedily, one off-target cube at
    a time (cube-double tasks 1, 2, 3, 5 went 5/5 in a spot check); tasks that need an order, like
    swaps and cycles, only succeed by luck. cube-single is what the tests hold it to.
    """

    def __init__(self, sim: CubeSim, noise: float = 0.1, smoothing: float = 0.5, seed: int = 0) -> None:
        if noise < 0 or smoothing < 0:
            raise ValueError(f"noise and smoothing must be >= 0, got {noise}, {smoothing}")
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        self._sim = sim
        self._planner = CubePlanOracle(env=sim.env, segment_dt=0.4, noise=float(noise),
                                       noise_smoothing=float(smoothing))
        # CubePlanOracle draws from numpy's global RNG; give it a private stream (see _plan).
        self._rng_state = np.random.RandomState(seed).get_state()
        self._target: int | None = None

    @property
    def done(self) -> bool:
        """True once the current plan has run out and every cube is on target."""
        return self._planner.done and all(self._sim.cube_successes())

    @property
    def target_cube(self) -> int | None:
        return self._target

    def reset(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> None:
        """Plan for a new episode; call right after `CubeSim.reset` (info defaults to `sim.info`)."""
        self._plan(obs, self._sim.info if info is None else info)

    def select_action(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> np.ndarray:
        """Next action, float32 [5] within the limits (info defaults to `sim.info`)."""
        info = self._sim.info if info is None else info
        # First call without reset, or the plan ran out with a cube still off target: (re)plan.
        if self._target is None or (self._planner.done and not all(self._sim.cube_successes())):
            self._plan(obs, info)
        a = np.asarray(self._planner.select_action(obs, info), dtype=np.float32)
        return np.clip(a, self._sim.action_low, self._sim.action_high)

    def _plan(self, obs: np.ndarray | None, info: dict[str, Any]) -> None:
        off_target = [i for i, ok in enumerate(self._sim.cube_successes()) if not ok]
        self._target = off_target[0] if off_target else 0
        pos, yaw = self._sim.cube_target(self._target)
        self._rng_state = aim_planner(self._planner, self._target, pos, yaw, obs, info, self._rng_state)
