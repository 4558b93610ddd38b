"""realsense_node without a camera: a recording made with pyrealsense2's software
device and recorder is played through the node; the test checks the topics. Also: no device ->
a clear error and a non-zero exit.

librealsense >= 2.58 records rosbag2 (.db3) files; older recordings are ROS 1 .bag files. The node
plays either (`playback_file`); this pyrealsense2 can only write the .db3 kind, so that is what is tested.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.realtime  # wall-clock deadlines: run alone, not beside other tests

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed (pip install pyrealsense2; "
                         "Debian needs libusb-1.0-0)")
rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_graph import RosGraph, domain_id, ros_env, running_node, start_node, stop  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from dfp_ros import contracts  # noqa: E402

MODULE = "dfp_ros.nodes.realsense_node"
W, H, FPS, N = 64, 48, 30, 30
T0_MS = 1000.0
FX = 50.0


def _intrinsics(w: int, h: int):
    i = rs.intrinsics()
    i.width, i.height, i.ppx, i.ppy, i.fx, i.fy = w, h, w / 2, h / 2, FX, FX
    i.model = rs.distortion.brown_conrady
    i.coeffs = [0.1, 0.0, 0.0, 0.0, 0.0]
    return i


def make_recording(path: Path) -> Path:
    """N colour (rgb8, value 8*i) + depth (z16, 1000+i) frames at FPS, frame i stamped T0 + i/FPS."""
    dev = rs.software_device()
    color, depth = dev.add_sensor("Color"), dev.add_sensor("Depth")
    profiles = []
    for sensor, stype, uid, bpp, fmt in ((color, rs.stream.color, 0, 3, rs.format.rgb8),
                                         (depth, rs.stream.depth, 1, 2, rs.format.z16)):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = stype, 0, uid, W, H, FPS, bpp, fmt
        vs.intrinsics = _intrinsics(W, H)
        profiles.append(sensor.add_video_stream(vs))
    depth.add_read_only_option(rs.option.depth_units, 0.001)
    profiles[1].register_extrinsics_to(profiles[0], rs.extrinsics())
    recorder = rs.recorder(str(path), dev)
    queues = [rs.frame_queue(), rs.frame_queue()]
    for sensor, prof, q in zip((color, depth), profiles, queues, strict=True):
        sensor.open(prof)
        sensor.start(q)
    for i in range(N):
        for sensor, prof, pixels in ((color, profiles[0], np.full((H, W, 3), 8 * i, np.uint8)),
                                     (depth, profiles[1], np.full((H, W), 1000 + i, np.uint16))):
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride = pixels, pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1), \
                pixels.strides[0]
            f.timestamp, f.domain, f.frame_number = T0_MS + i * 1000.0 / FPS, rs.timestamp_domain.hardware_clock, i
            f.profile = prof.as_video_stream_profile()
            sensor.on_video_frame(f)
        time.sleep(0.002)
    for sensor in (color, depth):
        sensor.stop()
        sensor.close()
    del recorder  # writes the file
    return path


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_playback_publishes_images_camera_info_and_stamps(tmp_path):
    rec = make_recording(tmp_path / "rec.db3")
    assert rec.stat().st_size > 0
    dom = domain_id(120)
    params = {"playback_file": str(rec), "loop_playback": True, "enable_depth": True, "align_depth": False,
              "timestamp_source": "frame"}
    with RosGraph(dom) as g:
        color = g.collect("/" + contracts.TOPIC_CAMERA, Image, qos_profile_sensor_data)
        info = g.collect("/camera/camera/color/camera_info", CameraInfo)
        depth = g.collect("/camera/camera/depth/image_rect_raw", Image, qos_profile_sensor_data)
        with running_node(MODULE, params, ros_env(dom), log_dir=tmp_path) as proc:
            ok = color.wait_for(15, timeout=30.0) and info.wait_for(15, timeout=5.0) and depth.wait_for(10, 5.0)
            assert ok, proc.log()
    img = color.messages[-1]
    assert (img.encoding, img.width, img.height, img.step) == ("rgb8", W, H, W * 3)
    assert img.header.frame_id == "camera_color_optical_frame"
    for m in color.messages:
        value = int(np.frombuffer(bytes(m.data), np.uint8)[0])
        i = value // 8
        # The stamp is the recorded frame's timestamp, and the pixels are that frame's.
        assert abs(_ns(m.header.stamp) - round((T0_MS + i * 1000.0 / FPS) * 1e6)) < 1000, (i, _ns(m.header.stamp))
    frames = [int(np.frombuffer(bytes(m.data), np.uint8)[0]) // 8 for m in color.messages]
    assert len(set(frames)) >= 10  # distinct frames, each published once per pass
    assert all(b != a for a, b in itertools.pairwise(frames))
    ci = info.messages[-1]
    assert (ci.width, ci.height, ci.distortion_model) == (W, H, "plumb_bob")
    np.testing.assert_allclose(ci.k, [FX, 0, W / 2, 0, FX, H / 2, 0, 0, 1])
    np.testing.assert_allclose(ci.d[:1], [0.1])
    # Each camera_info is stamped as one of the recording's frames, and each colour frame that arrived has
    # its camera_info (colour is best effort, so a loaded machine drops some of it; camera_info is reliable;
    # the last frame's camera_info may be cut off by the shutdown).
    frame_ns = np.array([round((T0_MS + i * 1000.0 / FPS) * 1e6) for i in range(N)])
    info_stamps = {_ns(m.header.stamp) for m in info.messages}
    assert all(np.abs(frame_ns - s).min() < 1000 for s in info_stamps), sorted(info_stamps)
    assert sum(_ns(m.header.stamp) in info_stamps for m in color.messages) >= len(color.messages) - 1
    d = depth.messages[-1]
    assert (d.encoding, d.width, d.height, d.step) == ("16UC1", W, H, W * 2)
    assert 1000 <= int(np.frombuffer(bytes(d.data), np.uint16)[0]) < 1000 + N


def test_playback_without_loop_ends_with_code_0(tmp_path):
    rec = make_recording(tmp_path / "rec.db3")
    proc = start_node(MODULE, {"playback_file": str(rec), "loop_playback": False, "frame_timeout_s": 1.0},
                      ros_env(domain_id(121)), log_dir=tmp_path)
    try:
        assert proc.wait(timeout=30) == 0, proc.log()
    finally:
        stop(proc)
    assert "end of" in proc.log()


def test_no_device_is_a_clear_error_and_exit_1(tmp_path):
    if len(rs.context().query_devices()) > 0:
        pytest.skip("a RealSense camera is connected")
    for params, text in (({}, "no RealSense device is connected"),
                         ({"playback_file": str(tmp_path / "missing.bag")}, "does not exist")):
        proc = start_node(MODULE, params, ros_env(domain_id(122)), log_dir=tmp_path)
        try:
            assert proc.wait(timeout=30) == 1, proc.log()
        finally:
            stop(proc)
        assert text in proc.log(), proc.log()
