"""The contracts between the parts of dfp_ros, defined once (docs/architecture.md, "Contracts").

Training writes ONNX files with these input/output names and this metadata; the runtime reads
them; nodes use the default topic names below. Everything else imports from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# --- ONNX model ------------------------------------------------------------------------------
MODEL_FORMAT_VERSION = 1
MODEL_WEIGHTS = ("float32", "int8")  # ModelMetadata.weights: how the exported graph stores its weights
# How a learner runs one update: eagerly, or as one captured CUDA graph replayed (eager on a CPU).
LEARNER_STEP_MODES = ("eager", "graphed")
METADATA_KEY = "dfp_ros"  # metadata_props key holding the JSON below
ACCEPTANCE_KEY = "dfp_ros.acceptance"  # fixed inputs + reference actions (dfp_ros.runtime.acceptance)

INPUT_STATE = "state"
INPUT_NOISE = "noise"
IMAGE_INPUT_PREFIX = "image."
OUTPUT_ACTIONS = "actions"
OUTPUT_Q = "q"
OUTPUT_BEST = "best"
OUTPUT_SCORE = "score"  # a reward model's output: float32 [B], the probability that the frame shows success

# What a model file is: metadata without a "kind" is a policy (every policy file ever exported), so
# policies keep loading in any dfp_ros version; a success detector says so (RewardModelMetadata).
MODEL_KIND_POLICY = "policy"
MODEL_KIND_REWARD = "reward_classifier"


def image_input_name(camera: str) -> str:
    return f"{IMAGE_INPUT_PREFIX}{camera}"


@dataclass
class StateSpec:
    """One dataset feature concatenated (in order) into the model's `state` input."""

    key: str  # dataset feature, e.g. "observation.state"
    dim: int
    names: list[str] = field(default_factory=list)


@dataclass
class CameraSpec:
    """One camera input: `image.<name>` uint8 [B, height, width, 3] RGB."""

    name: str
    key: str  # dataset feature, e.g. "observation.images.front"
    height: int
    width: int


@dataclass
class ModelMetadata:
    """What an exported model promises; stored as JSON in the ONNX metadata_props."""

    state: list[StateSpec]
    cameras: list[CameraSpec]
    action_key: str
    action_names: list[str]
    horizon: int
    action_dim: int
    fps: float
    num_samples: int
    has_critic: bool
    action_low: list[float]
    action_high: list[float]
    dataset: str = ""
    git_revision: str = ""
    created: str = ""
    content_hash: str = ""
    weights: str = "float32"  # float32 | int8 (ONNX Runtime dynamic quantisation: `dfp export --int8`)
    format_version: int = MODEL_FORMAT_VERSION

    @property
    def state_dim(self) -> int:
        return sum(s.dim for s in self.state)

    @property
    def noise_dim(self) -> int:
        return self.horizon * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        kind = model_kind(d)
        if kind != MODEL_KIND_POLICY:
            raise ContractError(f"this is a {kind} model, not a policy")
        d = {k: v for k, v in d.items() if k != "kind"}
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("state", "cameras", "action_names", "horizon", "action_dim",
                               "num_samples", "has_critic") if k not in d]
        if missing:
            raise ContractError(f"model metadata lacks required fields {missing}")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ContractError(f"model metadata has fields this dfp_ros does not know: {unknown}")
        d = dict(d)
        d["state"] = [StateSpec(**s) for s in d["state"]]
        d["cameras"] = [CameraSpec(**c) for c in d["cameras"]]
        return cls(**d)


class ContractError(ValueError):
    """A model, dataset or message does not match the contract dfp_ros expects."""


def model_kind(d: dict[str, Any]) -> str:
    """The kind of model a metadata dict describes (MODEL_KIND_POLICY when it names none)."""
    return str(d.get("kind", MODEL_KIND_POLICY))


