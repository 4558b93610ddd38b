# syntax=docker/dockerfile:1
# dfp_ros `demo`: the README's `make demo` on a laptop, in a container. The pip path of this
# repository (ROS 2 Kilted as PyPI wheels, ONNX Runtime, the MuJoCo simulator; no torch, no GPU):
# the simulated robot and the policy node run as two ROS 2 processes on a private DDS graph for
# 20 episodes and print the success rate, control rate and inference latency.
#
#   docker build -f docker/demo.Dockerfile -t dfp-ros-demo .
#   docker run --rm dfp-ros-demo                          # make demo
#   docker run --rm -v "$PWD/outputs:/opt/dfp_ros/outputs" dfp-ros-demo \
#       .venv/bin/python -m dfp_ros.tools.live_demo --mode realtime   # 20 Hz wall clock; logs kept
#
# Every RUN calls docker/demo_steps.sh, which scripts/check_demo_image.sh also runs in a Debian
# root made with debootstrap: see docs/docker.md for what that check proved.

# Debian 12 point release 12.15, the one the debootstrap check installs.
FROM debian:12.15-slim

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dfp_ros

# 1. System packages and the non-root user (changes only with demo_steps.sh).
COPY docker/demo_steps.sh /usr/local/bin/demo_steps.sh
RUN demo_steps.sh system

# 2. Python dependencies of the deploy profile, from the packaging files only (changes with setup.py).
COPY setup.py setup.cfg package.xml ./
COPY resource/ resource/
RUN --mount=type=cache,target=/root/.cache/pip demo_steps.sh deps

# 3. The repository itself (see .dockerignore), installed with the README's own `make setup-deploy`.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip demo_steps.sh package

# dfp, made by `demo_steps.sh system`
USER 1000:1000
CMD ["make", "demo"]
