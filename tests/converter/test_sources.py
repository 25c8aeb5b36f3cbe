"""Every source kind reaches every profile it can, through the real converters: a pickled nn.Module and an
ExportedProgram through litert-torch, ONNX through onnx2tf, scikit-learn through skl2onnx; and the same names
on every profile. What cannot be converted says why in one line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.model import LoadedModel
from converter.pipeline import ConvertRequest, ConvertResult, convert
from edgefleet.cli import cli
from protocol.manifest import Manifest
from tests.converter.models import Digits, digits, train_torch_cnn
from tests.support.profiles import relaxed_profiles

pytestmark = [pytest.mark.slow]
PROFILES = ["raspberry_pi_4", "coral_devboard", "x86_gateway"]
TFLITE_KINDS = {"tflite_fp32", "tflite_fp16", "tflite_dynamic_int8", "tflite_int8"}


@dataclass(frozen=True)
class TorchSources:
    data: Digits
    folder: Path
    calibration: Path
    validation: Path
    pickled: Path
    exported: Path
    onnx: Path


@pytest.fixture(scope="module")
def torch_sources(tmp_path_factory: pytest.TempPathFactory) -> TorchSources:
    import torch

    folder = tmp_path_factory.mktemp("sources")
    data = digits(channels_first=True)
    calib, val = data.write(folder, calibration_samples=100)
    pickled = train_torch_cnn(folder / "digits.pt", data, epochs=6, scripted=False)
    net = torch.load(pickled, weights_only=False).eval()
    sample = (torch.from_numpy(data.x_val[:1]),)
    exported = folder / "digits.pt2"
    torch.export.save(torch.export.export(net, sample), str(exported))
    onnx_path = folder / "digits.onnx"
    torch.onnx.export(net, sample, str(onnx_path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return TorchSources(data, folder, calib, val, pickled, exported, onnx_path)


def _run(src: TorchSources, model: Path, out: str, **extra: object) -> ConvertResult:
    req = ConvertRequest(model=model, profiles=PROFILES, calibration=src.calibration, validation=src.validation,
                         out=src.folder / out, latency_runs=10, cloud=False,
                         profiles_dir=relaxed_profiles(src.folder), **extra)  # type: ignore[arg-type]
    return convert(req)


def _manifests(result: ConvertResult) -> dict[str, Manifest]:
    return {r.profile.name: r.manifest for r in result.results if r.manifest is not None}


def _agent_accuracy(result: ConvertResult, m: Manifest, data: Digits) -> float:
    """Accuracy of the shipped artifact in the agent, one request per sample."""
    from agent.offline import run_batches

    loaded = LoadedModel.from_file(result.out / m.profile / m.artifact.file, manifest=m)
    name = m.inputs[0].name
    out = run_batches(loaded, {name: data.x_val}, batch_size=1)[m.outputs[0].name]
    return float(np.mean(out.reshape(len(out), -1).argmax(1) == data.y_val))


def test_pickled_module_needs_trust_then_reaches_tflite_and_onnx(torch_sources: TorchSources) -> None:
    src = torch_sources
    args = ["convert", str(src.pickled), "--profile", "raspberry_pi_4", "--calibration", str(src.calibration),
            "--validation", str(src.validation), "--out", str(src.folder / "refused"), "--input-shape", "1,8,8"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "Error: digits.pt: a pickled nn.Module runs code when it is loaded; pass --trust-pickle if you trust where "
        "it came from (or ship TorchScript or a torch.export .pt2, which load without running code)"
    )
    assert not (src.folder / "refused").exists()
    result = _run(src, src.pickled, "pickled", trust_pickle=True, input_shape=[1, 8, 8])
    found = _manifests(result)
    assert set(found) == set(PROFILES), {r.profile.name: r.refused for r in result.results}
    pi, coral, gateway = found["raspberry_pi_4"], found["coral_devboard"], found["x86_gateway"]
    assert pi.format.value == "tflite" and gateway.format.value == "onnx"
    # The four TFLite kinds were all built by litert-torch (+ ai-edge-quantizer) and measured.
    assert {c.kind for c in pi.report.candidates} == TFLITE_KINDS
    assert coral.inputs[0].dtype == "int8" and coral.outputs[0].dtype == "int8"
    # One model, the same names on every profile.
    for m in found.values():
        assert [t.name for t in m.inputs] == ["input"] and [t.name for t in m.outputs] == ["output"]
        assert m.source is not None and m.source.kind == "torch"
        accuracy = _agent_accuracy(result, m, src.data)
        assert accuracy == pytest.approx(m.report.chosen.accuracy)
        assert accuracy > 0.85


def test_exported_program_needs_no_shape_and_runs_batches_in_the_agent(torch_sources: TorchSources) -> None:
    src = torch_sources
    result = _run(src, src.exported, "exported")
    found = _manifests(result)
    assert set(found) == set(PROFILES), {r.profile.name: r.refused for r in result.results}
    pi = found["raspberry_pi_4"]
    assert pi.inputs[0].shape == [1, 1, 8, 8], "litert-torch exports a fixed batch of 1"
    loaded = LoadedModel.from_file(result.out / "raspberry_pi_4" / pi.artifact.file, manifest=pi)
    rows = src.data.x_val[:5]
    together = loaded.predict({pi.inputs[0].name: rows})[pi.outputs[0].name]
    one_by_one = np.concatenate([loaded.predict({pi.inputs[0].name: r[None]})[pi.outputs[0].name] for r in rows])
    assert together.shape == (5, 10)
    np.testing.assert_array_equal(together, one_by_one)


def test_onnx_reaches_tflite_through_onnx2tf_keeping_names_and_layout(torch_sources: TorchSources) -> None:
    src = torch_sources
    result = _run(src, src.onnx, "onnx")
    found = _manifests(result)
    assert set(found) == set(PROFILES), {r.profile.name: r.refused for r in result.results}
    for m in found.values():
        assert [t.name for t in m.inputs] == ["image"] and [t.name for t in m.outputs] == ["logits"]
        assert m.inputs[0].shape[1:] == [1, 8, 8], "NCHW kept: the source's data feeds every artifact"
        assert m.inputs[0].layout == ("NCHW" if m.format.value == "tflite" else None)
        assert _agent_accuracy(result, m, src.data) == pytest.approx(m.report.chosen.accuracy)
    pi = found["raspberry_pi_4"]
    assert {c.kind for c in pi.report.candidates} == TFLITE_KINDS
    # The ONNX file itself is shipped to the ONNX profile byte for byte; quantised variants only when asked.
    gateway = found["x86_gateway"]
    assert gateway.artifact.sha256 == hashlib.sha256(src.onnx.read_bytes()).hexdigest()
    assert "--requantize" in gateway.report.refused["onnx_int8"]


def test_torchscript_keeps_onnx_and_says_why_not_tflite(torch_sources: TorchSources, tmp_path: Path) -> None:
    import torch

    scripted = train_torch_cnn(tmp_path / "scripted.pt", torch_sources.data, epochs=1, scripted=True)
    assert isinstance(torch.jit.load(str(scripted)), torch.jit.ScriptModule)
    args = ["convert", str(scripted), "--profile", "raspberry_pi_4", "--profile", "x86_gateway", "--calibration",
            str(torch_sources.calibration), "--validation", str(torch_sources.validation), "--out",
            str(tmp_path / "out"), "--input-shape", "1,8,8", "--no-cloud", "--latency-runs", "10",
            "--profiles-dir", str(relaxed_profiles(torch_sources.folder))]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3, res.output
    said = " ".join(res.output.split())  # rich wraps long lines at the terminal's width
    assert "raspberry_pi_4: no artifact fits: tflite_int8: TorchScript cannot be converted to TFLite (litert-torch " \
        "needs the nn.Module" in said
    assert (tmp_path / "out" / "x86_gateway" / "manifest.json").exists()


def test_scikit_learn_pickle(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = digits(image=False)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(data.x_train, data.y_train)
    model = tmp_path / "model.pkl"
    joblib.dump(est, model)
    calib, val = data.write(tmp_path)
    base = ["convert", str(model), "--profile", "x86_gateway", "--profile", "raspberry_pi_4", "--calibration",
            str(calib), "--validation", str(val), "--out", str(tmp_path / "out"), "--latency-runs", "10"]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "Error: model.pkl: a pickle runs code when it is loaded; pass --trust-pickle if you trust where this file "
        "came from"
    )
    res = CliRunner().invoke(cli, [*base, "--trust-pickle"])
    assert res.exit_code == 3, res.output  # no TFLite: the ONNX graph is made of scikit-learn's own ops
    said = " ".join(res.output.split())  # rich wraps long lines at the terminal's width
    assert "raspberry_pi_4: no artifact fits: tflite_int8: onnx2tf does not support op Scaler (domain ai.onnx.ml) " \
        "at node" in said
    m = Manifest.from_json((tmp_path / "out" / "x86_gateway" / "manifest.json").read_text())
    assert m.labels == [str(c) for c in est.classes_] and [t.name for t in m.outputs] == ["probabilities"]
    loaded = LoadedModel.from_file(tmp_path / "out" / "x86_gateway" / m.artifact.file, manifest=m)
    probs = loaded.predict({"input": data.x_val})["probabilities"]
    np.testing.assert_allclose(probs, est.predict_proba(data.x_val), atol=1e-5)
    assert float(np.mean(probs.argmax(1) == data.y_val)) == pytest.approx(m.report.chosen.accuracy)
    assert m.report.reference_accuracy == pytest.approx(est.score(data.x_val, data.y_val))


def test_scikit_learn_regressor_and_bad_pickles(tmp_path: Path) -> None:
    import pickle

    import joblib
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1
    model = tmp_path / "ridge.joblib"
    joblib.dump(Ridge().fit(x, y), model)
    np.save(tmp_path / "cal.npy", x[:100])
    np.save(tmp_path / "val.npy", x[100:])
    res = convert(ConvertRequest(model=model, profiles=["x86_gateway"], calibration=tmp_path / "cal.npy",
                                 validation=tmp_path / "val.npy", out=tmp_path / "out", latency_runs=10,
                                 cloud=False, trust_pickle=True))
    m = res.results[0].manifest
    assert m is not None and m.task.value == "regression" and m.outputs[0].name == "prediction"
    assert m.report.chosen.max_abs_error is not None and m.report.chosen.max_abs_error < 1e-4
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    args = ["convert", str(tmp_path / "list.pkl"), "--profile", "x86_gateway", "--calibration",
            str(tmp_path / "cal.npy"), "--validation", str(tmp_path / "val.npy"), "--out", str(tmp_path / "o2"),
            "--trust-pickle"]
    res2 = CliRunner().invoke(cli, args)
    assert res2.exit_code == 1
    assert res2.output.strip().splitlines()[-1] == "Error: list.pkl: holds a list, not a fitted scikit-learn estimator"
