"""`reward_node`: a learned success detector on the robot's cameras (no torch: ONNX Runtime, numpy, OpenCV).

Runs a reward model exported by `dfp train-reward` beside the policy (rosetta's "classifier as a second
runner remapped to the reward topic", HIL-SERL's reward classifier). The node owns parameters (`PARAMS`),
QoS and callbacks; frames become arrays through `ros_io`, and what is done with them — freshness, which
frames make an observation, scores, rewards, debounce, time-outs, statistics — is the ROS-free
`SuccessDetector` (dfp_ros/runtime/reward_runtime.py, where its rules are written down).

Topics: the model's cameras (`camera.<name>.topic`, no default: a model camera without a topic refuses
to start; sensor_msgs/Image in the declared `camera.<name>.encoding`, or CompressedImage with
`camera.<name>.compressed`; best effort), and, for a model that takes state, the state sources
(`state_topics`, as policy_node) in; `episode_topic` (std_msgs/String: start opens an episode, an end
event closes it) in. Out: `reward_topic` (std_msgs/Float32, one per scored observation, published in the
callback of the frame that completed it, so its send time falls in that frame's step), `event_topic`
(std_msgs/String: "success" after `debounce_frames` consecutive positive frames, "timeout" after
`episode_timeout_s` without one) and `/diagnostics` (rate, latency, current score, frames dropped per
reason: stale, wrong_size, wrong_encoding, unknown_encoding, decode; torch_imported).

Live model swap: `model_path` set at run time loads the new model (contract, acceptance test, warm-up)
in the on-set callback; a model that is not a reward model, fails its test, or names other cameras
than the ones subscribed (sizes may differ: frames are resized) is refused, the reason goes back in the
SetParametersResult and the old model keeps running.

Clocks: a frame's age (`max_frame_age_s`) is the node's ROS clock minus the frame's header stamp (with
`use_sim_time` the simulator's time), time-outs run on the ROS clock too; rates and latencies on the
monotonic clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, String

from dfp_ros import contracts
from dfp_ros.contracts import ContractError, RewardModelMetadata
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params, watch_params
from dfp_ros.nodes.ros_io import ObservationError
from dfp_ros.runtime.observation import RAW_ENCODINGS
from dfp_ros.runtime.providers import DEVICES
from dfp_ros.runtime.reward_runtime import (
    REWARD_MODES,
    RewardRuntime,
    SuccessDetector,
    check_encoding,
    encoding_mismatch,
    load_reward_model,
    swap_mismatch,
)

NODE_NAME = "reward_node"
POLL_PERIOD_S = 0.05  # episode time-outs are checked this often

PARAMS = [
    Param("model_path", "", "reward model (dfp train-reward's reward.onnx); set at run time to swap models "
          "(validated first)", runtime=True),
    Param("device", "cpu", "ONNX Runtime execution providers (auto = TensorRT, CUDA, CPU as this build has them)",
          choices=DEVICES),
    Param("threshold", -1.0, "score at or above which a frame is positive; < 0 = the model's own (its held-out "
          "F1 optimum)", runtime=True, high=1.0),
    Param("reward_mode", "sparse", "sparse: 0 for a positive frame, -1 otherwise (the simulator's convention); "
          "score: the score itself", runtime=True, choices=REWARD_MODES),
    Param("debounce_frames", 3, "consecutive positive frames that make a success event", runtime=True, low=1),
    Param("episode_timeout_s", 0.0, "publish timeout this long after an episode's start without success "
          "(0 = never)", runtime=True, low=0.0),
    Param("max_frame_age_s", 0.5, "frames stamped longer ago than this (node's ROS clock) are stale: no reward, "
          "no event, counted (0 = off: sim time without use_sim_time)", runtime=True, low=0.0),
    Param("max_stamp_skew_s", 0.0, "the model's cameras' frames make one observation when their stamps are at "
          "most this far apart (0 = one stamp, as one step's frames)", low=0.0),
    Param("max_obs_age_s", 0.5, "models with state: state older than this (receipt) is not used", low=0.001),
    *ros_io.STATE_PARAMS,
    Param("reward_topic", contracts.TOPIC_REWARD, "std_msgs/Float32 out, one per scored observation"),
    Param("episode_topic", contracts.TOPIC_EPISODE, "std_msgs/String episode events in (start opens an episode, "
          "success/failure/timeout/reset/discard end it); '' = no episodes: a success per run of positive frames"),
    Param("event_topic", contracts.TOPIC_EPISODE, "std_msgs/String out: success, timeout ('' = none)"),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages", low=0.01),
]
# Changed on a running node through SuccessDetector.set_options (model_path is swapped by the node).
DETECTOR_OPTIONS = ("threshold", "reward_mode", "debounce_frames", "episode_timeout_s", "max_frame_age_s")


def camera_params(meta: RewardModelMetadata) -> list[Param]:
    """camera.<name>.topic (no default: every model camera must be given one), .compressed, .encoding."""
    out = []
    for p in ros_io.camera_params(meta):  # type: ignore[arg-type]  # reads .cameras only
        out.append(Param(p.name, "", p.description) if p.name.endswith(".topic") else p)
    return out + [Param(f"camera.{c.name}.encoding", "rgb8", f"camera {c.name}: the raw frames' encoding; other "
                        "frames are dropped and counted", choices=RAW_ENCODINGS) for c in meta.cameras]


class RewardNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        if not p["model_path"]:
            raise ValueError("parameter model_path is required: a reward model from dfp train-reward")
        self._device, self.swaps, self.refused = p["device"], 0, 0
        runtime = self._load(p["model_path"])  # ContractError: the node cannot start without one
        meta = runtime.meta
        cams = declare_params(self, camera_params(meta))
        topics = ros_io.camera_topics(meta, cams)  # type: ignore[arg-type]
        no_topic = [name for name, (topic, _) in topics.items() if not topic]
        if no_topic:
            raise ValueError(f"the model's camera{'s' if len(no_topic) > 1 else ''} {no_topic} ha"
                             f"{'ve' if len(no_topic) > 1 else 's'} no topic: set "
                             f"{', '.join(f'camera.{n}.topic' for n in no_topic)}")
        for name, (_, compressed) in topics.items():
            why = None if compressed else encoding_mismatch(name, cams[f"camera.{name}.encoding"])
            if why:
                raise ValueError(why)
        sources = ros_io.state_sources(meta, p) if meta.state_dim else []  # type: ignore[arg-type]
        self._det = SuccessDetector(runtime, sources, max_state_age_s=p["max_obs_age_s"],
                                    max_stamp_skew_s=p["max_stamp_skew_s"], episodes=bool(p["episode_topic"]),
                                    **{k: p[k] for k in DETECTOR_OPTIONS})
        self._pending: RewardRuntime | None = None

        self._reward_pub = self.create_publisher(Float32, p["reward_topic"], ros_io.EVENTS)
        self._event_pub = self.create_publisher(String, p["event_topic"], ros_io.EVENTS) if p["event_topic"] else None
        self._diag_pub = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)
        for cam, (topic, compressed) in topics.items():
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     self._image_cb(cam, compressed, cams[f"camera.{cam}.encoding"]), ros_io.FRAMES)
            self.get_logger().info(f"camera {cam} <- {topic}{' (compressed)' if compressed else ''}")
        for i, src in enumerate(sources):
            joint = src.type == "joint_state"
            self.create_subscription(JointState if joint else Float32MultiArray, src.topic,
                                     self._joint_cb(i) if joint else self._array_cb(i), 10)
        if p["episode_topic"]:
            self.create_subscription(String, p["episode_topic"],
                                     lambda m: self._det.on_episode(m.data, self._now_ns()), ros_io.EVENTS)
        watch_params(self, PARAMS, self._apply_params, self._validate_params)
        self.create_timer(POLL_PERIOD_S, self._poll)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"ready: reward model sha256 {runtime.sha256[:12]} ({meta.labels or 'labels unknown'}), cameras "
            f"{[(c.name, c.height, c.width) for c in meta.cameras]}, state {meta.state_dim}, threshold "
            f"{self._det.threshold:.3f}, rewards {p['reward_mode']} on {p['reward_topic']}, success after "
            f"{p['debounce_frames']} positive frames on {p['event_topic'] or '(no events)'}")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # --- model ---------------------------------------------------------------------------------------------
    def _load(self, source: str) -> RewardRuntime:
        runtime, load_s = load_reward_model(source, self._device)
        acc = runtime.acceptance
        test = (f"acceptance test passed on {acc.provider} (error {acc.max_action_error:.2g} <= {acc.tolerance:g})"
                if acc else "no acceptance test in the model")
        self.get_logger().info(f"reward model {runtime.source} sha256 {runtime.sha256[:12]} on {runtime.providers[0]}:"
                               f" {test}; threshold {runtime.meta.threshold:.3f}; load + warm-up {load_s * 1e3:.1f} ms")
        return runtime

    def _validate_params(self, changed: dict) -> str | None:
        """On-set callback: a new model_path is loaded and checked here (a refusal changes nothing)."""
        self._pending = None
        if "model_path" in changed:
            try:
                new = self._load(changed["model_path"])
                why = swap_mismatch(self._det.runtime.meta, new.meta, self._det.sources)
                if why:
                    raise ContractError(f"{new.source}: {why}")
            except ContractError as e:
                self.refused += 1
                self.get_logger().error(f"model swap refused, keeping {self._det.runtime.sha256[:12]}: {e}")
                return f"model refused: {e}"
            self._pending = new
        return None

    def _apply_params(self, changed: dict) -> None:
        """Post-set callback: detector options, then the model validated above."""
        self._det.set_options(**{k: v for k, v in changed.items() if k in DETECTOR_OPTIONS})
        if "model_path" in changed and self._pending is not None:
            old, new = self._det.runtime, self._pending
            self._det.swap(new)
            self._pending = None
            self.swaps += 1
            self.get_logger().info(f"model swapped: {old.sha256[:12]} -> {new.sha256[:12]} ({changed['model_path']}); "
                                   f"threshold {self._det.threshold:.3f}")

    # --- inputs --------------------------------------------------------------------------------------------
    def _drop(self, where: str, error: ObservationError) -> None:
        self._det.reject(error)
        self.get_logger().warning(f"dropped a message from {where} ({error.kind}): {error}", throttle_duration_sec=1.0)

    def _image_cb(self, cam: str, compressed: bool, encoding: str) -> Callable[[Image | CompressedImage], None]:
        def on_frame(msg: Image | CompressedImage) -> None:
            received, now_ns = time.monotonic(), self._now_ns()
            try:
                if not compressed:
                    check_encoding(cam, msg.encoding, encoding)
                rgb = ros_io.image_rgb(msg, compressed)
                scored = self._det.on_image(cam, rgb, ros_io.stamp_ns(msg.header.stamp) or now_ns, now_ns, received)
            except ObservationError as e:
                self._drop(f"camera {cam}", e)
                return
            if scored is None:
                return
            self._reward_pub.publish(Float32(data=scored.reward))
            if scored.event:
                self._publish_event(scored.event, f"score {scored.score:.3f} >= {self._det.threshold:.3f} for "
                                                  f"{self._det.debounce_frames} frames")
            self._det.record_latency(time.monotonic() - received)

        return on_frame

    def _array_cb(self, index: int) -> Callable[[Float32MultiArray], None]:
        def on_state(msg: Float32MultiArray) -> None:
            try:
                self._det.on_state_array(index, msg.data, self._now_ns(), time.monotonic())
            except ObservationError as e:
                self._drop(self._det.sources[index].topic, e)

        return on_state

    def _joint_cb(self, index: int) -> Callable[[JointState], None]:
        def on_joints(msg: JointState) -> None:
            try:
                self._det.on_joint_state(index, list(msg.name), ros_io.joint_fields(msg),
                                         ros_io.stamp_ns(msg.header.stamp) or self._now_ns(), time.monotonic())
            except ObservationError as e:
                self._drop(self._det.sources[index].topic, e)

        return on_joints

    # --- outputs -------------------------------------------------------------------------------------------
    def _publish_event(self, event: str, why: str) -> None:
        self.get_logger().info(f"episode {event}: {why}")
        if self._event_pub is not None:
            self._event_pub.publish(String(data=event))

    def _poll(self) -> None:
        if self._det.poll(self._now_ns()) == "timeout":
            self._publish_event("timeout", f"no success within episode_timeout_s {self._det.episode_timeout_s:g}")

    def _publish_diagnostics(self) -> None:
        values = self._det.stats(time.monotonic())
        values.update(model_swaps=self.swaps, models_refused=self.refused)
        if values["rate_hz"] > 0:
            level, message = DiagnosticStatus.OK, "scoring"
        else:
            level, message = DiagnosticStatus.WARN, "no frames scored"
        self._diag_pub.publish(ros_io.diagnostics(f"{self.get_name()}: reward", self.get_fully_qualified_name(),
                                                  level, message, values, self._now_ns()))


def _cannot_start(err: BaseException) -> tuple[str, int]:
    # A detector that does not fit its cameras must not run half-way: one line, exit 1.
    return f"cannot start: {err}", 1


def main(args: list[str] | None = None) -> int:
    return run_node(RewardNode, NODE_NAME, args=args,
                    config_errors=(ContractError, ValueError, InvalidParameterTypeException),
                    describe_error=_cannot_start)


if __name__ == "__main__":
    sys.exit(main())
