"""ONNX export contract, parity with torch, and the runtime loader's refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from dfp_ros.contracts import (
    INPUT_NOISE,
    INPUT_STATE,
    METADATA_KEY,
    CameraSpec,
    ContractError,
    ModelMetadata,
    StateSpec,
)
from dfp_ros.learning.config import ModelConfig
from dfp_ros.learning.export import example_inputs, export_onnx
from dfp_ros.learning.model import DFPModel
from dfp_ros.runtime.acceptance import INT8_TOLERANCE
from dfp_ros.runtime.policy_runtime import PolicyRuntime


def tiny_model(critic: bool, cameras: list[CameraSpec] | None = None) -> DFPModel:
    torch.manual_seed(0)
    meta = ModelMetadata(state=[StateSpec("observation.state", 4, ["a", "b", "c", "d"])], cameras=cameras or [],
                         action_key="action", action_names=["j0", "j1", "j2"], horizon=3, action_dim=3,
                         fps=20.0, num_samples=1, has_critic=critic, action_low=[-2.0, 0.0, -1.0],
                         action_high=[2.0, 1.0, 3.0])
    cfg = ModelConfig(horizon=3, actor_hidden=(32, 32), critic_hidden=(32, 32), use_critic=critic,
                      image_channels=(8, 8), image_feature_dim=16)
    return DFPModel(meta, cfg, torch.tensor([0.0, 1.0, -1.0, 5.0]), torch.tensor([1.0, 2.0, 0.5, 3.0]))


@pytest.mark.parametrize("critic", [False, True])
def test_export_matches_torch_within_1e4(tmp_path, critic):
    model = tiny_model(critic)
    res = export_onnx(model, tmp_path / "m.onnx", num_samples=8)
    assert res["max_abs_error"] <= 1e-4
    rt = PolicyRuntime(tmp_path / "m.onnx")
    assert rt.meta.has_critic is critic and rt.meta.num_samples == 8
    feeds = example_inputs(model, 5, 8, seed=7)
    out = rt.run(feeds[INPUT_STATE], {}, feeds[INPUT_NOISE])
    with torch.no_grad():
        norm = model.actor(torch.from_numpy(feeds[INPUT_STATE]), {}, torch.from_numpy(feeds[INPUT_NOISE]))
        expected = model.denormalize_actions(norm).reshape(5, 8, 3, 3).numpy()
    assert out[0].shape == (5, 8, 3, 3)
    np.testing.assert_allclose(out[0], expected, atol=1e-4)
    # Raw units: every action inside the dataset's range, since normalised actions are clipped.
    assert (out[0] >= np.array([-2, 0, -1]) - 1e-6).all() and (out[0] <= np.array([2, 1, 3]) + 1e-6).all()
    if critic:
        q, best = out[1], out[2]
        assert q.shape == (5, 8) and best.shape == (5, 3, 3)
        np.testing.assert_array_equal(best, out[0][np.arange(5), q.argmax(1)])


def test_export_with_image_input_and_runtime_act(tmp_path):
    model = tiny_model(True, [CameraSpec("front", "observation.images.front", 24, 32)])
    export_onnx(model, tmp_path / "m.onnx", num_samples=4)
    rt = PolicyRuntime(tmp_path / "m.onnx")
    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)
    res = rt.act(np.zeros(4, np.float32), {"front": img}, np.random.default_rng(1))
    assert res.chunk.shape == (3, 3) and res.candidates.shape == (4, 3, 3) and res.q.shape == (4,)
    again = rt.act(np.zeros(4, np.float32), {"front": img}, np.random.default_rng(1))
    np.testing.assert_array_equal(res.chunk, again.chunk)  # same seed, same chunk
    with pytest.raises(ValueError, match="image 'front'"):
        rt.act(np.zeros(4, np.float32), {"front": img[:10]}, np.random.default_rng(1))
    with pytest.raises(ValueError, match="NaN"):
        rt.act(np.full(4, np.nan, np.float32), {"front": img}, np.random.default_rng(1))


def test_metadata_describes_the_model(tmp_path):
    model = tiny_model(False)
    export_onnx(model, tmp_path / "m.onnx", num_samples=2)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert meta["action_names"] == ["j0", "j1", "j2"] and meta["horizon"] == 3 and meta["fps"] == 20.0
    assert meta["state"][0]["names"] == ["a", "b", "c", "d"] and len(meta["content_hash"]) == 64
    assert meta["created"] and meta["format_version"] == 1


def _rewrite(src, dst, edit) -> None:
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))


def test_loader_refuses_model_with_unexpected_input(tmp_path):
    export_onnx(tiny_model(False), tmp_path / "m.onnx", num_samples=2)

    def add_input(proto):
        proto.graph.input.append(onnx.helper.make_tensor_value_info("image.wrist", onnx.TensorProto.UINT8,
                                                                    ["batch", 8, 8, 3]))
    _rewrite(tmp_path / "m.onnx", tmp_path / "bad.onnx", add_input)
    with pytest.raises(ContractError, match=r"unexpected \['image.wrist'\]"):
        PolicyRuntime(tmp_path / "bad.onnx")


def test_loader_refuses_model_whose_metadata_disagrees_with_graph(tmp_path):
    export_onnx(tiny_model(False), tmp_path / "m.onnx", num_samples=2)

    def lie_about_state(proto):
        meta = json.loads(proto.metadata_props[0].value)
        meta["state"][0]["dim"] = 7
        proto.metadata_props[0].value = json.dumps(meta)
    _rewrite(tmp_path / "m.onnx", tmp_path / "bad.onnx", lie_about_state)
    with pytest.raises(ContractError, match="input 'state'"):
        PolicyRuntime(tmp_path / "bad.onnx")


def test_loader_refuses_foreign_newer_and_corrupted_models(tmp_path):
    export_onnx(tiny_model(False), tmp_path / "m.onnx", num_samples=2)
    _rewrite(tmp_path / "m.onnx", tmp_path / "foreign.onnx", lambda p: p.metadata_props.__delitem__(slice(None)))
    with pytest.raises(ContractError, match="not a dfp_ros model"):
        PolicyRuntime(tmp_path / "foreign.onnx")

    def newer(proto):
        meta = json.loads(proto.metadata_props[0].value)
        meta["format_version"] = 99
        proto.metadata_props[0].value = json.dumps(meta)
    _rewrite(tmp_path / "m.onnx", tmp_path / "newer.onnx", newer)
    with pytest.raises(ContractError, match="format version 99"):
        PolicyRuntime(tmp_path / "newer.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ContractError, match="not a loadable ONNX model"):
        PolicyRuntime(data[: len(data) // 2])
    with pytest.raises(ContractError, match="does not exist"):
        PolicyRuntime(tmp_path / "missing.onnx")


def test_runtime_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, dfp_ros.runtime.policy_runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _int8_weights(proto: onnx.ModelProto) -> np.ndarray:
    return np.concatenate([onnx.numpy_helper.to_array(i).ravel() for i in proto.graph.initializer
                           if i.data_type == onnx.TensorProto.INT8])


def test_int8_export_stores_int8_weights_stays_close_to_torch_and_says_so(tmp_path):
    model = tiny_model(True)
    export_onnx(model, tmp_path / "f.onnx", num_samples=8)
    res = export_onnx(model, tmp_path / "q.onnx", num_samples=8, weights="int8")
    q = onnx.load(str(tmp_path / "q.onnx"))
    def float_weights(proto) -> int:
        return sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)

    assert float_weights(q) < float_weights(onnx.load(str(tmp_path / "f.onnx"))) / 2
    rt = PolicyRuntime(tmp_path / "q.onnx")
    assert rt.meta.weights == "int8" and res["metadata"]["weights"] == "int8"
    assert rt.meta.content_hash != PolicyRuntime(tmp_path / "f.onnx").meta.content_hash
    assert 0.0 < res["int8"]["max_action_error"] <= 0.05 and 0.0 <= res["int8"]["same_best_pick"] <= 1.0
    feeds = example_inputs(model, 4, 8, seed=9)
    ref = PolicyRuntime(tmp_path / "f.onnx").run(feeds[INPUT_STATE], {}, feeds[INPUT_NOISE])[0]
    out = rt.run(feeds[INPUT_STATE], {}, feeds[INPUT_NOISE])[0]
    half_range = (np.array([2.0, 1.0, 3.0]) - np.array([-2.0, 0.0, -1.0])) / 2
    assert np.abs(out - ref).max(axis=(0, 1, 2)).max() > 0  # really quantised ...
    assert (np.abs(out - ref) / half_range).max() <= 0.06  # ... and close on other inputs too


def test_int8_weights_are_7_bit_so_no_cpu_saturates_their_products():
    """x86 CPUs without VNNI add pairs of uint8 x int8 products in int16, saturating at 32767; weights in
    [-64, 64] keep every pair at or below 2 * 255 * 64 = 32640, so every CPU computes the same sums."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        export_onnx(tiny_model(True), Path(d) / "q.onnx", num_samples=4, weights="int8")
        w = _int8_weights(onnx.load(str(Path(d) / "q.onnx")))
    assert w.size > 1000 and np.abs(w.astype(int)).max() <= 64
    assert np.abs(w.astype(int)).max() >= 60  # per-channel scales use the 7 bits they have


