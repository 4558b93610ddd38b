"""Recording benchmark: two 640x480 cameras at 30 Hz + joint states at 200 Hz into `collect_node`.

    python -m dfp_ros.data.collect_bench [--duration 120] [--episode-s 20] [--out outputs/collect_bench]

This process publishes the streams (a steady-clock loop: 7-joint JointState at 200 Hz, two rgb8 640x480
images at 30 Hz, a 7-value Float64MultiArray command at 100 Hz) on a private DDS graph; `collect_node`
runs as its own process (timer sampling at 30 fps, max_age 0.1 s) and records episodes of
`--episode-s` seconds, started and saved over its services. Reported:

- frames: expected (30 fps x recorded time), written, not written (missing / stale streams = dropped);
- publisher rates achieved (so a slow publisher is not blamed on the recorder);
- write throughput: frames/s and MB/s of what ended up on disk, and the writer thread's busy fraction;
- time from `~/save` to the episode on disk (lerobot's save_episode: parquet + video encoding), p50 / max;
  the last episode's save is waited for before the node is stopped.

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

W, H, CAM_HZ, JOINT_HZ, CMD_HZ, FPS = 640, 480, 30, 200, 100, 30
JOINTS = [f"joint{i}" for i in range(7)]


def _env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    # Fast DDS's TCP + shared-memory transports for large messages (its default UDP loses 640x480 frames).
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0", HF_HUB_OFFLINE="1")
    env.pop("ROS_STATIC_PEERS", None)
    return env


def _collect_cmd(root: Path, vcodec: str, streaming: bool) -> list[str]:
    p = {"root": str(root), "repo_id": "local/collect_bench", "fps": FPS, "sample_on": "timer", "max_age_s": 0.1,
         "state_topics": "[joint_states]", "state_types": "[joint_state]", "joint_names": f"[{', '.join(JOINTS)}]",
         "action_topic": "teleop/command", "action_names": f"[{', '.join(f'a{i}' for i in range(7))}]",
         "camera_names": "[cam0, cam1]", "camera_topics": "[bench/cam0/image_raw, bench/cam1/image_raw]",
         "camera_heights": f"[{H}, {H}]", "camera_widths": f"[{W}, {W}]", "episode_topic": "''",
         "keyboard": "false", "progress_period_s": "5.0", "vcodec": vcodec,
         "streaming_encoding": str(streaming).lower(), "camera_qos": "reliable"}
    prof = os.environ.get("DFP_COLLECT_PROFILE")  # a path: run the recorder under cProfile (for tuning)
    cmd = [sys.executable, *(["-m", "cProfile", "-o", prof] if prof else []), "-m", "dfp_ros.nodes.collect_node",
           "--ros-args"]
    for k, v in p.items():
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def _dir_mb(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6


def _frames(n: int) -> list[array.array]:
    """n camera images with smooth structure that moves (random noise would be an encoder's worst case)."""
    y, x = np.mgrid[0:H, 0:W]
    out = []
    for k in range(n):
        r = (128 + 127 * np.sin((x + 8 * k) / 40.0)).astype(np.uint8)
        g = (128 + 127 * np.cos((y - 5 * k) / 30.0)).astype(np.uint8)
        b = ((x + y + 4 * k) % 256).astype(np.uint8)
        a = array.array("B")
        a.frombytes(np.ascontiguousarray(np.stack([r, g, b], axis=-1)).tobytes())
        out.append(a)
    return out


def run(duration: float, episode_s: float, out: Path, vcodec: str, domain: int,
        streaming: bool = False) -> dict[str, Any]:
    import rclpy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    root = out / "dataset"
    if root.exists():
        shutil.rmtree(root)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "collect_node.log"
    env = _env(domain)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_collect_cmd(root, vcodec, streaming), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    saved_env = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_BUILTIN_TRANSPORTS")}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = env["FASTDDS_BUILTIN_TRANSPORTS"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("collect_bench", context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    result: dict[str, Any] = {}
    try:
        pub_j = node.create_publisher(JointState, "joint_states", 100)
        pub_c = node.create_publisher(Float64MultiArray, "teleop/command", 100)
        # Reliable cameras (realsense-ros' default QoS): best effort loses large images on this DDS.
        pub_i = [node.create_publisher(Image, f"bench/cam{k}/image_raw", 5) for k in (0, 1)]
        clients = {n: node.create_client(Trigger, f"/collect_node/{n}") for n in ("start", "save")}
        deadline = time.monotonic() + 120
        while not all(c.service_is_ready() for c in clients.values()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"collect_node did not come up; see {log_path}")
            ex.spin_once(timeout_sec=0.1)

        def call(name: str) -> None:
            fut = clients[name].call_async(Trigger.Request())
            while not fut.done():
                ex.spin_once(timeout_sec=0.01)
            if not fut.result().success:
                raise RuntimeError(f"~/{name}: {fut.result().message}")

        payloads = _frames(30)  # pre-built: the publisher's own cost stays small
        counts = {"joint_states": 0, "cameras": 0, "commands": 0, "publish_errors": 0}

        def publish(pub: Any, msg: Any) -> None:
            try:
                pub.publish(msg)
            except Exception:  # Fast DDS refuses when a reliable reader lags far behind: count it
                counts["publish_errors"] += 1
        period = {"j": 1.0 / JOINT_HZ, "i": 1.0 / CAM_HZ, "c": 1.0 / CMD_HZ}
        episodes = max(1, round(duration / episode_s))
        t_start = time.monotonic()
        recorded_s = 0.0
        record = os.environ.get("DFP_COLLECT_BENCH_IDLE") is None  # diagnostic: publish, record nothing
        for _ep in range(episodes):
            if record:
                call("start")
            t0 = time.monotonic()
            nxt = dict.fromkeys(period, t0)
            k = 0
            while (now := time.monotonic()) < t0 + episode_s:
                if now >= nxt["j"]:
                    msg = JointState(name=JOINTS, position=[float(now)] * 7)
                    msg.header.stamp = node.get_clock().now().to_msg()
                    publish(pub_j, msg)
                    counts["joint_states"] += 1
                    nxt["j"] += period["j"]
                if now >= nxt["c"]:
                    publish(pub_c, Float64MultiArray(data=[float(now)] * 7))
                    counts["commands"] += 1
                    nxt["c"] += period["c"]
                if now >= nxt["i"]:
                    stamp = node.get_clock().now().to_msg()
                    for p in pub_i:
                        img = Image(height=H, width=W, encoding="rgb8", step=W * 3)
                        img.header.stamp = stamp
                        img.data = payloads[k % len(payloads)]
                        publish(p, img)
                    counts["cameras"] += 1
                    k += 1
                    nxt["i"] += period["i"]
                ex.spin_once(timeout_sec=0)
                time.sleep(max(0.0, min(nxt.values()) - time.monotonic()))
            recorded_s += time.monotonic() - t0
            if record:
                call("save")
        publish_s = time.monotonic() - t_start
        # Wait for the last episode to be on disk, then stop the node (SIGINT: finalize).
        deadline = time.monotonic() + 600
        while record and f"episode {episodes - 1} on disk" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        t_all = time.monotonic() - t_start
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        text = log_path.read_text(errors="replace")
        m = re.search(r"collect summary (\{.*\})", text)
        summary = json.loads(m.group(1)) if m else {}
        expected = int(recorded_s * FPS)
        written = sum(summary.get("saved_lengths", []))
        mb = _dir_mb(root) if root.exists() else 0.0
        lat = summary.get("save_latency_s_p50"), summary.get("save_latency_s_max")
        result = {
            "duration_s": round(recorded_s, 1), "episodes": episodes, "fps": FPS,
            "cameras": f"2 x {W}x{H} rgb8 @ {CAM_HZ} Hz", "joint_states_hz": JOINT_HZ, "vcodec": vcodec,
            "frames_expected": expected, "frames_written": written,
            "frames_not_written": summary.get("frames_not_written"),
            "late_frames": summary.get("late_frames"),
            "dropped_by_stream": {**summary.get("missing", {}), **{f"stale:{k}": v for k, v in
                                                                  summary.get("stale", {}).items()}},
            "publisher_hz": {k: round(v / publish_s, 1) for k, v in counts.items() if k != "publish_errors"},
            "publish_errors": counts["publish_errors"], "streaming_encoding": streaming,
            "write_frames_per_s": round(written / t_all, 1),
            "dataset_mb": round(mb, 1), "write_mb_per_s_on_disk": round(mb / t_all, 2),
            "raw_camera_mb_per_s": round(2 * W * H * 3 * FPS / 1e6, 1),
            "writer_busy_fraction": round(summary.get("writer_busy_s", 0.0) / t_all, 2),
            "save_to_disk_s_p50": lat[0], "save_to_disk_s_max": lat[1],
            "total_wall_s": round(t_all, 1), "collect_rc": proc.returncode,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        ex.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfp_ros.data.collect_bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds recorded in total")
    ap.add_argument("--episode-s", type=float, default=20.0, help="seconds per episode")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--vcodec", default="libsvtav1", help="video codec lerobot encodes with")
    ap.add_argument("--streaming", action="store_true",
                    help="encode video while recording (lerobot streaming_encoding) instead of PNG + encode at save")
    ap.add_argument("--domain", type=int, default=1 + (os.getpid() % 100), help="ROS_DOMAIN_ID")
    args = ap.parse_args(argv)
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="collect_bench_")
        out = Path(tmp)
    try:
        res = run(args.duration, args.episode_s, out, args.vcodec, args.domain, args.streaming)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"recorded {res['duration_s']} s in {res['episodes']} episodes: {res['frames_written']}/"
          f"{res['frames_expected']} frames written, {res['frames_not_written']} not written; "
          f"{res['write_frames_per_s']} frames/s, {res['write_mb_per_s_on_disk']} MB/s on disk; "
          f"save -> on disk p50 {res['save_to_disk_s_p50']} s, max {res['save_to_disk_s_max']} s")
    print(json.dumps(res))
    return 0 if res.get("collect_rc") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
