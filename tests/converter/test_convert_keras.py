"""A Keras CNN trained on digits, converted for every bundled profile; every claim checked in the runtime."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from firmware_profiles import get_profile
from protocol import layout
from protocol.manifest import Manifest, ModelFormat, Quantization
from tests.converter.runtime_check import run_artifact
from tests.support.converted import ALL_PROFILES, Converted

pytestmark = [pytest.mark.slow]


def _manifest(conv: Converted, profile: str) -> Manifest:
    text = (conv.out / profile / layout.MANIFEST_FILE).read_text()
    m = Manifest.from_json(text)
    assert m.to_json() == text, "manifest on disk is canonical and round-trips byte for byte"
    return m


@pytest.mark.parametrize("profile_name", ALL_PROFILES)
def test_every_profile_gets_a_verified_artifact(keras_converted: Converted, profile_name: str) -> None:
    conv = keras_converted
    m = _manifest(conv, profile_name)
    profile = get_profile(profile_name)
    model = (conv.out / profile_name / m.artifact.file).read_bytes()
    assert hashlib.sha256(model).hexdigest() == m.artifact.sha256
    assert len(model) == m.artifact.size == m.report.chosen.size_bytes
    assert m.kind in profile.kinds and m.profile == profile_name

    # Accuracy claimed in the manifest is what the runtime does on the validation data.
    out = run_artifact(m, model, conv.data.x_val)
    accuracy = float(np.mean(out.argmax(axis=1) == conv.data.y_val))
    assert accuracy == pytest.approx(m.report.chosen.accuracy, abs=1e-9)
    assert m.report.reference_accuracy is not None
    loss_pt = (m.report.reference_accuracy - accuracy) * 100
    assert loss_pt <= profile.budgets.max_accuracy_loss_pt
    assert m.report.reference_accuracy > 0.9, "the float model really learned digits"

    # Budgets hold, on the basis the report names (latency against the lifted budget of tests/support/profiles.py:
    # the decision on measured latencies is tested with controlled figures in test_budgets.py).
    chosen = m.report.chosen
    assert chosen.size_bytes <= profile.budgets.max_artifact_bytes
    if profile.speed:
        assert chosen.latency_basis == "device"
        assert chosen.device_latency_ms_p95 == pytest.approx(chosen.latency_ms_p95 * profile.speed.host_factor)
    else:
        assert chosen.latency_basis == "host"

    # Golden cases reproduce in the runtime within the manifest's tolerance.
    for case in m.golden.cases:
        x = np.asarray(case.inputs[m.inputs[0].name], dtype=np.float32).reshape(1, 8, 8, 1)
        y = run_artifact(m, model, x).ravel()
        np.testing.assert_allclose(y, case.expected[m.outputs[0].name], atol=m.golden.atol, rtol=m.golden.rtol)
        assert int(y.argmax()) == case.expected_top1


def test_profile_constraints_shape_the_artifacts(keras_converted: Converted) -> None:
    by = {p: _manifest(keras_converted, p) for p in ALL_PROFILES}
    for name in ("coral_devboard", "esp32_s3"):
        m = by[name]
        assert (m.format, m.quantization) == (ModelFormat.TFLITE, Quantization.INT8)
        assert m.inputs[0].dtype == "int8" and m.inputs[0].quantization is not None
        assert m.outputs[0].dtype == "int8" and m.outputs[0].quantization is not None
    assert by["nxp_imx8mp"].kind == "tflite_int8" and by["nxp_imx8mp"].inputs[0].dtype == "float32"
    assert by["x86_gateway"].format is ModelFormat.ONNX
    assert by["jetson_orin_nano"].kind in ("onnx_fp16", "onnx_fp32")


def test_choice_comes_from_measurements(keras_converted: Converted) -> None:
    report = json.loads((keras_converted.out / layout.REPORT_JSON).read_text())
    for entry in report["profiles"]:
        cands = {c["kind"]: c for c in entry["candidates"] if c["kind"] not in entry["refused"]}
        chosen = cands[entry["chosen"]]
        fastest = min(c["latency_ms_p50"] for c in cands.values())
        assert chosen["latency_ms_p50"] <= fastest * 1.05 + 1e-12
        for c in cands.values():  # nothing as fast is smaller
            if c["latency_ms_p50"] <= fastest * 1.05:
                assert chosen["size_bytes"] <= c["size_bytes"]


def test_int8_is_smaller_and_accurate(keras_converted: Converted) -> None:
    rpi = _manifest(keras_converted, "raspberry_pi_4").report
    by_kind = {c.kind: c for c in rpi.candidates}
    assert by_kind["tflite_int8"].size_bytes < 0.5 * by_kind["tflite_fp32"].size_bytes
    assert by_kind["tflite_int8"].top1_agreement is not None and by_kind["tflite_int8"].top1_agreement > 0.97


def test_baseline_statistics(keras_converted: Converted) -> None:
    m = _manifest(keras_converted, "raspberry_pi_4")
    n = len(keras_converted.data.x_val)
    assert m.baseline.n_samples == n and m.baseline.grouping == "feature"
    assert len(m.baseline.inputs) == 64  # one histogram per pixel
    flat = keras_converted.data.x_val.reshape(n, -1)
    for j, h in enumerate(m.baseline.inputs):
        assert sum(h.counts) == n
        assert h.min == pytest.approx(float(flat[:, j].min())) and h.max == pytest.approx(float(flat[:, j].max()))
        assert h.mean == pytest.approx(float(flat[:, j].mean()), rel=1e-5, abs=1e-7)
    assert m.baseline.class_counts is not None and sum(m.baseline.class_counts) == n
    assert len(m.baseline.class_counts) == 10
    assert min(m.baseline.class_counts) > 0.05 * n  # balanced digits -> every class predicted


def test_reports_and_tfserving_export(keras_converted: Converted) -> None:
    out = keras_converted.out
    md = (out / layout.REPORT_MD).read_text()
    for p in ALL_PROFILES:
        assert f"## {p}" in md
    assert (out / layout.REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = out / layout.TFSERVING_DIR / "digits" / "1"
    assert (saved / "saved_model.pb").exists()
    import tensorflow as tf

    served = tf.saved_model.load(str(saved)).signatures["serving_default"]
    x = keras_converted.data.x_val[:16]
    y = next(iter(served(tf.constant(x)).values())).numpy()
    m = _manifest(keras_converted, "jetson_orin_nano")
    assert m.cloud is not None and m.cloud.tfserving and m.cloud.model_name == "digits"
    import keras

    ref = keras.models.load_model(keras_converted.model)(x).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert (out / layout.TRITON_DIR / "digits" / "1" / "model.onnx").exists()


def test_no_temp_dirs_left(keras_converted: Converted) -> None:
    leftovers = [p.name for p in keras_converted.out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_one_model_answers_with_the_same_names_on_every_profile(keras_converted: Converted) -> None:
    """TFLite calls the Keras output `output_0`, tf2onnx's ONNX `output`: the manifest maps both to the source's."""
    from agent.model import LoadedModel

    by = {p: _manifest(keras_converted, p) for p in ALL_PROFILES}
    names = {p: ([t.name for t in m.inputs], [t.name for t in m.outputs]) for p, m in by.items()}
    assert len(set(map(str, names.values()))) == 1, names
    tflite = by["raspberry_pi_4"]
    assert tflite.outputs[0].runtime_name == "output_0" and tflite.outputs[0].name == "output"
    x = keras_converted.data.x_val[:4]
    answers = {}
    for p in ("raspberry_pi_4", "x86_gateway"):
        m = by[p]
        loaded = LoadedModel.from_file(keras_converted.out / p / m.artifact.file, manifest=m)
        answers[p] = loaded.predict({m.inputs[0].name: x})
    assert list(answers["raspberry_pi_4"]) == list(answers["x86_gateway"]) == ["output"]
