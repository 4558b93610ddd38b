"""rosbag2 recordings of short simulator runs, written with rosbags' own writer (sqlite3 or MCAP), for tests.

The bag holds what a `ros2 bag record` of sim_robot_node + a commanding node would: `/sim/state`
(Float32MultiArray), `/joint_states` (JointState, header-stamped), optionally `/sim/camera/image_raw`
(rgb8), `/policy_node/command` (Float64MultiArray) 5 ms after each state, and `/episode` events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfp_ros.sim.cube_env import CubeSim

T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 50_000_000  # 20 Hz
COMMAND_DELAY_NS = 5_000_000


@dataclass
class Recorded:
    """What the bag holds, per episode: the state each command was computed from, and the command."""

    states: list[np.ndarray] = field(default_factory=list)  # [T, 28] float32 per episode
    joints: list[np.ndarray] = field(default_factory=list)  # [T, 7] float64
    images: list[np.ndarray] = field(default_factory=list)  # [T, 32, 32, 3] uint8 (cameras only)
    actions: list[np.ndarray] = field(default_factory=list)  # [T, 5] float32
    joint_names: list[str] = field(default_factory=list)
    end_ns: int = 0  # the time of the last message written


class BagWriter:
    """rosbags' Writer with typed helpers for the messages above."""

    def __init__(self, path: Path, storage: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.ts = get_typestore(Stores.ROS2_KILTED)
        plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.conns: dict[str, object] = {}

    def close(self) -> None:
        self.writer.close()

    def write(self, topic: str, msgtype: str, t_ns: int, msg: object) -> None:
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self.conns[topic], int(t_ns), self.ts.serialize_cdr(msg, msgtype))

    def header(self, t_ns: int) -> object:
        types = self.ts.types
        return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](
            sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000), frame_id="")

    def float_array(self, msgtype: str, values: np.ndarray) -> object:
        types = self.ts.types
        layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        dtype = np.float32 if "Float32" in msgtype else np.float64
        return types[msgtype](layout=layout, data=np.asarray(values, dtype))

    def state(self, t_ns: int, values: np.ndarray) -> None:
        self.write("/sim/state", "std_msgs/msg/Float32MultiArray", t_ns,
                   self.float_array("std_msgs/msg/Float32MultiArray", values))

    def joint_state(self, t_ns: int, names: list[str], positions: np.ndarray, stamp_ns: int | None = None) -> None:
        msg = self.ts.types["sensor_msgs/msg/JointState"](
            header=self.header(t_ns if stamp_ns is None else stamp_ns), name=list(names),
            position=np.asarray(positions, np.float64), velocity=np.zeros(0), effort=np.zeros(0))
        self.write("/joint_states", "sensor_msgs/msg/JointState", t_ns, msg)

    def image(self, t_ns: int, rgb: np.ndarray) -> None:
        h, w, _ = rgb.shape
        msg = self.ts.types["sensor_msgs/msg/Image"](header=self.header(t_ns), height=h, width=w, encoding="rgb8",
                                                     is_bigendian=0, step=w * 3, data=rgb.reshape(-1).copy())
        self.write("/sim/camera/image_raw", "sensor_msgs/msg/Image", t_ns, msg)

    def command(self, t_ns: int, action: np.ndarray) -> None:
        self.write("/policy_node/command", "std_msgs/msg/Float64MultiArray", t_ns,
                   self.float_array("std_msgs/msg/Float64MultiArray", action))

    def event(self, t_ns: int, text: str) -> None:
        self.write("/episode", "std_msgs/msg/String", t_ns, self.ts.types["std_msgs/msg/String"](data=text))


Policy = Callable[[int, int, np.ndarray], np.ndarray]  # (episode, frame, state) -> action


def write_sim_bag(path: Path, storage: str = "sqlite3", episodes: int = 2, steps: int = 12, camera: bool = False,
                  events: bool = True, policy: Policy | None = None, pause_s: float = 0.5,
                  end_last_episode: bool = True) -> Recorded:
    """Run CubeSim for `episodes` x `steps` commands (policy: seeded random actions by default) into a bag.

    Episodes are `pause_s` apart; with `events`, each is framed by /episode start ... timeout, the
    last one without its end when not `end_last_episode`."""
    rng = np.random.default_rng(0)
    policy = policy or (lambda e, t, s: rng.uniform(-1, 1, 5).astype(np.float32))
    rec = Recorded()
    bag = BagWriter(path, storage)
    t = T0_NS
    with CubeSim(render=camera, image_size=32, seed=0) as sim:
        rec.joint_names = list(sim.joint_names)
        for e in range(episodes):
            state = sim.reset(seed=e)
            if events:
                bag.event(t - COMMAND_DELAY_NS, "start")
            states, joints, images, actions = [], [], [], []
            for k in range(steps):
                bag.state(t, state)
                q = sim.joint_positions()
                bag.joint_state(t, rec.joint_names, q)
                if camera:
                    img = sim.render()
                    bag.image(t, img)
                    images.append(img)
                action = np.asarray(policy(e, k, state), np.float32)
                bag.command(t + COMMAND_DELAY_NS, action)
                states.append(state)
                joints.append(q)
                actions.append(action)
                state = sim.step(action)[0]
                t += PERIOD_NS
            if events and (end_last_episode or e < episodes - 1):
                bag.event(t - PERIOD_NS + 2 * COMMAND_DELAY_NS, "timeout")
            rec.states.append(np.stack(states))
            rec.joints.append(np.stack(joints))
            rec.actions.append(np.stack(actions))
            if camera:
                rec.images.append(np.stack(images))
            rec.end_ns = t - PERIOD_NS + 2 * COMMAND_DELAY_NS
            t += int(pause_s * 1e9)
    bag.close()
    return rec
