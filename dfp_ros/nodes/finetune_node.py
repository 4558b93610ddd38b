"""`finetune_node`: on-robot RL fine-tuning of a running DFP policy (DESIGN.md §4, issue 5).

This process only turns messages into arrays (and back) and owns parameters, timers and QoS. The
join lives in `dfp_ros.learning.transitions`; the learner (critic + top-K update, replay, exports,
checkpoints, learning curve) runs in a child process (`dfp_ros.learning.learner_loop`), so a
training step never delays this executor — it stamps header-less messages at receipt, the same rule
the policy node uses, and the join depends on those stamps.

Per robot namespace (`robots`, default [""] = the root namespace; relative topic names resolve
under it, absolute ones are used as they are):
  <ns>/<state_topics[i]>   the model's state, assembled like the policy node does it (same parameters,
                           same `ObservationAssembler`): `state_types[i]` float32_array
                           (std_msgs/Float32MultiArray; sim: sim/state) or joint_state
                           (sensor_msgs/JointState, joints taken by name for the `<joint>.pos/.vel/.eff`
                           names of the key `state_keys[i]` fills)
  <ns>/<camera.<name>.topic>  sensor_msgs/Image (or CompressedImage, `camera.<name>.compressed`), one
                           per camera the model names, decoded and resized to the model's size
  <ns>/<chunk_topic>       trajectory_msgs/JointTrajectory, the policy's chunks (stamp = its observation's)
  <ns>/<reward_topic>      std_msgs/Float32
  <ns>/<episode_topic>     std_msgs/String: start / success / failure / timeout / reset
  -> chunk transitions (observation, executed chunk, rewards, next observation, mask), counted and
     dropped by reason when they cannot be joined exactly. An observation is assembled when every
     part is younger than `max_obs_age_s`.
Camera models: transitions carry the frames (uint8, the model's size) of both observations, and the
learner's replay keeps them (2 frames per transition); a `replay_capacity` whose frames would need
more than `replay_image_memory_gb` is refused at start, saying what would fit. A dataset seeding the
replay must hold the model's cameras (decoded at the model's size).
Model hand-over (each export that passed validation): `share_filesystem: true` sets the parameter
`model_path` of <ns>/<policy_node_name> (SetParameters; the node validates and swaps, or refuses and
keeps its model); false publishes the ONNX bytes on <ns>/dfp/model_update (UInt8MultiArray,
transient-local, layout.dim[0].label = sha256 hex).
Pacing (`pace_robot`, simulation only): a lock-step simulator runs far faster than a CPU learner;
while the learner is more than `max_update_lag` updates behind `updates_per_step`, the policies are
held (`enabled` false), which stops the simulator, so the configured ratio really holds.
Silence: if a robot's observations keep coming but its reward (or episode) topic has been silent for
`reward_silence_s` (`episode_silence_s`), learning pauses with a log line, and resumes when it returns.

Stamps (`join`): rewards and episode events carry no header, so they are placed by the time their
publisher sent them (the DDS source timestamp; one host, or clocks synchronised with chrony/PTP).
- `causal` (default; lock-step simulation, or any robot whose policy acts on the newest
  observation): observations too are placed by source time, and a chunk belongs to the newest
  observation published before it. In lock-step this is exact: the simulator waits for the command,
  so no newer observation can exist. (Joining by the chunk's header stamp does not work for the
  simulator's header-less Float32MultiArray state: the policy node stamps it with its own clock at
  receipt, which this node cannot reproduce exactly.)
  Needs one message per observation: a single state source and no camera (refused otherwise: two
  messages of one step would be two observations).
- `stamp`: observations by their header stamp (JointState, Image, CompressedImage; an observation of
  several parts has the oldest part's stamp, the policy node's rule) and each chunk by its header
  stamp, exactly (DESIGN.md §3.2) — for real robots whose policy may lag behind. Every state source
  must then be a JointState (a Float32MultiArray has no header: refused). Exact: an observation is
  joined only when all its parts carry one stamp (a robot stamping its joints and camera frame alike);
  a combination of parts from different instants (a frame of this step not here yet, or lost while
  the readers matched) is not an observation (counted `unpaired_stamps`), and a chunk left without
  its observation is dropped (`chunk_without_observation`), never paired with a neighbour's frame.
  Unsynchronised drivers: `max_stamp_skew_s` > 0 accepts parts up to that far apart, and the join
  takes the first such combination under the oldest part's stamp (approximate by up to that skew).
Steps (`steps_from`): `observations` (default) counts each observation as one control step — a
lock-step robot, a simulator, a robot publishing its state at the control rate; `fps` (join: stamp
only) counts 1/fps of stamp time as a step — a robot whose joint states come faster than the policy
acts (a 100 Hz joint_state_broadcaster, a policy on a 20 Hz timer); see "Steps by time" in
dfp_ros/learning/transitions.py.

Diagnostics on /diagnostics every second: episodes, env steps, joined, dropped per reason, updates,
exports, models accepted/refused, learning/paused, critic loss, Q.
Outputs in `output_dir`: learner/ (checkpoint + online replay; resumed at restart), models/ (last
exports), learning_curve.csv and learning_curve.png.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, MultiArrayDimension, String, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory

from dfp_ros import contracts
from dfp_ros.contracts import ModelMetadata
from dfp_ros.learning.learner_loop import LoopConfig, learner_main, seed_image_size
from dfp_ros.learning.transitions import REWARD_MODES, EpisodeRecord, TransitionJoiner, check_image_memory
from dfp_ros.nodes.node_main import run_node
from dfp_ros.runtime.observation import (
    ObservationAssembler,
    ObservationError,
    StateSource,
    build_plans,
    decode_compressed,
    decode_raw_image,
)

NODE_NAME = "finetune_node"
JOIN_MODES = ("causal", "stamp")
STEPS_FROM = ("observations", "fps")
CLOCK_MISMATCH_NS = 5_000_000_000  # header stamp vs publish time: beyond transport delay, another clock
_EVENTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Cameras publish best effort (sensor data); a best-effort reader matches any writer. Deeper than the
# sensor-data default (5): every frame the policy saw should reach the join (a missed one costs its
# chunk, "chunk_without_observation"), but raw frames are large: 10 is a third of a second at 30 Hz.
_FRAMES = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def _topic(ns: str, name: str) -> str:
    if name.startswith("/"):  # absolute: the same topic for every robot
        return name
    ns = ns.strip("/")
    return f"{ns}/{name}" if ns else name


def state_sources(meta: ModelMetadata, topics: list[str], types: list[str], keys: list[str]) -> list[StateSource]:
    """The policy node's `state_topics` / `state_types` / `state_keys` -> StateSources (ValueError if they do not fit).

    `keys` may hold one entry for all topics; '' means the model's only state key. The mapping onto
    the state vector is checked here (`build_plans`), so a bad configuration stops the node at start.
    """
    if not (len(topics) == len(types) and len(keys) in (len(topics), 1)) or not topics:
        raise ValueError(f"state_topics {topics}, state_types {types} and state_keys {keys} must be non-empty "
                         "lists of equal lengths (state_keys may hold one entry for all)")
    keys = list(keys) * (len(topics) if len(keys) == 1 else 1)
    if any(k == "" for k in keys) and len(meta.state) != 1:
        raise ValueError(f"the model has state keys {[s.key for s in meta.state]}: name one per state topic in "
                         "state_keys")
    sources = [StateSource(t, ty, k or meta.state[0].key) for t, ty, k in zip(topics, types, keys, strict=True)]
    build_plans(meta, sources)
    return sources


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _model_meta(checkpoint: Path) -> ModelMetadata:
    """The model's metadata from a checkpoint's config.json (JSON only: no torch in this process)."""
    cfg = checkpoint / "config.json"
    if not cfg.is_file():
        raise ValueError(f"no DFP checkpoint at {checkpoint} (expected {cfg}); train one with `dfp train --critic`")
    config = json.loads(cfg.read_text())
    if not config.get("model_config", {}).get("use_critic"):
        raise ValueError(f"checkpoint {checkpoint} has no critic; fine-tuning needs one (`dfp train --critic`)")
    return ModelMetadata.from_dict(config["metadata"])


class _Robot:
    """One robot's streams: its joiner and when each stream was last heard from."""

    def __init__(self, ns: str, joiner: TransitionJoiner):
        self.ns = ns
        self.joiner = joiner
        self.last: dict[str, float] = {}  # stream -> time.monotonic() of the last message
        self.client: Any = None  # SetParameters client of its policy node (share_filesystem)
        self.model_pub: Any = None  # its dfp/model_update publisher (otherwise)


class FinetuneNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = self._declare()
        self.p = p
        out = Path(p["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        resume = (out / "learner" / "config.json").is_file()
        meta = _model_meta(out / "learner" if resume else Path(p["init_checkpoint"]))
        self.meta = meta
        self.horizon = meta.horizon
        self.action_names: list[str] = list(meta.action_names)
        self.state_dim = meta.state_dim
        self.sources = state_sources(meta, p["state_topics"], p["state_types"], p["state_keys"])
        self.camera_topics = self._declare_cameras(meta)
        self._check_join(meta)
        check_image_memory(meta.cameras, p["replay_capacity"], int(p["replay_image_memory_gb"] * 1024**3))
        if p["dataset_root"] or p["dataset_repo_id"]:
            seed_image_size(meta.cameras)  # refuse here, not later in the learner process

        self.counts: Counter[str] = Counter()
        self.robots: dict[str, _Robot] = {}
        self.status: dict[str, Any] = {}
        self.models_sent = self.models_accepted = self.models_refused = 0
        self.last_model = ""
        self._learner_alive = True
        self._paused_reason = ""
        self._robot_held = False  # pace_robot: policies disabled while the learner catches up
        for ns in p["robots"]:
            self._add_robot(ns)

        # The learner process (spawned: a fresh interpreter, no inherited DDS state).
        ctx = mp.get_context("spawn")
        self.inbox: Any = ctx.Queue()
        self.outbox: Any = ctx.Queue()
        online = {"num_candidates": p["num_candidates"], "top_k": p["top_k"], "lam": p["lam"],
                  "ema_tau": p["ema_tau"], "num_gen": p["num_gen"], "batch_size": p["batch_size"], "lr": p["lr"],
                  "gamma": p["gamma"], "tau": p["tau"], "critic_samples": p["critic_samples"],
                  "temperatures": tuple(p["temperatures"])}
        loop_cfg = LoopConfig(
            init_checkpoint=p["init_checkpoint"], output_dir=str(out), dataset_root=p["dataset_root"],
            dataset_repo_id=p["dataset_repo_id"], warmup_steps=p["warmup_steps"],
            updates_per_step=p["updates_per_step"], export_every=p["export_every"],
            export_every_s=p["export_every_s"], export_num_samples=p["export_num_samples"],
            export_weights=p["export_weights"],
            checkpoint_every=p["checkpoint_every"], replay_capacity=p["replay_capacity"],
            online_fraction=p["online_fraction"], replay_image_memory_gb=p["replay_image_memory_gb"],
            device=p["device"], torch_threads=p["torch_threads"], seed=p["seed"], online=online)
        self.proc = ctx.Process(target=learner_main, args=(loop_cfg, self.inbox, self.outbox, os.getpid()),
                                name="dfp_learner", daemon=True)
        self.proc.start()

        # Steady-clock timers: with use_sim_time, a ROS-clock timer would stop whenever the simulator does.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.05, self._on_poll, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        self._diag_pub = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)
        self.get_logger().info(
            f"learning from {len(self.robots)} robot(s) {[r or '/' for r in self.robots]}: "
            f"{[f'{s.topic} ({s.type})' for s in self.sources]}, "
            + "".join(f"camera {c} <- {t}{' (compressed)' if z else ''}, " for c, (t, z) in self.camera_topics.items())
            + f"{p['chunk_topic']}, {p['reward_topic']} ({p['reward_mode']}), {p['episode_topic']}; join "
            f"{p['join']}, steps from {p['steps_from']}; H={self.horizon}; "
            f"models to {p['policy_node_name']} via "
            f"{'model_path parameter' if p['share_filesystem'] else contracts.TOPIC_MODEL_UPDATE}; output {out}")

    # --- parameters -------------------------------------------------------------------------------------
    def _declare(self) -> dict[str, Any]:
        specs: list[tuple[str, Any]] = [
            ("init_checkpoint", ""), ("output_dir", "outputs/finetune"), ("dataset_root", ""), ("dataset_repo_id", ""),
            ("robots", [""]), ("state_topics", [contracts.TOPIC_SIM_STATE]), ("state_types", ["float32_array"]),
            ("state_keys", [""]), ("max_obs_age_s", 1.0), ("chunk_topic", contracts.TOPIC_POLICY_CHUNK),
            ("reward_topic", contracts.TOPIC_REWARD), ("episode_topic", contracts.TOPIC_EPISODE),
            ("reward_mode", "per_step"), ("join", "causal"), ("steps_from", "observations"), ("join_grace_s", 0.5),
            ("max_stamp_skew_s", 0.0),
            ("warmup_steps", 5000), ("updates_per_step", 1.0), ("batch_size", 256), ("num_gen", 8),
            ("num_candidates", 16), ("top_k", 4), ("lam", 0.5), ("ema_tau", 1e-4), ("gamma", 0.99), ("tau", 0.005),
            ("lr", 3e-4), ("critic_samples", 16), ("temperatures", [0.02, 0.05, 0.2, 0.5, 1.0]),
            ("replay_capacity", 1_000_000), ("replay_image_memory_gb", 8.0), ("online_fraction", -1.0),
            ("export_every", 1000), ("export_every_s", 0.0), ("export_num_samples", 16), ("export_weights", "float32"),
            ("checkpoint_every", 1000),
            ("share_filesystem", True), ("policy_node_name", "policy_node"),
            ("reward_silence_s", 5.0), ("episode_silence_s", 60.0), ("pace_robot", False), ("max_update_lag", 200),
            ("device", "cpu"), ("torch_threads", 1), ("seed", 0),
        ]
        values: dict[str, Any] = {}
        for name, default in specs:
            value = self.declare_parameter(name, default).value
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        values["robots"] = [str(r) for r in values["robots"]] or [""]
        for name in ("state_topics", "state_types", "state_keys"):
            if not isinstance(values[name], (list, tuple)):
                raise ValueError(f"{name} must be a list of strings, got {values[name]!r}")
            values[name] = [str(v) for v in values[name]]
        values["temperatures"] = [float(t) for t in values["temperatures"]]
        if values["reward_mode"] not in REWARD_MODES:
            raise ValueError(f"reward_mode={values['reward_mode']!r}; expected one of {REWARD_MODES}")
        if values["export_weights"] not in contracts.MODEL_WEIGHTS:
            raise ValueError(f"export_weights={values['export_weights']!r}; expected one of {contracts.MODEL_WEIGHTS}")
        if values["join"] not in JOIN_MODES:
            raise ValueError(f"join={values['join']!r}; expected one of {JOIN_MODES}")
        if values["steps_from"] not in STEPS_FROM:
            raise ValueError(f"steps_from={values['steps_from']!r}; expected one of {STEPS_FROM}")
        if not values["max_stamp_skew_s"] >= 0.0:
            raise ValueError(f"max_stamp_skew_s must be >= 0, got {values['max_stamp_skew_s']}")
        if values["steps_from"] == "fps" and values["join"] != "stamp":
            raise ValueError("steps_from: fps places chunks by their header stamps; it needs join: stamp")
        if not values["init_checkpoint"] and not (Path(values["output_dir"]) / "learner" / "config.json").is_file():
            raise ValueError("init_checkpoint is required (a `dfp train --critic` checkpoint folder) unless "
                             "output_dir holds a learner checkpoint to resume")
        if not 1 <= values["top_k"] <= values["num_candidates"]:
            raise ValueError(f"top_k must be in 1..num_candidates, got {values['top_k']}")
        return values

    def _declare_cameras(self, meta: ModelMetadata) -> dict[str, tuple[str, bool]]:
        """camera.<name>.topic / .compressed for each camera the model names (the policy node's parameters)."""
        out = {}
        for i, cam in enumerate(meta.cameras):
            default = contracts.TOPIC_SIM_CAMERA if i == 0 else f"camera/{cam.name}/image_raw"
            topic = str(self.declare_parameter(f"camera.{cam.name}.topic", default).value)
            compressed = bool(self.declare_parameter(f"camera.{cam.name}.compressed", False).value)
            out[cam.name] = (topic, compressed)
        return out

    def _check_join(self, meta: ModelMetadata) -> None:
        """Refuse the combinations whose observations the join could not place exactly (see the module doc)."""
        if self.p["join"] == "causal":
            if len(self.sources) > 1 or meta.cameras:
                raise ValueError(
                    f"join: causal places each observation by the time its message was sent, so it needs exactly one "
                    f"observation message per step; this model reads {len(self.sources)} state topic(s) and cameras "
                    f"{[c.name for c in meta.cameras]}. Use join: stamp with header-stamped JointState / Image topics")
        else:
            headerless = [s.topic for s in self.sources if s.type != "joint_state"]
            if headerless:
                raise ValueError(
                    f"join: stamp joins observations by their header stamp, but state topics {headerless} are "
                    "Float32MultiArray (no header); use joint_state sources (sensor_msgs/JointState), or join: causal "
                    "for a lock-step robot publishing one Float32MultiArray per step")

    def _add_robot(self, ns: str) -> None:
        p = self.p
        step_ns = round(1e9 / self.meta.fps) if p["steps_from"] == "fps" else None
        robot = _Robot(ns, TransitionJoiner(self.horizon, ns, p["reward_mode"], p["join_grace_s"], step_ns=step_ns))
        self.robots[ns] = robot
        j = robot.joiner
        # The policy node's assembly, per robot: the same sources give the same state vector.
        asm = ObservationAssembler(self.meta, self.sources, p["max_obs_age_s"])

        causal = p["join"] == "causal"
        max_skew_ns = round(p["max_stamp_skew_s"] * 1e9)

        def stamp(info: Any, header: Any = None) -> int:
            # A header stamp when the message has one (and we join by stamps), else when it was published.
            sent = int(info["source_timestamp"])
            if header is not None and not causal:
                stamped = _stamp_ns(header.stamp)
                if stamped:
                    if abs(stamped - sent) > CLOCK_MISMATCH_NS:
                        # Rewards and events are placed by publish time: header stamps from another clock
                        # (a simulator's /clock, an unsynchronised computer) can never fall in their windows.
                        self.counts["bad_stamp_clock"] += 1
                        self.get_logger().warning(
                            f"[{ns or '/'}] header stamps are {(stamped - sent) / 1e9:+.1f} s from their publish "
                            "time: the publisher stamps with another clock (sim time? no chrony/PTP?), so "
                            "observations cannot be joined with rewards and episode events", throttle_duration_sec=10.0)
                    return stamped
            return sent

        def put(what: str, store: Any) -> None:
            """Store one part of the observation; when all parts are fresh, hand the observation to the join."""
            now = time.monotonic()
            robot.last["observation"] = now
            try:
                store(now)
            except ObservationError as e:
                self.counts["bad_observation"] += 1
                self.get_logger().warning(f"[{ns or '/'}] {what} dropped: {e}", throttle_duration_sec=5.0)
                return
            obs = asm.ready(now)
            if obs is None:
                return
            if not causal and obs.stamp_skew_ns > max_skew_ns:
                # Parts of different instants (a part of this step not here yet, or lost): not the
                # observation any policy acted on for this stamp. A chunk left without one is dropped.
                self.counts["unpaired_stamps"] += 1
                return
            j.add_observation(obs.stamp_ns, obs.state, obs.images)

        def on_array(index: int, msg: Float32MultiArray, info: Any) -> None:
            put(self.sources[index].topic, lambda now: asm.put_array(
                index, np.asarray(msg.data, np.float32), stamp(info), now))

        def on_joints(index: int, msg: JointState, info: Any) -> None:
            fields = {"position": np.asarray(msg.position), "velocity": np.asarray(msg.velocity),
                      "effort": np.asarray(msg.effort)}
            put(self.sources[index].topic, lambda now: asm.put_joint_state(
                index, list(msg.name), fields, stamp(info, msg.header), now))

        def on_image(camera: str, compressed: bool, msg: Image | CompressedImage, info: Any) -> None:
            def store(now: float) -> None:
                rgb = (decode_compressed(msg.format, msg.data) if compressed else
                       decode_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data))
                asm.put_image(camera, rgb, stamp(info, msg.header), now)

            put(f"camera {camera}", store)

        def on_chunk(msg: JointTrajectory, info: Any) -> None:
            robot.last["chunk"] = time.monotonic()
            try:
                names = list(msg.joint_names)
                order = [names.index(n) for n in self.action_names] if names else list(range(len(self.action_names)))
                actions = np.array([[pt.positions[k] for k in order] for pt in msg.points], np.float32)
            except (ValueError, IndexError):
                self.counts["bad_chunk"] += 1
                return
            if causal:
                j.add_chunk(int(info["source_timestamp"]), actions, causal=True)
            else:
                j.add_chunk(_stamp_ns(msg.header.stamp), actions, sent_ns=int(info["source_timestamp"]))

        def on_reward(msg: Float32, info: Any) -> None:
            robot.last["reward"] = time.monotonic()
            if not np.isfinite(msg.data):
                self.counts["bad_reward"] += 1
                return
            j.add_reward(stamp(info), float(msg.data))

        def on_episode(msg: String, info: Any) -> None:
            robot.last["episode"] = time.monotonic()
            j.add_event(msg.data, stamp(info), now=time.monotonic())

        for i, src in enumerate(self.sources):
            if src.type == "joint_state":
                self.create_subscription(JointState, _topic(ns, src.topic),
                                         lambda m, info, i=i: on_joints(i, m, info), _EVENTS)
            else:
                self.create_subscription(Float32MultiArray, _topic(ns, src.topic),
                                         lambda m, info, i=i: on_array(i, m, info), _EVENTS)
        for cam, (topic, compressed) in self.camera_topics.items():
            self.create_subscription(CompressedImage if compressed else Image, _topic(ns, topic),
                                     lambda m, info, c=cam, z=compressed: on_image(c, z, m, info), _FRAMES)
        self.create_subscription(JointTrajectory, _topic(ns, p["chunk_topic"]), on_chunk, _EVENTS)
        self.create_subscription(Float32, _topic(ns, p["reward_topic"]), on_reward, _EVENTS)
        self.create_subscription(String, _topic(ns, p["episode_topic"]), on_episode, _EVENTS)
        if p["share_filesystem"] or p["pace_robot"]:
            robot.client = self.create_client(SetParameters, _topic(ns, f"{p['policy_node_name']}/set_parameters"))
        if not p["share_filesystem"]:
            robot.model_pub = self.create_publisher(UInt8MultiArray, _topic(ns, contracts.TOPIC_MODEL_UPDATE), _LATCHED)

    # --- the periodic work: joined episodes out, learner messages in, silence ----------------------------
    def _on_poll(self) -> None:
        now = time.monotonic()
        for robot in self.robots.values():
            for rec in robot.joiner.poll(now):
                self._send_episode(rec)
        self._check_silence(now)
        self._read_outbox()

    def _send_episode(self, rec: EpisodeRecord) -> None:
        ts = rec.transitions
        S, H, A = self.state_dim, self.horizon, len(self.action_names)
        ep = {
            "robot": rec.robot, "event": rec.event, "success": rec.success, "steps": rec.steps,
            "episode_return": rec.episode_return, "chunks": rec.chunks, "dropped": rec.dropped,
            "state": np.array([t.state for t in ts], np.float32).reshape(-1, S),
            "chunk": np.array([t.chunk for t in ts], np.float32).reshape(-1, H, A),
            "rewards": np.array([t.rewards for t in ts], np.float32).reshape(-1, H),
            "next_state": np.array([t.next_state for t in ts], np.float32).reshape(-1, S),
            "mask": np.array([t.mask for t in ts], np.float32),
            # Camera models: uint8 [n, h, w, 3] per camera, for the observation and the next one.
            "images": {c.name: np.array([t.images[c.name] for t in ts], np.uint8).reshape(-1, c.height, c.width, 3)
                       for c in self.meta.cameras},
            "next_images": {c.name: np.array([t.next_images[c.name] for t in ts], np.uint8).reshape(
                -1, c.height, c.width, 3) for c in self.meta.cameras},
        }
        self.counts["episodes"] += 1
        self.counts["env_steps"] += rec.steps
        self.counts["joined"] += len(ts)
        self.get_logger().info(
            f"episode {self.counts['episodes']} [{rec.robot or '/'}] {rec.event} after {rec.steps} steps, return "
            f"{rec.episode_return:.1f}; chunks {rec.chunks}, joined {len(ts)}"
            + (f", dropped {rec.dropped}" if rec.dropped else ""))
        if self._learner_alive:
            self.inbox.put(("episode", ep))

    def _check_silence(self, now: float) -> None:
        if self._robot_held:
            return  # we hold the robot (pace_robot): no steps, so no rewards, is expected
        reasons = []
        for r in self.robots.values():
            seen = r.last.get("observation")
            # A waiting simulator re-sends its observation every second: judge a live robot over 2.5 s.
            if seen is None or now - seen > 2.5:
                continue  # the robot itself is quiet (stopped, between sessions): nothing to judge
            for stream, limit in (("reward", self.p["reward_silence_s"]), ("episode", self.p["episode_silence_s"])):
                last = r.last.get(stream, r.last.setdefault(f"{stream}_watch", now))
                if now - last > limit:
                    reasons.append(f"{_topic(r.ns, self.p[stream + '_topic'])} silent for {now - last:.0f} s "
                                   "while observations arrive")
        reason = "; ".join(reasons)
        if reason and not self._paused_reason:
            self.get_logger().warning(f"learning paused: {reason}")
            self.inbox.put(("pause", {"reason": reason}))
        elif not reason and self._paused_reason:
            self.get_logger().info("learning resumed: reward and episode topics are live again")
            self.inbox.put(("resume", {}))
        self._paused_reason = reason

    def _read_outbox(self) -> None:
        while True:
            try:
                kind, m = self.outbox.get_nowait()
            except queue.Empty:
                break
            if kind == "status":
                self.status = m
                self._pace()
            elif kind == "log":
                getattr(self.get_logger(), m["level"])(m["text"])
            elif kind in ("started", "resumed"):
                self.status.update(m)
                self.get_logger().info(f"learner {kind} (update {m['updates']}, env steps {m['env_steps']})")
            elif kind == "exported":
                self._hand_over(Path(m["path"]), m["updates"])
            elif kind == "fatal":
                self.get_logger().error(f"learner failed; the policy keeps its model: {m['text']}")
        if self._learner_alive and not self.proc.is_alive():
            self._learner_alive = False
            self.get_logger().error(f"learner process exited ({self.proc.exitcode}); no further updates")

    def _pace(self) -> None:
        """pace_robot (simulation): hold the policies while the learner is behind updates_per_step.

        Lock-step simulation runs far faster than a CPU learner; holding the policy (enabled=false)
        stops the simulator, so the configured updates per environment step really hold. The chunk
        in progress is cut by the pause; the join drops it ("partial_chunk"), never misattributes it.
        """
        if not self.p["pace_robot"] or not self._learner_alive:
            return
        lag = int(self.status.get("target_updates", 0)) - int(self.status.get("updates", 0))
        hold = lag > self.p["max_update_lag"] if not self._robot_held else lag > self.p["max_update_lag"] // 2
        if hold != self._robot_held:
            self._robot_held = hold
            if not hold:  # the silence clocks restart when the robot does
                now = time.monotonic()
                for r in self.robots.values():
                    for stream in ("reward", "episode"):
                        if stream in r.last:
                            r.last[stream] = now
            self.counts["robot_holds" if hold else "robot_releases"] += 1
            self.get_logger().info(f"pace_robot: {'holding' if hold else 'releasing'} the policy (learner {lag} "
                                   f"updates behind; {self.counts['robot_holds']} holds so far)",
                                   throttle_duration_sec=10.0)
            for r in self.robots.values():
                if r.client is not None and r.client.service_is_ready():
                    r.client.call_async(SetParameters.Request(parameters=[Parameter(
                        name="enabled", value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=not hold))]))

    def _hand_over(self, path: Path, updates: int) -> None:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.last_model = sha
        for r in self.robots.values():
            self.models_sent += 1
            if self.p["share_filesystem"]:
                if not r.client.service_is_ready():
                    self.get_logger().warning(f"{r.client.srv_name} not available; model {sha[:12]} not sent")
                    continue
                req = SetParameters.Request(parameters=[Parameter(name="model_path", value=ParameterValue(
                    type=ParameterType.PARAMETER_STRING, string_value=str(path.resolve())))])
                future = r.client.call_async(req)
                future.add_done_callback(lambda f, ns=r.ns, s=sha: self._on_set_result(f, ns, s))
            else:
                msg = UInt8MultiArray()
                msg.layout.dim = [MultiArrayDimension(label=sha, size=len(data), stride=1)]
                msg.data = data
                r.model_pub.publish(msg)
                self.get_logger().info(f"model {sha[:12]} (update {updates}) published on "
                                       f"{r.model_pub.topic_name} ({len(data)} bytes)")

    def _on_set_result(self, future: Any, ns: str, sha: str) -> None:
        try:
            result = future.result().results[0]
        except Exception as e:
            self.models_refused += 1
            self.get_logger().error(f"model {sha[:12]} -> [{ns or '/'}]: no answer ({e})")
            return
        if result.successful:
            self.models_accepted += 1
            self.get_logger().info(f"model {sha[:12]} accepted by [{ns or '/'}] {self.p['policy_node_name']}")
        else:
            self.models_refused += 1
            self.get_logger().error(f"model {sha[:12]} refused by [{ns or '/'}]: {result.reason}")

    # --- diagnostics ------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        dropped: Counter[str] = Counter()
        for r in self.robots.values():
            dropped.update(r.joiner.dropped)
        values: dict[str, Any] = {
            "episodes": self.counts["episodes"], "env_steps": self.counts["env_steps"], "joined": self.counts["joined"],
            "dropped_total": sum(dropped.values()) + sum(v for k, v in self.counts.items() if k.startswith("bad_")),
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
            **{k: v for k, v in self.counts.items() if k.startswith("bad_")},
            "models_sent": self.models_sent, "models_accepted": self.models_accepted,
            "models_refused": self.models_refused, "last_model_sha256": self.last_model,
            "learner_alive": self._learner_alive, "paused": self._paused_reason or "no",
            "robot_held": self._robot_held, "robot_holds": self.counts["robot_holds"],
            "republished_observations": sum(r.joiner.republished for r in self.robots.values()),
            "unpaired_stamps": self.counts["unpaired_stamps"],
        }
        for k in ("updates", "target_updates", "learning", "replay_online", "replay_offline", "exports",
                  "critic_loss", "q_mean", "topk_q", "nearest_pos"):
            if k in self.status:
                values[f"learner_{k}" if k in ("learning",) else k] = self.status[k]
        status = DiagnosticStatus(name=f"{self.get_name()}: learner", hardware_id=self.get_fully_qualified_name())
        if not self._learner_alive:
            status.level, status.message = DiagnosticStatus.ERROR, "learner process exited"
        elif self._paused_reason:
            status.level, status.message = DiagnosticStatus.WARN, "paused: " + self._paused_reason
        else:
            status.level = DiagnosticStatus.OK
            status.message = "learning" if self.status.get("learning") else "collecting"
        status.values = [KeyValue(key=k, value=(("true" if v else "false") if isinstance(v, bool) else
                                                f"{v:.6g}" if isinstance(v, float) else str(v)))
                         for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Ask the learner to save and stop; give it `timeout_s`."""
        if self.proc.is_alive():
            try:
                self.inbox.put(("stop", {}))
            except Exception:
                pass
            self.proc.join(timeout_s)
            if self.proc.is_alive():
                self.proc.kill()


def _cannot_start(err: BaseException) -> tuple[str, int]:
    return f"cannot start: {err}", 1


def _close(node: FinetuneNode, signalled: bool) -> None:
    node.shutdown()  # stops the learner process, which saves its state


def main(args: list[str] | None = None) -> int:
    return run_node(FinetuneNode, NODE_NAME, args=args, config_errors=(ValueError, OSError),
                    describe_error=_cannot_start, close=_close)


if __name__ == "__main__":
    sys.exit(main())
