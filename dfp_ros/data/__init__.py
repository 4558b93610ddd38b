"""Recording demonstrations: ROS-free parts of `collect_node` and the teleoperation nodes.

- `recorder`: frame sampling on one clock, the episode state machine, and the LeRobot dataset writer
  (create or append with a feature check, a writer thread, a safe finalize).
- `state_oracle`: OGBench's scripted cube expert acting on the simulator's published state vector.
- `teleop`: joystick -> action mapping (dead-man button, scaling, limits).
- `collect_bench`: the recording benchmark (two 640x480 cameras + 200 Hz joint states).

Nothing here imports rclpy; lerobot is imported only when a dataset is opened (it pulls in torch).
"""
