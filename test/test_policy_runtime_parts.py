"""The ROS-free parts the policy node is made of: chunk queue, safety filter, observation assembly."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from dfp_ros.contracts import CameraSpec, ModelMetadata, StateSpec
from dfp_ros.runtime.chunk_queue import ChunkQueue, ticks_elapsed
from dfp_ros.runtime.observation import (
    ObservationAssembler,
    ObservationError,
    StateSource,
    decode_compressed,
    decode_raw_image,
)
from dfp_ros.runtime.safety import SafetyFilter

# --- chunk queue ------------------------------------------------------------------------------


def chunk(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]  # [H, 1]


def test_newest_replaces_and_skips_by_age():
    q = ChunkQueue(1, period=0.05, merge="newest")
    assert q.push(chunk([0, 1, 2, 3]), stamp=10.0, now=10.01) == 0
    assert q.pop()[0] == 0 and q.remaining() == 3
    # Computed from an observation 2.5 periods old: ticks 0 and 1 are gone.
    assert q.push(chunk([10, 11, 12, 13]), stamp=10.0, now=10.125) == 2
    assert [q.pop()[0] for _ in range(q.remaining())] == [12, 13]
    assert q.pop() is None and q.skipped == 2


def test_ticks_elapsed_exact_multiple():
    assert ticks_elapsed(0.0, 0.15, 0.05) == 3  # not 2 from float noise
    assert ticks_elapsed(1.0, 0.5, 0.05) == 0  # a future stamp skips nothing


def test_ensemble_weights_oldest_first():
    k = 0.5
    q = ChunkQueue(1, period=0.05, merge="ensemble", ensemble_k=k)
    q.push(chunk([0, 0, 0]), 0.0, 0.0)
    q.push(chunk([1, 1, 1]), 0.0, 0.0)
    q.push(chunk([2, 2, 2, 2]), 0.0, 0.0)
    w = np.exp(-k * np.arange(3))
    expect = (w * np.array([0, 1, 2])).sum() / w.sum()
    assert q.pop()[0] == pytest.approx(expect)
    assert q.remaining() == 3
    q.pop()
    q.pop()
    assert q.pop()[0] == 2  # only the longest chunk covers the last slot


def test_ensemble_aligns_slots_by_age():
    q = ChunkQueue(1, period=0.05, merge="ensemble", ensemble_k=0.0)
    q.push(chunk([0, 1, 2, 3]), 0.0, 0.0)
    q.pop()  # tick 0 executed; the queue front is now tick 1 of the first chunk
    # A new chunk from an observation one period later starts at tick 1: plain mean per slot.
    q.push(chunk([10, 11, 12, 13]), 0.05, 0.06)
    assert [q.pop()[0] for _ in range(4)] == [5.5, 6.5, 7.5, 13.0]


def test_dropped_ticks_leave_the_rest_of_the_chunks_aligned():
    q = ChunkQueue(1, period=0.05, merge="ensemble", ensemble_k=0.0)
    q.push(chunk([0, 1, 2, 3]), 0.0, 0.0)
    q.push(chunk([10, 11, 12, 13, 14]), 0.0, 0.0)
    assert q.drop(2) == 2  # two ticks passed unexecuted
    assert [q.pop()[0] for _ in range(3)] == [7.0, 8.0, 14.0]  # slots 2, 3, 4: the mean per slot
    assert q.drop(5) == 0 and q.drop(-1) == 0 and q.remaining() == 0


def test_queue_rejects_wrong_shape():
    with pytest.raises(ValueError):
        ChunkQueue(2, 0.05).push(np.zeros((3, 5)), 0.0, 0.0)


# --- safety filter ------------------------------------------------------------------------------


def safety(**kw) -> SafetyFilter:
    kw.setdefault("enabled", True)
    return SafetyFilter([-1.0, -1.0], [1.0, 1.0], max_obs_age_s=0.1, **kw)


def test_limits_and_rate_limit():
    s = safety(max_delta=0.25)
    assert s.filter(np.array([5.0, -5.0]), 0.0).tolist() == [1.0, -1.0]
    assert s.filter(np.array([-1.0, 1.0]), 0.0).tolist() == [0.75, -0.75]
    assert s.filter(np.array([0.7, -0.7]), 0.0).tolist() == pytest.approx([0.7, -0.7])


def test_non_finite_never_passes():
    s = safety(watchdog_action="hold")
    s.filter(np.array([0.5, 0.5]), 0.0)
    assert s.filter(np.array([np.nan, 0.0]), 0.0) is None
    assert s.filter(np.array([0.0, np.inf]), 0.0) is None
    assert s.state == "non_finite" and s.non_finite_count == 2


def test_watchdog_hold_and_stop():
    hold = safety(watchdog_action="hold")
    hold.filter(np.array([0.3, 0.3]), 0.0)
    assert hold.filter(np.array([0.9, 0.9]), 0.5).tolist() == [0.3, 0.3]  # stale: repeat last good
    assert hold.state == "stale_hold" and hold.watchdog == "stale"
    stop = safety(watchdog_action="stop")
    stop.filter(np.array([0.3, 0.3]), 0.0)
    assert stop.filter(np.array([0.9, 0.9]), 0.5) is None and stop.state == "stale_stop"
    assert stop.filter(np.array([0.9, 0.9]), None) is None  # no observation yet counts as stale
    assert stop.filter(np.array([0.4, 0.4]), 0.01).tolist() == [0.4, 0.4] and stop.watchdog == "ok"


def test_estop_latches_until_enabled():
    s = safety()
    s.estop()
    assert s.filter(np.array([0.1, 0.1]), 0.0) is None and s.state == "estop"
    s.enable(False)
    assert s.filter(np.array([0.1, 0.1]), 0.0) is None and s.estopped  # disabling does not clear it
    assert "e-stop cleared" in s.enable(True)
    assert s.filter(np.array([0.1, 0.1]), 0.0).tolist() == [0.1, 0.1]


def test_disabled_by_default():
    s = SafetyFilter([-1.0], [1.0])
    assert s.filter(np.array([0.1]), 0.0) is None and s.state == "disabled"


def test_bad_limits_refused():
    with pytest.raises(ValueError):
        SafetyFilter([1.0], [-1.0])
    with pytest.raises(ValueError):
        SafetyFilter([0.0], [1.0], watchdog_action="coast")


# --- observation assembly -----------------------------------------------------------------------

JOINTS = ["j1", "j2"]


def meta(cameras: list[CameraSpec] | None = None) -> ModelMetadata:
    names = ["j1.pos", "j2.pos", "j1.vel", "j2.vel", "cube.x", "cube.y"]
    return ModelMetadata(state=[StateSpec("observation.state", 6, names)], cameras=cameras or [],
                         action_key="action", action_names=["a"], horizon=2, action_dim=1, fps=20.0,
                         num_samples=1, has_critic=False, action_low=[-1.0], action_high=[1.0])


def test_joint_state_reordered_by_name_plus_extra_array():
    asm = ObservationAssembler(meta(), [StateSource("/joint_states", "joint_state", "observation.state"),
                                        StateSource("/extra", "float32_array", "observation.state")], 0.1)
    # The message lists joints in another order and has an extra joint the model does not use.
    asm.put_joint_state(0, ["j2", "other", "j1"], {"position": np.array([2.0, 9.0, 1.0]),
                                                   "velocity": np.array([20.0, 9.0, 10.0])}, 5, 1.0)
    assert asm.ready(1.0) is None  # /extra missing
    asm.put_array(1, np.array([7.0, 8.0]), 3, 1.02)
    obs = asm.ready(1.05)
    assert obs.state.tolist() == [1.0, 2.0, 10.0, 20.0, 7.0, 8.0]
    assert obs.stamp_ns == 3  # the oldest stamp among the parts
    assert obs.age_s == pytest.approx(0.05)
    assert asm.ready(1.2) is None and asm.missing(1.2) == ["/joint_states", "/extra"]


def test_an_observation_says_how_far_apart_its_parts_stamps_are():
    """The learner's exact join takes only observations whose parts share a stamp: a frame of the next
    step next to this step's joints shows as a skew, not as an observation of this step."""
    cams = [CameraSpec("front", "observation.images.front", 4, 6)]
    asm = ObservationAssembler(meta(cams), [StateSource("/s", "float32_array", "observation.state")], 1.0)
    frame = np.zeros((4, 6, 3), np.uint8)
    asm.put_array(0, np.zeros(6), 1_000, 0.0)
    asm.put_image("front", frame, 1_000, 0.0)
    obs = asm.ready(0.0)
    assert (obs.stamp_ns, obs.stamp_skew_ns) == (1_000, 0)
    asm.put_image("front", frame + 1, 51_000, 0.05)  # the next step's frame, this step's joints
    obs = asm.ready(0.05)
    assert (obs.stamp_ns, obs.stamp_skew_ns) == (1_000, 50_000)


