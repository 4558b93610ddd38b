"""reward_node and the detector loop it runs (SuccessDetector), with a detector trained here on camera frames
where success shows as a bright patch (test_reward_classifier's dataset).

The loop's rules run with a fake clock; the node runs as a real process over DDS: success on a successful
episode's frames and not on a failed one's (a time-out instead), stale frames give no reward (counted), a
live model swap refused or taken, and detectors that do not fit their cameras refused at start in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("lerobot", reason="the detector is trained on a LeRobot dataset")

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from ros_graph import RosGraph, domain_id, ros_env, running_node, start_node
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, String
from test_reward_classifier import FAILED, patch_frame, train_patch_detector

from dfp_ros.contracts import CameraSpec, RewardModelMetadata
from dfp_ros.learning.reward_classifier import RewardClassifier
from dfp_ros.learning.reward_export import export_reward_onnx
from dfp_ros.nodes.ros_io import image_message
from dfp_ros.runtime.observation import ObservationError
from dfp_ros.runtime.reward_runtime import RewardRuntime, SuccessDetector, swap_mismatch

POLICY = str(Path(__file__).resolve().parents[1] / "models" / "cube_single.onnx")
NS = 1_000_000_000


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> RewardRuntime:
    _, res = train_patch_detector(tmp_path_factory.mktemp("reward_node"))
    return RewardRuntime(res["model"])


@pytest.fixture(scope="module")
def two_camera_model(tmp_path_factory) -> str:
    """An untrained front + wrist detector: for the rules that do not depend on what it scores."""
    torch.manual_seed(0)
    meta = RewardModelMetadata(state=[], cameras=[CameraSpec("front", "observation.images.front", 24, 24),
                                                  CameraSpec("wrist", "observation.images.wrist", 16, 16)],
                               threshold=0.5)
    path = tmp_path_factory.mktemp("two_cams") / "two.onnx"
    export_reward_onnx(RewardClassifier(meta, (8, 8), 16, (16,)), path)
    return str(path)


def loop(runtime: RewardRuntime, **kw) -> SuccessDetector:
    options = {"max_frame_age_s": 0.5, "max_state_age_s": 0.5, "debounce_frames": 3, "episode_timeout_s": 2.0,
               "reward_mode": "sparse", "threshold": -1.0, **kw}
    return SuccessDetector(runtime, [], **options)


def frames(det: SuccessDetector, episode: int, ts: range, start_ns: int, success: bool = True) -> list:
    """Each frame of `episode` at 20 Hz from start_ns, fresh; the detector's answers."""
    out = []
    for t in ts:
        ns = start_ns + t * NS // 20
        out.append(det.on_image("front", patch_frame(episode, t, success and t >= 8), ns, ns + 1000, ns / NS))
    return out


def test_debounced_success_one_reward_per_frame_and_only_in_an_episode(detector):
    det = loop(detector)
    before = frames(det, 0, range(12), 0)  # no start heard yet: rewards, no event
    assert [s.reward for s in before] == [-1.0] * 8 + [0.0] * 4 and not any(s.event for s in before)
    det.on_episode("start", 1 * NS)
    out = frames(det, 0, range(12), 1 * NS)
    assert [s.positive for s in out] == [False] * 8 + [True] * 4
    assert [s.event for s in out] == [None] * 10 + ["success", None]  # the 3rd positive frame in a row
    assert det.episode == "ended" and det.successes == 1 and det.poll(10 * NS) is None
    det.set_options(reward_mode="score")
    assert frames(det, 0, range(11, 12), 2 * NS)[0].reward == pytest.approx(det.last_score)


def test_failed_episode_times_out_and_stale_frames_are_not_scored(detector):
    det = loop(detector)
    det.on_episode("start", 0)
    out = frames(det, FAILED[0], range(12), 0, success=False)
    assert not any(s.positive or s.event for s in out)
    assert det.poll(1 * NS) is None and det.poll(2 * NS + 1) == "timeout" and det.episode == "ended"
    det.on_episode("start", 3 * NS)
    bright = patch_frame(0, 9, True)
    for i in range(4):  # stamped a second before the node's clock: stale
        with pytest.raises(ObservationError) as e:
            det.on_image("front", bright, 3 * NS + i, 4 * NS + i, 4.0)
        assert e.value.kind == "stale"
        det.reject(e.value)
    stats = det.stats(5.0)
    assert stats["dropped_stale"] == 4 and stats["frames_scored"] == 12 and det.successes == 0
    assert stats["torch_imported"] is True  # this test process trained a model; the node's says false


def test_two_cameras_make_one_observation_per_stamp_and_swaps_keep_the_cameras(two_camera_model, detector):
    runtime = RewardRuntime(two_camera_model)
    det = loop(runtime, episode_timeout_s=0.0)
    img = np.full((40, 40, 3), 100, np.uint8)  # any size: resized to each camera's
    assert det.on_image("front", img, 1 * NS, 1 * NS, 1.0) is None  # waits for the wrist frame of that stamp
    assert det.on_image("wrist", img, 1 * NS, 1 * NS, 1.0) is not None
    assert det.on_image("front", img, 1 * NS, 1 * NS, 1.0) is None  # that stamp is scored already
    assert det.on_image("front", img, 2 * NS, 2 * NS, 2.0) is None
    assert det.on_image("wrist", img, 2 * NS, 2 * NS, 2.0) is not None and det.scored == 2
    assert det.on_image("wrist", img, 3 * NS, 3 * NS, 3.0) is None  # front still at 2 s: not one instant
    assert swap_mismatch(runtime.meta, detector.meta, []) is not None  # front only: the wrist subscription
    assert swap_mismatch(runtime.meta, runtime.meta, []) is None


