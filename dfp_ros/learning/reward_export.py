"""Export a trained reward classifier to its ONNX contract (dfp_ros.contracts.RewardModelMetadata).

The same steps as a policy's export (dfp_ros.learning.export, whose pieces this reuses): trace the graph
(raw `state` and `image.<camera>` in, `score` = sigmoid(logit) out), stamp the metadata (kind
"reward_classifier", cameras with sizes, state, threshold, content hash) and an acceptance test into the
file, run onnx.checker, open it through the runtime loader the robot runs (`RewardRuntime`, which
re-runs the acceptance test), and compare ONNX Runtime with torch.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfp_ros.contracts import OUTPUT_SCORE
from dfp_ros.learning.export import (
    ACCEPTANCE_BATCH,
    PARITY_TOLERANCE,
    ExportError,
    checked_file,
    loader_check,
    observation_examples,
    stamp_model,
    trace_to_onnx,
)
from dfp_ros.runtime.acceptance import AcceptanceTest
from dfp_ros.runtime.reward_runtime import SCORE_TOLERANCE, RewardRuntime


class _ScoreGraph(nn.Module):
    """What the file computes: the classifier's logit through a sigmoid, one score per observation."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.cameras = [c.name for c in classifier.meta.cameras]

    def forward(self, state: torch.Tensor, *images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(state, dict(zip(self.cameras, images, strict=True))))


def _torch_scores(graph: _ScoreGraph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return graph(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def export_reward_onnx(classifier: nn.Module, path: Path | str, *, parity_batch: int = 4,
                       acceptance_feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Write `path` from a `RewardClassifier` (dfp_ros.learning.reward_classifier); returns {"path",
    "metadata", "max_abs_error", "acceptance"}. `acceptance_feeds`: the observations the file's acceptance
    test stores (real frames score on both sides of the threshold; default: random ones). Raises
    ExportError; no file is left behind then."""
    path = Path(path)
    classifier = classifier.to("cpu").eval()
    graph = _ScoreGraph(classifier).eval()
    meta = classifier.meta
    feeds = observation_examples(classifier.encoder, meta.cameras, 2, np.random.default_rng(1))
    dynamic = {n: {0: "batch"} for n in [*feeds, OUTPUT_SCORE]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trace_to_onnx(graph, feeds, [OUTPUT_SCORE], dynamic, tmp)
    if acceptance_feeds is None:
        acceptance_feeds = observation_examples(classifier.encoder, meta.cameras, ACCEPTANCE_BATCH,
                                                np.random.default_rng(4))
    acceptance = AcceptanceTest(inputs=acceptance_feeds, actions=_torch_scores(graph, acceptance_feeds),
                                tolerance=SCORE_TOLERANCE)
    meta = replace(meta, created=meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    result: dict[str, Any] = {"path": str(path)}
    with checked_file(tmp, path):
        meta = stamp_model(tmp, meta, acceptance)
        runtime = loader_check(RewardRuntime, tmp, path)
        result["acceptance"] = vars(runtime.acceptance)
        parity = observation_examples(classifier.encoder, meta.cameras, parity_batch, np.random.default_rng(2))
        err = float(np.abs(runtime.session.run([OUTPUT_SCORE], parity)[0] - _torch_scores(graph, parity)).max())
        if not err <= PARITY_TOLERANCE:
            raise ExportError(f"ONNX Runtime scores differ from torch by {err:.3g} (tolerance {PARITY_TOLERANCE})")
        result["max_abs_error"] = err
    result["metadata"] = meta.to_dict()
    return result
