"""A learned success detector: a small CNN that scores camera frames (optionally + state) as "success".

`dfp train-reward` (the HIL-SERL / LeRobot reward classifier, ours): frames of a LeRobot dataset are
labelled, episodes are split into a training and a held-out set (by episode: frames of one episode are
nearly alike, so a frame-level split would grade memory, not detection), the classifier is trained on
class-balanced, randomly shifted batches, and the precision/recall curve on the held-out episodes picks
the threshold (the F1 optimum) that the exported model carries as its default.

Labels, in this order:
- flags (the episode outcome): `success_episodes` lists the successful episodes (default: all, when
  only `last_frames` is given) and the last `last_frames` frames (default 1) of each are positives,
  every other frame a negative — for datasets without an outcome column, e.g. demonstrations that all
  succeed;
- a success column (`next.success`): the frames at and after an episode's first success are positives;
- a reward column (`next.reward`) with `reward_threshold`: a frame with reward > threshold is a
  success, then as above.
A dataset with none of these is refused, naming the column or flag needed.

The network: one `ObservationEncoder` (the policy's CNN per camera + normalised state) and an MLP head
to one logit; the exported graph ends in a sigmoid (`score`, dfp_ros.learning.reward_export).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from dfp_ros.contracts import INPUT_STATE, CameraSpec, RewardModelMetadata, StateSpec, image_input_name
from dfp_ros.learning.augmentation import random_shift
from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.dataset import ChunkDataset, DatasetError
from dfp_ros.learning.networks import ObservationEncoder, mlp
from dfp_ros.learning.trainer import git_revision, seed_everything, select_device
from dfp_ros.learning.training_log import TrainingLog

SUCCESS_KEY = "next.success"
REWARD_KEY = "next.reward"
MODEL_FILE = "reward.onnx"
CHECKPOINT_DIR = "checkpoint"
PR_CURVE_FILE = "pr_curve.png"
EVAL_BATCH = 256


@dataclass
class LabelRule:
    """How frames become labels (see the module docstring)."""

    success_key: str = SUCCESS_KEY
    reward_key: str = REWARD_KEY
    reward_threshold: float | None = None
    success_episodes: list[int] | None = None
    last_frames: int | None = None

    @property
    def from_flags(self) -> bool:
        return self.success_episodes is not None or self.last_frames is not None


@dataclass
class RewardTrainConfig:
    """One `dfp train-reward` run."""

    dataset: str = ""
    root: str | None = None
    output: str = "outputs/reward"
    cameras: list[str] | None = None  # camera names (front, wrist); None: every camera of the dataset
    state_keys: list[str] = field(default_factory=list)  # proprioception to add; [] = frames only
    image_size: tuple[int, int] = (64, 64)
    labels: LabelRule = field(default_factory=LabelRule)
    val_fraction: float = 0.2
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    image_shift: int = 4  # random-shift augmentation, pixels
    image_channels: tuple[int, ...] = (16, 32, 32, 32)
    image_feature_dim: int = 64
    hidden: tuple[int, ...] = (128,)
    eval_every: int = 500
    seed: int = 0
    device: str = "auto"
    # CPU threads of torch. One: measured on 2 busy cores, a second thread's spin-waits cost 4-5x the CPU
    # time per step of this small network (and no wall time gained).
    torch_threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RewardClassifier(nn.Module):
    """(state, camera frames) -> one success logit per observation; raw inputs, normalised inside."""

    def __init__(self, meta: RewardModelMetadata, image_channels: tuple[int, ...], image_feature_dim: int,
                 hidden: tuple[int, ...], state_mean: torch.Tensor | None = None,
                 state_std: torch.Tensor | None = None):
        super().__init__()
        self.meta = meta
        self.net_config = {"image_channels": list(image_channels), "image_feature_dim": image_feature_dim,
                           "hidden": list(hidden)}
        s = meta.state_dim
        enc_cfg = ModelConfig(image_channels=tuple(image_channels), image_feature_dim=image_feature_dim)
        self.encoder = ObservationEncoder(torch.zeros(s) if state_mean is None else state_mean,
                                          torch.ones(s) if state_std is None else state_std, meta.cameras, enc_cfg)
        self.head = mlp(self.encoder.out_dim, tuple(hidden), 1)

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(state, images)).squeeze(-1)


# --- labels and split ----------------------------------------------------------------------------------------
def frame_labels(data: ChunkDataset, rule: LabelRule, success: np.ndarray | None,
                 reward: np.ndarray | None) -> tuple[np.ndarray, str]:
    """bool [N] (True = success frame) and a description of where the labels came from.

    `success` / `reward`: the dataset's per-frame columns, None where it has none."""
    episodes = np.unique(data.episode_index)
    if rule.from_flags:
        k = 1 if rule.last_frames is None else rule.last_frames
        if k < 1:
            raise DatasetError(f"--label-last-frames must be >= 1, got {k}")
        chosen = episodes if rule.success_episodes is None else np.asarray(rule.success_episodes, np.int64)
        unknown = sorted(set(chosen.tolist()) - set(episodes.tolist()))
        if unknown:
            raise DatasetError(f"--success-episodes names episodes {unknown} the dataset does not have "
                               f"(it has {episodes.min()}..{episodes.max()})")
        frame = np.arange(len(data))
        labels = np.isin(data.episode_index, chosen) & (frame > data.ep_end - k)
        which = "every episode" if rule.success_episodes is None else f"episodes {sorted(chosen.tolist())}"
        return labels, f"last {k} frame{'s' if k > 1 else ''} of {which}"
    if success is not None:
        hit, source = success > 0.5, rule.success_key
    elif reward is not None and rule.reward_threshold is not None:
        hit, source = reward > rule.reward_threshold, f"{rule.reward_key} > {rule.reward_threshold:g}"
    elif reward is not None:
        raise DatasetError(f"the dataset has {rule.reward_key!r} but no {rule.success_key!r} column: give "
                           f"--reward-threshold T (frames with reward > T are successes), or label by episode "
                           "with --success-episodes / --label-last-frames")
    else:
        raise DatasetError(f"the dataset has no outcome column ({rule.success_key!r} or {rule.reward_key!r}): "
                           "label frames by episode outcome with --success-episodes EPISODES and/or "
                           "--label-last-frames K")
    # At and after an episode's first success (episodes are contiguous runs of rows): the successes
    # counted since the episode's first row.
    seen = np.cumsum(hit)
    before = seen[data.ep_start] - hit[data.ep_start]
    return seen - before > 0, f"{source}, frames at and after the first success"


