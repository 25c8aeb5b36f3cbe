"""Runtime plugins and the in-process API on real LiteRT and onnxruntime models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import InputError, ModelLoadError, RuntimeUnavailable
from agent.model import LoadedModel
from agent.runtimes import RUNTIMES, load_runtime
from tests.agent.builders import make_manifest, onnx_linear, onnx_multi


def test_registry_maps_keys_to_plugins() -> None:
    assert set(RUNTIMES) == {"litert", "onnxruntime"}
    with pytest.raises(RuntimeUnavailable, match="no runtime for format 'pt'"):
        load_runtime(Path("x.pt"), "pt")


def test_onnx_dynamic_batch_matches_numpy(tmp_path: Path) -> None:
    path = onnx_linear(tmp_path / "lin.onnx")
    model = LoadedModel.from_file(path, threads=2)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y = model.predict({"x": x})["y"]
    again = model.predict({"x": x[:2]})["y"]
    assert y.shape == (5, 3)
    np.testing.assert_allclose(again, y[:2], rtol=1e-6)


def test_onnx_multi_input_multi_output(tmp_path: Path) -> None:
    model = LoadedModel.from_file(onnx_multi(tmp_path / "multi.onnx"))
    out = model.predict({"a": [[1, 2]], "b": [[3, 4, 5]]})
    assert set(out) == {"s", "d"}
    np.testing.assert_allclose(out["d"], [[6, 8, 10]])
    w = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    np.testing.assert_allclose(out["s"], np.array([[1, 2, 3, 4, 5]], np.float32) @ w, rtol=1e-6)


def test_flat_values_reshape_to_rows(tmp_path: Path) -> None:
    model = LoadedModel.from_file(onnx_linear(tmp_path / "lin.onnx"))
    assert model.predict({"x": list(range(8))})["y"].shape == (2, 3)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input"),
        ({"x": [[1, 2, 3, 4]], "z": [1]}, "unknown input"),
        ({"x": [[1, 2, 3]]}, "dim 1 is 3, expected 4"),
        ({"x": [1, 2, 3]}, "does not fit"),
        ({"x": [["a", "b", "c", "d"]]}, "not numeric"),
        ({"x": [[1, 2], [3]]}, "not a numeric array"),
    ],
)
def test_bad_inputs_are_input_errors(tmp_path: Path, inputs: dict[str, object], message: str) -> None:
    model = LoadedModel.from_file(onnx_linear(tmp_path / "lin.onnx"))
    with pytest.raises(InputError, match=message):
        model.predict(inputs)


def test_garbage_file_is_load_error(tmp_path: Path) -> None:
    for suffix in ("onnx", "tflite"):
        bad = tmp_path / f"bad.{suffix}"
        bad.write_bytes(b"not a model at all")
        with pytest.raises(ModelLoadError, match="cannot load"):
            LoadedModel.from_file(bad)


def test_litert_float_dynamic_batch(tflite_paths: dict[str, Path]) -> None:
    model = LoadedModel.from_file(tflite_paths["float"], threads=2)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    y4 = model.predict({model.inputs[0].name: x})[model.outputs[0].name]
    y1 = model.predict({model.inputs[0].name: x[:1]})[model.outputs[0].name]
    assert y4.shape == (4, 3)
    np.testing.assert_allclose(y1, y4[:1], rtol=1e-5, atol=1e-6)


def test_litert_int8_quantizes_inputs_and_dequantizes_outputs(tflite_paths: dict[str, Path]) -> None:
    ref = LoadedModel.from_file(tflite_paths["float"])
    manifest = make_manifest(tflite_paths["int8"], profile="raspberry_pi_4", atol=0.2)
    assert manifest.inputs[0].quantization is not None and manifest.inputs[0].dtype == "int8"
    q = LoadedModel.from_file(tflite_paths["int8"], manifest=manifest)
    x = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
    yq = q.predict({manifest.inputs[0].name: x})[manifest.outputs[0].name]
    yf = ref.predict({ref.inputs[0].name: x})[ref.outputs[0].name]
    assert yq.dtype == np.float32
    np.testing.assert_allclose(yq, yf, atol=0.25)
    # Quantizing goes through float32: a value float32 cannot hold is refused, not saturated after an inf.
    with pytest.raises(InputError, match="values outside float32 range"):
        q.predict({manifest.inputs[0].name: [[1e39, 0, 0, 0, 0, 0]]})
    with pytest.raises(InputError, match="NaN or inf"):
        q.predict({manifest.inputs[0].name: [[np.inf, 0, 0, 0, 0, 0]]})


def test_litert_multi_input_multi_output_by_signature_name(tflite_paths: dict[str, Path]) -> None:
    model = LoadedModel.from_file(tflite_paths["multi"])
    # TFLite reorders the tensors; the signature names (what the converter writes) bind them.
    assert {b.name: b.shape for b in model.inputs} == {"a": (None, 4), "b": (None, 3)}
    assert {b.name: b.shape for b in model.outputs} == {"output_0": (None, 2), "output_1": (None, 5)}
    a = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    out = model.predict({"a": a, "b": b})
    assert out["output_0"].shape == (2, 2) and out["output_1"].shape == (2, 5)
    manifest = make_manifest(tflite_paths["multi"], profile="raspberry_pi_4")
    assert [t.name for t in manifest.inputs] == ["b", "a"]
    in_manifest_order = LoadedModel.from_file(tflite_paths["multi"], manifest=manifest)
    np.testing.assert_allclose(in_manifest_order.predict({"b": b, "a": a})["output_0"], out["output_0"], rtol=1e-6)
    with pytest.raises(InputError, match="input 'b': dim 1 is 4, expected 3"):
        model.predict({"a": b, "b": a})
