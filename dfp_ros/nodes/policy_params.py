"""policy_node's parameters: one table, read by the node and by docs/parameters.md.

The model is read first: it gives the defaults of the parameters after it (rate, horizon, limits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfp_ros import contracts
from dfp_ros.nodes import ros_io
from dfp_ros.nodes.params import FROM_MODEL, Param
from dfp_ros.runtime.chunk_queue import CONSISTENCY_MODES, MERGE_RULES
from dfp_ros.runtime.controller import TRIGGERS
from dfp_ros.runtime.providers import DEFAULT_TRT_CACHE, DEVICES, ProviderOptions
from dfp_ros.runtime.safety import WATCHDOG_ACTIONS

BUNDLED_MODEL = "cube_single.onnx"

# Read first: the model gives the defaults of the parameters after it.
MODEL_PARAMS = [
    Param("model_path", FROM_MODEL, "ONNX model; set at run time to swap models (validated first)", runtime=True,
          default_text="the bundled models/cube_single.onnx (package share dir under colcon, else the source tree)"),
    Param("device", "auto", "ONNX Runtime execution providers: auto = TensorRT, CUDA, CPU as this build has them",
          choices=DEVICES),
    Param("device_id", 0, "GPU index (CUDA, TensorRT)", low=0),
    Param("trt_cache_dir", DEFAULT_TRT_CACHE, "TensorRT engine + timing cache, kept across restarts and model "
          "swaps ('' = rebuild the engine at every load)", default_text="~/.cache/dfp_ros/tensorrt"),
    Param("trt_fp16", False, "TensorRT: half-precision engines (the model's acceptance test still applies)"),
    Param("trt_workspace_gb", 2.0, "TensorRT: workspace for building engines", low=0.01),
    Param("cuda_mem_limit_gb", 0.0, "CUDA: memory arena limit (share the GPU with a learner); 0 = none", low=0.0),
    Param("num_samples", 0, "candidates per inference (best-of-N with a critic); 0 = the model's", low=0),
    Param("seed", 0, "seed of the numpy generator that draws eps"),
]
RUN_PARAMS = [
    Param("control_rate_hz", FROM_MODEL, "control ticks per second (trigger timer); > 0",
          default_text="the model's fps"),
    Param("trigger", "timer", "observation: one tick per message of the first state source (the robot's state "
          "paces the policy); timer: the node's own clock", choices=TRIGGERS),
    Param("align_ticks", True, "timer: tick just after each first-source message while they come at the control "
          "rate", runtime=True),
    Param("max_plan_wait_s", 0.02, "longest wait of a tick for its plan; slower plans start ahead instead "
          "(lock-step with a slower model: raise it)", runtime=True, low=0.0),
    Param("replan_every", FROM_MODEL, "re-plan every this many ticks", runtime=True, low=1,
          default_text="the model's horizon H"),
    Param("queue_low", 1, "also re-plan when fewer than this many actions remain", runtime=True, low=0),
    Param("merge", "newest", "a new chunk replaces the queue, or temporal ensembling", choices=MERGE_RULES),
    Param("ensemble_k", 0.01, "ensembling weights w_i = exp(-k i), i = 0 the oldest chunk", runtime=True),
    Param("consistency", "none", "chunk hand-over: none | nearest (the candidate closest to the queued actions)",
          runtime=True, choices=CONSISTENCY_MODES),
    Param("max_stamp_offset_s", 1.0, "refuse header stamps further than this from our clock (wrong driver clock, "
          "clock jump); 0 = off (sim time without use_sim_time)", runtime=True, low=0.0),
    Param("added_latency_s", 0.0, "TEST/BENCH KNOB: sleep after each inference (a slower model); 0 on a robot",
          runtime=True, low=0.0),
    Param("command_type", "float64_array", "message type of ~/command", choices=ros_io.COMMAND_TYPES),
    Param("action_low", FROM_MODEL, "per-action lower limits", default_text="the model's action range"),
    Param("action_high", FROM_MODEL, "per-action upper limits", default_text="the model's action range"),
    Param("max_delta", 0.0, "max change of any action per tick; 0 = off", runtime=True, low=0.0),
    Param("max_obs_age_s", 0.0, "older observations are stale; 0 = two control periods", runtime=True, low=0.0),
    Param("watchdog_action", "stop", "while observations are stale: publish nothing, or repeat the last command",
          runtime=True, choices=WATCHDOG_ACTIONS),
    Param("enabled", False, "publish commands (~/enable true also clears an e-stop latch)", runtime=True),
    Param("dry_run", False, "compute and publish chunks, never commands", runtime=True),
    Param("control_thread_priority", 0, "SCHED_FIFO priority 1-99 of the control thread (needs CAP_SYS_NICE "
          "or an rtprio limit, else a warning and ordinary scheduling); 0 = ordinary scheduling", low=0, high=99),
    *ros_io.STATE_PARAMS,
    Param("episode_topic", contracts.TOPIC_EPISODE, "std_msgs/String episode events; an episode's end clears "
          "the queue ('' = off)"),
    Param("teleop_topic", contracts.TOPIC_TELEOP_COMMAND, "std_msgs/Float64MultiArray human commands (the "
          "policy's action units and order), executed while the human holds the robot ('' = no takeover)"),
    Param("teleop_engaged_topic", contracts.TOPIC_TELEOP_ENGAGED, "std_msgs/Bool: the teleop device's dead-man "
          "is held (the human takes over); ~/intervene (SetBool) does the same"),
    Param("teleop_timeout_s", 0.25, "no human command for this long while the human holds the robot: the "
          "watchdog action until released (never the policy)", runtime=True, low=0.001),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages"),
]
PARAMS = MODEL_PARAMS + RUN_PARAMS
# Parameters handed to PolicyController under their own names.
CONTROLLER_OPTIONS = ("trigger", "merge", "ensemble_k", "action_low", "action_high", "max_delta", "max_obs_age_s",
                      "watchdog_action", "enabled", "dry_run", "replan_every", "queue_low", "consistency",
                      "added_latency_s", "max_plan_wait_s", "max_stamp_offset_s", "align_ticks",
                      "teleop_timeout_s")


def default_model_path() -> str:
    """The bundled model: the package's share dir under colcon, else the source tree's models/."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("dfp_ros")) / "models" / BUNDLED_MODEL
        if shared.is_file():
            return str(shared)
    except Exception:  # not installed with colcon (pip / source checkout): fall through
        pass
    return str(Path(__file__).resolve().parents[2] / "models" / BUNDLED_MODEL)


def provider_options(values: dict[str, Any]) -> ProviderOptions:
    """The execution-provider parameters as PolicyRuntime options."""
    return ProviderOptions(device=values["device"], device_id=values["device_id"],
                           trt_cache_dir=values["trt_cache_dir"], trt_fp16=values["trt_fp16"],
                           trt_workspace_gb=values["trt_workspace_gb"], cuda_mem_limit_gb=values["cuda_mem_limit_gb"])
