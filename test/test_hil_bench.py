"""`dfp bench hil` (dfp_ros.tools.hil_bench): its command line, the parameters it hands the nodes of the
shared graph (checked against the nodes' real tables), and its reading and plotting of the learner's curve.
The session itself runs for minutes and is the benchmark, not a test."""

from __future__ import annotations

import argparse

import pytest

from dfp_ros.learning.learning_curve import LearningCurve
from dfp_ros.nodes.finetune_node import PARAMS as LEARNER_PARAMS
from dfp_ros.nodes.oracle_teleop_node import PARAMS as OPERATOR_PARAMS
from dfp_ros.tools import hil_bench
from dfp_ros.tools.cli import build_parser
from dfp_ros.tools.finetune_bench import learner_params


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_cli_parses_the_session_and_shares_the_weak_policy_and_learner_settings_with_finetune():
    a = _args("hil", "--minutes", "2.5", "--takeover-after-s", "1.5", "--hand-back-after-s", "0", "--no-compare")
    f = _args("finetune")
    assert (a.minutes, a.takeover_after_s, a.hand_back_after_s, a.compare) == (2.5, 1.5, 0.0, False)
    assert _args("hil").compare is True
    shared = ("work_dir", "demos", "bc_steps", "hidden", "eval_seed", "task_id", "warmup_steps", "updates_per_step",
              "batch_size", "num_candidates", "export_every", "top_k", "lam", "pace", "domain")
    assert {k: getattr(a, k) for k in shared} == {k: getattr(f, k) for k in shared}
    assert f.minutes == 20.0 and not f.fresh, "dfp bench finetune keeps its defaults"


def test_operator_and_learner_parameters_are_ones_the_nodes_declare():
    a = _args("hil", "--takeover-after-s", "3", "--hand-back-after-s", "1.5")
    op = hil_bench.operator_params(a)
    declared = {p.name: p for p in OPERATOR_PARAMS}
    assert set(op) <= set(declared)
    assert op["role"] == "operator" and op["takeover_after_s"] == 3.0 and op["hand_back_after_s"] == 1.5
    assert all(type(v) is type(declared[k].default) for k, v in op.items()), "a node refuses a value of another type"


def test_learner_parameters_of_the_shared_graph_are_declared_and_extras_override(tmp_path):
    a = _args("hil", "--warmup-steps", "300", "--no-pace")
    declared = {p.name: p for p in LEARNER_PARAMS}
    plain = learner_params(tmp_path / "out", tmp_path / "ckpt", tmp_path / "data", a)
    assert set(plain) <= set(declared)
    assert all(type(v) is type(declared[k].default) for k, v in plain.items())
    assert plain["warmup_steps"] == 300 and plain["pace_robot"] is False
    assert plain["output_dir"] == str(tmp_path / "out")
    extra = learner_params(tmp_path / "out", tmp_path / "ckpt", tmp_path / "data", a,
                           {"executed_topic": "", "warmup_steps": 7})
    assert extra == {**plain, "executed_topic": "", "warmup_steps": 7}
    assert "executed_topic" in declared


@pytest.mark.parametrize("argv, words", [
    (("--minutes", "0"), "--minutes must be > 0"),
    (("--takeover-after-s", "0.01"), "--takeover-after-s must be >= 0.05"),
    (("--hand-back-after-s", "-1"), "--hand-back-after-s must be >= 0"),
    (("--eval-episodes", "0"), "--eval-episodes must be >= 1"),
])
def test_bad_settings_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, words):
    from dfp_ros.tools.cli import main

    assert main(["bench", "hil", "--work-dir", str(tmp_path / "w"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
    assert not (tmp_path / "w").exists(), "nothing was built"


def test_intervention_rates_and_curve_png_from_the_learners_csv(tmp_path):
    curves = {}
    for arm, human in ((hil_bench.WITH, [40, 40, 20, 0, 0]), (hil_bench.WITHOUT, [0] * 5)):
        lc = LearningCurve(tmp_path / arm)
        for i, h in enumerate(human):
            lc.add({"env_steps": 200 * (i + 1), "success": float(i >= 2), "steps": 200, "human_steps": h,
                    "intervention_rate": h / 200})
        curves[arm] = hil_bench.read_curve(lc.csv_path)
    rows = curves[hil_bench.WITH]
    assert hil_bench.mean_rate(rows[:2], "intervention_rate") == 0.2
    assert hil_bench.mean_rate(rows[-2:], "intervention_rate") == 0.0
    assert hil_bench.mean_rate([], "intervention_rate") is None
    assert hil_bench.read_curve(tmp_path / "missing.csv") == []
    png = tmp_path / "hil_curve.png"
    hil_bench.plot_curves(curves, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
