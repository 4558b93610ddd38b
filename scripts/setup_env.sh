#!/usr/bin/env bash
# Set up everything dfp_ros needs on a fresh machine: Debian packages, the virtual environment, and
# the Python packages of one profile. Idempotent and quick when nothing changed.
#   scripts/setup_env.sh deploy   # inference: ROS 2 wheels, ONNX Runtime, OpenCV, simulator (no torch)
#   scripts/setup_env.sh full     # + training (torch, lerobot, onnx) and test tools
set -euo pipefail
profile=${1:-full}
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# libegl1/libgl1: the simulator's camera renders with MuJoCo over EGL; libusb-1.0-0: pyrealsense2;
# The full profile also gets the shell linter the test suite runs on the image scripts.
debs=(libegl1 libgl1 libusb-1.0-0)
[ "$profile" = full ] && debs+=(shellcheck)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

case "$profile" in
  deploy) extras="ros,sim" ;;
  full) extras="all" ;;
  *) echo "usage: $0 {deploy|full}" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || { echo "setup: creating $VENV"; "$PYTHON" -m venv "$VENV"; }
stamp="$VENV/.installed-$profile"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "setup: installing the '$profile' profile into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
