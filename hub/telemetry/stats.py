"""Statistics of a merged summary: latency quantiles, error and fallback rates, label metrics, drift with histograms."""

from __future__ import annotations

from collections.abc import Sequence

from hub.telemetry.query import Cohort, Merged
from hub.telemetry.schemas import (
    ClassLabelStats,
    DriftPublic,
    FeatureDriftPublic,
    LabelStats,
    LatencyStats,
    TelemetryStats,
)
from protocol.drift import DriftReport, DriftThresholds, FeatureDrift, drift_report
from protocol.manifest import BaselineStats
from protocol.telemetry import LATENCY_BUCKETS_MS, FeatureWindow, TelemetrySummary

DEFAULT_THRESHOLDS = DriftThresholds()


def quantile_ms(buckets: Sequence[int], q: float) -> float | None:
    """Quantile q, interpolated linearly inside its bucket; the open last bucket reports the last bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, run = q * total, 0
    for i, c in enumerate(buckets):
        if c and run + c >= rank:
            if i >= len(LATENCY_BUCKETS_MS):
                return LATENCY_BUCKETS_MS[-1]
            lo = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
            return lo + (LATENCY_BUCKETS_MS[i] - lo) * max(rank - run, 0) / c
        run += c
    return LATENCY_BUCKETS_MS[-1]


def latency(summary: TelemetrySummary, buckets: list[int] | None = None) -> LatencyStats | None:
    b = summary.latency_buckets if buckets is None else buckets
    if not sum(b):
        return None
    return LatencyStats(p50=quantile_ms(b, 0.5), p95=quantile_ms(b, 0.95), p99=quantile_ms(b, 0.99),
                        bucket_upper_ms=list(LATENCY_BUCKETS_MS), counts=list(b))  # fmt: skip


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def labels(confusion: list[list[int]] | None) -> LabelStats | None:
    """Accuracy and macro precision/recall/F1 over the classes that have labelled samples."""
    if not confusion:
        return None
    total = sum(map(sum, confusion))
    if total == 0:
        return None
    k = len(confusion)
    per_class = []
    for c in range(k):
        tp = confusion[c][c]
        support = sum(confusion[c])
        predicted = sum(confusion[r][c] for r in range(k))
        p, r = _ratio(tp, predicted), _ratio(tp, support)
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (0.0 if support else None)
        per_class.append(ClassLabelStats(label=c, support=support, precision=p, recall=r, f1=f1))
    with_support = [c for c in per_class if c.support]

    def macro(values: list[float | None]) -> float | None:
        known = [v if v is not None else 0.0 for v in values]
        return sum(known) / len(known) if known else None

    return LabelStats(
        n=total, accuracy=sum(confusion[i][i] for i in range(k)) / total,
        precision=macro([c.precision for c in with_support]), recall=macro([c.recall for c in with_support]),
        f1=macro([c.f1 for c in with_support]), per_class=per_class,
    )  # fmt: skip


def _feature(f: FeatureDrift, base: Sequence[int], window: FeatureWindow | None, edges: list[float] | None,
             window_counts: Sequence[int] | None = None) -> FeatureDriftPublic:  # fmt: skip
    return FeatureDriftPublic(
        name=f.name, n=f.n, method=f.method, drifted=f.drifted, psi=f.psi, js=f.js, ks=f.ks, ks_p=f.ks_p,
        wasserstein_std=f.wasserstein_std, chi2=f.chi2, chi2_p=f.chi2_p, edges=edges, baseline_counts=list(base),
        window_counts=list(window.counts if window else window_counts or []),
        missing=window.missing if window else 0, below_min=window.below_min if window else 0,
        above_max=window.above_max if window else 0,
    )  # fmt: skip


def drift(summary: TelemetrySummary, baseline: BaselineStats, profile: str,
          thresholds: DriftThresholds = DEFAULT_THRESHOLDS) -> tuple[DriftPublic, DriftReport]:  # fmt: skip
    """The drift report (protocol.drift) with the baseline and window histograms of every feature."""
    report = drift_report(baseline, summary, thresholds)
    hists = {h.name: h for h in baseline.inputs}
    windows = {f.name: f for f in summary.inputs}
    features = [_feature(f, hists[f.name].counts, windows.get(f.name), hists[f.name].edges) for f in report.features]
    classes = None
    if report.classes is not None and baseline.class_counts is not None:
        classes = _feature(report.classes, baseline.class_counts, None, None, summary.class_counts)
    public = DriftPublic(
        baseline_profile=profile, n=report.n, score=report.score, dataset_drift=report.dataset_drift,
        drifted_share=report.drifted_share, drifted_features=report.drifted_features,
        missing_share=report.missing_share, out_of_range_share=report.out_of_range_share,
        features=features, classes=classes,
    )  # fmt: skip
    return public, report


def cohort_stats(*, model: str, version: int, cohort: Cohort, merged: Merged,
                 baseline: tuple[str, BaselineStats] | None) -> TelemetryStats:  # fmt: skip
    """Everything the API returns for one cohort."""
    s = merged.summary
    n = s.n if s else 0
    fallback = dict(s.fallback) if s else {}
    return TelemetryStats(
        model=model, version=version, profile=cohort.profile, group=cohort.group,
        device=next(iter(cohort.device_ids)) if cohort.device_ids and len(cohort.device_ids) == 1 else None,
        tags=dict(cohort.tags),
        since=cohort.since, until=cohort.until, rows=merged.rows, truncated=merged.truncated,
        skipped=merged.skipped, devices=merged.devices,
        window_start=s.window_start if s else None, window_end=s.window_end if s else None,
        n=n, errors=s.errors if s else 0, error_rate=_ratio(s.errors, n) if s else None,
        fallback=fallback, fallback_rate=_ratio(sum(fallback.values()), n),
        fallback_rates={k: v / n for k, v in fallback.items()} if n else {},
        fallback_errors=dict(s.fallback_errors) if s else {},
        fallback_latency_ms=latency(s, s.fallback_latency_buckets) if s else None,
        latency_ms=latency(s) if s else None, labels=labels(s.confusion) if s else None,
        drift=drift(s, baseline[1], baseline[0])[0] if s and baseline and n else None,
        summary=s.model_dump(mode="json") if s else None,
    )  # fmt: skip