def _outlier_model() -> DFPModel:
    """A model whose float output ignores one huge hidden unit, which per-tensor int8 activations cannot:
    the unit sets the quantisation step (~40) of a layer whose other inputs are ~1, so they all read 0."""
    model = tiny_model(False)
    first, second = model.actor.net[0], model.actor.net[2]
    with torch.no_grad():
        first.bias[0] = 1e4
        second.weight.mul_(4.0)  # what the quantisation loses moves the actions a long way
        second.weight[:, 0] = 0.0
    return model


def test_int8_export_is_refused_when_actions_move_too_far(tmp_path):
    import dfp_ros.learning.export as export

    with pytest.raises(export.ExportError, match="int8 model's actions differ from torch by") as err:
        export_onnx(_outlier_model(), tmp_path / "q.onnx", num_samples=1, weights="int8")
    figure = float(str(err.value).split("differ from torch by ")[1].split()[0])
    assert figure > 10 * INT8_TOLERANCE  # far past the tolerance, not near it by chance
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    with pytest.raises(export.ExportError, match="weights must be one of"):
        export_onnx(tiny_model(False), tmp_path / "q.onnx", weights="fp16")


def test_an_exported_model_carries_an_acceptance_test_that_its_loader_passes(tmp_path):
    from dfp_ros.contracts import ACCEPTANCE_KEY

    model = tiny_model(True, [CameraSpec("front", "observation.images.front", 12, 16)])
    res = export_onnx(model, tmp_path / "m.onnx", num_samples=4)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    stored = props[ACCEPTANCE_KEY]
    assert set(stored["inputs"]) == {"state", "image.front", "noise"} and stored["tolerance"] == 0.01
    assert stored["inputs"]["image.front"]["shape"] == [2, 12, 16, 3] and stored["actions"]["shape"] == [2, 4, 3, 3]
    rt = PolicyRuntime(tmp_path / "m.onnx", device="cpu")
    assert rt.has_acceptance_test and rt.acceptance.passed and rt.acceptance.provider == "CPUExecutionProvider"
    assert rt.acceptance.max_action_error < 1e-4 and res["acceptance"]["max_action_error"] < 1e-4
    q = export_onnx(model, tmp_path / "q.onnx", num_samples=4, weights="int8")
    assert q["acceptance"]["tolerance"] == 0.05 and 0 < q["acceptance"]["max_action_error"] <= 0.05


