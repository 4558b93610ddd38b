#!/usr/bin/env bash
# Entry point of the `robot` image: ROS 2 Kilted and the dfp_ros install space, then the command
# (by default `ros2 launch dfp_ros policy.launch.py sim:=false model:=... config:=...`).
set -e
# shellcheck source=/dev/null
source /opt/ros/kilted/setup.bash
# shellcheck source=/dev/null
source /opt/dfp_ros/setup.bash
exec "$@"
