"""Run a DFP policy: `ros2 launch dfp_ros policy.launch.py [sim:=true|false] [model:=...] [config:=...]
[namespace:=...]`.

sim:=true (default) also starts the simulated robot and enables the policy, so the whole loop runs
without hardware: the simulator steps at 20 Hz on the wall clock, as a robot's controller does, and the
policy ticks on each state it publishes (config/policy.yaml `trigger: observation`; docs/realtime.md).
sim:=false starts only the policy node, disabled: enable it with
`ros2 service call /policy_node/enable std_srvs/srv/SetBool "{data: true}"` once the robot is ready.
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
    model = LaunchConfiguration("model")
    config = LaunchConfiguration("config")
    sim = LaunchConfiguration("sim")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value=PathJoinSubstitution([share, "models", "cube_single.onnx"]),
                              description="exported DFP model (ONNX)"),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "policy.yaml"]),
                              description="parameter file for policy_node and sim_robot_node"),
        DeclareLaunchArgument("sim", default_value="true", description="also run the simulated robot"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of this robot's nodes"),
        Node(package="dfp_ros", executable="sim_robot_node", name="sim_robot_node", namespace=namespace,
             parameters=[config], condition=IfCondition(sim), output="screen"),
        Node(package="dfp_ros", executable="policy_node", name="policy_node", namespace=namespace,
             parameters=[config, {"model_path": model, "enabled": ParameterValue(sim, value_type=bool)}],
             output="screen"),
    ])
