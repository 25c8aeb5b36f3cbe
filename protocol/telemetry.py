"""Telemetry summaries: one window of one model version on one device, mergeable by adding counts.

Inputs and outputs are counted over the baseline's bin edges (manifest `baseline`), latency over
fixed buckets, labels (delayed feedback) as a confusion matrix. Merging N device summaries gives
exactly the summary of the pooled data, so the hub can answer for any cohort and time range.
"""

from __future__ import annotations

import bisect
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from protocol.base import Contract, Identifier, ModelName, Version

# Upper bounds (ms) of the latency buckets; one more bucket catches everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
)
Count = Annotated[int, Field(ge=0)]
MAX_DECOMPRESSED = 4 * 2**20  # a summary is kilobytes; refuse zip bombs


PIPELINE_PREFIX = "pipeline:"  # model names never hold ":", so a pipeline's key never meets a model's


def telemetry_key(unit: str, name: str) -> str:
    """What the hub files a window under: a model's name, or `pipeline:<name>` for a pipeline's end-to-end
    windows (a pipeline may share its name with a model). The same key labels Prometheus series on the agent."""
    return f"{PIPELINE_PREFIX}{name}" if unit == "pipeline" else name


def channel_axis(shape: Sequence[int]) -> int:
    """Which axis holds channels when drift is grouped by channel: NCHW if dim 1 is small, else last."""
    if len(shape) == 4 and shape[1] <= 4 < shape[-1]:
        return 1
    return len(shape) - 1


def latency_bucket(ms: float) -> int:
    """Index of the bucket a latency falls in."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, ms)


def latency_quantile(buckets: Sequence[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q (conservative); None without data."""
    total = sum(buckets)
    if total == 0:
        return None
    target, run = q * total, 0
    for i, c in enumerate(buckets):
        run += c
        if run >= target and c:
            return LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")


class FeatureWindow(Contract):
    """One feature's window: counts per baseline bin plus data-quality counts."""

    name: str
    counts: list[Count]
    missing: Count = 0  # NaN or inf values (not binned)
    below_min: Count = 0  # finite values under the baseline's min
    above_max: Count = 0  # finite values over the baseline's max

    def add(self, other: FeatureWindow) -> FeatureWindow:
        if other.name != self.name or len(other.counts) != len(self.counts):
            raise ValueError(f"cannot merge feature {other.name!r} into {self.name!r}")
        return FeatureWindow(
            name=self.name,
            counts=[a + b for a, b in zip(self.counts, other.counts, strict=True)],
            missing=self.missing + other.missing,
            below_min=self.below_min + other.below_min,
            above_max=self.above_max + other.above_max,
        )


class TelemetrySummary(Contract):
    """What one device saw of one model version during one window (or a merge of many); with `unit` "pipeline",
    of one pipeline version end to end (`model` its name): requests, errors, latency and fallback, no features."""

    schema_version: Literal[1] = 1
    device_id: Identifier | Literal["*"]
    unit: Literal["model", "pipeline"] = "model"  # added after wire version 1 shipped: left out while "model"
    model: ModelName
    version: Version
    profile: Identifier | Literal["*"]
    window_start: datetime
    window_end: datetime
    n: Count
    errors: Count = 0
    fallback: dict[str, Count] = Field(default_factory=dict)  # reason -> count
    fallback_errors: dict[str, Count] = Field(default_factory=dict)  # reason -> cloud calls that failed
    fallback_latency_buckets: list[Count] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_buckets: list[Count] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    inputs: list[FeatureWindow] = Field(default_factory=list)
    class_counts: list[Count] | None = None
    outputs: list[FeatureWindow] = Field(default_factory=list)
    confusion: list[list[Count]] | None = None  # [true][predicted], from delayed labels
    devices: Count = 1

    @model_validator(mode="after")
    def _shape(self) -> Self:
        for name in ("latency_buckets", "fallback_latency_buckets"):
            if len(getattr(self, name)) != len(LATENCY_BUCKETS_MS) + 1:
                raise ValueError(f"{name} needs {len(LATENCY_BUCKETS_MS) + 1} entries")
        if self.window_end < self.window_start:
            raise ValueError("window_end before window_start")
        if self.confusion is not None and any(len(r) != len(self.confusion) for r in self.confusion):
            raise ValueError("confusion must be square")
        return self

    @model_serializer(mode="wrap")
    def _omit_model_unit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A model's summary reads as before `unit` existed, so a hub from before it still takes it."""
        data: dict[str, Any] = handler(self)
        if data.get("unit") == "model":
            data.pop("unit")
        return data

    def latency_ms(self, q: float) -> float | None:
        return latency_quantile(self.latency_buckets, q)

    def fallback_latency_ms(self, q: float) -> float | None:
        """Quantile of the cloud round trip of fallback answers."""
        return latency_quantile(self.fallback_latency_buckets, q)

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallback.values()) / self.n if self.n else 0.0

    def accuracy(self) -> float | None:
        if not self.confusion:
            return None
        total = sum(map(sum, self.confusion))
        return sum(self.confusion[i][i] for i in range(len(self.confusion))) / total if total else None