def test_missing_joint_is_an_error():
    asm = ObservationAssembler(meta(), [StateSource("/joint_states", "joint_state", "observation.state"),
                                        StateSource("/extra", "float32_array", "observation.state")], 0.1)
    with pytest.raises(ObservationError) as e:
        asm.put_joint_state(0, ["j1"], {"position": np.array([1.0]), "velocity": np.array([1.0])}, 0, 0.0)
    assert e.value.kind == "missing_joint" and "j2" in str(e.value)


def test_nan_and_wrong_size_dropped_and_previous_kept():
    asm = ObservationAssembler(meta(), [StateSource("/s", "float32_array", "observation.state")], 0.1)
    asm.put_array(0, np.arange(6, dtype=np.float32), 1, 0.0)
    with pytest.raises(ObservationError) as e:
        asm.put_array(0, np.array([np.nan] * 6), 2, 0.01)
    assert e.value.kind == "non_finite"
    with pytest.raises(ObservationError) as e:
        asm.put_array(0, np.zeros(5), 3, 0.01)
    assert e.value.kind == "wrong_size"
    assert asm.ready(0.02).state.tolist() == list(range(6))  # a bad message never replaced the good one


def test_source_mapping_must_cover_state():
    with pytest.raises(ValueError, match="unfilled"):
        ObservationAssembler(meta(), [StateSource("/joint_states", "joint_state", "observation.state")], 0.1)
    with pytest.raises(ValueError, match="not a model state key"):
        ObservationAssembler(meta(), [StateSource("/s", "float32_array", "observation.nope")], 0.1)


