"""`realsense_node`: an Intel RealSense camera (pyrealsense2) on ROS 2, for users without realsense-ros.

The policy and collect nodes work the same with realsense-ros; this node publishes the same topic
names by default (realsense-ros 4.x with camera_namespace = camera_name = "camera"), relative so a
launch namespace prefixes them:

  camera/camera/color/image_raw                     sensor_msgs/Image rgb8 (reliable, depth 5, as realsense-ros)
  camera/camera/color/camera_info                   sensor_msgs/CameraInfo
  camera/camera/depth/image_rect_raw                sensor_msgs/Image 16UC1, mm (enable_depth, align_depth false)
  camera/camera/depth/camera_info
  camera/camera/aligned_depth_to_color/image_raw    16UC1 aligned to colour (enable_depth and align_depth)
  camera/camera/aligned_depth_to_color/camera_info  (the colour intrinsics)

Frame ids are `<camera_name>_color_optical_frame` / `<camera_name>_depth_optical_frame`. An image and its
CameraInfo carry the same stamp: the ROS clock when the frameset arrived (`timestamp_source: ros`),
or the frame's own timestamp (`frame`: the device's or the recording's clock, in ms).

Parameters: the table `PARAMS` below (read at start).

Errors: no device at start (or not the one with serial_no) -> a fatal log naming the connected
serial numbers and exit code 1; a missing playback file -> exit code 1. A device that stops
delivering (unplugged) -> a warning, then a reconnect attempt every reconnect_period_s; publishing
resumes when it is back. A played file without loop_playback ends the node with code 0.

The capture loop runs on its own thread (wait_for_frames blocks); publishing from it is safe in rclpy.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params

NODE_NAME = "realsense_node"
TIMESTAMP_SOURCES = ("ros", "frame")

PARAMS: list[Param] = [
    Param("serial_no", "", "the device's serial number; '' = the only / first device"),
    Param("playback_file", "", "a .bag, or (librealsense >= 2.58) rosbag2 .db3, recording played instead of a device"),
    Param("loop_playback", True, "play the recording again at its end; false: end the node (code 0)"),
    Param("color_width", 640, "colour stream width", low=1),
    Param("color_height", 480, "colour stream height", low=1),
    Param("color_fps", 30, "colour stream frame rate", low=1),
    Param("enable_depth", False, "also publish depth (16UC1, mm)"),
    Param("align_depth", True, "depth aligned to the colour image (aligned_depth_to_color/...)"),
    Param("depth_width", 640, "depth stream width", low=1),
    Param("depth_height", 480, "depth stream height", low=1),
    Param("depth_fps", 30, "depth stream frame rate", low=1),
    Param("camera_namespace", "camera", "topic prefix, as realsense-ros"),
    Param("camera_name", "camera", "second topic prefix and frame id prefix, as realsense-ros"),
    Param("timestamp_source", "ros", "ros: the ROS clock when the frameset arrived; frame: the frame's own "
                                     "timestamp (the device's or the recording's clock)", choices=TIMESTAMP_SOURCES),
    Param("frame_timeout_s", 2.0, "no frames for this long: the device is considered gone", low=0.0),
    Param("reconnect_period_s", 1.0, "time between reconnect attempts", low=0.0),
    Param("wait_for_device", False, "false: exit with an error when no device is connected at start; true: wait"),
]


class DeviceError(RuntimeError):
    """No usable camera (or file); the node exits with code 1."""


def camera_info_from_intrinsics(intr: Any, frame_id: str) -> CameraInfo:
    """sensor_msgs/CameraInfo from pyrealsense2 intrinsics (pinhole; K, P, and D as realsense-ros fills them)."""
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(intr.width), int(intr.height)
    model = str(intr.model).rsplit(".", 1)[-1]
    info.distortion_model = "equidistant" if model.startswith("kannala") else "plumb_bob"
    info.d = [float(c) for c in intr.coeffs]
    fx, fy, cx, cy = float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy)
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class RealSenseNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        self.serial = p["serial_no"]
        self.playback_file = p["playback_file"]
        self.loop = p["loop_playback"]
        self.color = (p["color_width"], p["color_height"], p["color_fps"])
        self.enable_depth = p["enable_depth"]
        self.align_depth = p["align_depth"]
        self.depth = (p["depth_width"], p["depth_height"], p["depth_fps"])
        ns, name = p["camera_namespace"], p["camera_name"]
        self.ts_source = p["timestamp_source"]
        self.frame_timeout_s = p["frame_timeout_s"]
        self.reconnect_period_s = p["reconnect_period_s"]
        self.wait_for_device = p["wait_for_device"]
        if self.playback_file and not os.path.isfile(self.playback_file):
            raise DeviceError(f"playback_file {self.playback_file!r} does not exist")

        import pyrealsense2 as rs  # imported here so a missing libusb is reported as the node's error

        self.rs = rs
        prefix = f"{ns}/{name}".strip("/")
        self.color_frame = f"{name}_color_optical_frame"
        self.depth_frame = f"{name}_depth_optical_frame"
        # Reliable, like realsense-ros' default: best-effort and reliable subscribers both match (a
        # recorder that must not lose frames subscribes reliably; a policy with sensor-data QoS).
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_color = self.create_publisher(Image, f"{prefix}/color/image_raw", qos)
        self.pub_color_info = self.create_publisher(CameraInfo, f"{prefix}/color/camera_info", 10)
        depth_topic = "aligned_depth_to_color" if self.align_depth else "depth"
        depth_image = "image_raw" if self.align_depth else "image_rect_raw"
        self.pub_depth = (self.create_publisher(Image, f"{prefix}/{depth_topic}/{depth_image}", qos)
                          if self.enable_depth else None)
        self.pub_depth_info = (self.create_publisher(CameraInfo, f"{prefix}/{depth_topic}/camera_info", 10)
                               if self.enable_depth else None)

        self.finished = False
        self.exit_code = 0
        self.published = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._pipeline: Any = None
        self._info: dict[str, CameraInfo] = {}
        self._last_numbers: dict[str, int] = {}
        self._align = rs.align(rs.stream.color) if self.enable_depth and self.align_depth else None
        try:
            self._open()  # raises DeviceError: no device, wrong serial, bad profile
        except DeviceError as err:
            if not self.wait_for_device or self.playback_file:
                raise
            self.get_logger().warning(f"{err}; waiting for one (wait_for_device)")
        self._thread = threading.Thread(target=self._capture_loop, name="realsense_capture", daemon=True)
        self._thread.start()

    # --- device ------------------------------------------------------------------------------------
    def _open(self) -> None:
        rs = self.rs
        cfg = rs.config()
        if self.playback_file:
            cfg.enable_device_from_file(self.playback_file, repeat_playback=bool(self.loop))
            # A recording holds its own profiles; enable_stream would have to match them exactly.
            what = f"file {self.playback_file}"
        else:
            serials = [dev.get_info(rs.camera_info.serial_number) for dev in rs.context().query_devices()]
            if not serials:
                raise DeviceError("no RealSense device is connected (check the USB cable, `rs-enumerate-devices`, "
                                  "and that libusb-1.0-0 is installed); or set playback_file to play a recording")
            if self.serial and self.serial not in serials:
                raise DeviceError(f"no RealSense device with serial_no {self.serial!r}; connected: {serials}")
            if self.serial:
                cfg.enable_device(self.serial)
            w, h, fps = self.color
            cfg.enable_stream(rs.stream.color, int(w), int(h), rs.format.rgb8, int(fps))
            if self.enable_depth:
                dw, dh, dfps = self.depth
                cfg.enable_stream(rs.stream.depth, int(dw), int(dh), rs.format.z16, int(dfps))
            what = f"device {self.serial or serials[0]}"
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as err:
            raise DeviceError(f"cannot start {what}: {err}") from err
        if self.playback_file:
            profile.get_device().as_playback().set_real_time(True)  # play at the recorded rate
        self._info.clear()
        for s in profile.get_streams():
            vs = s.as_video_stream_profile()
            if s.stream_type() == rs.stream.color:
                self._info["color"] = camera_info_from_intrinsics(vs.get_intrinsics(), self.color_frame)
            elif s.stream_type() == rs.stream.depth:
                self._info["depth"] = camera_info_from_intrinsics(vs.get_intrinsics(), self.depth_frame)
        if "color" not in self._info:
            pipeline.stop()
            raise DeviceError(f"{what} has no colour stream")
        self._pipeline = pipeline
        self._last_numbers.clear()
        streams = ", ".join(f"{k} {v.width}x{v.height}" for k, v in self._info.items())
        self.get_logger().info(f"{'playing' if self.playback_file else 'streaming from'} {what}: {streams}")

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass
            self._pipeline = None

    # --- capture ----------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        timeout_ms = int(self.frame_timeout_s * 1000)
        while not self._stop.is_set():
            if self._pipeline is None:
                try:
                    self._open()
                    self.reconnects += 1
                    self.get_logger().info("camera back: publishing again")
                except DeviceError as err:
                    self.get_logger().warning(f"reconnecting: {err}", throttle_duration_sec=10.0)
                    self._stop.wait(self.reconnect_period_s)
                    continue
            try:
                ok, frames = self._pipeline.try_wait_for_frames(timeout_ms)
            except RuntimeError as err:  # the device went away mid-call
                ok, frames = False, None
                self.get_logger().warning(f"camera error: {err}")
            if not ok:
                if self.playback_file and not self.loop:
                    self.get_logger().info(f"end of {self.playback_file}; {self.published} framesets published")
                    self.finished = True
                    return
                self.get_logger().warning(f"no frames for {self.frame_timeout_s:g} s: camera lost, reconnecting")
                self._close()
                continue
            try:
                self._publish(frames)
            except RuntimeError as err:  # a frame that cannot be read: skip it, keep streaming
                self.get_logger().warning(f"dropped a frameset: {err}", throttle_duration_sec=5.0)

    def _new(self, key: str, frame: Any) -> bool:
        # Playback (and some devices) hand the same frame out in several framesets: publish it once.
        n = int(frame.get_frame_number())
        if self._last_numbers.get(key) == n:
            return False
        self._last_numbers[key] = n
        return True

    def _stamp(self, frame: Any) -> int:
        if self.ts_source == "frame":
            return round(frame.get_timestamp() * 1e6)  # ms -> ns
        return self.get_clock().now().nanoseconds

    def _publish(self, frames: Any) -> None:
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if color and self._new("color", color):
            stamp = self._stamp(color)
            img = ros_io.image_message(np.asanyarray(color.get_data()), "rgb8", self.color_frame, stamp)
            info = self._info["color"]
            ros_io.set_stamp(info.header.stamp, stamp)
            self.pub_color.publish(img)
            self.pub_color_info.publish(info)
            self.published += 1
        if self.pub_depth is None:
            return
        depth = frames.get_depth_frame()
        if depth and self._new("depth", depth):
            stamp = self._stamp(depth)
            frame_id = self.color_frame if self._align is not None else self.depth_frame
            img = ros_io.image_message(np.asanyarray(depth.get_data()), "16UC1", frame_id, stamp)
            info = self._info["color" if self._align is not None else "depth"]
            ros_io.set_stamp(info.header.stamp, stamp)
            self.pub_depth.publish(img)
            self.pub_depth_info.publish(info)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.frame_timeout_s + 1.0)
        self._close()


def _describe_error(err: BaseException) -> tuple[str, int]:
    if isinstance(err, ImportError):
        return (f"pyrealsense2 does not import ({err}): pip install pyrealsense2, and on Debian/Ubuntu "
                "apt-get install libusb-1.0-0", 1)
    return str(err), 1


def _close(node: RealSenseNode, signalled: bool) -> None:
    node.shutdown()
    rclpy.logging.get_logger(NODE_NAME).info(f"{node.published} colour frames published, "
                                             f"{node.reconnects} reconnects")


def main(args: list[str] | None = None) -> int:
    return run_node(RealSenseNode, NODE_NAME, args=args, config_errors=(DeviceError, ValueError, ImportError),
                    describe_error=_describe_error, close=_close)


if __name__ == "__main__":
    sys.exit(main())
