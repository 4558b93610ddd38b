# syntax=docker/dockerfile:1
# dfp_ros `robot`: the policy node on a robot computer. ROS 2 Kilted (the official ros-base image),
# this package built with colcon, ONNX Runtime, OpenCV (headless) and pyrealsense2; no torch, no
# simulator. Runs `ros2 launch dfp_ros policy.launch.py sim:=false` with the model and the parameter
# file mounted; the policy starts disabled (call ~/enable once the robot is ready).
#
#   docker build -f docker/robot.Dockerfile -t dfp-ros-robot .                                  # CPU
#   docker build -f docker/robot.Dockerfile --build-arg ONNXRUNTIME=gpu -t dfp-ros-robot:gpu .  # CUDA
#   docker run --rm --network host --ipc host --ulimit rtprio=99 --cap-add SYS_NICE \
#       -v "$PWD/models/cube_single.onnx:/models/policy.onnx:ro" -v "$PWD/config:/config:ro" dfp-ros-robot
#   (add --gpus all for the gpu image; --device /dev/bus/usb for a RealSense camera)
#
# ONNXRUNTIME=gpu installs onnxruntime-gpu with NVIDIA's CUDA runtime and cuDNN wheels (its `cuda`
# and `cudnn` extras) on the same ROS base, so both variants are one Dockerfile with one FROM; the
# host needs the NVIDIA driver and container toolkit. The real-time control thread
# (control_thread_priority > 0) needs an rtprio limit for the non-root user (--ulimit rtprio=99);
# see docs/docker.md.

FROM ros:kilted-ros-base-noble AS build
# colcon build of the ament_python package into /opt/dfp_ros (its own install space).
WORKDIR /ws/src/dfp_ros
COPY package.xml setup.py setup.cfg ./
COPY resource/ resource/
COPY dfp_ros/ dfp_ros/
COPY launch/ launch/
COPY config/ config/
COPY models/ models/
WORKDIR /ws
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN source /opt/ros/kilted/setup.bash \
    && colcon build --packages-select dfp_ros --install-base /opt/dfp_ros --merge-install \
       --event-handlers console_direct-

FROM ros:kilted-ros-base-noble AS robot
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ONNXRUNTIME=cpu
RUN case "$ONNXRUNTIME" in cpu|gpu) ;; \
      *) echo "ONNXRUNTIME must be cpu or gpu, not '$ONNXRUNTIME'" >&2; exit 1 ;; esac

# ROS and Debian dependencies from package.xml (rosdep; exec dependencies only). OpenCV comes from
# pip as the headless build instead of Ubuntu's python3-opencv; libusb: pyrealsense2.
COPY package.xml /tmp/dfp_ros/package.xml
# No apt version pins: the base image tag fixes the Ubuntu/ROS release; pins would break on its updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && rosdep update --rosdistro kilted \
    && rosdep install --from-paths /tmp/dfp_ros --ignore-src -y --rosdistro kilted \
       --dependency-types exec --skip-keys python3-opencv \
    && apt-get install -y --no-install-recommends python3-pip libusb-1.0-0 \
    && rm -rf /var/lib/apt/lists/* /root/.ros/rosdep /tmp/dfp_ros

# Python packages into the system Python next to ROS's, with setup.py's version ranges (the one
# place they are kept). numpy stays Ubuntu's 1.x: ROS's message extensions are compiled against it
# and refuse numpy 2. gpu: NVIDIA's CUDA and cuDNN wheels, registered with the dynamic linker.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$ONNXRUNTIME" = gpu ]; then ort="onnxruntime-gpu[cuda,cudnn]>=1.17"; else ort="onnxruntime>=1.17"; fi \
    && PIP_BREAK_SYSTEM_PACKAGES=1 pip3 install "$ort" "opencv-python-headless>=4.8,<4.13" \
       "pyrealsense2>=2.54" "numpy<2" \
    && if [ "$ONNXRUNTIME" = gpu ]; then \
         nvidia=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])') \
         && find "$nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u >/etc/ld.so.conf.d/nvidia-pip.conf \
         && ldconfig; \
       fi

# The non-root user (uid 1000, like the demo image; Ubuntu's own `ubuntu` user gives way). video,
# plugdev: camera devices passed in with --device.
RUN userdel --remove ubuntu 2>/dev/null; useradd --create-home --uid 1000 --groups video,plugdev dfp

COPY --from=build /opt/dfp_ros /opt/dfp_ros
COPY docker/robot_entrypoint.sh /usr/local/bin/robot_entrypoint.sh
USER 1000:1000
WORKDIR /home/dfp
ENTRYPOINT ["/usr/local/bin/robot_entrypoint.sh"]
CMD ["ros2", "launch", "dfp_ros", "policy.launch.py", "sim:=false", \
     "model:=/models/policy.onnx", "config:=/config/policy.yaml"]
