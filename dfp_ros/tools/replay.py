"""`dfp replay MODEL BAG_OR_DATASET`: an exported model open-loop over recorded observations
(dfp_ros.data.replay), a bag converted on the fly first. Prints one line per episode, writes a PNG
(per-episode error; predicted vs recorded for one action) and prints a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dfp_ros.contracts import ContractError
from dfp_ros.data.dataset_writer import dataset_exists
from dfp_ros.tools import convert_bag

if TYPE_CHECKING:
    from dfp_ros.data.replay import ReplayReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="exported ONNX model")
    p.add_argument("data", metavar="BAG_OR_DATASET",
                   help="a LeRobot dataset folder (meta/info.json) or a rosbag2 (converted first: the convert-bag "
                        "flags below, --fps defaulting to the model's)")
    p.add_argument("--stride", type=int, default=None, help="frames between chunks (default: the model's horizon)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (chunk at frame t of episode e: rng([seed, e, t]))")
    p.add_argument("--plot", default=None, help="PNG to write (default: replay.png next to the model)")
    p.add_argument("--plot-dim", type=int, default=0, help="action dimension drawn predicted vs recorded")
    p.add_argument("--plot-episode", type=int, default=None, help="episode drawn (default: the first)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (ONNX Runtime execution provider)")
    bag = p.add_argument_group("bag conversion (when BAG_OR_DATASET is a bag)")
    convert_bag.add_mapping_arguments(bag)


def plot(report: ReplayReport, recorded: dict[int, np.ndarray], path: Path, dim: int, episode: int | None,
         action_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = report.episodes
    shown = next((e for e in eps if e.episode == episode), eps[0]) if episode is not None else eps[0]
    fig, (ax_err, ax_act) = plt.subplots(2, 1, figsize=(8, 6.5))
    x = np.arange(len(eps))
    ax_err.bar(x - 0.2, [e.mean_error for e in eps], 0.4, label="mean")
    ax_err.bar(x + 0.2, [e.max_error for e in eps], 0.4, label="max")
    ax_err.set_xticks(x, [str(e.episode) for e in eps])
    ax_err.set_xlabel("episode")
    ax_err.set_ylabel("|predicted - recorded| / half-range")
    ax_err.set_title(f"open-loop replay, stride {report.stride}: mean {report.mean_error:.3f}, "
                     f"max {report.max_error:.3f}")
    ax_err.legend()
    ax_act.plot(recorded[shown.episode][:, dim], color="black", label="recorded")
    for k, (start, chunk) in enumerate(zip(shown.chunk_starts, shown.predicted, strict=True)):
        values = np.asarray(chunk)[:, dim]
        ax_act.plot(np.arange(start, start + len(values)), values, color="tab:orange",
                    label="predicted chunks" if k == 0 else None)
    name = action_names[dim] if dim < len(action_names) else f"action {dim}"
    ax_act.set_title(f"episode {shown.episode}: {name}")
    ax_act.set_xlabel("frame")
    ax_act.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_from_args(a: argparse.Namespace) -> int:
    # ONNX Runtime and lerobot only when the command runs (`dfp --help` stays instant).
    from dfp_ros.data.replay import load_episodes, replay
    from dfp_ros.runtime.policy_runtime import PolicyRuntime

    runtime = PolicyRuntime(a.model, device=a.device)
    meta = runtime.meta
    if not 0 <= a.plot_dim < meta.action_dim:
        raise ContractError(f"--plot-dim {a.plot_dim} is not an action dimension (0..{meta.action_dim - 1})")
    data = Path(a.data)
    with tempfile.TemporaryDirectory(prefix="dfp_replay_") as tmp:
        if dataset_exists(data):
            root = data
        elif data.exists():
            a.fps = a.fps or round(meta.fps)
            root = Path(tmp) / "dataset"
            converted = convert_bag.convert_bag(data, root, convert_bag.mapping_from_args(a),
                                                progress=not a.no_progress, warn=convert_bag.warn)
            print(converted.summary())
        else:
            raise ContractError(f"{data}: no such dataset or bag")
        episodes = load_episodes(root, meta, progress=not a.no_progress)
    report = replay(runtime, episodes, stride=a.stride, seed=a.seed, dataset=str(data))
    for e in report.episodes:
        print(f"episode {e.episode}: {e.frames} frames, {e.chunks} chunks, error mean {e.mean_error:.4f} "
              f"max {e.max_error:.4f} of the half-range")
    path = Path(a.plot) if a.plot else Path(a.model).with_name("replay.png")
    plot(report, {k: v.actions for k, v in episodes.items()}, path, a.plot_dim, a.plot_episode, meta.action_names)
    print(f"dfp replay: {len(report.episodes)} episodes, error mean {report.mean_error:.4f} max "
          f"{report.max_error:.4f} of the half-range over H={meta.horizon}; plot {path}")
    print(json.dumps({**report.summary(), "plot": str(path)}))
    return 0

