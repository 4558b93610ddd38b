"""A model's own acceptance test: fixed inputs and reference outputs stored inside the ONNX file.

At export the trainer runs the float32 torch model on a few fixed inputs (state, images, noise) and
stores inputs, reference actions and a tolerance in the file's metadata (`ACCEPTANCE_KEY`). Whoever
loads the model — the policy node at start and at every hot swap, the learner, `dfp check` — re-runs
those inputs on its own CPU or GPU provider and refuses the model if its actions are further from
the reference than the tolerance. This catches what an export-time check on the training computer
cannot: int8 kernels that behave differently on another CPU, a GPU provider computing in lower
precision, a corrupted file. No torch here: numpy and the caller's ONNX Runtime session only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dfp_ros.contracts import ACCEPTANCE_KEY, OUTPUT_ACTIONS, ContractError, ModelMetadata

ACCEPTANCE_FORMAT = 1
# Tolerances in fractions of each action's half-range (clamped policies act in [-1, 1] normalised units).
FLOAT32_TOLERANCE = 0.01  # float32 on another CPU or a CUDA provider (TF32): far below what moves a robot
INT8_TOLERANCE = 0.05  # int8 weights and activations move actions a little more


def encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    if dtype not in (np.float32, np.uint8):
        raise ContractError(f"acceptance test array of dtype {dtype}; expected float32 or uint8")
    raw = base64.b64decode(d["data"], validate=True)
    return np.frombuffer(raw, dtype).reshape(d["shape"]).copy()


@dataclass
class AcceptanceTest:
    """Feeds by ONNX input name, the reference `actions` for them, and the allowed deviation."""

    inputs: dict[str, np.ndarray]
    actions: np.ndarray  # [B, N, H, A] raw units
    tolerance: float  # fraction of the action half-range
    reference: str = "torch float32"

    def to_json(self) -> str:
        return json.dumps({"format": ACCEPTANCE_FORMAT, "reference": self.reference, "tolerance": self.tolerance,
                           "inputs": {k: encode_array(v) for k, v in self.inputs.items()},
                           "actions": encode_array(self.actions)})

    @classmethod
    def from_json(cls, text: str, source: str) -> AcceptanceTest:
        try:
            raw = json.loads(text)
            if raw.get("format") != ACCEPTANCE_FORMAT:
                raise ContractError(f"acceptance test format {raw.get('format')}; this dfp_ros reads "
                                    f"{ACCEPTANCE_FORMAT}")
            return cls(inputs={k: decode_array(v) for k, v in raw["inputs"].items()},
                       actions=decode_array(raw["actions"]), tolerance=float(raw["tolerance"]),
                       reference=str(raw.get("reference", "")))
        except ContractError as e:
            raise ContractError(f"{source}: {e}") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ContractError(f"{source}: its acceptance test cannot be read ({type(e).__name__}: {e})") from e


@dataclass
class AcceptanceResult:
    max_action_error: float  # fraction of the action half-range
    tolerance: float
    provider: str

    @property
    def passed(self) -> bool:
        return self.max_action_error <= self.tolerance  # False for NaN too


def action_error(actions: np.ndarray, reference: np.ndarray, meta: ModelMetadata) -> float:
    """Largest |actions - reference| as a fraction of each action's half-range (inf if not finite)."""
    half_range = (np.asarray(meta.action_high, np.float32) - np.asarray(meta.action_low, np.float32)) / 2
    diff = np.abs(np.asarray(actions, np.float32) - reference) / np.maximum(half_range, 1e-6)
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def read_acceptance(props: dict[str, str], source: str) -> AcceptanceTest | None:
    """The model's acceptance test from its metadata properties, or None when it carries none."""
    text = props.get(ACCEPTANCE_KEY)
    return None if text is None else AcceptanceTest.from_json(text, source)


def stored_inputs_output(test: AcceptanceTest, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                         output: str, source: str) -> np.ndarray:
    """The model's `output` for the test's stored inputs (a reward model's test stores its reference
    scores where a policy's stores actions); ContractError when they do not run or the shape differs."""
    try:
        values = run(test.inputs)[output]
    except Exception as e:  # an input the graph does not take: the stored test does not fit this model
        raise ContractError(f"{source}: its acceptance test does not run ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:200]})") from e
    if values.shape != test.actions.shape:
        raise ContractError(f"{source}: acceptance test {output} have shape {values.shape}, the reference "
                            f"{test.actions.shape}")
    return values


def run_acceptance(test: AcceptanceTest, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                   meta: ModelMetadata, provider: str, source: str) -> AcceptanceResult:
    """Run the stored inputs through `run` (feeds -> outputs by name); raise ContractError when off."""
    if test.actions.shape[-2:] != (meta.horizon, meta.action_dim):
        raise ContractError(f"{source}: its acceptance test holds actions of shape {test.actions.shape}, "
                            f"not [..., {meta.horizon}, {meta.action_dim}]")
    actions = stored_inputs_output(test, run, OUTPUT_ACTIONS, source)
    result = AcceptanceResult(action_error(actions, test.actions, meta), test.tolerance, provider)
    if not result.passed:
        raise ContractError(
            f"{source} fails its acceptance test on {provider}: its actions differ from the {test.reference} "
            f"reference by {result.max_action_error:.3g} of the action half-range (tolerance {test.tolerance:g}); "
            f"this provider/CPU does not run this model as it was exported ({meta.weights} weights)")
    return result
