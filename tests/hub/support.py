"""Helpers for hub tests: converter-style output folders, a hub under uvicorn, simulated devices."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from protocol.layout import MANIFEST_FILE
from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    BaselineStats,
    ConversionReport,
    GoldenCase,
    GoldenSet,
    HistogramBaseline,
    Manifest,
    ModelFormat,
    Quantization,
    Task,
    TensorSpec,
)


def make_manifest(name: str, version: int, profile: str, artifact: bytes, file: str = "model.tflite") -> Manifest:
    """A small, valid manifest for `artifact`."""
    hist = HistogramBaseline(name="x", edges=[0.0, 0.5, 1.0], counts=[5, 5], mean=0.5, std=0.2, min=0.0, max=1.0)
    metrics = ArtifactMetrics(kind="tflite_int8", size_bytes=len(artifact), latency_ms_p50=1.0, latency_ms_p95=2.0)
    return Manifest(
        name=name,
        version=version,
        profile=profile,
        format=ModelFormat.TFLITE,
        quantization=Quantization.INT8,
        task=Task.CLASSIFICATION,
        artifact=ArtifactRef(file=file, sha256=hashlib.sha256(artifact).hexdigest(), size=len(artifact)),
        inputs=[TensorSpec(name="x", shape=[None, 2], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[None, 2], dtype="float32")],
        baseline=BaselineStats(n_samples=10, inputs=[hist]),
        golden=GoldenSet(cases=[GoldenCase(inputs={"x": [0.1, 0.2]}, expected={"y": [0.3, 0.7]})], atol=0.01),
        report=ConversionReport(chosen=metrics, validation_samples=10, converter_version="test"),
    )


def write_folder(out: Path, name: str, version: int, profiles: list[str], payload: bytes = b"model-bytes") -> Path:
    """A converter output folder with one manifest + artifact per profile (artifact bytes differ per profile)."""
    for profile in profiles:
        artifact = payload + profile.encode() + str(version).encode()
        (out / profile).mkdir(parents=True, exist_ok=True)
        (out / profile / "model.tflite").write_bytes(artifact)
        (out / profile / MANIFEST_FILE).write_bytes(make_manifest(name, version, profile, artifact).to_bytes())
    (out / "report.json").write_text("{}")
    return out


def tar_gz(folder: Path) -> bytes:
    """The folder as a .tar.gz (top-level entries are the profile dirs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue()
