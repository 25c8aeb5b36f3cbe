"""The conversion pipeline: load, build every allowed artifact, measure, check budgets, choose, write."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from converter import CONVERTER_VERSION
from converter.budgets import Candidate, budget_violations, choose
from converter.cloud import export_tfserving, export_torchserve, export_triton
from converter.data import Dataset, load_dataset
from converter.errors import ConversionFailed, ConverterError
from converter.measure import compare, make_runner, measure_latency, reference_accuracy, rename_inputs, run_batched
from converter.onnx_variants import build_onnx
from converter.sources import SourceModel, load_source
from converter.stats import baseline_stats, golden_set
from converter.tflite import build_tflite
from firmware_profiles import FirmwareProfile, ProfileError, get_profile
from protocol import layout
from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    BaselineStats,
    CloudServing,
    ConversionReport,
    Manifest,
    ModelFormat,
    Quantization,
    Task,
)

Step = Callable[[str], None]


@dataclass
class ConvertRequest:
    """Everything `edgefleet convert` was asked to do."""

    model: Path
    profiles: list[str]
    calibration: Path
    validation: Path
    out: Path
    name: str | None = None
    version: int = 1
    task: Literal["auto", "classification", "regression"] = "auto"
    labels: list[str] | None = None
    latency_runs: int = 200
    profiles_dir: Path | None = None
    input_shape: list[int] | None = None
    force: bool = False
    cloud: bool = True


@dataclass
class ProfileResult:
    """What one profile got: a manifest, or the reason each candidate was refused."""

    profile: FirmwareProfile
    manifest: Manifest | None
    candidates: list[ArtifactMetrics] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class ConvertResult:
    name: str
    version: int
    source_kind: str
    reference_accuracy: float | None
    results: list[ProfileResult]
    cloud_exports: dict[str, str]
    out: Path

    @property
    def refused_profiles(self) -> list[ProfileResult]:
        return [r for r in self.results if r.manifest is None]


def model_name_from(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower()).strip("-_")
    return (stem or "model")[:64]


def _split_kind(kind: str) -> tuple[ModelFormat, Quantization]:
    fmt, quant = kind.split("_", 1)
    return ModelFormat(fmt), Quantization(quant)


class _Workbench:
    """Builds and measures each distinct artifact once, however many profiles ask for it."""

    def __init__(self, source: SourceModel, calib: Dataset, val: Dataset, reference: dict[str, np.ndarray],
                 classifier: bool, runs: int) -> None:
        self.source, self.calib, self.val, self.reference = source, calib, val, reference
        self.classifier, self.runs = classifier, runs
        self.ref_acc = reference_accuracy(reference, val.labels) if classifier else None
        self._built: dict[tuple[str, str], bytes] = {}
        self._measured: dict[tuple[str, str, int], tuple[ArtifactMetrics, int, int]] = {}

    def build(self, kind: str, io_dtype: str) -> bytes:
        key = (kind, io_dtype)
        if key not in self._built:
            fmt, quant = _split_kind(kind)
            if fmt is ModelFormat.TFLITE:
                self._built[key] = build_tflite(self.source, quant, self.calib, io_dtype)
            else:
                self._built[key] = build_onnx(self.source, quant, self.calib)
        return self._built[key]

    def measure(self, kind: str, io_dtype: str, threads: int) -> tuple[ArtifactMetrics, int, int]:
        key = (kind, io_dtype, threads)
        if key not in self._measured:
            model = self.build(kind, io_dtype)
            runner = make_runner(_split_kind(kind)[0], model, threads)
            data = rename_inputs(self.val.inputs, runner)
            outs = run_batched(runner, data)
            q = compare(outs, self.reference, self.val.labels, self.classifier)
            lat = measure_latency(runner, data, self.runs)
            loss = None
            if self.classifier:
                loss = (self.ref_acc - q.accuracy) * 100 if q.accuracy is not None and self.ref_acc is not None \
                    else (1.0 - (q.top1_agreement or 0.0)) * 100
            metrics = ArtifactMetrics(
                kind=kind, size_bytes=len(model), top1_agreement=q.top1_agreement, accuracy=q.accuracy,
                accuracy_loss_pt=None if loss is None else round(loss, 4), max_abs_error=q.max_abs_error,
                latency_ms_p50=lat.p50_ms, latency_ms_p95=lat.p95_ms,
            )
            self._measured[key] = (metrics, runner.ram_estimate_bytes, runner.activation_bytes)
        return self._measured[key]

    def runner_for(self, kind: str, io_dtype: str, threads: int):  # type: ignore[no-untyped-def]
        return make_runner(_split_kind(kind)[0], self.build(kind, io_dtype), threads)


def _for_profile(metrics: ArtifactMetrics, profile: FirmwareProfile) -> ArtifactMetrics:
    if profile.speed is None:
        return metrics
    f = profile.speed.host_factor
    return metrics.model_copy(update={
        "latency_basis": "device",
        "device_latency_ms_p50": metrics.latency_ms_p50 * f,
        "device_latency_ms_p95": metrics.latency_ms_p95 * f,
    })


def _io_dtype(profile: FirmwareProfile, kind: str) -> str:
    return profile.io_dtype if kind == "tflite_int8" else "float32"


def _profile_result(bench: _Workbench, profile: FirmwareProfile, step: Step) -> tuple[ProfileResult, Candidate | None]:
    result = ProfileResult(profile=profile, manifest=None)
    accepted: list[Candidate] = []
    for kind in profile.kinds:
        fmt, _ = _split_kind(kind)
        if fmt is ModelFormat.TFLITE and not bench.source.can_tflite:
            result.refused[kind] = f"a {bench.source.kind} model cannot be converted to TFLite"
            continue
        step(f"{profile.name}: {kind}")
        io = _io_dtype(profile, kind)
        try:
            raw, ram, act = bench.measure(kind, io, profile.threads)
        except ConversionFailed as e:
            result.refused[kind] = str(e)
            continue
        metrics = _for_profile(raw, profile)
        result.candidates.append(metrics)
        cand = Candidate(kind, bench.build(kind, io), metrics, ram, act)
        broken = budget_violations(cand, profile)
        if broken:
            result.refused[kind] = "; ".join(broken)
        else:
            accepted.append(cand)
    return result, (choose(accepted, profile) if accepted else None)


def _write_manifest(bench: _Workbench, req: ConvertRequest, name: str, result: ProfileResult, chosen: Candidate,
                    baseline: BaselineStats, cloud: CloudServing | None, staging: Path) -> Manifest:
    profile = result.profile
    fmt, quant = _split_kind(chosen.kind)
    runner = bench.runner_for(chosen.kind, _io_dtype(profile, chosen.kind), profile.threads)
    golden = golden_set(runner, rename_inputs(bench.val.inputs, runner), bench.classifier)
    file = f"{name}-v{req.version}-{chosen.kind}.{fmt.value}"
    folder = staging / profile.name
    folder.mkdir(parents=True)
    (folder / file).write_bytes(chosen.model)
    manifest = Manifest(
        name=name, version=req.version, profile=profile.name, format=fmt, quantization=quant,
        task=Task.CLASSIFICATION if bench.classifier else Task.REGRESSION, labels=req.labels,
        artifact=ArtifactRef(file=file, sha256=hashlib.sha256(chosen.model).hexdigest(), size=len(chosen.model)),
        inputs=runner.inputs, outputs=runner.outputs, baseline=baseline, golden=golden,
        report=ConversionReport(
            reference_accuracy=bench.ref_acc, chosen=chosen.metrics, candidates=result.candidates,
            refused=result.refused, validation_samples=len(bench.val), converter_version=CONVERTER_VERSION,
        ),
        cloud=cloud,
    )
    (folder / layout.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _cloud(
    source: SourceModel, staging: Path, name: str, version: int, step: Step
) -> tuple[CloudServing, dict[str, str]]:
    exports: dict[str, str] = {}
    if source.tf_model is not None:
        step("cloud: TF Serving SavedModel")
        exports["tfserving"] = str(export_tfserving(source, staging, name, version).relative_to(staging))
    if source.torch_module is not None:
        step("cloud: TorchServe .mar")
        exports["torchserve"] = str(export_torchserve(source, staging, name, version).relative_to(staging))
    step("cloud: Triton / KServe v2 ONNX")
    exports["kserve"] = str(export_triton(source.onnx_bytes(), staging, name, version).relative_to(staging))
    cloud = CloudServing(model_name=name, version=version, tfserving="tfserving" in exports,
                         torchserve="torchserve" in exports, kserve=True)
    return cloud, exports


def _replace_dir(staging: Path, out: Path, force: bool) -> None:
    """Move the finished staging dir into place in one rename (the old one goes only after)."""
    if out.exists():
        if not force and any(out.iterdir()):
            raise ConverterError(f"{out} exists and is not empty (use --force to replace it)")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def convert(req: ConvertRequest, step: Step = lambda _msg: None) -> ConvertResult:
    """Run the whole conversion; writes `req.out` only when everything succeeded."""
    from converter.report import write_reports

    try:
        profiles = [get_profile(p, req.profiles_dir) for p in dict.fromkeys(req.profiles)]
    except ProfileError as e:
        raise ConverterError(str(e)) from e
    if req.out.exists() and not req.force and any(req.out.iterdir()):
        raise ConverterError(f"{req.out} exists and is not empty (use --force to replace it)")
    step("loading model")
    source = load_source(req.model, req.input_shape)
    name = req.name or model_name_from(req.model)
    calib = load_dataset(req.calibration, source.input_shapes, where="calibration", labels_allowed=False)
    val = load_dataset(req.validation, source.input_shapes, where="validation", labels_allowed=True)
    step("float reference")
    reference = {k: np.concatenate(v) for k, v in _batches(source, val).items()}
    first = next(iter(reference.values()))
    classifier = req.task == "classification" or (
        req.task == "auto" and (val.labels is not None or (first.ndim == 2 and first.shape[1] > 1))
    )
    bench = _Workbench(source, calib, val, reference, classifier, req.latency_runs)
    baseline = baseline_stats(val.inputs, reference, classifier)
    req.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{req.out.name}.tmp-", dir=req.out.parent))
    try:
        cloud, exports = _cloud(source, staging, name, req.version, step) if req.cloud else (None, {})
        results = []
        for profile in profiles:
            result, chosen = _profile_result(bench, profile, step)
            if chosen is not None:
                result.manifest = _write_manifest(bench, req, name, result, chosen, baseline, cloud, staging)
            results.append(result)
        outcome = ConvertResult(name, req.version, source.kind, bench.ref_acc, results, exports, req.out)
        step("reports")
        write_reports(outcome, staging)
        _replace_dir(staging, req.out, req.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcome


def _batches(source: SourceModel, val: Dataset, batch: int = 256) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(val), batch):
        for k, v in source.predict(val.take(slice(i, i + batch))).items():
            out.setdefault(k, []).append(v)
    return out
