"""Record demonstrations: `ros2 launch dfp_ros collect.launch.py root:=data/my_demos [teleop:=oracle|joy|none]
[sim:=true|false] [sim_mode:=lockstep|realtime] [sample_on:=action|timer] [camera:=none|realsense]
[config:=...] [namespace:=...]`.

Defaults: the simulated robot in lock-step driven by OGBench's scripted expert (teleop:=oracle), recorded
episode by episode on the simulator's /episode events into a LeRobot v3 dataset at `root`.
Joystick on the simulator: teleop:=joy sim_mode:=realtime sample_on:=timer (and `ros2 run joy joy_node`).
A real robot: sim:=false teleop:=joy|none (your own teleop publishing the command topic) sample_on:=timer,
with a config whose collect_node section names your state and action topics and cameras (`camera_names`,
`camera.<name>.topic` / `.height` / `.width`); camera:=realsense starts our realsense_node (or run
realsense-ros: the topic names are the same).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, LaunchConfigurationEquals
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("dfp_ros")
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    teleop = "teleop"
    return LaunchDescription([
        DeclareLaunchArgument("root", description="dataset folder (new, or existing with append in the config)"),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "collect.yaml"]),
                              description="parameter file for every node started here"),
        DeclareLaunchArgument(teleop, default_value="oracle", description="oracle | joy | none"),
        DeclareLaunchArgument("sim", default_value="true", description="also run the simulated robot"),
        DeclareLaunchArgument("sim_mode", default_value="lockstep", description="lockstep | realtime"),
        DeclareLaunchArgument("sample_on", default_value="action", description="action | timer"),
        DeclareLaunchArgument("camera", default_value="none", description="none | realsense"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of this robot's nodes"),
        Node(package="dfp_ros", executable="sim_robot_node", name="sim_robot_node", namespace=namespace,
             parameters=[config, {"mode": LaunchConfiguration("sim_mode")}],
             condition=IfCondition(LaunchConfiguration("sim")), output="screen"),
        Node(package="dfp_ros", executable="oracle_teleop_node", name="oracle_teleop_node", namespace=namespace,
             parameters=[config], condition=LaunchConfigurationEquals(teleop, "oracle"), output="screen"),
        Node(package="dfp_ros", executable="joy_teleop_node", name="joy_teleop_node", namespace=namespace,
             parameters=[config], condition=LaunchConfigurationEquals(teleop, "joy"), output="screen"),
        Node(package="dfp_ros", executable="realsense_node", name="realsense_node", namespace=namespace,
             parameters=[config], condition=LaunchConfigurationEquals("camera", "realsense"), output="screen"),
        Node(package="dfp_ros", executable="collect_node", name="collect_node", namespace=namespace,
             parameters=[config, {"root": LaunchConfiguration("root"),
                                  "sample_on": LaunchConfiguration("sample_on")}],
             output="screen", emulate_tty=True),
    ])
