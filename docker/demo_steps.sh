#!/usr/bin/env bash
# The build steps of the `demo` image, in one place: docker/demo.Dockerfile runs each step in a RUN,
# and scripts/check_demo_image.sh runs the same steps in a debootstrapped Debian root (no container
# engine needed), so what the check proves is what the image does.
#   demo_steps.sh system    # as root on bare Debian bookworm: Python, venv, make; the `dfp` user
#   demo_steps.sh deps      # as root in APP_DIR holding only the packaging files (setup.py, ...):
#                           #   the deploy profile's Python dependencies, in a layer of their own
#   demo_steps.sh package   # as root in APP_DIR holding the whole repository: `make setup-deploy`
# The image then runs `make demo` as `dfp` (the simulated robot + policy node, no GPU).
set -euo pipefail

DEMO_USER=dfp
DEMO_UID=1000
VENV=.venv

step_system() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # python3-venv: the repository's own setup (scripts/setup_env.sh) makes a virtual environment;
  # make: the entry point is `make demo`. setup_env.sh installs the simulator's libraries itself.
  apt-get install -y -qq --no-install-recommends python3 python3-venv make ca-certificates >/dev/null
  rm -rf /var/lib/apt/lists/*
  id -u "$DEMO_USER" >/dev/null 2>&1 || useradd --create-home --uid "$DEMO_UID" --shell /bin/bash "$DEMO_USER"
}

step_deps() {
  # Installing the package from its packaging files alone brings every dependency of the deploy
  # profile (ROS 2 wheels, ONNX Runtime, OpenCV, MuJoCo, OGBench) but no source: this layer is
  # rebuilt only when setup.py changes. `make setup-deploy` replaces the empty package afterwards.
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q ".[ros,sim]"
}

step_package() {
  make setup-deploy
  # The demo writes its node logs under outputs/; everything else stays root-owned and read-only.
  install -d -o "$DEMO_USER" -g "$DEMO_USER" outputs
}

case "${1:-}" in
  system) step_system ;;
  deps) step_deps ;;
  package) step_package ;;
  *) echo "usage: $0 {system|deps|package}" >&2; exit 2 ;;
esac