def split_episodes(episode_index: np.ndarray, labels: np.ndarray, val_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) episode ids; episodes with and without a success frame are split alike, so
    both sets hold both kinds where the dataset allows."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    episodes = np.unique(episode_index)
    if len(episodes) < 2:
        raise DatasetError(f"the dataset has {len(episodes)} episode: a held-out split by episode needs >= 2")
    rng = np.random.default_rng(seed)
    with_success = np.unique(episode_index[labels])
    held: list[int] = []
    for group in (with_success, np.setdiff1d(episodes, with_success)):
        if len(group):
            n = round(val_fraction * len(group))
            held += rng.permutation(group)[:max(n, 1 if len(group) > 1 else 0)].tolist()
    if not held:
        held = [int(rng.choice(episodes))]
    if len(held) == len(episodes):
        held = held[:-1]
    val = np.sort(np.asarray(held, np.int64))
    return np.setdiff1d(episodes, val), val


# --- precision / recall --------------------------------------------------------------------------------------
@dataclass
class PRCurve:
    thresholds: np.ndarray  # descending scores
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float


def precision_recall(scores: np.ndarray, labels: np.ndarray) -> PRCurve:
    """Precision and recall of "score >= t" for every distinct score t (descending)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    positives = max(y.sum(), 1.0)
    precision, recall = tp / np.maximum(tp + fp, 1.0), tp / positives
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return PRCurve(s[last], precision, recall, ap)


def best_threshold(curve: PRCurve) -> tuple[float, int]:
    """The threshold of the F1 optimum (half-way to the next lower score, so a held-out score equal to
    it is not on the edge) and its index in the curve."""
    f1 = 2 * curve.precision * curve.recall / np.maximum(curve.precision + curve.recall, 1e-12)
    i = int(np.argmax(f1))
    below = curve.thresholds[i + 1] if i + 1 < len(curve.thresholds) else 0.0
    return float((curve.thresholds[i] + below) / 2), i


def plot_pr_curve(curve: PRCurve, index: int, threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.plot(np.r_[0.0, curve.recall], np.r_[curve.precision[:1], curve.precision], drawstyle="steps-post",
            label=f"AP {curve.average_precision:.3f}")
    ax.plot([curve.recall[index]], [curve.precision[index]], "o", color="C3",
            label=f"threshold {threshold:.3f}: P {curve.precision[index]:.2f}, R {curve.recall[index]:.2f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- training ------------------------------------------------------------------------------------------------
class RewardTrainer:
    """Data, labels, split, model and logs of one run; `run()` trains, evaluates and exports."""

    def __init__(self, cfg: RewardTrainConfig, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.output)
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        image_keys = None if cfg.cameras is None else [f"observation.images.{c}" for c in cfg.cameras]
        # ChunkDataset reads two per-frame columns besides state and action (its reward and done columns):
        # the reward column and, through the done column, the success column.
        self.data = ChunkDataset(cfg.dataset, cfg.root, horizon=1, state_keys=cfg.state_keys or None,
                                 image_keys=image_keys, image_size=cfg.image_size, reward_key=cfg.labels.reward_key,
                                 done_key=cfg.labels.success_key, progress=progress)
        if not self.data.cameras:
            raise DatasetError("the dataset has no camera: a reward classifier scores camera frames")
        success = None if self.data.dones is None else self.data.dones.astype(np.float32)
        self.labels, self.label_text = frame_labels(self.data, cfg.labels, success, self.data.rewards)
        if self.labels.all() or not self.labels.any():
            raise DatasetError(f"labels from {self.label_text} make every frame a "
                               f"{'success' if self.labels.any() else 'failure'}: nothing to tell apart")
        self.train_eps, self.val_eps = split_episodes(self.data.episode_index, self.labels, cfg.val_fraction, cfg.seed)
        in_train = np.isin(self.data.episode_index, self.train_eps)
        self.train_pos = np.flatnonzero(in_train & self.labels)
        self.train_neg = np.flatnonzero(in_train & ~self.labels)
        self.val_rows = np.flatnonzero(~in_train)
        if not len(self.train_pos) or not len(self.train_neg):
            raise DatasetError(f"the training episodes hold {len(self.train_pos)} success and {len(self.train_neg)} "
                               "other frames: both are needed (more episodes, or another --val-fraction)")
        # Proprioception only when asked for: ChunkDataset loads observation.state by default.
        self.state_cols = np.arange(self.data.state_dim if cfg.state_keys else 0)
        states = self.data.state_specs if cfg.state_keys else []
        meta = RewardModelMetadata(state=[StateSpec(s.key, s.dim, s.names) for s in states],
                                   cameras=[CameraSpec(c.name, c.key, c.height, c.width) for c in self.data.cameras],
                                   threshold=0.5, labels=self.label_text, fps=self.data.fps,
                                   dataset=cfg.dataset or str(cfg.root), git_revision=git_revision())
        mean = torch.from_numpy(self.data.state_mean[self.state_cols])
        std = torch.from_numpy(self.data.state_std[self.state_cols])
        self.model = RewardClassifier(meta, cfg.image_channels, cfg.image_feature_dim, cfg.hidden, mean,
                                      std).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        self.log = TrainingLog(self.out)
        self.step = 0

    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        state = torch.from_numpy(self.data.state[rows][:, self.state_cols]).to(self.device)
        images = {k: torch.from_numpy(v[rows]).to(self.device) for k, v in self.data.images.items()}
        return state, images

    def train_step(self) -> dict[str, float]:
        # Class balance: half of every batch is success frames (they are few: often one per episode).
        half = self.cfg.batch_size // 2
        rows = np.r_[self.rng.choice(self.train_pos, half), self.rng.choice(self.train_neg, self.cfg.batch_size - half)]
        target = torch.from_numpy(self.labels[rows].astype(np.float32)).to(self.device)
        state, images = self._batch(rows)
        if self.cfg.image_shift > 0:
            images = {k: random_shift(v, self.cfg.image_shift) for k, v in images.items()}
        logits = self.model(state, images)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        accuracy = ((logits.detach() > 0).float() == target).float().mean()
        return {"loss": float(loss.detach()), "train_accuracy": float(accuracy)}

    @torch.no_grad()
    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The model's scores (probabilities) for dataset rows, as the exported graph computes them."""
        self.model.eval()
        out = [torch.sigmoid(self.model(*self._batch(rows[i:i + EVAL_BATCH]))).cpu().numpy()
               for i in range(0, len(rows), EVAL_BATCH)]
        self.model.train()
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def evaluate(self) -> tuple[PRCurve, float, int]:
        curve = precision_recall(self.scores(self.val_rows), self.labels[self.val_rows])
        threshold, index = best_threshold(curve)
        return curve, threshold, index

    def run(self) -> dict[str, Any]:
        """Train, pick the threshold on the held-out episodes, save the checkpoint, export the model."""
        threads = torch.get_num_threads()
        if self.cfg.torch_threads > 0:  # for this run only (the process may train other models after it)
            torch.set_num_threads(self.cfg.torch_threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict[str, Any]:
        from dfp_ros.learning.reward_export import export_reward_onnx

        cfg = self.cfg
        t0, cpu0 = time.perf_counter(), time.process_time()
        bar = tqdm(total=cfg.steps, desc="dfp train-reward", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                info = self.train_step()
                bar.update(1)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    curve, _, i = self.evaluate()
                    info.update(val_average_precision=curve.average_precision, val_precision=float(curve.precision[i]),
                                val_recall=float(curve.recall[i]))
                    self.log.log(self.step, info)
                    bar.set_postfix(loss=f"{info['loss']:.3f}", val_ap=f"{curve.average_precision:.3f}")
        finally:
            bar.close()
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        self.log.close()
        curve, threshold, i = self.evaluate()
        val_labels = self.labels[self.val_rows]
        validation = {"episodes": self.val_eps.tolist(), "frames": len(self.val_rows),
                      "positives": int(val_labels.sum()), "precision": float(curve.precision[i]),
                      "recall": float(curve.recall[i]), "average_precision": curve.average_precision}
        validation["f1"] = 2 * validation["precision"] * validation["recall"] / max(
            validation["precision"] + validation["recall"], 1e-12)
        self.model.meta = replace(self.model.meta, threshold=threshold, validation=validation,
                                  created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.out.mkdir(parents=True, exist_ok=True)
        plot_pr_curve(curve, i, threshold, self.out / PR_CURVE_FILE,
                      f"held-out episodes ({len(self.val_eps)}, {validation['positives']} success frames of "
                      f"{validation['frames']})")
        self.save()
        acceptance_rows = self._acceptance_rows()
        export = export_reward_onnx(copy.deepcopy(self.model), self.out / MODEL_FILE,  # the export moves it to the CPU
                                    acceptance_feeds=self.feeds(acceptance_rows))
        return {"model": export["path"], "pr_curve": str(self.out / PR_CURVE_FILE), "threshold": threshold,
                "validation": validation, "train_seconds": train_s, "train_cpu_seconds": train_cpu_s,
                "steps": self.step, "labels": self.label_text, "train_episodes": len(self.train_eps), "export": export}

    def _acceptance_rows(self) -> np.ndarray:
        """Two held-out frames of each class (where there are): scores on both sides of the threshold."""
        pos, neg = self.val_rows[self.labels[self.val_rows]], self.val_rows[~self.labels[self.val_rows]]
        return np.r_[pos[:2], neg[-2:]] if len(pos) and len(neg) else self.val_rows[:4]

    def feeds(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """ONNX feeds (state, image.<camera>) of dataset rows."""
        feeds = {INPUT_STATE: np.ascontiguousarray(self.data.state[rows][:, self.state_cols], np.float32)}
        for cam in self.model.meta.cameras:
            feeds[image_input_name(cam.name)] = np.ascontiguousarray(self.data.images[cam.name][rows])
        return feeds

    def save(self) -> Path:
        """The checkpoint: weights (safetensors) and the config + metadata they belong to."""
        folder = self.out / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, str(folder / "model.safetensors"))
        config = {"metadata": self.model.meta.to_dict(), "net_config": self.model.net_config,
                  "train_config": self.cfg.to_dict(), "step": self.step}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        return folder
