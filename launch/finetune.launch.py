"""On-robot fine-tuning: `ros2 launch dfp_ros finetune.launch.py checkpoint:=RUN/checkpoints/last
[model:=RUN/model.onnx] [sim:=true|false] [dataset:=DATASET] [output:=DIR] [namespace:=...]`.

Starts the learner (finetune_node). With sim:=true (default) also the simulated robot (lock-step)
and the policy node running `model` (the export of `checkpoint`, with its critic), so the policy
improves while it runs. With sim:=false, start only the learner next to a running robot + policy.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("dfp_ros")
    config = LaunchConfiguration("config")
    sim = LaunchConfiguration("sim")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="`dfp train --critic` checkpoint folder to start from"),
        DeclareLaunchArgument("model", default_value="",
                              description="ONNX export of the checkpoint for the policy node (sim:=true)"),
        DeclareLaunchArgument("dataset", default_value="", description="LeRobot dataset seeding the replay buffer"),
        DeclareLaunchArgument("output", default_value="outputs/finetune", description="learner output folder"),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "finetune.yaml"]),
                              description="parameter file for the learner (and the sim + policy nodes)"),
        DeclareLaunchArgument("sim", default_value="true", description="also run the simulated robot + policy"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the robot's nodes"),
        Node(package="dfp_ros", executable="finetune_node", name="finetune_node", output="screen",
             parameters=[config, {"init_checkpoint": LaunchConfiguration("checkpoint"),
                                  "dataset_root": LaunchConfiguration("dataset"),
                                  "output_dir": LaunchConfiguration("output"),
                                  # A simulator may be held while the learner catches up; a real robot never is.
                                  "pace_robot": ParameterValue(sim, value_type=bool)}]),
        Node(package="dfp_ros", executable="sim_robot_node", name="sim_robot_node", namespace=namespace,
             parameters=[config], condition=IfCondition(sim), output="screen"),
        Node(package="dfp_ros", executable="policy_node", name="policy_node", namespace=namespace,
             parameters=[config, {"model_path": LaunchConfiguration("model")}], condition=IfCondition(sim),
             output="screen"),
    ])
