"""Response shapes of the telemetry API (docs/telemetry.md shows an example of each)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class LatencyStats(BaseModel):
    """Quantiles in ms, interpolated linearly inside the bucket (as Prometheus' histogram_quantile)."""

    p50: float | None
    p95: float | None
    p99: float | None
    bucket_upper_ms: list[float]  # the last bucket (counts[-1]) has no upper bound
    counts: list[int]


class ClassLabelStats(BaseModel):
    label: int
    support: int  # labelled samples whose true class is this
    precision: float | None
    recall: float | None
    f1: float | None


class LabelStats(BaseModel):
    """Live quality from delayed labels (confusion[true][predicted]); macro averages over classes with support."""

    n: int
    accuracy: float
    precision: float | None
    recall: float | None
    f1: float | None
    per_class: list[ClassLabelStats]


class FeatureDriftPublic(BaseModel):
    """One feature (or the predicted classes) against the baseline, with both histograms for drawing."""

    name: str
    n: int
    method: str  # ks | wasserstein (numeric features), chi2 | js (classes)
    drifted: bool
    psi: float
    js: float
    ks: float | None = None
    ks_p: float | None = None
    wasserstein_std: float | None = None
    chi2: float | None = None
    chi2_p: float | None = None
    edges: list[float] | None = None  # bin edges (numeric features); classes are indexed 0..k-1
    baseline_counts: list[int]
    window_counts: list[int]
    missing: int = 0
    below_min: int = 0
    above_max: int = 0


class DriftPublic(BaseModel):
    baseline_profile: str  # whose manifest baseline was used
    n: int
    score: float  # largest JS distance over features and classes
    dataset_drift: bool
    drifted_share: float
    drifted_features: list[str]
    missing_share: float
    out_of_range_share: float
    features: list[FeatureDriftPublic]
    classes: FeatureDriftPublic | None


class TelemetryStats(BaseModel):
    """A cohort's merged telemetry of one model version and what it says."""

    model: str
    version: int
    profile: str | None
    group: str | None
    device: str | None
    tags: dict[str, str]
    since: datetime | None
    until: datetime | None
    rows: int  # stored summaries merged
    truncated: bool  # more rows matched than `limit`: the newest were used
    skipped: int  # rows whose bins did not match the newest row's
    devices: int
    window_start: datetime | None
    window_end: datetime | None
    n: int
    errors: int
    error_rate: float | None
    fallback: dict[str, int]
    fallback_rate: float | None
    fallback_rates: dict[str, float]
    fallback_errors: dict[str, int] = Field(default_factory=dict)  # reason -> cloud calls that failed
    fallback_latency_ms: LatencyStats | None = None  # cloud round trip of fallback answers
    latency_ms: LatencyStats | None
    labels: LabelStats | None
    drift: DriftPublic | None
    summary: dict[str, Any] | None  # the merged TelemetrySummary (protocol/telemetry.py), counts only


class DriftAlertPublic(BaseModel):
    id: int
    model: str
    version: int
    cohort: str  # fleet | profile:<p> | group:<g>
    state: str  # open | resolved
    opened_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    score: float
    n: int
    drifted_features: list[str]
    reason: str


class TelemetryVersionPublic(BaseModel):
    """A model version with telemetry in the range (the overview list)."""

    model: str
    version: int
    rows: int
    devices: int
    window_start: datetime
    window_end: datetime