def _add_lists(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if a is None or b is None:
        return a if b is None else b
    if len(a) != len(b):
        raise ValueError("class histograms differ in length")
    return [x + y for x, y in zip(a, b, strict=True)]


def merge(summaries: Sequence[TelemetrySummary]) -> TelemetrySummary:
    """Add up summaries of the same model version (any devices, any windows)."""
    if not summaries:
        raise ValueError("nothing to merge")
    first = summaries[0]
    if any((s.unit, s.model, s.version) != (first.unit, first.model, first.version) for s in summaries):
        raise ValueError("summaries of different model (or pipeline) versions do not merge")
    inputs, outputs = list(first.inputs), list(first.outputs)
    classes, confusion = first.class_counts, first.confusion
    fallback: Counter[str] = Counter(first.fallback)
    fallback_errors: Counter[str] = Counter(first.fallback_errors)
    latency = list(first.latency_buckets)
    fallback_latency = list(first.fallback_latency_buckets)
    for s in summaries[1:]:
        if len(s.inputs) != len(inputs) or len(s.outputs) != len(outputs):
            raise ValueError("summaries have different features")
        inputs = [a.add(b) for a, b in zip(inputs, s.inputs, strict=True)]
        outputs = [a.add(b) for a, b in zip(outputs, s.outputs, strict=True)]
        classes = _add_lists(classes, s.class_counts)
        if s.confusion is not None:
            confusion = s.confusion if confusion is None else [
                _add_lists(r1, r2) or [] for r1, r2 in zip(confusion, s.confusion, strict=True)
            ]
        fallback.update(s.fallback)
        fallback_errors.update(s.fallback_errors)
        latency = [a + b for a, b in zip(latency, s.latency_buckets, strict=True)]
        fallback_latency = [a + b for a, b in zip(fallback_latency, s.fallback_latency_buckets, strict=True)]
    devices = {s.device_id for s in summaries}
    profiles = {s.profile for s in summaries}
    return TelemetrySummary(
        device_id=devices.pop() if len(devices) == 1 else "*",
        unit=first.unit,
        model=first.model,
        version=first.version,
        profile=profiles.pop() if len(profiles) == 1 else "*",
        window_start=min(s.window_start for s in summaries),
        window_end=max(s.window_end for s in summaries),
        n=sum(s.n for s in summaries),
        errors=sum(s.errors for s in summaries),
        fallback=dict(fallback),
        fallback_errors=dict(fallback_errors),
        fallback_latency_buckets=fallback_latency,
        latency_buckets=latency,
        inputs=inputs,
        class_counts=classes,
        outputs=outputs,
        confusion=confusion,
        devices=len({s.device_id for s in summaries}) if len(summaries) > 1 else first.devices,
    )


class TelemetryMessage(Contract):
    """Device -> hub on `.../telemetry`: one outbox row; the hub acks `id` on `.../ack`."""

    schema_version: Literal[1] = 1
    id: Count
    device_id: Identifier
    summary: TelemetrySummary
    dropped_before: Count = 0  # outbox rows dropped by the size/age policy, reported once


def encode_message(message: TelemetryMessage) -> bytes:
    """Wire form on `.../telemetry`: zlib-compressed canonical JSON (summaries shrink ~5x more)."""
    return zlib.compress(message.to_bytes(), 6)


def decode_message(payload: bytes) -> TelemetryMessage:
    """Accept zlib-compressed or plain JSON; ValueError/ValidationError on anything else."""
    if payload[:1] == b"\x78":  # zlib header
        try:
            payload = zlib.decompressobj().decompress(payload, MAX_DECOMPRESSED)
        except zlib.error as e:
            raise ValueError(f"telemetry payload: bad zlib data: {e}") from e
    return TelemetryMessage.from_json(payload)
