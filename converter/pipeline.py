"""The conversion pipeline: load, build every allowed artifact, measure, check budgets, choose, write."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from converter import CONVERTER_VERSION
from converter.budgets import Candidate, budget_violations, choose
from converter.data import load_dataset, run_all
from converter.edgetpu import EdgeTpu
from converter.errors import ConversionFailed, ConverterError, ExportError
from converter.routes import split_kind
from converter.sources import SourceModel, load_source
from converter.stats import baseline_stats, golden_set
from converter.workbench import Measured, Workbench, can_make
from firmware_profiles import FirmwareProfile, ProfileError, get_profile
from protocol import layout
from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    BaselineStats,
    CloudServing,
    ConversionReport,
    Manifest,
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
    trust_pickle: bool = False
    signature: str | None = None
    requantize: bool = False
    dvc_repo: str | None = None
    dvc_rev: str | None = None


@dataclass
class ProfileResult:
    """What one profile got: a manifest, or the reason each candidate was refused."""

    profile: FirmwareProfile
    manifest: Manifest | None
    candidates: list[ArtifactMetrics] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ConvertResult:
    name: str
    version: int
    source_kind: str
    reference_accuracy: float | None
    results: list[ProfileResult]
    cloud_exports: dict[str, str]
    out: Path
    cloud_skipped: dict[str, str] = field(default_factory=dict)
    source: dict[str, str | None] = field(default_factory=dict)

    @property
    def refused_profiles(self) -> list[ProfileResult]:
        return [r for r in self.results if r.manifest is None]


def model_name_from(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower()).strip("-_")
    return (stem or "model")[:64]


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


def _profile_result(bench: Workbench, profile: FirmwareProfile, step: Step) -> tuple[ProfileResult, Candidate | None]:
    result = ProfileResult(profile=profile, manifest=None)
    measured: dict[str, Measured] = {}
    for kind in profile.kinds:
        fmt, _ = split_kind(kind)
        impossible = can_make(bench.source, fmt)
        if impossible is not None:
            result.refused[kind] = impossible
            continue
        step(f"{profile.name}: {kind}")
        try:
            measured[kind] = bench.measure(kind, _io_dtype(profile, kind), profile.threads)
        except ConversionFailed as e:
            result.refused[kind] = str(e)
    step(f"{profile.name}: latency")
    latencies = bench.latencies({kind: _io_dtype(profile, kind) for kind in measured}, profile.threads)
    accepted: list[Candidate] = []
    for kind, m in measured.items():
        metrics = _for_profile(m.with_latency(latencies[kind]), profile)
        result.candidates.append(metrics)
        cand = Candidate(kind, bench.build(kind, _io_dtype(profile, kind)).model, metrics, m.ram_estimate_bytes,
                         m.activation_bytes)
        broken = budget_violations(cand, profile)
        if broken:
            result.refused[kind] = "; ".join(broken)
        else:
            accepted.append(cand)
    return result, (choose(accepted, profile) if accepted else None)


def _write_manifest(bench: Workbench, req: ConvertRequest, name: str, result: ProfileResult, chosen: Candidate,
                    baseline: BaselineStats, cloud: CloudServing | None, staging: Path) -> Manifest:
    profile = result.profile
    fmt, quant = split_kind(chosen.kind)
    io = _io_dtype(profile, chosen.kind)
    runner = bench.runner(chosen.kind, io, profile.threads)
    golden = golden_set(runner, bench.val, bench.classifier)
    built = bench.build(chosen.kind, io)
    artifact = chosen.model
    metrics = chosen.metrics
    if profile.accelerator == "edgetpu" and chosen.kind == "tflite_int8":
        tpu = EdgeTpu.find()
        try:
            compiled = tpu.compile(artifact)
        except ConversionFailed as e:  # the CPU int8 model still fits: ship it and say why it is not compiled
            compiled = None
            result.notes.append(f"not Edge-TPU compiled: {e}")
        else:
            result.notes.append(tpu.note(compiled is not None))
        if compiled is not None:
            artifact = compiled
            metrics = metrics.model_copy(update={"compiled_for": "edgetpu", "size_bytes": len(artifact)})
    file = f"{name}-v{req.version}-{chosen.kind}.{fmt.value}"
    folder = staging / profile.name
    folder.mkdir(parents=True)
    (folder / file).write_bytes(artifact)
    source = bench.source
    manifest = Manifest(
        name=name, version=req.version, profile=profile.name, format=fmt, quantization=quant,
        task=Task.CLASSIFICATION if bench.classifier else Task.REGRESSION, labels=req.labels or source.labels,
        artifact=ArtifactRef(file=file, sha256=hashlib.sha256(artifact).hexdigest(), size=len(artifact)),
        inputs=[s.model_copy(update={"layout": built.layouts.get(s.name)}) for s in runner.inputs],
        outputs=runner.outputs, baseline=baseline, golden=golden,
        report=ConversionReport(
            reference_accuracy=bench.ref_acc, chosen=metrics, candidates=result.candidates,
            refused=result.refused, validation_samples=len(bench.val), converter_version=CONVERTER_VERSION,
        ),
        cloud=cloud, signature=built.signature, source=source.ref,
    )
    (folder / layout.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _cloud(source: SourceModel, staging: Path, name: str, version: int,
           step: Step) -> tuple[CloudServing, dict[str, str], dict[str, str]]:
    """Every cloud export the source allows; one that cannot be made is skipped with its reason."""
    from converter.cloud import export_tfserving, export_torchserve, export_triton

    exports: dict[str, str] = {}
    skipped: dict[str, str] = {}
    jobs: list[tuple[str, Callable[[], Path]]] = []
    if source.tf_model is not None:
        jobs.append(("tfserving", lambda: export_tfserving(source, staging, name, version)))
    if source.torch_module is not None:
        jobs.append(("torchserve", lambda: export_torchserve(source, staging, name, version)))
    jobs.append(("kserve", lambda: export_triton(source.onnx_bytes(), staging, name, version)))
    for key, job in jobs:
        step(f"cloud: {key}")
        try:
            exports[key] = str(job().relative_to(staging))
        except (ExportError, ConversionFailed) as e:
            skipped[key] = str(e)
    cloud = CloudServing(model_name=name, version=version, tfserving="tfserving" in exports,
                         torchserve="torchserve" in exports, kserve="kserve" in exports)
    return cloud, exports, skipped


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


def _load(req: ConvertRequest, step: Step, stack: contextlib.ExitStack) -> SourceModel:
    """The source, read from disk or, with --dvc-repo, from DVC (the local copy lives as long as `stack`)."""
    if req.dvc_repo is None:
        if req.dvc_rev is not None:
            raise ConverterError("--rev needs --dvc-repo (the git + DVC repository to read MODEL_PATH from)")
        return load_source(req.model, req.input_shape, trust_pickle=req.trust_pickle, signature=req.signature)
    from converter.sources.dvc import fetch_from_dvc

    step(f"reading {req.model} from DVC")
    local, ref = stack.enter_context(fetch_from_dvc(req.dvc_repo, req.dvc_rev, req.model))
    source = load_source(local, req.input_shape, trust_pickle=req.trust_pickle, signature=req.signature)
    sha = source.ref.sha256 if source.ref else ref.sha256
    source.ref = ref.model_copy(update={"kind": source.kind, "sha256": sha})
    return source


def convert(req: ConvertRequest, step: Step = lambda _msg: None) -> ConvertResult:
    """Run the whole conversion; writes `req.out` only when everything succeeded."""
    with contextlib.ExitStack() as stack:
        return _convert(req, step, stack)


def _convert(req: ConvertRequest, step: Step, stack: contextlib.ExitStack) -> ConvertResult:
    from converter.report import write_reports

    try:
        profiles = [get_profile(p, req.profiles_dir) for p in dict.fromkeys(req.profiles)]
    except ProfileError as e:
        raise ConverterError(str(e)) from e
    if req.out.exists() and not req.force and any(req.out.iterdir()):
        raise ConverterError(f"{req.out} exists and is not empty (use --force to replace it)")
    step("loading model")
    source = _load(req, step, stack)
    name = req.name or model_name_from(req.model)
    calib = load_dataset(req.calibration, source.inputs, where="calibration", labels_allowed=False)
    val = load_dataset(req.validation, source.inputs, where="validation", labels_allowed=True)
    step("float reference")
    try:
        reference = run_all(source.predict, val, 256, max_batch=source.max_batch)
    except Exception as e:  # the source's own framework refused the data
        raise ConverterError(f"the source model cannot run on the validation data: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from e
    first = next(iter(reference.values()))
    classifier = req.task == "classification" or (
        req.task == "auto" and (val.labels is not None or (first.ndim == 2 and first.shape[1] > 1))
    )
    bench = Workbench(source, calib, val, reference, classifier, req.latency_runs, req.requantize)
    baseline = baseline_stats(val.inputs, reference, classifier)
    req.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{req.out.name}.tmp-", dir=req.out.parent))
    try:
        cloud, exports, skipped = _cloud(source, staging, name, req.version, step) if req.cloud else (None, {}, {})
        results = []
        for profile in profiles:
            result, chosen = _profile_result(bench, profile, step)
            if chosen is not None:
                result.manifest = _write_manifest(bench, req, name, result, chosen, baseline, cloud, staging)
            elif profile.accelerator == "edgetpu":
                result.notes.append(EdgeTpu.find().note(False))
            results.append(result)
        ref = source.ref.model_dump() if source.ref else {}
        outcome = ConvertResult(name, req.version, source.kind, bench.ref_acc, results, exports, req.out, skipped,
                                ref)
        step("reports")
        write_reports(outcome, staging)
        _replace_dir(staging, req.out, req.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcome


__all__ = ["ConvertRequest", "ConvertResult", "ProfileResult", "convert", "model_name_from"]
