# dfp_ros: the README's commands. Every target sets up what it needs first (scripts/setup_env.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo train-demo test bench bench-collect bench-finetune model setup setup-deploy check-demo-image help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:  ## full environment: ROS 2 wheels, inference, simulator, training, tests
	@bash scripts/setup_env.sh full

setup-deploy:  ## inference only (no torch): ROS 2 wheels, ONNX Runtime, OpenCV, simulator
	@bash scripts/setup_env.sh deploy

demo: setup-deploy  ## main job: simulated robot + policy node (bundled model) over ROS 2, 20 episodes
	$(PY) -m dfp_ros.tools.live_demo --episodes 20

train-demo: setup  ## the offline pipeline: expert data -> dfp train -> dfp export -> success rate in the sim
	$(PY) -m dfp_ros.tools.train_demo --output outputs/train_demo

model: setup  ## rebuild the bundled models/cube_single.onnx from scratch
	$(PY) -m dfp_ros.tools.train_demo --output outputs/bundle --fresh --bundle models/cube_single.onnx

test: setup  ## lint + the whole test suite
	$(VENV)/bin/ruff check dfp_ros test launch
	@# Two workers for the rest (a file per worker at a time, each worker's ROS graphs on domains of its
	@# own), then the `realtime`-marked tests alone: their wall-clock rates must not share the CPUs.
	@# Both parts run whatever the first gives; each names its slowest tests in every CI log. (Exit 5 is
	@# "no tests collected": every real-time test skipped, e.g. without ROS.)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not realtime" --durations=20; rest=$$?; \
	$(PY) -m pytest -q -m realtime --durations=10; realtime=$$?; \
	[ $$realtime -ne 5 ] || realtime=0; \
	exit $$(( rest || realtime ))

bench: setup  ## benchmarks (figures for the README's Performance section)
	$(PY) -m dfp_ros.tools.cli bench train
	$(PY) -m dfp_ros.tools.cli bench latency

bench-finetune: setup  ## weak BC policy -> RL fine-tuning through ROS, 50-episode evaluation before/after (~25 min)
	$(PY) -m dfp_ros.tools.cli bench finetune

bench-collect: setup  ## recording benchmark: 2 x 640x480 @ 30 Hz + 200 Hz joint states, 2 min
	$(PY) -m dfp_ros.tools.collect_bench --duration 120

check-demo-image:  ## the demo image's build steps in a debootstrapped Debian root, through `make demo` (root, network)
	bash scripts/check_demo_image.sh
