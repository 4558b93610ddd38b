"""`finetune_node`: on-robot RL fine-tuning of a running DFP policy (see docs/architecture.md).

This process owns parameters, subscriptions, timers and QoS; messages become arrays through
`dfp_ros.nodes.ros_io`, each robot's streams are joined in `dfp_ros.learning.robot_feed` (which
uses `dfp_ros.learning.transitions`), and the learner (critic + top-K update, replay, exports,
checkpoints, learning curve) runs in a child process (`dfp_ros.nodes.learner_process`), so a
training step never delays this executor.

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
  <ns>/<executed_topic>    trajectory_msgs/JointTrajectory, the policy's `~/executed`: each command published
                           and who produced it (frame_id policy | human | hold); '' = not read
  <ns>/<reward_topic>      std_msgs/Float32
  <ns>/<episode_topic>     std_msgs/String: start / success / failure / timeout / reset, and the operator's
                           words: discard (not learned from), pause / resume (learning; the policy and joins go on)
  -> chunk transitions (observation, executed chunk, rewards, next observation, mask), counted and
     dropped by reason when they cannot be joined exactly. An observation is assembled when every
     part is younger than `max_obs_age_s`. A malformed message is dropped and counted per kind.
Human in the loop (`executed_topic`): a takeover's steps become transitions of the commands really
executed, flagged `intervention` (the rule: learning/transitions.py), kept in the replay and drawn as
demonstrations too (replay_buffer.py); an episode's intervention rate is human steps / steps.
Camera models: transitions carry the frames (uint8, the model's size) of both observations, and the
learner's replay keeps them (2 frames per transition); a `replay_capacity` whose frames would need
more than `replay_image_memory_gb` is refused at start, saying what would fit. A dataset seeding the
replay must hold the model's cameras (decoded at the model's size).
Model hand-over (each export that passed validation): `share_filesystem: true` sets the parameter
`model_path` of <ns>/<policy_node_name> (SetParameters; the node validates and swaps, or refuses and
keeps its model); false publishes the ONNX bytes on <ns>/dfp/model_update (UInt8MultiArray,
transient-local, layout.dim[0].label = sha256 hex). Of exports reported together only the newest is handed
over; one already deleted by the learner (it keeps its last few) is skipped with a warning.
Pacing (`pace_robot`, simulation only): while the learner is more than `max_update_lag` updates
behind `updates_per_step`, the policies are held (`enabled` false), which stops a lock-step
simulator, so the configured ratio really holds. The chunk in progress is cut by the pause; the join
drops it ("partial_chunk"), never misattributes it.
Silence: if a robot's observations keep coming but its reward (or episode) topic has been silent for
`reward_silence_s` (`episode_silence_s`), learning pauses with a log line, and resumes when it returns.

Stamps (`join`): `causal` (default; lock-step simulation) places observations and chunks by DDS source
time; `stamp` (real robots, JointState sources) by header stamps, exactly. The rules: docs/architecture.md,
"Joining a robot's streams".
Steps (`steps_from`): `observations` (default) counts each observation as one control step; `fps`
(join: stamp only) counts 1/fps of stamp time as a step — a robot whose joint states come faster than
the policy acts; see "Steps by time" in dfp_ros/learning/transitions.py.

Diagnostics on /diagnostics every second: episodes, env steps, joined, dropped per reason and per
message kind, updates, exports, models accepted/refused, learning/paused, critic loss, Q, the last
episode's intervention rate, human steps, interventions joined and in the replay, discarded episodes.
Outputs in `output_dir`: learner/ (checkpoint + online replay; resumed at restart), models/ (last
exports), learning_curve.csv and learning_curve.png.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, MultiArrayDimension, String, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory

from dfp_ros import contracts
from dfp_ros.learning import robot_feed
from dfp_ros.learning.learner_loop import seed_image_size
from dfp_ros.learning.transitions import REWARD_MODES, check_image_memory
from dfp_ros.nodes import learner_process, ros_io
from dfp_ros.nodes.node_main import run_node
from dfp_ros.nodes.params import Param, declare_params
from dfp_ros.runtime.observation import ObservationAssembler

NODE_NAME = "finetune_node"

PARAMS: list[Param] = [
    Param("init_checkpoint", "", "`dfp train --critic` checkpoint folder; not needed to resume"),
    Param("output_dir", "outputs/finetune", "learner/ (checkpoint, resumed at restart), models/, learning_curve"),
    Param("dataset_root", "", "LeRobot dataset (with next.reward) seeding the replay; '' = online only"),
    Param("dataset_repo_id", "", "LeRobot dataset repo id seeding the replay"),
    Param("robots", [""], "namespaces feeding this learner ('' = root)"),
    *ros_io.STATE_PARAMS,
    Param("max_obs_age_s", 1.0, "an observation whose parts are older than this is not assembled", low=0.0),
    Param("chunk_topic", contracts.TOPIC_POLICY_CHUNK, "the policy's action chunks"),
    Param("executed_topic", contracts.TOPIC_POLICY_EXECUTED, "the policy's executed commands (who drove each step: "
          "takeovers become flagged transitions); '' = none"),
    Param("reward_topic", contracts.TOPIC_REWARD, "std_msgs/Float32 rewards"),
    Param("episode_topic", contracts.TOPIC_EPISODE, "std_msgs/String episode events"),
    Param("reward_mode", "per_step", "per_step: one reward per step (a simulator); sum: sparse rewards",
          choices=REWARD_MODES),
    Param("join", "causal", "causal: newest observation sent before the chunk (lock-step); stamp: header stamps",
          choices=robot_feed.JOIN_MODES),
    Param("steps_from", "observations", "a step is one observation, or 1/fps of stamp time (join: stamp)",
          choices=robot_feed.STEPS_FROM),
    Param("join_grace_s", 0.5, "wait this long after an episode end for its last messages", low=0.0),
    Param("max_stamp_skew_s", 0.0, "join: stamp: accept an observation's parts up to this far apart", low=0.0),
    Param("warmup_steps", 5000, "online env steps before learning", low=0),
    Param("updates_per_step", 1.0, "learner updates per env step", low=0.0),
    Param("batch_size", 256, "batch size", low=1),
    Param("num_gen", 8, "generated chunks per state (G)", low=1),
    Param("num_candidates", 16, "candidate chunks from the EMA policy (N)", low=1),
    Param("top_k", 4, "critic's top chunks the actor is drifted to (K, 1..num_candidates)", low=1),
    Param("lam", 0.5, "weight of the top-K drift term"),
    Param("ema_tau", 1e-4, "EMA rate of the old policy", low=0.0, high=1.0),
    Param("gamma", 0.99, "discount", low=0.0, high=1.0),
    Param("tau", 0.005, "target critic Polyak rate", low=0.0, high=1.0),
    Param("lr", 3e-4, "learning rate", low=0.0),
    Param("critic_samples", 16, "chunks sampled for the critic's target", low=1),
    Param("temperatures", [0.02, 0.05, 0.2, 0.5, 1.0], "drift kernel temperatures"),
    Param("replay_capacity", 1_000_000, "replay buffer capacity (transitions)", low=1),
    Param("replay_image_memory_gb", 8.0, "camera models: refuse a replay_capacity whose images need more",
          low=0.0),
    Param("online_fraction", -1.0, "< 0: uniform over offline + online data; else the online share", high=1.0),
    Param("export_every", 1000, "updates between exports to the policy (0 = off)", low=0),
    Param("export_every_s", 0.0, "also export every this many seconds (0 = off)", low=0.0),
    Param("export_num_samples", 16, "best-of-N of the exported model", low=1),
    Param("export_weights", "float32", "weights of the exported model (int8: smaller, faster on a CPU)",
          choices=contracts.MODEL_WEIGHTS),
    Param("checkpoint_every", 1000, "updates between learner checkpoints", low=0),
    Param("share_filesystem", True, "true: set the policy's model_path; false: ONNX bytes on dfp/model_update"),
    Param("policy_node_name", "policy_node", "the policy node (in each robot's namespace) that gets the models"),
    Param("reward_silence_s", 5.0, "pause learning when rewards stop this long while observations arrive", low=0.0),
    Param("episode_silence_s", 60.0, "pause learning when episode events stop this long", low=0.0),
    Param("pace_robot", False, "simulation only: hold the policy while the learner lags behind"),
    Param("max_update_lag", 200, "pace_robot: hold while the learner is this many updates behind", low=0),
    Param("device", "cpu", "torch device of the learner (cpu, cuda)"),
    Param("learner_mode", "eager", "graphed: each update replays one CUDA graph (cuda; eager on a CPU)",
          choices=contracts.LEARNER_STEP_MODES),
    Param("torch_threads", 1, "torch threads of the learner", low=1),
    Param("seed", 0, "learner seed"),
]


def check_params(p: dict[str, Any]) -> None:
    """The checks that involve more than one parameter (ValueError)."""
    if p["steps_from"] == "fps" and p["join"] != "stamp":
        raise ValueError("steps_from: fps places chunks by their header stamps; it needs join: stamp")
    if not p["init_checkpoint"] and not learner_process.resuming(p["output_dir"]):
        raise ValueError("init_checkpoint is required (a `dfp train --critic` checkpoint folder) unless "
                         "output_dir holds a learner checkpoint to resume")
    if not 1 <= p["top_k"] <= p["num_candidates"]:
        raise ValueError(f"top_k must be in 1..num_candidates, got {p['top_k']}")


def _topic(ns: str, name: str) -> str:
    if name.startswith("/"):  # absolute: the same topic for every robot
        return name
    ns = ns.strip("/")
    return f"{ns}/{name}" if ns else name


def _set_parameter(name: str, value: ParameterValue) -> SetParameters.Request:
    return SetParameters.Request(parameters=[Parameter(name=name, value=value)])


class FinetuneNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_params(self, PARAMS)
        p["robots"] = [str(r) for r in p["robots"]] or [""]
        check_params(p)
        self.p = p
        out = Path(p["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        meta = learner_process.model_meta(out / "learner" if learner_process.resuming(out) else p["init_checkpoint"])
        self.meta = meta
        self.action_names: list[str] = list(meta.action_names)
        self.sources = ros_io.state_sources(meta, p)
        self.camera_topics = ros_io.camera_topics(meta, declare_params(self, ros_io.camera_params(meta)))
        robot_feed.check_join(meta, self.sources, p["join"])
        check_image_memory(meta.cameras, p["replay_capacity"], int(p["replay_image_memory_gb"] * 1024**3))
        if p["dataset_root"] or p["dataset_repo_id"]:
            seed_image_size(meta.cameras)  # refuse here, not later in the learner process

        self.counts: Counter[str] = Counter()
        self.feeds: dict[str, robot_feed.RobotFeed] = {}
        self.policy_clients: dict[str, Any] = {}  # ns -> SetParameters client of its policy node
        self.model_pubs: dict[str, Any] = {}  # ns -> its dfp/model_update publisher
        self.status: dict[str, Any] = {}
        self.models_sent = self.models_accepted = self.models_refused = 0
        self.last_model = ""
        self.pause = robot_feed.LearningPause()
        self.last_intervention_rate = 0.0  # of the last episode joined
        self._robot_held = False  # pace_robot: policies disabled while the learner catches up
        for ns in p["robots"]:
            self._add_robot(ns)

        self.learner = learner_process.LearnerProcess(learner_process.loop_config(p))
        # Steady-clock timers: with use_sim_time, a ROS-clock timer would stop whenever the simulator does.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.05, self._on_poll, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        self._diag_pub = self.create_publisher(DiagnosticArray, contracts.TOPIC_DIAGNOSTICS, 10)
        self.get_logger().info(
            f"learning from {len(self.feeds)} robot(s) {[r or '/' for r in self.feeds]}: "
            f"{[f'{s.topic} ({s.type})' for s in self.sources]}, "
            + "".join(f"camera {c} <- {t}{' (compressed)' if z else ''}, " for c, (t, z) in self.camera_topics.items())
            + f"{p['chunk_topic']}, {p['executed_topic'] or '(no executed topic)'}, {p['reward_topic']} "
            f"({p['reward_mode']}), {p['episode_topic']}; join "
            f"{p['join']}, steps from {p['steps_from']}; H={meta.horizon}; models to {p['policy_node_name']} via "
            f"{'model_path parameter' if p['share_filesystem'] else contracts.TOPIC_MODEL_UPDATE}; output {out}")

    # --- one robot's subscriptions ----------------------------------------------------------------------
    def _add_robot(self, ns: str) -> None:
        p = self.p
        feed = robot_feed.RobotFeed(
            ns, self.meta, self.sources, join=p["join"], reward_mode=p["reward_mode"], grace_s=p["join_grace_s"],
            steps_from=p["steps_from"], max_obs_age_s=p["max_obs_age_s"], max_stamp_skew_s=p["max_stamp_skew_s"],
            warn=lambda text, s: self.get_logger().warning(text, throttle_duration_sec=s))
        self.feeds[ns] = feed

        def observe(what: str, store: Callable[[ObservationAssembler, float], None]) -> None:
            feed.observe(what, store, time.monotonic())

        def stamp(info: Any, msg: Any = None) -> int:
            return feed.stamp(ros_io.sent_ns(info), ros_io.stamp_ns(msg.header.stamp) if msg is not None else 0)

        def on_array(i: int, msg: Float32MultiArray, info: Any) -> None:
            observe(self.sources[i].topic, lambda asm, now: asm.put_array(
                i, np.asarray(msg.data, np.float32), stamp(info), now))

        def on_joints(i: int, msg: JointState, info: Any) -> None:
            observe(self.sources[i].topic, lambda asm, now: asm.put_joint_state(
                i, list(msg.name), ros_io.joint_fields(msg), stamp(info, msg), now))

        def on_image(camera: str, compressed: bool, msg: Image | CompressedImage, info: Any) -> None:
            observe(f"camera {camera}", lambda asm, now: asm.put_image(
                camera, ros_io.image_rgb(msg, compressed), stamp(info, msg), now))

        def trajectory(what: str, msg: JointTrajectory, info: Any) -> tuple[np.ndarray, int, int] | None:
            try:
                return (ros_io.chunk_values(msg, self.action_names), ros_io.stamp_ns(msg.header.stamp),
                        ros_io.sent_ns(info))
            except ValueError as e:  # ObservationError, or rows of different lengths
                feed.last[what] = time.monotonic()
                feed.drop(what, e if isinstance(e, ros_io.ObservationError)
                          else ros_io.ObservationError("wrong_size", str(e)))
                return None

        def on_chunk(msg: JointTrajectory, info: Any) -> None:
            if (got := trajectory("chunk", msg, info)) is not None:
                feed.chunk(*got, time.monotonic())

        def on_executed(msg: JointTrajectory, info: Any) -> None:
            if (got := trajectory("executed", msg, info)) is not None:
                feed.executed(got[0].reshape(-1), msg.header.frame_id, got[1], got[2], time.monotonic())

        for i, src in enumerate(self.sources):
            if src.type == "joint_state":
                self.create_subscription(JointState, _topic(ns, src.topic),
                                         lambda m, info, i=i: on_joints(i, m, info), ros_io.EVENTS)
            else:
                self.create_subscription(Float32MultiArray, _topic(ns, src.topic),
                                         lambda m, info, i=i: on_array(i, m, info), ros_io.EVENTS)
        for cam, (topic, compressed) in self.camera_topics.items():
            self.create_subscription(CompressedImage if compressed else Image, _topic(ns, topic),
                                     lambda m, info, c=cam, z=compressed: on_image(c, z, m, info), ros_io.FRAMES)
        self.create_subscription(JointTrajectory, _topic(ns, p["chunk_topic"]), on_chunk, ros_io.EVENTS)
        if p["executed_topic"]:
            self.create_subscription(JointTrajectory, _topic(ns, p["executed_topic"]), on_executed, ros_io.EVENTS)
        self.create_subscription(Float32, _topic(ns, p["reward_topic"]), lambda m, info: feed.reward(
            m.data, ros_io.sent_ns(info), time.monotonic()), ros_io.EVENTS)
        self.create_subscription(String, _topic(ns, p["episode_topic"]), lambda m, info: self._on_episode(
            feed, m.data, ros_io.sent_ns(info)), ros_io.EVENTS)
        if p["share_filesystem"] or p["pace_robot"]:
            self.policy_clients[ns] = self.create_client(
                SetParameters, _topic(ns, f"{p['policy_node_name']}/set_parameters"))
        if not p["share_filesystem"]:
            self.model_pubs[ns] = self.create_publisher(UInt8MultiArray, _topic(ns, contracts.TOPIC_MODEL_UPDATE),
                                                        ros_io.LATCHED)

    # --- the periodic work: joined episodes out, learner messages in, silence ----------------------------
    def _on_episode(self, feed: robot_feed.RobotFeed, event: str, sent_ns: int) -> None:
        if event in (contracts.EPISODE_PAUSE, contracts.EPISODE_RESUME):  # the operator's, for the learner
            self._set_pause(operator=event == contracts.EPISODE_PAUSE)
        feed.event(event, sent_ns, time.monotonic())

    def _on_poll(self) -> None:
        now = time.monotonic()
        for feed in self.feeds.values():
            for rec in feed.poll(now, self.p["executed_topic"]):
                if not rec.discarded:
                    self.counts.update(episodes=1, env_steps=rec.steps, joined=len(rec.transitions),
                                       human_steps=rec.human_steps, intervened=rec.interventions)
                    self.last_intervention_rate = round(rec.intervention_rate, 4)
                    self.learner.send("episode", learner_process.episode_message(rec, self.meta))
                self.get_logger().info(robot_feed.episode_line(rec, self.counts["episodes"]))
        self._check_silence(now)
        self._read_learner()

    def _check_silence(self, now: float) -> None:
        if self._robot_held:
            return  # we hold the robot (pace_robot): no steps, so no rewards, is expected
        limits = {"reward": self.p["reward_silence_s"], "episode": self.p["episode_silence_s"]}
        self._set_pause(silence="; ".join(
            f"{_topic(ns, self.p[stream + '_topic'])} silent for {seconds:.0f} s while observations arrive"
            for ns, feed in self.feeds.items() for stream, seconds in feed.silent(now, limits)))

    def _set_pause(self, **cause: Any) -> None:
        reason = self.pause.set(**cause)
        if reason:
            self.get_logger().warning(f"learning paused: {reason}")
            self.learner.send("pause", {"reason": reason})
        elif reason is not None:
            self.get_logger().info("learning resumed")
            self.learner.send("resume", {})

    def _read_learner(self) -> None:
        newest_export = None  # exports reported together: the older ones are superseded, only the newest is sent
        for kind, m in self.learner.receive():
            if kind == "status":
                self.status = m
                self._pace()
            elif kind == "log":
                getattr(self.get_logger(), m["level"])(m["text"])
            elif kind in ("started", "resumed"):
                self.status.update(m)
                self.get_logger().info(f"learner {kind} (update {m['updates']}, env steps {m['env_steps']})")
            elif kind == "exported":
                newest_export = m
            elif kind == "fatal":
                self.get_logger().error(f"learner failed; the policy keeps its model: {m['text']}")
        if newest_export is not None:
            self._hand_over(Path(newest_export["path"]), newest_export["updates"])
        code = self.learner.exited()
        if code is not None:
            self.get_logger().error(f"learner process exited ({code}); no further updates")

    def _pace(self) -> None:
        """pace_robot (simulation): hold the policies while the learner is behind updates_per_step."""
        if not self.p["pace_robot"] or not self.learner.alive:
            return
        target, updates = self.status.get("target_updates", 0), self.status.get("updates", 0)
        hold = learner_process.should_hold(self._robot_held, target, updates, self.p["max_update_lag"])
        if hold == self._robot_held:
            return
        self._robot_held = hold
        if not hold:  # the silence clocks restart when the robot does
            for feed in self.feeds.values():
                feed.restart_silence_clocks(time.monotonic())
        self.counts["robot_holds" if hold else "robot_releases"] += 1
        self.get_logger().info(f"pace_robot: {'holding' if hold else 'releasing'} the policy (learner "
                               f"{int(target) - int(updates)} updates behind; {self.counts['robot_holds']} holds "
                               "so far)", throttle_duration_sec=10.0)
        enabled = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=not hold)
        for client in self.policy_clients.values():
            if client.service_is_ready():
                client.call_async(_set_parameter("enabled", enabled))

    def _hand_over(self, path: Path, updates: int) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:  # the learner keeps only its last few exports; this one went before we could send it
            self.get_logger().warning(f"model of update {updates} not sent, it cannot be read: {e}")
            return
        sha = hashlib.sha256(data).hexdigest()
        self.last_model = sha
        for ns in self.feeds:
            self.models_sent += 1
            if self.p["share_filesystem"]:
                client = self.policy_clients[ns]
                if not client.service_is_ready():
                    self.get_logger().warning(f"{client.srv_name} not available; model {sha[:12]} not sent")
                    continue
                value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path.resolve()))
                future = client.call_async(_set_parameter("model_path", value))
                future.add_done_callback(lambda f, ns=ns: self._on_set_result(f, ns, sha))
            else:
                pub = self.model_pubs[ns]
                msg = UInt8MultiArray(data=data)
                msg.layout.dim = [MultiArrayDimension(label=sha, size=len(data), stride=1)]
                pub.publish(msg)
                self.get_logger().info(f"model {sha[:12]} (update {updates}) published on "
                                       f"{pub.topic_name} ({len(data)} bytes)")

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
        values: dict[str, Any] = {
            "episodes": self.counts["episodes"], "env_steps": self.counts["env_steps"], "joined": self.counts["joined"],
            **robot_feed.feed_counts(self.feeds.values()),
            "intervention_rate": self.last_intervention_rate,
            "human_steps": self.counts["human_steps"], "intervened_joined": self.counts["intervened"],
            "operator_paused": self.pause.operator,
            "models_sent": self.models_sent, "models_accepted": self.models_accepted,
            "models_refused": self.models_refused, "last_model_sha256": self.last_model,
            "learner_alive": self.learner.alive, "paused": self.pause.reason or "no",
            "robot_held": self._robot_held, "robot_holds": self.counts["robot_holds"],
        }
        for k in ("updates", "target_updates", "learning", "paused", "replay_online", "replay_offline", "exports",
                  "replay_interventions", "batch_interventions", "critic_loss", "q_mean", "topk_q", "nearest_pos"):
            if k in self.status:  # (learner_paused: the pause as the learner has applied it)
                values[f"learner_{k}" if k in ("learning", "paused") else k] = self.status[k]
        if not self.learner.alive:
            level, message = DiagnosticStatus.ERROR, "learner process exited"
        elif self.pause.reason:
            level, message = DiagnosticStatus.WARN, "paused: " + self.pause.reason
        else:
            level, message = DiagnosticStatus.OK, "learning" if self.status.get("learning") else "collecting"
        self._diag_pub.publish(ros_io.diagnostics(f"{self.get_name()}: learner", self.get_fully_qualified_name(),
                                                  level, message, values, self.get_clock().now().nanoseconds))


def _cannot_start(err: BaseException) -> tuple[str, int]:
    return f"cannot start: {err}", 1


def _close(node: FinetuneNode, signalled: bool) -> None:
    node.learner.stop()  # the learner saves its state first


def main(args: list[str] | None = None) -> int:
    return run_node(FinetuneNode, NODE_NAME, args=args, config_errors=(ValueError, OSError),
                    describe_error=_cannot_start, close=_close)


if __name__ == "__main__":
    sys.exit(main())
