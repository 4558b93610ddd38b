"""`dfp bench ogbench` on a tiny schedule: the offline -> online chain, its outputs, resuming, and its refusals."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json
import shutil
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("ogbench", reason="the simulator needs ogbench and mujoco (training profile)")
pytest.importorskip("lerobot", reason="datasets need lerobot (training profile)")

from dfp_ros.tools.cli import build_parser
from dfp_ros.tools.ogbench_bench import run, run_from_args


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two short cube-double play episodes with task 2's rewards."""
    from dfp_ros.sim.play_datasets import PlayConfig, make_play_dataset

    root = tmp_path_factory.mktemp("ogbench") / "play"
    make_play_dataset(root, 2, PlayConfig(env_name="cube-double-v0", task_id=2, episode_steps=60), progress=False)
    return root


def _args(work: Path, dataset: Path, *extra: str):
    # 20 offline steps evaluated at 10 and 20; 1000 online env steps = two 500-step episodes (this policy does
    # not solve task 2), evaluated after each (--eval-every 10 counts env steps online) on one episode; 5 updates
    # per episode.
    return build_parser().parse_args([
        "bench", "ogbench", "--dataset", str(dataset), "--work-dir", str(work), "--offline-steps", "20",
        "--online-env-steps", "1000", "--eval-every", "10", "--eval-episodes", "1", "--hidden", "32",
        "--batch-size", "16", "--num-candidates", "4", "--top-k", "2", "--warmup-steps", "0",
        "--updates-per-step", "0.01", "--export-every", "5", "--no-progress", *extra])


def _rows(work: Path) -> list[dict[str, str]]:
    with (work / "curve.csv").open() as f:
        return list(csv.DictReader(f))


