"""Build and measure each distinct artifact once, however many profiles ask for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.measure import (
    ArtifactRunner,
    Latency,
    compare,
    make_runner,
    measure_latencies,
    reference_accuracy,
    run_dataset,
)
from converter.routes import build, match_names, split_kind
from converter.sources.base import SourceModel
from protocol.manifest import ArtifactMetrics, ModelFormat


@dataclass(frozen=True)
class Built:
    """An artifact's bytes and how its tensor names map onto the source's (artifact name -> source name)."""

    model: bytes
    names: dict[str, str]
    signature: str | None
    layouts: dict[str, str]


@dataclass(frozen=True)
class Measured:
    """An artifact's quality against the source, before its latency is measured beside its rivals'."""

    quality: ArtifactMetrics  # latency fields still 0: `with_latency` fills them
    ram_estimate_bytes: int
    activation_bytes: int

    def with_latency(self, latency: Latency) -> ArtifactMetrics:
        return self.quality.model_copy(update={"latency_ms_p50": latency.p50_ms, "latency_ms_p95": latency.p95_ms})


class Workbench:
    """One source, its data and float reference; artifacts built, run and measured on demand, each once."""

    def __init__(self, source: SourceModel, calib: Dataset, val: Dataset, reference: dict[str, np.ndarray],
                 classifier: bool, runs: int, requantize: bool = False) -> None:
        self.source, self.calib, self.val, self.reference = source, calib, val, reference
        self.classifier, self.runs, self.requantize = classifier, runs, requantize
        self.ref_acc = reference_accuracy(reference, val.labels) if classifier else None
        self._built: dict[tuple[str, str], Built] = {}
        self._measured: dict[tuple[str, str, int], Measured] = {}

    def build(self, kind: str, io_dtype: str) -> Built:
        key = (kind, io_dtype)
        if key not in self._built:
            routed = build(self.source, kind, io_dtype, self.calib, self.requantize)
            model = routed.model
            fmt = split_kind(kind)[0]
            signature = self.source.signature if self.source.ready_bytes is model else None
            if routed.names is not None:
                names = {k: v for k, v in routed.names.items() if k != v}
            else:  # the artifact's own names, from the runtime, matched to the source's
                probe = make_runner(fmt, model, 1, signature=signature)
                names = match_names([s.name for s in self.source.inputs], [s.name for s in probe.inputs], "input")
                names.update(match_names(self.source.output_names, [s.name for s in probe.outputs], "output"))
            self._built[key] = Built(model, names, signature, routed.layouts)
        return self._built[key]

    def runner(self, kind: str, io_dtype: str, threads: int) -> ArtifactRunner:
        built = self.build(kind, io_dtype)
        return make_runner(split_kind(kind)[0], built.model, threads, built.names, built.signature)

    def measure(self, kind: str, io_dtype: str, threads: int) -> Measured:
        key = (kind, io_dtype, threads)
        if key not in self._measured:
            model = self.build(kind, io_dtype).model
            runner = self.runner(kind, io_dtype, threads)
            # Dynamic-range kinds scale activations per call, so their outputs depend on the batch: measured one
            # sample per call, as a device answering single requests runs them.
            outs = run_dataset(runner, self.val, batch=1 if kind.endswith("dynamic_int8") else 64)
            q = compare(outs, self.reference, self.val.labels, self.classifier)
            loss = None
            if self.classifier:
                loss = (self.ref_acc - q.accuracy) * 100 if q.accuracy is not None and self.ref_acc is not None \
                    else (1.0 - (q.top1_agreement or 0.0)) * 100
            metrics = ArtifactMetrics(
                kind=kind, size_bytes=len(model), top1_agreement=q.top1_agreement, accuracy=q.accuracy,
                accuracy_loss_pt=None if loss is None else round(loss, 4), max_abs_error=q.max_abs_error,
                relative_error=q.relative_error, latency_ms_p50=0.0, latency_ms_p95=0.0,
            )
            self._measured[key] = Measured(metrics, runner.ram_estimate_bytes, runner.activation_bytes)
        return self._measured[key]

    def latencies(self, kinds: dict[str, str], threads: int) -> dict[str, Latency]:
        """Latency of each kind (kind -> its I/O dtype) on one validation sample, measured in turn with the others
        (measure.measure_latencies), as the choice between them needs."""
        runners = {kind: self.runner(kind, io, threads) for kind, io in kinds.items()}
        return measure_latencies(runners, self.val.take(0, 1), self.runs) if runners else {}


def can_make(source: SourceModel, fmt: ModelFormat) -> str | None:
    """Why `source` can give no artifact of `fmt` at all (one line), or None when some route may."""
    ready = source.ready_kind is not None and split_kind(source.ready_kind)[0] is fmt
    if fmt is ModelFormat.TFLITE and not (ready or source.can_tflite):
        return source.tflite_refusal or f"a {source.kind} model cannot be converted to TFLite"
    if fmt is ModelFormat.ONNX and not (ready or source.can_onnx):
        return source.onnx_refusal or f"a {source.kind} model cannot be converted to ONNX"
    return None


__all__ = ["Built", "ConversionFailed", "Measured", "Workbench", "can_make"]
