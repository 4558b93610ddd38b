"""Model files edited on purpose, for the loaders' refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from dfp_ros.contracts import ACCEPTANCE_KEY
from dfp_ros.runtime.acceptance import decode_array, encode_array


def edit_acceptance(src: Path, dst: Path, edit: Callable[[str], str]) -> None:
    """Copy `src` to `dst` with its acceptance test's JSON text passed through `edit`."""
    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == ACCEPTANCE_KEY:
            p.value = edit(p.value)
    onnx.save(proto, str(dst))


def shift_acceptance_reference(src: Path, dst: Path, half_ranges: float) -> None:
    """What a provider or CPU that computes the model differently looks like to a loader: the stored
    reference actions moved by `half_ranges` of each action's half-range."""
    meta = json.loads({p.key: p.value for p in onnx.load(str(src)).metadata_props}["dfp_ros"])
    half = (np.array(meta["action_high"]) - np.array(meta["action_low"])) / 2

    def shift(text: str) -> str:
        d = json.loads(text)
        d["actions"] = encode_array(decode_array(d["actions"]) + (half_ranges * half).astype(np.float32))
        return json.dumps(d)

    edit_acceptance(src, dst, shift)


def zero_action_model(src: Path, dst: Path) -> None:
    """A model that loads like `src` and always answers zero actions (hold still): a policy that never makes
    progress. Its graph subtracts the actions from themselves; the acceptance reference says zeros."""
    proto = onnx.load(str(src))
    for node in proto.graph.node:
        node.output[:] = ["actions_computed" if o == "actions" else o for o in node.output]
    proto.graph.node.append(onnx.helper.make_node("Sub", ["actions_computed", "actions_computed"], ["actions"]))

    def zeros(text: str) -> str:
        d = json.loads(text)
        d["actions"] = encode_array(np.zeros_like(decode_array(d["actions"])))
        return json.dumps(d)

    for p in proto.metadata_props:
        if p.key == ACCEPTANCE_KEY:
            p.value = zeros(p.value)
    onnx.save(proto, str(dst))


def constant_reward_model(path: Path, cameras: list[str], size: int, logit: float) -> Path:
    """A success detector on `cameras` (size x size frames) whose score is sigmoid(logit) on every frame:
    always success (logit > 0) or never, for the rules that follow from a detector's verdicts."""
    import torch

    from dfp_ros.contracts import CameraSpec, RewardModelMetadata
    from dfp_ros.learning.reward_classifier import RewardClassifier
    from dfp_ros.learning.reward_export import export_reward_onnx

    torch.manual_seed(0)
    meta = RewardModelMetadata(state=[], cameras=[CameraSpec(c, f"observation.images.{c}", size, size)
                                                  for c in cameras], threshold=0.5)
    model = RewardClassifier(meta, (8,), 8, (8,))
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)
    export_reward_onnx(model, path)
    return path
