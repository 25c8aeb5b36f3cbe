"""PyTorch and ONNX sources: exported to ONNX, quantised, measured; TorchServe archive written."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converter.pipeline import ConvertRequest, convert
from protocol import layout
from protocol.manifest import Manifest
from tests.converter.runtime_check import run_artifact
from tests.support.converted import ONNX_PROFILES, Converted

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("profile_name", ONNX_PROFILES)
def test_torch_model_converted_for_onnx_profiles(torch_converted: Converted, profile_name: str) -> None:
    conv = torch_converted
    m = Manifest.from_json((conv.out / profile_name / layout.MANIFEST_FILE).read_text())
    assert m.format.value == "onnx" and m.name == "digits-torch"
    model = (conv.out / profile_name / m.artifact.file).read_bytes()
    assert hashlib.sha256(model).hexdigest() == m.artifact.sha256
    out = run_artifact(m, model, conv.data.x_val)
    accuracy = float(np.mean(out.argmax(axis=1) == conv.data.y_val))
    assert accuracy == pytest.approx(m.report.chosen.accuracy)
    import torch

    ref = torch.jit.load(str(conv.model))(torch.from_numpy(conv.data.x_val)).detach().numpy()
    assert float(np.mean(ref.argmax(axis=1) == conv.data.y_val)) == pytest.approx(m.report.reference_accuracy)
    assert m.baseline.grouping == "feature" and len(m.baseline.inputs) == 64


def test_torch_model_cannot_make_tflite_and_says_so(torch_converted: Converted) -> None:
    rpi = next(r for r in torch_converted.result.results if r.profile.name == "raspberry_pi_4")
    assert rpi.manifest is None
    assert set(rpi.refused) == set(rpi.profile.kinds)
    assert all("cannot be converted to TFLite" in reason for reason in rpi.refused.values())
    assert not (torch_converted.out / "raspberry_pi_4").exists()
    report = json.loads((torch_converted.out / layout.REPORT_JSON).read_text())
    assert next(p for p in report["profiles"] if p["profile"] == "raspberry_pi_4")["chosen"] is None


def test_onnx_static_int8_measured_against_dynamic(torch_converted: Converted) -> None:
    m = Manifest.from_json((torch_converted.out / "x86_gateway" / layout.MANIFEST_FILE).read_text())
    kinds = {c.kind: c for c in m.report.candidates}
    assert {"onnx_int8", "onnx_fp32", "onnx_dynamic_int8"} <= set(kinds)
    assert kinds["onnx_int8"].size_bytes < kinds["onnx_fp32"].size_bytes
    assert m.report.chosen.latency_ms_p50 <= min(c.latency_ms_p50 for c in kinds.values()) * 1.05 + 1e-12


def test_torchserve_archive(torch_converted: Converted) -> None:
    mar = torch_converted.out / layout.TORCHSERVE_DIR / "digits-torch.mar"
    with zipfile.ZipFile(mar) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        names = set(z.namelist())
    assert manifest["model"]["modelName"] == "digits-torch"
    assert manifest["model"]["modelVersion"] == "1"
    assert {"model.pt", "torchserve_handler.py"} <= names
    # The handler runs the archived TorchScript module exactly like the reference.
    import importlib.util
    import types

    with zipfile.ZipFile(mar) as z:
        tmp = Path(torch_converted.out.parent, "mar-check")
        z.extractall(tmp)
    spec = importlib.util.spec_from_file_location("ts_handler", tmp / "torchserve_handler.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ctx = types.SimpleNamespace(system_properties={"model_dir": str(tmp)},
                                manifest={"model": {"serializedFile": "model.pt"}})
    x = torch_converted.data.x_val[:3]
    body = json.dumps({"instances": x.tolist()}).encode()
    (resp,) = mod.handle([{"body": body}], ctx)
    import torch

    ref = torch.jit.load(str(torch_converted.model))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(resp["predictions"]), ref, atol=1e-5)


def test_onnx_file_and_savedmodel_sources(keras_converted: Converted, tmp_path: Path) -> None:
    onnx_file = tmp_path / "digits.onnx"
    onnx_file.write_bytes((keras_converted.out / layout.TRITON_DIR / "digits" / "1" / "model.onnx").read_bytes())
    res = convert(ConvertRequest(model=onnx_file, profiles=["x86_gateway"], calibration=keras_converted.calibration,
                                 validation=keras_converted.validation, out=tmp_path / "from-onnx", latency_runs=20))
    assert res.source_kind == "onnx" and res.results[0].manifest is not None
    assert res.results[0].manifest.report.chosen.accuracy is not None

    saved = keras_converted.out / layout.TFSERVING_DIR / "digits" / "1"
    res2 = convert(ConvertRequest(model=saved, profiles=["nxp_imx8mp"], calibration=keras_converted.calibration,
                                  validation=keras_converted.validation, out=tmp_path / "from-sm", latency_runs=20,
                                  name="digits"))
    m = res2.results[0].manifest
    assert res2.source_kind == "savedmodel" and m is not None and m.kind == "tflite_int8"
    assert m.report.chosen.accuracy is not None and m.report.chosen.accuracy > 0.9
    assert (tmp_path / "from-sm" / layout.TFSERVING_DIR / "digits" / "1" / "saved_model.pb").exists()