@dataclass
class RewardModelMetadata:
    """What an exported success detector promises (same metadata key and JSON as a policy, `kind` set).

    Inputs: `state` float32 [B, S] (S = state_dim, may be 0) and `image.<camera>` uint8 [B, H, W, 3]
    RGB; output `score` float32 [B] in [0, 1]. A frame is a success when its score >= `threshold`."""

    state: list[StateSpec]
    cameras: list[CameraSpec]
    threshold: float  # default decision threshold (the held-out F1 optimum at training)
    labels: str = ""  # how the training frames were labelled, e.g. "next.success" or "last 5 frames"
    fps: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)  # held-out precision, recall, F1 at threshold
    dataset: str = ""
    git_revision: str = ""
    created: str = ""
    content_hash: str = ""
    weights: str = "float32"
    kind: str = MODEL_KIND_REWARD
    format_version: int = MODEL_FORMAT_VERSION

    @property
    def state_dim(self) -> int:
        return sum(s.dim for s in self.state)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardModelMetadata:
        kind = model_kind(d)
        if kind != MODEL_KIND_REWARD:
            raise ContractError(f"this is a {kind} model, not a reward model ({MODEL_KIND_REWARD})")
        missing = [k for k in ("state", "cameras", "threshold") if k not in d]
        if missing:
            raise ContractError(f"reward model metadata lacks required fields {missing}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ContractError(f"reward model metadata has fields this dfp_ros does not know: {unknown}")
        d = dict(d)
        d["state"] = [StateSpec(**s) for s in d["state"]]
        d["cameras"] = [CameraSpec(**c) for c in d["cameras"]]
        return cls(**d)


# --- Topics; all remappable ------------------------------------------------------------------
# Relative names: in the root namespace they resolve to absolute names
# ("joint_states" -> /joint_states); under a launch `namespace` every robot gets its own set, which
# is how several robots run side by side. /diagnostics is global by ROS convention.
TOPIC_JOINT_STATES = "joint_states"
TOPIC_SIM_STATE = "sim/state"  # std_msgs/Float32MultiArray: the simulator's full state vector
TOPIC_SIM_STATE_NAMES = "sim/state_names"  # std_msgs/String, latched: JSON list naming sim/state
TOPIC_SIM_CAMERA = "sim/camera/image_raw"  # the simulator's front (scene) camera
TOPIC_SIM_WRIST_CAMERA = "sim/wrist_camera/image_raw"  # the simulator's camera on the gripper
TOPIC_POLICY_COMMAND = "policy_node/command"  # the policy node's ~/command under its default name
TOPIC_POLICY_CHUNK = "policy_node/action_chunk"
# trajectory_msgs/JointTrajectory, one point per control tick: the command published after the safety
# filter; header.frame_id says who produced it (policy | human | hold), header.stamp is the observation's.
TOPIC_POLICY_EXECUTED = "policy_node/executed"
# Human takeover (joy_teleop_node -> policy_node): commands in the policy's action units and order
# (std_msgs/Float64MultiArray; executed only while the human holds the robot), and whether the dead-man
# is held (std_msgs/Bool, latched; sent at each change and at the command rate while the device is heard).
TOPIC_TELEOP_COMMAND = "teleop/command"
TOPIC_TELEOP_ENGAGED = "teleop/engaged"
TOPIC_CAMERA = "camera/camera/color/image_raw"
TOPIC_REWARD = "reward"
TOPIC_EPISODE = "episode"
TOPIC_ESTOP = "estop"
TOPIC_DIAGNOSTICS = "/diagnostics"
TOPIC_MODEL_UPDATE = "dfp/model_update"

# reset_failed: reset_node could not take the robot home between two episodes (no start follows until the
# operator acts).
EPISODE_RESET_FAILED = "reset_failed"
EPISODE_EVENTS = ("start", "success", "failure", "timeout", "reset", EPISODE_RESET_FAILED)


def sim_camera_topic(camera: str) -> str:
    """The topic of a simulated camera ('front', 'wrist'); ValueError for another name."""
    topics = {"front": TOPIC_SIM_CAMERA, "wrist": TOPIC_SIM_WRIST_CAMERA}
    if camera not in topics:
        raise ValueError(f"no simulated camera {camera!r}; there are {tuple(topics)}")
    return topics[camera]


# Operator words on the same topic (joy_teleop_node's buttons), for the learner: throw the episode in
# progress away, pause / resume learning. Consumers that have no use for one ignore it.
EPISODE_DISCARD = "discard"
EPISODE_PAUSE = "pause"
EPISODE_RESUME = "resume"
OPERATOR_EVENTS = (EPISODE_DISCARD, EPISODE_PAUSE, EPISODE_RESUME)
