"""One learner, two robots (namespaces), models handed over as bytes on dfp/model_update (no shared filesystem)."""

from __future__ import annotations

import csv
import hashlib
import time

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("torch", reason="the learner needs torch (training profile)")

from diagnostic_msgs.msg import DiagnosticArray
from ros_graph import RosGraph, domain_id, ros_env, start_node, stop
from test_finetune_node import finetune_params, make_sim_checkpoint

ROBOTS = ("robot1", "robot2")


def test_two_robots_feed_one_learner_and_both_get_models_as_bytes(tmp_path):
    ckpt, onnx_path = make_sim_checkpoint(tmp_path)
    initial = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    dom = domain_id(offset=223)
    env = ros_env(dom)
    out = tmp_path / "out"
    params = {**finetune_params(ckpt, out), "robots": list(ROBOTS), "share_filesystem": False}
    procs = []
    with RosGraph(dom) as graph:
        diag = graph.collect("/diagnostics", DiagnosticArray)
        try:
            learner = start_node("dfp_ros.nodes.finetune_node", params, env, log_dir=tmp_path)
            procs.append(learner)
            assert learner.wait_for_log("learner started", timeout=60), learner.log()
            for i, ns in enumerate(ROBOTS):
                procs.append(start_node("dfp_ros.nodes.sim_robot_node", {"mode": "lockstep", "seed": 10 + i}, env,
                                        remap={"__ns": f"/{ns}"}, log_dir=tmp_path))
                procs.append(start_node("dfp_ros.nodes.policy_node", {
                    "model_path": str(onnx_path), "enabled": True, "trigger": "observation", "seed": i}, env,
                    remap={"__ns": f"/{ns}"}, log_dir=tmp_path))

            def shas() -> dict[str, str]:
                found: dict[str, str] = {}
                for msg in diag.messages:
                    for st in msg.status:
                        for ns in ROBOTS:
                            if st.hardware_id == f"/{ns}/policy_node":
                                found[ns] = {kv.key: kv.value for kv in st.values}["model_sha256"]
                return found

            def rows() -> list[dict[str, str]]:
                path = out / "learning_curve.csv"
                return list(csv.DictReader(path.open())) if path.is_file() else []

            done = graph.spin_until(lambda: (all(s != initial for s in shas().values()) and len(shas()) == 2
                                             and {r["robot"] for r in rows() if int(r["joined"]) > 0} >= set(ROBOTS)),
                                    timeout=150)
            assert done, (shas(), [(r["robot"], r["joined"]) for r in rows()], learner.log()[-3000:])
            assert "published on /robot1/dfp/model_update" in learner.log()
            assert "published on /robot2/dfp/model_update" in learner.log()
            for p in procs:
                assert p.poll() is None, p.log()[-2000:]
        finally:
            for p in reversed(procs):
                stop(p, timeout=15)
    time.sleep(0.1)
