"""Models as their authors ship them: 0-d inputs, integer and bool inputs, recurrent state in and out, several
TFLite signatures, resource variables, the model's own names (and aliases) — each checked against the raw runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from agent.errors import InputError, ModelLoadError
from agent.model import LoadedModel
from agent.offline import run_batches
from edgefleet.cli import cli
from protocol.manifest import TensorSpec
from tests.agent.builders import tflite_multi_signature


def onnx_stateful(path: Path) -> Path:
    """A recurrent-style graph: x[N,4] f32, state[2,N,3] f32, sr 0-d int64, mask[N,4] bool, ids[N,2] uint8.

    y = where(mask, x, 0) * (sr / 16000) + sum(ids); stateN = state + mean(x) broadcast; steps = sr (int64 0-d).
    """
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [], [16000.0])),
        helper.make_node("Div", ["srf", "k"], ["rate"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Where", ["mask", "x", "zero"], ["xm"]),
        helper.make_node("Mul", ["xm", "rate"], ["xr"]),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["idsf"], ["idsum"], keepdims=1),
        helper.make_node("Add", ["xr", "idsum"], ["y"]),
        helper.make_node("ReduceMean", ["x"], ["xmean"], keepdims=0),
        helper.make_node("Add", ["state", "xmean"], ["stateN"]),
        helper.make_node("Identity", ["sr"], ["steps"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4]),
            helper.make_tensor_value_info("ids", TensorProto.UINT8, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 3]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def multi_signature(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tflite_multi_signature(tmp_path_factory.mktemp("sig") / "totals.tflite")


def _feeds(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(batch, 4)).astype(np.float32),
        "state": rng.normal(size=(2, batch, 3)).astype(np.float32),
        "sr": np.array(8000, np.int64),
        "mask": rng.random((batch, 4)) > 0.5,
        "ids": rng.integers(0, 255, (batch, 2)).astype(np.uint8),
    }


def test_scalar_state_bool_and_uint8_inputs_match_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = onnx_stateful(tmp_path / "stateful.onnx")
    model = LoadedModel.from_file(path)
    assert [(b.name, b.shape) for b in model.inputs][:3] == [("x", (None, 4)), ("state", (2, None, 3)), ("sr", ())]
    feeds = _feeds()
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = model.predict(feeds)
    assert list(got) == ["y", "stateN", "steps"]
    for want, name in zip(ref, got, strict=True):
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)
    # As JSON would bring them: lists, a plain int for the scalar, 0/1 for bools, whole floats for integers.
    as_json = {k: v.tolist() for k, v in feeds.items()}
    as_json["mask"] = np.asarray(feeds["mask"], int).tolist()
    as_json["ids"] = np.asarray(feeds["ids"], float).tolist()
    again = model.predict(as_json)
    np.testing.assert_array_equal(again["y"], ref[0])
    # The recurrent state goes back in as it came out.
    nxt = model.predict({**feeds, "state": got["stateN"]})
    np.testing.assert_allclose(nxt["stateN"], got["stateN"] + feeds["x"].mean(), rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sr": [8000, 16000]}, "input 'sr': shape [2] does not fit []"),
        ({"sr": 8000.5}, "input 'sr': float values for integer tensor (int64)"),
        ({"state": np.zeros((3, 3, 3), np.float32)}, "input 'state': dim 0 is 3, expected 2 (shape [2, ?, 3])"),
        ({"mask": [[0, 1, 2, 0]] * 3}, "input 'mask': values other than 0 and 1 for a bool tensor"),
        ({"ids": [[300, 0]] * 3}, "input 'ids': values outside uint8 range [0, 255]"),
        ({"ids": [[-1, 0]] * 3}, "input 'ids': values outside uint8 range [0, 255]"),
        ({"x": np.zeros((2, 4), np.float32)}, "inputs have different batch sizes"),
        (
            {"state": np.zeros((2, 2, 3), np.float32)},
            "inputs disagree on the model's dim 'batch': 'x' dim 0 is 3, 'state' dim 1 is 2, 'mask' dim 0 is 3, "
            "'ids' dim 0 is 3",
        ),
        ({"x": np.zeros((0, 4), np.float32), "mask": np.zeros((0, 4), bool)}, "input 'x': empty batch"),
    ],
)
def test_bad_values_are_refused_by_name(tmp_path: Path, change: dict[str, object], message: str) -> None:
    model = LoadedModel.from_file(onnx_stateful(tmp_path / "stateful.onnx"))
    with pytest.raises(InputError) as e:
        model.predict({**_feeds(), **change})
    assert str(e.value) == message


def test_predict_and_batch_cli_with_scalar_and_state(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = onnx_stateful(tmp_path / "stateful.onnx")
    feeds = _feeds(batch=1)
    np.savez(tmp_path / "in.npz", **feeds)
    res = CliRunner().invoke(
        cli, ["agent", "predict", str(path), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]
    )
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_array_equal(out["stateN"], sess.run(["stateN"], feeds)[0])
        assert out["steps"].shape == () and int(out["steps"]) == 8000
    # A batch file: rows of x/mask/ids, sr given once for every row, state given per row (rows run one by one).
    rows = 5
    rng = np.random.default_rng(1)
    data = {
        "x": rng.normal(size=(rows, 4)).astype(np.float32),
        "mask": np.ones((rows, 4), bool),
        "ids": np.zeros((rows, 2), np.uint8),
        "state": rng.normal(size=(rows, 2, 1, 3)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    np.savez(tmp_path / "rows.npz", **data)
    res = CliRunner().invoke(
        cli, ["agent", "batch", str(path), str(tmp_path / "rows.npz"), "--out", str(tmp_path / "b.npz")]
    )
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "b.npz") as out:
        assert out["y"].shape == (rows, 4) and out["stateN"].shape == (rows, 2, 1, 3) and out["steps"].shape == (rows,)
        for i in range(rows):
            one = {
                k: (v[i : i + 1] if k in ("x", "mask", "ids") else v[i] if k == "state" else v) for k, v in data.items()
            }
            np.testing.assert_array_equal(out["stateN"][i], sess.run(["stateN"], one)[0])


def test_several_signatures_and_resource_variables(multi_signature: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"several signatures \(add, scale\); choose one"):
        LoadedModel.from_file(multi_signature)
    with pytest.raises(ModelLoadError, match=r"no signature 'nope' \(the model has: add, scale\)"):
        LoadedModel.from_file(multi_signature, signature="nope")
    add = LoadedModel.from_file(multi_signature, signature="add")
    assert [b.name for b in add.inputs] == ["x"] and [b.name for b in add.outputs] == ["total"]
    # The variable keeps its value between calls, across a resize of the batch.
    np.testing.assert_array_equal(add.predict({"x": np.ones((2, 4))})["total"], [2, 2, 2, 2])
    np.testing.assert_array_equal(add.predict({"x": np.ones((3, 4))})["total"], [5, 5, 5, 5])
    # The flatbuffer's own tensor name is an alias of the signature key.
    alias = next(a for a in add.inputs[0].aliases)
    np.testing.assert_array_equal(add.predict({alias: [[1, 2, 3, 4]]})["total"], [6, 7, 8, 9])
    with pytest.raises(InputError, match="given twice"):
        add.predict({"x": [[0, 0, 0, 0]], alias: [[0, 0, 0, 0]]})
    scale = LoadedModel.from_file(multi_signature, signature="scale")
    out = scale.predict({"x": [[1, -2, 3, 4], [-1, -1, -1, -1]], "k": 3})
    np.testing.assert_array_equal(out["scaled"], [[3, -6, 9, 12], [-3, -3, -3, -3]])
    np.testing.assert_array_equal(out["positive"], [True, False])


def test_signature_option_on_the_cli(tmp_path: Path, multi_signature: Path) -> None:
    np.savez(tmp_path / "in.npz", x=np.ones((1, 4), np.float32), k=np.array(2, np.int32))
    base = ["agent", "predict", str(multi_signature), str(tmp_path / "in.npz")]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and res.output.strip().endswith("several signatures (add, scale); choose one")
    res = CliRunner().invoke(cli, [*base, "--signature", "scale"])
    assert res.exit_code == 0, res.output
    assert "scaled [1, 4] float32" in res.output and "positive [1] bool" in res.output
    onnx_path = onnx_stateful(tmp_path / "s.onnx")
    res = CliRunner().invoke(cli, ["agent", "predict", str(onnx_path), str(tmp_path / "in.npz"), "--signature", "a"])
    assert res.exit_code == 1 and "has no signatures to choose" in res.output


def test_manifest_names_map_the_artifacts_own_names(tmp_path: Path, tflite_paths: dict[str, Path]) -> None:
    """A Keras TFLite artifact calls its output `output_0`; the manifest keeps the source's name and maps it."""
    from tests.agent.builders import make_manifest

    path = tflite_paths["float"]
    raw = LoadedModel.from_file(path)
    base = make_manifest(path)
    renamed = base.model_copy(
        update={
            "inputs": [TensorSpec(name="features", shape=[None, 6], dtype="float32", runtime_name=raw.inputs[0].name)],
            "outputs": [TensorSpec(name="logits", shape=[None, 3], dtype="float32", runtime_name=raw.outputs[0].name)],
            "golden": base.golden.model_copy(
                update={
                    "cases": [
                        c.model_copy(update={"inputs": {"features": next(iter(c.inputs.values()))}})
                        for c in base.golden.cases
                    ]
                }
            ),
        }
    )
    model = LoadedModel.from_file(path, manifest=renamed)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    out = model.predict({"features": x})
    assert list(out) == ["logits"]
    np.testing.assert_array_equal(out["logits"], raw.predict({raw.inputs[0].name: x})[raw.outputs[0].name])
    # The artifact's own input name still works.
    np.testing.assert_array_equal(model.predict({raw.inputs[0].name: x})["logits"], out["logits"])


def test_batch_rows_with_a_constant_scalar(tmp_path: Path) -> None:
    model = LoadedModel.from_file(onnx_stateful(tmp_path / "s.onnx"))
    rows = 7
    data = {
        "x": np.ones((rows, 4), np.float32),
        "state": np.zeros((2, 1, 3), np.float32),  # not batch-first, given once: fed with every row (batch 1)
        "sr": np.array(16000),
        "mask": np.ones((rows, 4), bool),
        "ids": np.ones((rows, 2), np.uint8),
    }
    with pytest.raises(InputError, match=r"disagree on the model's dim 'batch': 'x' dim 0 is 3, 'state' dim 1 is 1"):
        run_batches(model, data, batch_size=3)
    out = run_batches(model, data, batch_size=1)
    assert out["y"].shape == (rows, 4)
    np.testing.assert_array_equal(out["y"], np.full((rows, 4), 3.0))