def _set_model(graph: RosGraph, client, path: str):
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=path)
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name="model_path", value=value)]))
    assert graph.spin_until(future.done, 30.0), "reward_node did not answer set_parameters"
    return future.result().results[0]


def _diagnostics(diag) -> dict[str, str]:
    values: dict[str, str] = {}
    for msg in diag.messages:
        for status in msg.status:
            if "reward_node" in status.name:
                values = {kv.key: kv.value for kv in status.values}
    return values


def test_node_success_on_success_frames_timeout_on_failure_stale_frames_counted_live_swap(detector, tmp_path):
    dom = domain_id(offset=241)
    params = {"model_path": detector.source, "camera.front.topic": "/cam/image_raw", "debounce_frames": 3,
              "episode_timeout_s": 1.5, "max_frame_age_s": 0.5, "diagnostics_period_s": 0.5}
    with running_node("dfp_ros.nodes.reward_node", params, ros_env(dom), log_dir=tmp_path) as proc, \
            RosGraph(dom) as graph:
        cam = graph.publisher("/cam/image_raw", Image)
        episode = graph.publisher("/episode", String)
        rewards = graph.collect("/reward", Float32)
        events = graph.collect("/episode", String)
        diag = graph.collect("/diagnostics", DiagnosticArray)
        # /episode: the node's subscription and our own collector.
        assert graph.wait_matched(cam, timeout=60) and graph.wait_matched(episode, n=2), proc.log()

        def play(ep: int, success: bool, age_s: float = 0.0, repeat: int = 1) -> int:
            """Publish the episode's frames at 20 Hz (stamped `age_s` ago); how many."""
            n = 0
            for t in list(range(12)) * repeat:
                now = graph.node.get_clock().now().nanoseconds
                cam.publish(image_message(patch_frame(ep, t, success and t >= 8), "rgb8", "cam", now - int(age_s * NS)))
                n += 1
                graph.spin_for(0.05)
            return n

        def episode_events() -> list[str]:
            return [m.data for m in events.messages if m.data != "start"]

        episode.publish(String(data="start"))
        graph.spin_for(0.2)
        sent = play(0, success=True)
        assert graph.spin_until(lambda: rewards.count >= sent, 5.0), (rewards.count, sent, proc.log()[-2000:])
        assert episode_events() == ["success"], proc.log()[-2000:]
        assert [m.data for m in rewards.messages] == [-1.0] * 8 + [0.0] * 4

        episode.publish(String(data="start"))  # a failed episode: no success, a time-out after 1.5 s
        graph.spin_for(0.2)
        sent += play(FAILED[0], success=False, repeat=2)
        assert graph.spin_until(lambda: rewards.count >= sent and len(episode_events()) > 1, 5.0)
        assert episode_events() == ["success", "timeout"], proc.log()[-2000:]
        assert all(m.data == -1.0 for m in rewards.messages[12:])

        episode.publish(String(data="start"))  # success frames, but a second old: no reward, no success
        graph.spin_for(0.2)
        play(0, success=True, age_s=1.0)
        for t in range(8, 11):  # fresh success frames in another encoding than the camera's (rgb8): dropped
            bgr = patch_frame(0, t, True)[..., ::-1]
            cam.publish(image_message(bgr, "bgr8", "cam", graph.node.get_clock().now().nanoseconds))
            graph.spin_for(0.05)
        assert graph.spin_until(lambda: int(_diagnostics(diag).get("dropped_wrong_encoding", 0)) >= 3, 3.0)
        assert rewards.count == sent and "success" not in episode_events()[2:]
        values = _diagnostics(diag)
        assert int(values["dropped_stale"]) == 12 and int(values["frames_scored"]) == sent, values
        assert int(values["frames_dropped"]) == 15, values
        assert values["torch_imported"] == "false" and float(values["latency_p99_ms"]) > 0

        client = graph.node.create_client(SetParameters, "/reward_node/set_parameters")
        assert graph.spin_until(client.service_is_ready, 10.0)
        refused = _set_model(graph, client, POLICY)
        assert not refused.successful and "not a reward model" in refused.reason, refused.reason
        taken = _set_model(graph, client, detector.source)
        assert taken.successful, taken.reason
        assert graph.spin_until(lambda: _diagnostics(diag).get("model_swaps") == "1", 10.0), _diagnostics(diag)
        values = _diagnostics(diag)
        assert values["model_swaps"] == "1" and values["models_refused"] == "1", values
        assert proc.poll() is None


def test_detectors_that_do_not_fit_their_cameras_are_refused_at_start_in_one_line(detector, two_camera_model,
                                                                                   tmp_path):
    cases = [({"model_path": two_camera_model, "camera.front.topic": "/cam"}, "camera.wrist.topic"),
             ({"model_path": POLICY, "camera.front.topic": "/cam"}, "not a reward model"),
             ({"model_path": detector.source, "camera.front.topic": "/cam", "camera.front.encoding": "mono8"},
              "mono8"),
             ({"camera.front.topic": "/cam"}, "model_path is required")]
    procs = [start_node("dfp_ros.nodes.reward_node", params, ros_env(domain_id(offset=242)), log_dir=tmp_path,
                        log_path=tmp_path / f"refused_{i}.log") for i, (params, _) in enumerate(cases)]
    for proc, (_, message) in zip(procs, cases, strict=True):
        assert proc.wait(timeout=90) == 1, proc.log()
        lines = [line for line in proc.log().splitlines() if "cannot start" in line]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.log(), proc.log()
