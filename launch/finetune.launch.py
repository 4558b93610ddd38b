"""On-robot fine-tuning: `ros2 launch dfp_ros finetune.launch.py checkpoint:=RUN/checkpoints/last
[model:=RUN/model.onnx] [sim:=true|false] [dataset:=DATASET] [output:=DIR] [namespace:=...]
[reward:=sim|detector reward_model:=REWARD/reward.onnx]`.

Starts the learner (finetune_node). With sim:=true (default) also the simulated robot (lock-step)
and the policy node running `model` (the export of `checkpoint`, with its critic), so the policy
improves while it runs. With sim:=false, start only the learner next to a running robot + policy.

reward:=detector: the learner's rewards come from a learned success detector (reward_node running
`reward_model`, `dfp train-reward`) on the cameras instead of the simulator's own: the simulator also
renders its cameras and publishes its rewards on sim/reward (nobody reads them but a person comparing),
the learner sums the detector's rewards per step, and both read `reward_config` on top of `config`. The
detector's success events end the episodes on `detector_events` (default episode): reward.yaml sets the
simulator's success_ends_episode false, so its own success ends nothing (it logs it as the true outcome).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("dfp_ros")
    config = LaunchConfiguration("config")
    sim = LaunchConfiguration("sim")
    namespace = LaunchConfiguration("namespace")
    reward = LaunchConfiguration("reward")
    detector = PythonExpression(["'", reward, "' == 'detector'"])
    # The reward parameter file where the detector runs; otherwise `config` again (a second read changes nothing).
    reward_params = PythonExpression(["'", LaunchConfiguration("reward_config"), "' if ", detector, " else '",
                                      config, "'"])
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
        DeclareLaunchArgument("reward", default_value="sim", choices=["sim", "detector"],
                              description="the learner's rewards: the simulator's (or the robot's) own, or a "
                                          "learned success detector on the cameras (reward_node)"),
        DeclareLaunchArgument("reward_model", default_value="",
                              description="reward:=detector: the reward model (dfp train-reward's reward.onnx)"),
        DeclareLaunchArgument("reward_config", default_value=PathJoinSubstitution([share, "config", "reward.yaml"]),
                              description="reward:=detector: parameters of reward_node, the simulator's cameras and "
                                          "the learner's reward_mode"),
        DeclareLaunchArgument("detector_events", default_value="episode",
                              description="reward:=detector: where reward_node publishes success/timeout "
                                          "(episode: they end the episodes)"),
        Node(package="dfp_ros", executable="finetune_node", name="finetune_node", output="screen",
             parameters=[config, reward_params, {"init_checkpoint": LaunchConfiguration("checkpoint"),
                                                 "dataset_root": LaunchConfiguration("dataset"),
                                                 "output_dir": LaunchConfiguration("output"),
                                                 # A simulator may be held while the learner catches up; a real
                                                 # robot never is.
                                                 "pace_robot": ParameterValue(sim, value_type=bool)}]),
        Node(package="dfp_ros", executable="sim_robot_node", name="sim_robot_node", namespace=namespace,
             parameters=[config, reward_params], condition=IfCondition(sim), output="screen",
             # The detector's rewards replace the simulator's on `reward`.
             remappings=[("reward", PythonExpression(["'sim/reward' if ", detector, " else 'reward'"]))]),
        Node(package="dfp_ros", executable="policy_node", name="policy_node", namespace=namespace,
             parameters=[config, {"model_path": LaunchConfiguration("model")}], condition=IfCondition(sim),
             output="screen"),
        Node(package="dfp_ros", executable="reward_node", name="reward_node", namespace=namespace,
             parameters=[LaunchConfiguration("reward_config"),
                         {"model_path": LaunchConfiguration("reward_model"),
                          "event_topic": LaunchConfiguration("detector_events"),
                          # The simulator stamps its frames with simulated time (/clock) in lock-step.
                          "use_sim_time": ParameterValue(sim, value_type=bool)}],
             condition=IfCondition(detector), output="screen"),
    ])
