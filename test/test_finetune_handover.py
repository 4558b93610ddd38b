"""finetune_node's model hand-over, in this process: of the exports the learner reported together only the
newest goes to the robot, and an export that is already gone is skipped with a warning, not a crash (the
learner keeps only its last few files, so a node that fell behind can find a reported one deleted)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("torch", reason="the learner needs torch (training profile)")

from ros_graph import domain_id  # noqa: E402


def _report_exports(node, exports: list[tuple[Path, int]]) -> None:
    """The learner process' "exported" messages, through its real queue, then one poll of the node."""
    for path, updates in exports:
        node.learner._outbox.put(("exported", {"path": str(path), "updates": updates}))
    deadline = time.monotonic() + 10.0
    while node.learner._outbox.empty() and time.monotonic() < deadline:  # the queue's feeder thread
        time.sleep(0.01)
    time.sleep(0.2)
    node._read_learner()


def test_only_the_newest_export_is_sent_and_one_already_deleted_is_skipped(tmp_path):
    from test_finetune_node import make_sim_checkpoint

    from dfp_ros.nodes.finetune_node import FinetuneNode

    ckpt, _ = make_sim_checkpoint(tmp_path, hidden=(32,))
    models = tmp_path / "models"
    models.mkdir()
    paths = [models / f"policy_u{u:08d}.onnx" for u in (15, 30, 45)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 64)
    rclpy.init(args=["--ros-args", "-p", f"init_checkpoint:={ckpt}", "-p", f"output_dir:={tmp_path / 'out'}",
                     "-p", "share_filesystem:=false"], domain_id=domain_id(offset=233))
    node = FinetuneNode()
    try:
        _report_exports(node, [(p, 15 * (i + 1)) for i, p in enumerate(paths)])
        assert node.models_sent == 1, node.models_sent
        assert node.last_model == hashlib.sha256(paths[-1].read_bytes()).hexdigest()

        _report_exports(node, [(models / "policy_u00000060.onnx", 60)])  # reported, then deleted by the learner
        assert node.models_sent == 1 and node.last_model == hashlib.sha256(paths[-1].read_bytes()).hexdigest()
        assert node.learner.alive
    finally:
        node.learner.proc.kill()  # nothing learned worth saving
        node.destroy_node()
        rclpy.try_shutdown()
