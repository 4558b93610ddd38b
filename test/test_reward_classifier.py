"""`dfp train-reward`: labels, the split by episode, training on a small camera dataset, and the export
(contract, parity with torch, the acceptance test every loader re-runs).

The dataset is written through lerobot's own writer: a "robot" whose success shows as a bright patch in
the camera frame (the front camera; episodes 2 and 5 fail and never show it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("lerobot", reason="training reads LeRobot datasets")

from dfp_ros.contracts import MODEL_KIND_REWARD, ContractError
from dfp_ros.learning.dataset import DatasetError
from dfp_ros.learning.reward_classifier import (
    MODEL_FILE,
    PR_CURVE_FILE,
    LabelRule,
    RewardTrainConfig,
    RewardTrainer,
    best_threshold,
    frame_labels,
    precision_recall,
    split_episodes,
)
from dfp_ros.runtime.policy_runtime import PolicyRuntime
from dfp_ros.runtime.reward_runtime import RewardRuntime
from dfp_ros.scheduling import no_realtime_leak
from dfp_ros.tools import cli

SIZE = 32  # the video encoder fails on smaller frames
LENGTH = 12
SUCCESS_FROM = 8  # frames >= this of a successful episode show the patch
FAILED = (2, 5)


def patch_frame(episode: int, t: int, success: bool, size: int = SIZE) -> np.ndarray:
    """A textured frame with a grey square moving over it; success adds a bright patch in a corner."""
    rng = np.random.default_rng(1000 * episode + t)
    img = (rng.integers(20, 90, (size, size, 3))).astype(np.uint8)
    x = (2 * t + 3 * episode) % (size - 8)
    img[size // 2: size // 2 + 8, x:x + 8] = 140
    if success:
        img[2:12, 2:12] = 250
    return img


def write_patch_dataset(root: Path, episodes: int = 10, outcome: bool = True) -> Path:
    """`episodes` episodes of LENGTH frames; with `outcome` a next.success column (and next.reward: 0 at
    success, -1 otherwise)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {"observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
                "observation.images.front": {"dtype": "video", "shape": (SIZE, SIZE, 3),
                                             "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["u", "v"]}}
    if outcome:
        features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
        features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    ds = LeRobotDataset.create("test/patch", fps=10, features=features, root=root, use_videos=True)

    def row(ep: int, t: int) -> dict:
        success = ep not in FAILED and t >= SUCCESS_FROM
        frame = {"observation.state": np.array([t, ep, 0], np.float32), "action": np.zeros(2, np.float32),
                 "observation.images.front": patch_frame(ep, t, success), "task": "show the patch"}
        if outcome:
            frame["next.success"] = np.array([success])
            frame["next.reward"] = np.array([0.0 if success else -1.0], np.float32)
        return frame

    for ep in range(episodes):
        # A video encoder makes its thread real-time as root: each episode's writing puts it back.
        with no_realtime_leak():
            for t in range(LENGTH):
                ds.add_frame(row(ep, t))
            ds.save_episode()
    with no_realtime_leak():
        ds.finalize()
    return root


def small_config(root: Path, output: Path, **kw) -> RewardTrainConfig:
    """A classifier small enough to train in seconds on 2 cores."""
    return RewardTrainConfig(root=str(root), output=str(output), image_size=(SIZE, SIZE), steps=150, batch_size=32,
                             image_channels=(8, 8), image_feature_dim=16, hidden=(32,), image_shift=2,
                             eval_every=75, device="cpu", **kw)


def train_patch_detector(tmp: Path, **kw) -> tuple[RewardTrainer, dict]:
    """A dataset written, a detector trained and exported under `tmp`; the trainer and its result."""
    root = write_patch_dataset(tmp / "ds")
    trainer = RewardTrainer(small_config(root, tmp / "run", **kw), progress=False)
    return trainer, trainer.run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_patch_detector(tmp_path_factory.mktemp("reward"))


class _Rows:
    """What frame_labels reads of a ChunkDataset: each row's episode and its episode's first and last rows."""

    def __init__(self, episode_index: list[int]):
        self.episode_index = np.asarray(episode_index)
        first = {e: int(np.flatnonzero(self.episode_index == e)[0]) for e in set(episode_index)}
        last = {e: int(np.flatnonzero(self.episode_index == e)[-1]) for e in set(episode_index)}
        self.ep_start = np.array([first[e] for e in episode_index])
        self.ep_end = np.array([last[e] for e in episode_index])

    def __len__(self) -> int:
        return len(self.episode_index)


def test_labels_at_and_after_success_from_a_column_or_a_reward_threshold_or_by_episode():
    data = _Rows([0, 0, 0, 0, 1, 1, 1, 2, 2])
    success = np.array([0, 1, 0, 0, 0, 0, 0, 0, 1], np.float32)  # flickers off after success: still a success
    labels, text = frame_labels(data, LabelRule(), success, None)
    assert labels.tolist() == [False, True, True, True, False, False, False, False, True] and "next.success" in text
    reward = np.where(success > 0, 0.0, -1.0)
    labels_r, text_r = frame_labels(data, LabelRule(reward_threshold=-0.5), None, reward)
    assert labels_r.tolist() == labels.tolist() and "> -0.5" in text_r
    last, _ = frame_labels(data, LabelRule(last_frames=2), success, reward)  # flags win over the columns
    assert last.tolist() == [False, False, True, True, False, True, True, True, True]
    some, text_s = frame_labels(data, LabelRule(success_episodes=[1]), None, None)
    assert some.tolist() == [False] * 6 + [True, False, False] and "episodes [1]" in text_s
    with pytest.raises(DatasetError, match=r"--success-episodes.*--label-last-frames"):
        frame_labels(data, LabelRule(), None, None)
    with pytest.raises(DatasetError, match="--reward-threshold"):
        frame_labels(data, LabelRule(), None, reward)
    with pytest.raises(DatasetError, match=r"episodes \[7\]"):
        frame_labels(data, LabelRule(success_episodes=[1, 7]), None, None)


def test_split_is_by_episode_and_holds_both_kinds():
    episodes = np.repeat(np.arange(20), 5)
    labels = (episodes % 4 == 0) & (np.tile(np.arange(5), 20) == 4)  # 5 episodes with a success frame
    train, val = split_episodes(episodes, labels, 0.2, seed=0)
    assert not set(train) & set(val) and set(train) | set(val) == set(range(20))
    assert len(val) == 4 and {0, 4, 8, 12, 16} & set(val) and set(val) - {0, 4, 8, 12, 16}
    with pytest.raises(DatasetError, match="val-fraction"):
        split_episodes(episodes, labels, 1.0, seed=0)


def test_precision_recall_curve_and_f1_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0], bool)
    curve = precision_recall(scores, labels)
    assert curve.precision.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5, 1 / 2])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    threshold, i = best_threshold(curve)
    assert i == 3 and threshold == pytest.approx(0.4)  # half-way between 0.6 and the next score, 0.2


