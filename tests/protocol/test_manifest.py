"""The manifest contract: strict, versioned, canonical JSON that round-trips byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    BaselineStats,
    ConversionReport,
    GoldenCase,
    GoldenSet,
    HistogramBaseline,
    Manifest,
    QuantParams,
    TensorSpec,
)

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def make_manifest(values: list[float] | None = None, scale: float = 0.5) -> Manifest:
    values = values or [0.0, 1.0, 2.0, 3.0]
    metrics = ArtifactMetrics(kind="tflite_int8", size_bytes=100, latency_ms_p50=0.1, latency_ms_p95=0.2)
    return Manifest(
        name="digits", version=3, profile="raspberry_pi_4", format="tflite", quantization="int8",
        task="classification", labels=["a", "b"],
        artifact=ArtifactRef(file="digits-v3.tflite", sha256="ab" * 32, size=100),
        inputs=[TensorSpec(name="x", shape=[None, 4], dtype="int8",
                           quantization=QuantParams(scale=scale, zero_point=-3))],
        outputs=[TensorSpec(name="y", shape=[None, 2], dtype="float32")],
        baseline=BaselineStats(
            n_samples=4, class_counts=[2, 2],
            inputs=[HistogramBaseline(name="x[0]", edges=[0.0, 1.5, 3.0], counts=[2, 2], mean=1.5, std=1.1,
                                      min=0.0, max=3.0)],
        ),
        golden=GoldenSet(cases=[GoldenCase(inputs={"x": values}, expected={"y": [0.25, 0.75]}, expected_top1=1)],
                         atol=0.01),
        report=ConversionReport(chosen=metrics, candidates=[metrics], validation_samples=4, converter_version="t"),
    )


def test_round_trip_is_byte_stable() -> None:
    text = make_manifest().to_json()
    again = Manifest.from_json(text).to_json()
    assert again == text
    assert json.loads(text)["schema_version"] == 1
    assert list(json.loads(text)) == sorted(json.loads(text))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(floats, min_size=4, max_size=4), scale=st.floats(min_value=1e-6, max_value=10.0))
def test_round_trip_property(values: list[float], scale: float) -> None:
    text = make_manifest(values, scale).to_json()
    assert Manifest.from_json(text).to_json() == text


def test_unknown_field_rejected() -> None:
    data = json.loads(make_manifest().to_json())
    data["artifact"]["mirror"] = "http://x"
    with pytest.raises(ValidationError, match="mirror"):
        Manifest.model_validate(data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("schema_version",), 2, "schema_version"),
        (("artifact", "sha256"), "nothex", "sha256"),
        (("name",), "Bad/Name", "name"),
        (("version",), 0, "version"),
        (("inputs", 0, "dtype"), "float32", "quantization given for non-integer dtype"),
        (("baseline", "inputs", 0, "counts"), [1, 1, 2], "counts for"),
        (("golden", "cases", 0, "inputs"), {"z": [1.0]}, "golden case 0"),
        (("labels",), ["only-one"], "labels and baseline.class_counts"),
    ],
)
def test_inconsistent_manifest_rejected(path: tuple[object, ...], value: object, message: str) -> None:
    data = json.loads(make_manifest().to_json())
    node = data
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(data)


def test_nan_rejected() -> None:
    with pytest.raises(ValidationError):
        GoldenCase(inputs={"x": [float("nan")]}, expected={"y": [1.0]})
