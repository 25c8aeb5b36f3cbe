"""Ready-made artifacts (`.tflite`, `.onnx`): shipped byte for byte, measured in the real runtime, with baseline,
golden cases and a manifest; re-quantised only with --requantize; a TFLite signature chosen by --signature."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.model import LoadedModel
from converter.pipeline import ConvertRequest, convert
from edgefleet.cli import cli
from protocol import layout
from protocol.manifest import Manifest
from tests.agent.builders import tflite_models
from tests.support.profiles import relaxed_profiles

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ready")
    paths = tflite_models(folder)
    rng = np.random.default_rng(0)
    np.save(folder / "cal.npy", rng.normal(size=(64, 6)).astype(np.float32))
    np.save(folder / "val.npy", rng.normal(size=(48, 6)).astype(np.float32))
    return {**paths, "cal": folder / "cal.npy", "val": folder / "val.npy", "dir": folder}


def _convert(made: dict[str, Path], model: Path, profiles: list[str], out: str, **extra: object) -> Path:
    # An untrained dense net on random data: its int8 error measures nothing, so the relative budget is lifted.
    req = ConvertRequest(model=model, profiles=profiles, calibration=made["cal"], validation=made["val"],
                         out=made["dir"] / out, latency_runs=10, cloud=False, task="regression",
                         profiles_dir=relaxed_profiles(made["dir"], max_relative_error=1.0),
                         **extra)  # type: ignore[arg-type]
    convert(req)
    return made["dir"] / out


def _manifest(out: Path, profile: str) -> Manifest:
    return Manifest.from_json((out / profile / layout.MANIFEST_FILE).read_text())


def test_tflite_is_shipped_byte_for_byte(made: dict[str, Path]) -> None:
    out = _convert(made, made["float"], ["raspberry_pi_4"], "float")
    m = _manifest(out, "raspberry_pi_4")
    assert m.kind == "tflite_fp32"
    shipped = (out / "raspberry_pi_4" / m.artifact.file).read_bytes()
    assert shipped == made["float"].read_bytes()
    assert m.source is not None and m.source.kind == "tflite"
    assert m.source.sha256 == hashlib.sha256(shipped).hexdigest()
    for kind in ("tflite_int8", "tflite_dynamic_int8", "tflite_fp16"):
        assert m.report.refused[kind] == (
            f"the ready-made tflite_fp32 artifact is shipped as it is (--requantize to make {kind} from it)"
        )
    # Baseline from the given data, golden cases computed by the artifact itself and replayed by the agent.
    assert m.baseline.n_samples == 48 and len(m.baseline.inputs) == 6
    loaded = LoadedModel.from_file(out / "raspberry_pi_4" / m.artifact.file, manifest=m)
    for case in m.golden.cases:
        got = loaded.predict(case.inputs)
        for name, want in case.expected.items():
            np.testing.assert_allclose(got[name].ravel(), want, atol=m.golden.atol)


def test_requantize_makes_the_other_kinds(made: dict[str, Path]) -> None:
    out = _convert(made, made["float"], ["raspberry_pi_4", "coral_devboard"], "requantized", requantize=True)
    report = json.loads((out / layout.REPORT_JSON).read_text())
    pi = next(p for p in report["profiles"] if p["profile"] == "raspberry_pi_4")
    errors = {c["kind"]: c["max_abs_error"] for c in pi["candidates"]}
    assert set(errors) == {"tflite_fp32", "tflite_fp16", "tflite_dynamic_int8", "tflite_int8"}
    # Each re-quantised model was measured against the float one (outputs of this dense net span about +-3).
    assert errors["tflite_fp32"] == 0 and errors["tflite_fp16"] < 0.01
    assert 0 < errors["tflite_dynamic_int8"] < 0.3 and 0 < errors["tflite_int8"] < 0.3
    coral = _manifest(out, "coral_devboard")
    assert coral.inputs[0].dtype == "int8" and coral.inputs[0].quantization is not None


def test_int8_artifact_for_the_coral_float_one_for_onnx_through_tf2onnx(made: dict[str, Path]) -> None:
    out = _convert(made, made["int8"], ["coral_devboard", "x86_gateway"], "int8")
    coral = _manifest(out, "coral_devboard")
    assert coral.kind == "tflite_int8"
    assert (out / "coral_devboard" / coral.artifact.file).read_bytes() == made["int8"].read_bytes()
    report = json.loads((out / layout.REPORT_JSON).read_text())
    gateway = next(p for p in report["profiles"] if p["profile"] == "x86_gateway")
    assert gateway["chosen"] is None
    assert gateway["refused"]["onnx_fp32"].startswith("a TFLite model with quantised (int8/uint8) inputs or outputs")
    # A float TFLite model reaches the ONNX profile through tf2onnx, answering under its own names.
    out = _convert(made, made["float"], ["raspberry_pi_4", "x86_gateway"], "float-onnx")
    pi, onnx = _manifest(out, "raspberry_pi_4"), _manifest(out, "x86_gateway")
    fp32 = next(c for c in onnx.report.candidates if c.kind == "onnx_fp32")
    assert onnx.format.value == "onnx" and fp32.relative_error is not None and fp32.relative_error < 1e-5
    assert [t.name for t in onnx.inputs] == [t.name for t in pi.inputs]
    assert [t.name for t in onnx.outputs] == [t.name for t in pi.outputs]


def test_signature_of_a_model_with_several(made: dict[str, Path], tmp_path: Path) -> None:
    from tests.agent.builders import tflite_multi_signature

    path = tflite_multi_signature(tmp_path / "totals.tflite")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    args = ["convert", str(path), "--profile", "raspberry_pi_4", "--calibration", str(tmp_path / "x.npy"),
            "--validation", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), "--task", "regression",
            "--latency-runs", "10", "--no-cloud"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "Error: totals.tflite: the model has several signatures (add, scale); choose one"
    )
    res = CliRunner().invoke(cli, [*args, "--signature", "add"])
    assert res.exit_code == 0, res.output
    m = _manifest(tmp_path / "out", "raspberry_pi_4")
    assert m.signature == "add" and [t.name for t in m.outputs] == ["total"]
    loaded = LoadedModel.from_file(tmp_path / "out" / "raspberry_pi_4" / m.artifact.file, manifest=m)
    assert [b.name for b in loaded.inputs] == ["x"]


def test_onnx_is_shipped_byte_for_byte_unless_requantize(tmp_path: Path) -> None:
    from tests.agent.builders import onnx_linear

    model = onnx_linear(tmp_path / "linear.onnx", n_in=4, n_out=3)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    base = dict(model=model, profiles=["x86_gateway"], calibration=tmp_path / "x.npy", validation=tmp_path / "x.npy",
                latency_runs=10, cloud=False, task="regression")
    res = convert(ConvertRequest(out=tmp_path / "plain", **base))  # type: ignore[arg-type]
    m = res.results[0].manifest
    assert m is not None and m.kind == "onnx_fp32"
    assert (tmp_path / "plain" / "x86_gateway" / m.artifact.file).read_bytes() == model.read_bytes()
    res = convert(ConvertRequest(out=tmp_path / "requantized", requantize=True, **base))  # type: ignore[arg-type]
    kinds = {c.kind for c in res.results[0].candidates}
    assert kinds == {"onnx_fp32", "onnx_int8", "onnx_dynamic_int8"}