def test_trained_detector_exported_with_contract_parity_and_acceptance(trained):
    trainer, res = trained
    # Labels from next.success: frames >= SUCCESS_FROM of the successful episodes.
    t = np.arange(len(trainer.data)) - trainer.data.ep_start
    expected = (t >= SUCCESS_FROM) & ~np.isin(trainer.data.episode_index, FAILED)
    assert (trainer.labels == expected).all()
    assert not set(trainer.train_eps) & set(trainer.val_eps)
    assert set(trainer.train_eps) | set(trainer.val_eps) == set(range(10))
    assert set(trainer.data.episode_index[trainer.val_rows]) == set(trainer.val_eps)
    v = res["validation"]
    assert v["positives"] > 0 and v["precision"] >= 0.9 and v["recall"] >= 0.9, v
    assert (Path(res["pr_curve"]).stat().st_size > 1000) and Path(res["pr_curve"]).name == PR_CURVE_FILE
    assert res["export"]["max_abs_error"] <= 1e-4

    runtime = RewardRuntime(res["model"])  # the loader re-runs the stored acceptance test
    meta = runtime.meta
    assert meta.kind == MODEL_KIND_REWARD and meta.threshold == pytest.approx(res["threshold"])
    assert [(c.name, c.height, c.width) for c in meta.cameras] == [("front", SIZE, SIZE)] and meta.state_dim == 0
    assert runtime.acceptance is not None and runtime.acceptance.passed
    assert len(meta.content_hash) == 64 and meta.validation["episodes"] == trainer.val_eps.tolist()
    # The ONNX model scores raw frames of a held-out episode like torch, on both sides of the threshold.
    ep = next(e for e in trainer.val_eps if e not in FAILED)
    state = np.zeros(0, np.float32)
    assert runtime.score(state, {"front": patch_frame(ep, 10, True)}) >= meta.threshold
    assert runtime.score(state, {"front": patch_frame(ep, 3, False)}) < meta.threshold
    rows = trainer.val_rows[:16]
    feeds = trainer.feeds(rows)
    onnx_scores = runtime.run(feeds["state"], {"front": feeds["image.front"]})
    np.testing.assert_allclose(onnx_scores, trainer.scores(rows), atol=1e-4)
    with pytest.raises(ContractError, match="not a policy"):
        PolicyRuntime(res["model"])
    config = json.loads((Path(res["model"]).parent / "checkpoint" / "config.json").read_text())
    assert config["metadata"]["threshold"] == pytest.approx(res["threshold"])


def test_a_damaged_model_fails_its_acceptance_test(trained, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, res = trained
    proto = onnx.load(res["model"])
    # The output layer's weights ([32, 1] or [1, 32]) negated: successes score as failures and back.
    head = next(w for w in proto.graph.initializer if len(w.dims) == 2 and 1 in w.dims)
    head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), head.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    with pytest.raises(ContractError, match="fails its acceptance test"):
        RewardRuntime(damaged)


def test_cli_refuses_a_dataset_without_outcome_and_labels_it_by_flag(tmp_path, capsys):
    root = write_patch_dataset(tmp_path / "ds", episodes=4, outcome=False)
    args = ["train-reward", "--root", str(root), "--output", str(tmp_path / "run"), "--image-size", "32,32",
            "--steps", "2", "--no-progress"]
    capsys.readouterr()  # the dataset writer's progress bars
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "dfp train-reward" in line]
    assert len(err) == 1 and "no outcome column" in err[0] and "--label-last-frames" in err[0], err
    assert not (tmp_path / "run" / MODEL_FILE).exists()
    # The episodes all "succeed": their last 4 frames are the successes.
    trainer = RewardTrainer(small_config(root, tmp_path / "run2", labels=LabelRule(last_frames=4)), progress=False)
    t = np.arange(len(trainer.data)) - trainer.data.ep_start
    assert (trainer.labels == (t >= LENGTH - 4)).all() and "last 4 frames" in trainer.label_text
