"""Recording demonstrations: ROS-free parts of `collect_node` and the teleoperation nodes.

- `stream_sampling`: frames sampled from several streams on one clock.
- `episode_control`: the episode state machine (idle, recording, stopped).
- `dataset_writer`: features, the append check, and lerobot's dataset writer (create or append,
  a safe finalize).
- `writer_process`: the writer in a child process of its own, fed through a shared-memory ring.
- `recording_session`: one recording run: frames and episodes, stats, the shutdown rule.
- `state_oracle`: OGBench's scripted cube expert acting on the simulator's published state vector.
- `teleop`: joystick -> action mapping (dead-man button, scaling, limits).
- `bag_convert`: rosbag2 (sqlite3 / MCAP, via rosbags) -> LeRobot datasets with collect_node's sampling rules.
- `replay`: an exported model open-loop over a dataset: chunk error against the recorded actions.

Nothing here imports rclpy; lerobot is imported only when a dataset is opened (it pulls in torch).
"""