def test_chain_runs_resumes_without_repeating_and_refuses_other_settings(tmp_path, dataset, capsys):
    work = tmp_path / "run"
    seen: list[dict] = []

    def interrupt_after_first_online(row: dict) -> None:  # Ctrl-C right after an evaluation was recorded
        seen.append(row)
        if row["phase"] == "online":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_args(work, dataset), on_evaluation=interrupt_after_first_online)
    assert [(r["phase"], r["offline_steps"], r["online_env_steps"]) for r in seen] == [
        ("offline", 10, 0), ("offline", 20, 0), ("online", 20, 500)]
    interrupted = _rows(work)
    assert len(interrupted) == 3

    r = run(_args(work, dataset))
    assert r["evaluated_now"] == 1  # only the missing one
    rows = _rows(work)
    assert rows[:3] == interrupted
    assert [(x["phase"], x["offline_steps"], x["online_env_steps"], x["episodes"]) for x in rows] == [
        ("offline", "10", "0", "1"), ("offline", "20", "0", "1"), ("online", "20", "500", "1"),
        ("online", "20", "1000", "1")]
    # A success places every cube: the share of cubes placed is at least the success rate.
    assert all(0.0 <= float(x["success_rate"]) <= float(x["cubes_placed"]) <= 1.0 and float(x["cpu_s"]) > 0
               for x in rows)
    # The resumed learner went on where it stopped: the whole budget's updates, one acting model per 5.
    assert r["online"]["updates"] == 10 and r["online"]["train_episodes"] == 2
    assert r["online"]["models_swapped"] == 2 and r["online"]["replay_online"] > 0
    assert (work / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((work / "summary.json").read_text())
    assert saved["final_success_rate"] == float(rows[-1]["success_rate"])
    assert saved["qc_reference"]["offline"]["1000000"] == 0.66
    capsys.readouterr()

    # Finished: a rerun evaluates nothing and prints the JSON line last.
    assert run_from_args(_args(work, dataset)) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["evaluations"] == [{"phase": p, "steps": s, "success_rate": float(x["success_rate"]),
                                    "cubes_placed": float(x["cubes_placed"])}
                                   for (p, s), x in zip([("offline", 10), ("offline", 20), ("online", 500),
                                                         ("online", 1000)], rows, strict=True)]
    assert (line["env"], line["task"], line["device"], line["offline_steps"]) == ("cube-double-v0", 2, "cpu", 20)
    assert line["cpu_minutes"] > 0 and set(line["qc_reference"]["online"]) == {"100000"}
    assert _rows(work) == rows

    # Other settings in the same work dir: one line, exit != 0, nothing changed.
    files = {p: p.read_bytes() for p in (work / "curve.csv", work / "config.json", work / "progress.json")}
    assert run_from_args(_args(work, dataset, "--top-k", "3")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "top_k: 2 there, 3 asked" in err[0]
    # The online phase started from the 20-step checkpoint: the offline phase can no longer grow.
    assert run_from_args(_args(work, dataset, "--offline-steps", "30")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can no longer grow to 30" in err[0], err
    assert {p: p.read_bytes() for p in files} == files


@pytest.mark.parametrize(("extra", "words"), [
    (["--env", "cube-penta-v0"], "unknown env 'cube-penta-v0'"),
    (["--task", "7"], "unknown task 7"),
    # the cube-double dataset for the three-cube scene: its state has 46 values
    (["--env", "cube-triple-v0"], "observation.state has 37 values, cube-triple-v0's has 46"),
])
def test_refused_in_one_line_before_anything_is_written(tmp_path, dataset, capsys, extra, words):
    work = tmp_path / "run"
    assert run_from_args(_args(work, dataset, *extra)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not work.exists()


def test_the_ablation_starts_from_a_finished_offline_run_in_its_scene_and_refuses_an_unfinished_one(
        tmp_path, dataset, capsys):
    from dfp_ros.tools import finetune_ablation

    work = tmp_path / "offline_run"

    def stop_after_first(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_args(work, dataset, "--online-env-steps", "0"), on_evaluation=stop_after_first)

    def ablation(out: Path):
        return build_parser().parse_args([
            "bench", "ablation", "--from-ogbench", str(work), "--out-dir", str(out), "--arms", "bc,k1,k2",
            "--seeds", "0", "--jobs", "2", "--env-steps", "500", "--eval-every", "500", "--eval-episodes", "1",
            "--warmup-steps", "0", "--updates-per-step", "0.01", "--batch-size", "16", "--num-candidates", "4",
            "--export-every", "5", "--no-progress"])

    # The offline phase stopped at 10 of its 20 steps: refused in one line, nothing started.
    assert finetune_ablation.run_from_args(ablation(tmp_path / "refused")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has not reached 20 steps (evaluated at [10])" in err[0]
    assert not (tmp_path / "refused" / "summary.json").exists()

    run(_args(work, dataset, "--online-env-steps", "0"))  # finish it
    r = finetune_ablation.run(ablation(tmp_path / "ablation"))
    assert (r["env"], r["task_id"], r["dataset"]) == ("cube-double-v0", 2, str(dataset.resolve()))
    assert r["checkpoint"] == str(work / "offline" / "checkpoints" / "last")
    # Two worker processes: each arm one cube-double episode (500 steps), learnt from: 5 updates on its chunk
    # transitions. The curves keep the plan's order whichever run ends first.
    assert list(r["arms"]) == ["bc", "k1", "k2"]
    for key in ("k1", "k2"):
        assert r["arms"][key]["updates"] == [5] and list(r["arms"][key]["curve"]) == [0, 500]
    with (tmp_path / "ablation" / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["arm"] for row in rows] == ["bc", "bc", "k1", "k1", "k2", "k2"]
    assert all(int(row["env_steps"]) == 500 and int(row["replay_online"]) > 0 for row in rows[3::2])


def test_a_dataset_grown_after_the_run_started_is_another_run(tmp_path, dataset, capsys):
    import shutil

    from dfp_ros.sim.play_datasets import PlayConfig, make_play_dataset

    grown = tmp_path / "play"
    shutil.copytree(dataset, grown)
    work = tmp_path / "run"
    schedule = ("--offline-steps", "10", "--online-env-steps", "0")
    run(_args(work, grown, *schedule))
    files = {p: p.read_bytes() for p in (work / "curve.csv", work / "config.json", work / "progress.json")}
    make_play_dataset(grown, 3, PlayConfig(env_name="cube-double-v0", task_id=2, episode_steps=60), progress=False)
    assert run_from_args(_args(work, grown, *schedule)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset_episodes: 2 there, 3 asked" in err[0]
    assert {p: p.read_bytes() for p in files} == files


def test_a_finished_offline_phase_grows_on_from_its_last_checkpoint(tmp_path, dataset):
    from dfp_ros.learning.trainer import load_checkpoint

    work = tmp_path / "run"
    schedule = ("--online-env-steps", "0")
    run(_args(work, dataset, *schedule, "--offline-steps", "10"))
    first = _rows(work)
    r = run(_args(work, dataset, *schedule, "--offline-steps", "20"))
    assert r["evaluated_now"] == 1  # at 20: the one at 10 is kept, not repeated
    rows = _rows(work)
    assert rows[0] == first[0] and [x["offline_steps"] for x in rows] == ["10", "20"]
    assert json.loads((work / "config.json").read_text())["offline_steps"] == 20
    assert load_checkpoint(work / "offline" / "checkpoints" / "last")[1]["step"] == 20


def test_offline_checkpoints_trained_elsewhere_are_evaluated_in_place_of_training(tmp_path, dataset, capsys):
    from safetensors.numpy import load_file

    from dfp_ros.tools.cli import main

    # What scripts/gpu_ogbench_offline.sh does on a GPU machine: the dataset packed (no LeRobot there), `dfp train`
    # in stretches, each stretch's checkpoint kept as step_<k> (there a .tar; a folder is taken too).
    packed = tmp_path / "play.npz"
    assert main(["pack-dataset", "--root", str(dataset), "--out", str(packed), "--done-key", "next.success"]) == 0
    elsewhere, run_dir = tmp_path / "elsewhere", tmp_path / "gpu_run"
    for k in (10, 20):
        assert main(["train", "--root", str(packed), "--output", str(run_dir), "--critic", "--hidden", "32",
                     "--critic-hidden", "32", "--batch-size", "16", "--steps", str(k), "--resume",
                     "--no-progress"]) == 0
        last = run_dir / "checkpoints" / "last"
        if k == 10:
            shutil.copytree(last, elsewhere / "step_0000010", ignore=shutil.ignore_patterns("training_state*"))
        else:
            with tarfile.open(elsewhere / "step_0000020.tar", "w") as tar:
                for name in ("model.safetensors", "config.json"):
                    tar.add(last / name, arcname=name)

    work = tmp_path / "run"
    r = run(_args(work, dataset, "--online-env-steps", "0", "--offline-from", str(elsewhere)))
    assert [(e["phase"], e["offline_steps"]) for e in r["evaluations"]] == [("offline", 10), ("offline", 20)]
    assert not (work / "offline" / "log.csv").exists()  # nothing was trained here
    used = load_file(str(work / "offline" / "checkpoints" / "last" / "model.safetensors"))
    trained = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert used.keys() == trained.keys() and all((used[k] == trained[k]).all() for k in used)
    capsys.readouterr()

    # A checkpoint of other settings, or a missing one: one line, nothing evaluated.
    for extra, words in ((["--hidden", "64"], "hidden [32] (this run: [64])"),
                         (["--eval-every", "5"], "no checkpoint")):
        assert run_from_args(_args(tmp_path / f"refused{len(extra[1])}", dataset, "--online-env-steps", "0",
                                   "--offline-from", str(elsewhere), *extra)) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
