"""`dfp convert-bag BAG OUT --fps F`: a rosbag2 recording -> a LeRobot v3 dataset (dfp_ros.data.bag_convert).

The topics are mapped by flags or by a YAML file (`--mapping`, the fields of `BagMapping`; flags given
as well override it). Prints a summary line and a JSON line last.
"""

from __future__ import annotations

import argparse
import sys

from dfp_ros.data.bag_convert import SAMPLE_ON, STAMP_SOURCES, BagError, BagMapping, convert_bag
from dfp_ros.tools.arg_types import int_list, name_list


def camera_arg(text: str) -> tuple[str, str]:
    name, sep, topic = text.partition("=")
    if not sep or not name or not topic:
        raise argparse.ArgumentTypeError(f"expected NAME=TOPIC, got {text!r}")
    return name, topic


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`dfp convert-bag`'s arguments."""
    p.add_argument("bag", help="rosbag2 folder (metadata.yaml + .db3 / .mcap) or a single .db3 / .mcap file")
    p.add_argument("out", help="dataset folder to create (must not hold anything)")
    add_mapping_arguments(p)


def add_mapping_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags that say which topics become which features."""
    p.add_argument("--fps", type=int, default=None, help="dataset fps (required unless in the mapping file)")
    p.add_argument("--mapping", default=None, help="YAML file: topics -> features (fields of BagMapping)")
    p.add_argument("--state-topic", action="append", default=None, dest="state_topics",
                   help="a state topic (JointState or Float32MultiArray); repeat for several, in order")
    p.add_argument("--joint-names", type=name_list, default=None,
                   help="joints of JointState states, comma-separated (default: all in the first message)")
    p.add_argument("--state-names", type=name_list, default=None, help="names of the Float32MultiArray values")
    p.add_argument("--camera", type=camera_arg, action="append", default=None, metavar="NAME=TOPIC",
                   help="a camera (Image or CompressedImage); repeat for several")
    p.add_argument("--image-size", type=int_list, default=None, help="recorded image size H,W (default: as sent)")
    p.add_argument("--action-topic", default=None,
                   help="the command topic (Float64MultiArray, one-point JointTrajectory or JointState)")
    p.add_argument("--action-names", type=name_list, default=None,
                   help="action names (default: the command's joint names, else <topic>.<i>)")
    p.add_argument("--episode-topic", default=None,
                   help="std_msgs/String start/success/failure/timeout/reset events (default /episode, when present)")
    p.add_argument("--gap-s", type=float, default=None,
                   help="without an episode topic, a pause this long starts a new episode (default 1.0)")
    p.add_argument("--max-age-s", type=float, default=None,
                   help="a frame only when every stream has a message this fresh (default 0.1)")
    p.add_argument("--sample-on", choices=SAMPLE_ON, default=None,
                   help="timer: a frame every 1/fps (default) | action: one frame per command")
    p.add_argument("--stamps", choices=STAMP_SOURCES, default=None,
                   help="bag: the recorder's receipt times (default) | header: header stamps where present")
    p.add_argument("--task", default=None, help="task text of every episode")
    p.add_argument("--repo-id", default=None)
    p.add_argument("--vcodec", default=None, help="video codec of the cameras (default h264)")
    p.add_argument("--no-progress", action="store_true")


def mapping_from_args(a: argparse.Namespace) -> BagMapping:
    flags = {"fps": a.fps, "state_topics": a.state_topics, "joint_names": a.joint_names,
             "state_names": a.state_names, "cameras": dict(a.camera) if a.camera else None,
             "image_size": tuple(a.image_size) if a.image_size else None, "action_topic": a.action_topic,
             "action_names": a.action_names, "episode_topic": a.episode_topic, "gap_s": a.gap_s,
             "max_age_s": a.max_age_s, "sample_on": a.sample_on, "stamps": a.stamps, "task": a.task,
             "repo_id": a.repo_id, "vcodec": a.vcodec}
    if a.image_size and len(a.image_size) != 2:
        raise BagError(f"--image-size takes H,W; got {a.image_size}")
    if a.mapping:
        return BagMapping.from_yaml(a.mapping, **flags)
    required = {"fps": "--fps", "state_topics": "--state-topic", "action_topic": "--action-topic"}
    missing = [flag for key, flag in required.items() if not flags[key]]
    if missing:
        raise BagError(f"give {', '.join(missing)} (or a --mapping file)")
    return BagMapping(**{k: v for k, v in flags.items() if v is not None})


def warn(text: str) -> None:
    print(f"dfp convert-bag: {text}", file=sys.stderr)


def run_from_args(a: argparse.Namespace) -> int:
    report = convert_bag(a.bag, a.out, mapping_from_args(a), progress=not a.no_progress, warn=warn)
    print(report.summary())
    print(report.to_json())
    return 0
