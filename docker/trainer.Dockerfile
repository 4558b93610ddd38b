# syntax=docker/dockerfile:1
# dfp_ros `trainer`: the GPU box. PyTorch with CUDA, lerobot and the `train` extra (plus `ros` and
# `sim`) for `dfp train` / `dfp export`, the simulator evaluations, and the on-robot RL learner
# `finetune_node` (ROS 2 Kilted from PyPI wheels, on the same DDS graph as the robot).
#
#   docker build -f docker/trainer.Dockerfile -t dfp-ros-trainer .
#   docker run --rm --gpus all -v "$PWD/outputs:/work/outputs" -v "$PWD/datasets:/work/datasets" \
#       dfp-ros-trainer dfp train --root datasets/cube --output outputs/cube
#   docker run --rm --gpus all -v "$PWD/outputs:/work/outputs" dfp-ros-trainer \
#       dfp export outputs/cube/checkpoints/last outputs/cube/model.onnx --num-samples 16
#   (the learner next to a robot: docker/compose.yaml, service `learner`)

# torch 2.10 (lerobot 0.4.4 needs torch < 2.11) with CUDA 12.8 and cuDNN 9.
FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

# libegl1, libgl1: the simulator's camera (MuJoCo over EGL); ffmpeg: lerobot's video decoding.
# No apt version pins: the base image tag fixes the Ubuntu release; pins would break on its updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libgl1 libusb-1.0-0 ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 dfp

ENV PYTHONUNBUFFERED=1
WORKDIR /opt/dfp_ros

# Dependencies from the packaging files only (a layer rebuilt only when setup.py changes); torch is
# the base image's, which satisfies the `train` extra, so pip leaves it alone. The version ranges
# are setup.py's, the one place they are kept.
COPY setup.py setup.cfg package.xml ./
COPY resource/ resource/
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip pip install ".[ros,sim,train,bags]"

# The package itself.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps --force-reinstall . \
    && rm -rf build ./*.egg-info

# Mount models/, outputs/ and datasets under /work (relative paths in commands resolve there).
WORKDIR /work
RUN chown 1000:1000 /work
USER 1000:1000
CMD ["dfp", "--help"]
