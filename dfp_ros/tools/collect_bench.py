"""Recording benchmark: two 640x480 cameras at 30 Hz + joint states at 200 Hz into `collect_node`.

    python -m dfp_ros.tools.collect_bench [--duration 120] [--episode-s 20] [--out outputs/collect_bench]
        [--vcodec h264|libsvtav1] [--no-streaming] [--dds shm_large|large_data|env]

This process publishes the streams (a steady-clock loop: 7-joint JointState at 200 Hz, two rgb8 640x480
images at 30 Hz, a 7-value Float64MultiArray command at 100 Hz) on a private DDS graph; `collect_node`
runs as its own process (timer sampling at 30 fps, max_age 0.1 s) and records episodes of
`--episode-s` seconds, started and saved over its services. The streams start a second before the first
episode, as a robot's run before recording starts. Reported:

- frames: expected (30 fps x recorded time), written, not written (missing / stale streams = dropped);
- publisher rates achieved (so a slow publisher is not blamed on the recorder);
- write throughput: frames/s and MB/s of what ended up on disk, and the writer's busy fraction;
- time from `~/save` to the episode on disk (lerobot's save_episode: parquet + video encoding), p50 / max;
  the last episode's save is waited for before the node is stopped;
- where the time goes: CPU seconds of this publisher, of the recorder (node + writer process) and of the
  writer process alone; how late the node handled messages (p50 / max); messages received per stream;
- the machine's 1-minute load at start and end (other work on it makes every number worse).

The last line of the output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import re
import resource
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfp_ros.tools.graph import GraphMonitor, domain_id, graph_env, node_command, start_process, stop

W, H, CAM_HZ, JOINT_HZ, CMD_HZ, FPS = 640, 480, 30, 200, 100, 30
JOINTS = [f"joint{i}" for i in range(7)]
CAMERAS = ["cam0", "cam1"]


# Fast DDS transport configurations compared by `--dds` (every process of the graph gets the same one):
#   shm_large   config/fastdds_shm_large.xml: shared memory with a 32 MB segment (+ UDPv4 for other hosts).
#               Measured here: 640x480 images in ~2-4 ms (p50), none lost, joint states p99 ~1.5 ms.
#   large_data  FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA: a 921 KB image does not fit Fast DDS's default 512 KB
#               shared-memory segment and goes over TCP, where it also holds up the small messages behind it
#               (images ~12 ms p50, joint states p99 250-470 ms, some images lost).
#   env         whatever the environment already says.
DDS_CHOICES = ("shm_large", "large_data", "env")
_DDS_KEYS = ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE")
SHM_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm_large.xml"


def _env(domain: int, dds: str = "shm_large") -> dict[str, str]:
    env = graph_env(domain)
    if dds != "env":
        for k in _DDS_KEYS:
            env.pop(k, None)
    if dds == "shm_large":
        if not SHM_PROFILE.is_file():
            raise FileNotFoundError(f"{SHM_PROFILE} is missing (run the bench from a checkout, or use --dds env)")
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    elif dds == "large_data":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _collect_cmd(root: Path, vcodec: str, streaming: bool) -> list[str]:
    params = {"root": str(root), "repo_id": "local/collect_bench", "fps": FPS, "sample_on": "timer", "max_age_s": 0.1,
              "state_topics": ["joint_states"], "state_types": ["joint_state"], "joint_names": JOINTS,
              "action_topic": "teleop/command", "action_names": [f"a{i}" for i in range(7)],
              "camera_names": CAMERAS, "episode_topic": "", "keyboard": False,
              "progress_period_s": 5.0, "vcodec": vcodec, "streaming_encoding": streaming, "camera_qos": "reliable"}
    for cam in CAMERAS:
        params.update({f"camera.{cam}.topic": f"bench/{cam}/image_raw", f"camera.{cam}.height": H,
                       f"camera.{cam}.width": W})
    cmd = node_command("dfp_ros.nodes.collect_node", params)
    prof = os.environ.get("DFP_COLLECT_PROFILE")  # a path: run the recorder under cProfile (for tuning)
    if prof:
        cmd[1:1] = ["-m", "cProfile", "-o", prof]
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
        streaming: bool = True, dds: str = "shm_large") -> dict[str, Any]:
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    root = out / "dataset"
    if root.exists():
        shutil.rmtree(root)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "collect_node.log"
    env = _env(domain, dds)
    load0 = round(os.getloadavg()[0], 2)
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    proc = start_process(_collect_cmd(root, vcodec, streaming), env, log_path)
    # This process's own participant uses the same transports as the recorder.
    monitor = GraphMonitor("collect_bench", env).open()
    node, ex = monitor.node, monitor.executor
    result: dict[str, Any] = {}
    try:
        pub_j = node.create_publisher(JointState, "joint_states", 100)
        pub_c = node.create_publisher(Float64MultiArray, "teleop/command", 100)
        # Reliable cameras (realsense-ros' default QoS): best effort loses large images on this DDS.
        pub_i = [node.create_publisher(Image, f"bench/{cam}/image_raw", 5) for cam in CAMERAS]
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
        nxt = dict.fromkeys(period, time.monotonic())
        k = 0

        def publish_until(t_end: float) -> None:
            """Publish every stream on its own fixed schedule until t_end (a slot that comes late - this process
            was not scheduled in time - is still sent, so the rates are kept on average)."""
            nonlocal k
            while (now := time.monotonic()) < t_end:
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
                # No executor here: publishing needs none, and spinning would take the publisher's CPU.
                time.sleep(max(0.0, min(nxt.values()) - time.monotonic()))

        episodes = max(1, round(duration / episode_s))
        t_start = time.monotonic()
        recorded_s = 0.0
        record = os.environ.get("DFP_COLLECT_BENCH_IDLE") is None  # diagnostic: publish, record nothing
        # The streams run before the first episode starts, as a robot's do: its first frame has data.
        publish_until(time.monotonic() + 1.0)
        for _ep in range(episodes):
            if record:
                call("start")
            t0 = time.monotonic()
            publish_until(t0 + episode_s)
            recorded_s += time.monotonic() - t0
            if record:
                call("save")
        publish_s = time.monotonic() - t_start
        # Wait for the last episode to be on disk, then stop the node (SIGINT: finalize).
        if record:
            proc.wait_for_log(f"episode {episodes - 1} on disk", timeout=600)
        t_all = time.monotonic() - t_start
        stop(proc, timeout=120)
        ru_self, ru_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
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
            # CPU seconds: this publisher; the recorder's node process and its writer process (which
            # encodes), both waited for, so RUSAGE_CHILDREN holds them.
            "publisher_cpu_s": round(ru_self.ru_utime + ru_self.ru_stime - cpu0, 1),
            "recorder_cpu_s": round(ru_children.ru_utime + ru_children.ru_stime, 1),
            "writer_cpu_s": summary.get("writer_cpu_s"),
            "handling_lag_ms_p50": summary.get("handling_lag_ms_p50"),
            "handling_lag_ms_max": summary.get("handling_lag_ms_max"),
            "received": summary.get("received"),
            "dds": dds, "dds_transport": env.get("FASTDDS_BUILTIN_TRANSPORTS"),
            "dds_profile": env.get("FASTDDS_DEFAULT_PROFILES_FILE"),
            "cpu_cores": os.cpu_count(),
            # Other work on the machine makes every number here worse: the 1-minute load at start and end.
            "load_1m_start": load0, "load_1m_end": round(os.getloadavg()[0], 2),
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        monitor.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfp_ros.tools.collect_bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds recorded in total")
    ap.add_argument("--episode-s", type=float, default=20.0, help="seconds per episode")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--vcodec", default="h264", help="video codec lerobot encodes with (collect_node's default)")
    ap.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True,
                    help="encode video while recording (lerobot streaming_encoding; collect_node's default); "
                         "--no-streaming: PNG files + encoding at save")
    ap.add_argument("--dds", choices=DDS_CHOICES, default="shm_large",
                    help="Fast DDS transports of every process (see DDS_CHOICES in the source)")
    ap.add_argument("--domain", type=int, default=domain_id(), help="ROS_DOMAIN_ID")
    args = ap.parse_args(argv)
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="collect_bench_")
        out = Path(tmp)
    try:
        res = run(args.duration, args.episode_s, out, args.vcodec, args.domain, args.streaming, args.dds)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"recorded {res['duration_s']} s in {res['episodes']} episodes: {res['frames_written']}/"
          f"{res['frames_expected']} frames written, {res['frames_not_written']} not written; "
          f"{res['write_frames_per_s']} frames/s, {res['write_mb_per_s_on_disk']} MB/s on disk; "
          f"save -> on disk p50 {res['save_to_disk_s_p50']} s, max {res['save_to_disk_s_max']} s; "
          f"CPU s: publisher {res['publisher_cpu_s']}, recorder {res['recorder_cpu_s']} (writer "
          f"{res['writer_cpu_s']}); load {res['load_1m_start']} -> {res['load_1m_end']} on {res['cpu_cores']} cores")
    print(json.dumps(res))
    return 0 if res.get("collect_rc") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