def test_bgr8_to_rgb_and_resize():
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = rgb[..., ::-1].copy()
    out = decode_raw_image("bgr8", 8, 12, 36, bgr.tobytes())
    assert out.shape == (8, 12, 3) and (out[..., 0] == 200).all() and (out[..., 2] == 0).all()
    asm = ObservationAssembler(meta([CameraSpec("front", "observation.images.front", 4, 6)]),
                               [StateSource("/s", "float32_array", "observation.state")], 0.1)
    asm.put_raw_image("front", "bgr8", 8, 12, 36, bgr.tobytes(), 0, 0.0)
    asm.put_array(0, np.zeros(6), 0, 0.0)
    img = asm.ready(0.0).images["front"]
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8 and (img[..., 0] == 200).all()


def test_camera_ages_per_camera():
    cams = [CameraSpec(n, f"observation.images.{n}", 4, 6) for n in ("front", "wrist")]
    asm = ObservationAssembler(meta(cams), [StateSource("/s", "float32_array", "observation.state")], 0.5)
    frame = np.zeros((4, 6, 3), np.uint8)
    assert asm.camera_ages(1.0) == {"front": None, "wrist": None}
    asm.put_image("front", frame, 0, 1.0)
    asm.put_image("wrist", frame, 0, 1.2)
    assert asm.camera_ages(1.3) == pytest.approx({"front": 0.3, "wrist": 0.1})


def test_row_padding_and_mono8():
    data = np.arange(3 * 8, dtype=np.uint8).reshape(3, 8)  # 5 pixels wide + 3 bytes padding per row
    out = decode_raw_image("mono8", 3, 5, 8, data.tobytes())
    assert out.shape == (3, 5, 3)
    assert (out[..., 0] == data[:, :5]).all() and (out[..., 1] == out[..., 2]).all()


def test_bad_images():
    with pytest.raises(ObservationError) as e:
        decode_raw_image("yuv422", 2, 2, 4, b"\0" * 8)
    assert e.value.kind == "unknown_encoding"
    with pytest.raises(ObservationError) as e:
        decode_raw_image("rgb8", 4, 4, 12, b"\0" * 40)
    assert e.value.kind == "wrong_size"
    with pytest.raises(ObservationError) as e:
        decode_compressed("jpeg", b"not a jpeg")
    assert e.value.kind == "decode"


def test_compressed_jpeg_and_png():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 2] = 255  # blue
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, jpg = cv2.imencode(".jpg", bgr)
    assert ok
    out = decode_compressed("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == (16, 16, 3) and out[..., 2].min() > 240 and out[..., 0].max() < 15
    ok, png = cv2.imencode(".png", bgr)
    assert (decode_compressed("png", png.tobytes()) == rgb).all()


def test_runtime_parts_do_not_import_ros_or_torch():
    # The ROS-free core must stay importable on a machine without ROS (docs/architecture.md).
    import dfp_ros.runtime.chunk_queue as a
    import dfp_ros.runtime.controller as d
    import dfp_ros.runtime.observation as b
    import dfp_ros.runtime.safety as c

    for mod in (a, b, c, d):
        src = open(mod.__file__).read()
        assert "rclpy" not in src and "import torch" not in src
    assert sys.modules.get("dfp_ros.runtime.observation") is b