def test_a_model_whose_acceptance_test_fails_here_is_refused_naming_the_error_and_provider(tmp_path):
    """What a CPU or GPU provider that computes the model differently looks like to the loader: its
    actions are off the stored reference (built here by moving the reference by 0.3 half-ranges)."""
    from model_files import edit_acceptance, shift_acceptance_reference

    export_onnx(tiny_model(True), tmp_path / "m.onnx", num_samples=4)
    shift_acceptance_reference(tmp_path / "m.onnx", tmp_path / "off.onnx", 0.3)
    with pytest.raises(ContractError, match=r"off\.onnx fails its acceptance test on CPUExecutionProvider: .* "
                                            r"by 0\.3 of the action half-range \(tolerance 0\.01\)"):
        PolicyRuntime(tmp_path / "off.onnx", device="cpu")
    assert not PolicyRuntime(tmp_path / "off.onnx", device="cpu", verify=False).acceptance  # only when asked

    edit_acceptance(tmp_path / "m.onnx", tmp_path / "garbled.onnx", lambda text: text[: len(text) // 2])
    with pytest.raises(ContractError, match="acceptance test cannot be read"):
        PolicyRuntime(tmp_path / "garbled.onnx", device="cpu")


def test_a_model_without_an_acceptance_test_loads_and_says_so(tmp_path):
    from dfp_ros.contracts import ACCEPTANCE_KEY

    export_onnx(tiny_model(False), tmp_path / "m.onnx", num_samples=2)
    _rewrite(tmp_path / "m.onnx", tmp_path / "old.onnx", lambda proto: [
        proto.metadata_props.remove(p) for p in list(proto.metadata_props) if p.key == ACCEPTANCE_KEY])
    rt = PolicyRuntime(tmp_path / "old.onnx", device="cpu")
    assert not rt.has_acceptance_test and rt.acceptance is None
