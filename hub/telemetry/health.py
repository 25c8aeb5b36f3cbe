"""Telemetry health of one canary device against the previous version on comparable devices (same profile).

The rollout gates (hub/rollouts/gates.py: `latency`, `error_rate`, `fallback_rate`, `drift`) ask a
`TelemetryView`, built once per engine tick, which caches the previous version's cohort so a wave of
hundreds of devices costs one query per (previous version, profile). The gates judge the windows of devices
serving a version; its cloud-only windows (answers given while it was not installed yet) are kept beside them
but are not the version's doing (accumulate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from hub.telemetry.query import Cohort, baseline_for, merged_telemetry
from hub.telemetry.stats import quantile_ms
from protocol.drift import DriftReport, drift_report
from protocol.telemetry import TelemetrySummary

Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]
ROW_LIMIT = 5_000  # newest windows per cohort: plenty for a p95 or a rate, cheap enough for every tick
PREVIOUS_TTL_S = 60.0  # the previous version's cohort changes slowly: recomputed at most once a minute


class TelemetryLimits(BaseModel):
    """Per-rollout limits of the telemetry gates (`gate_limits` in the rollout spec); defaults in docs/telemetry.md."""

    model_config = ConfigDict(extra="forbid")

    min_inferences: Annotated[int, Field(ge=1, le=10_000_000)] = 200  # per device, before a verdict
    latency_p95_ratio: Positive = 1.5  # new p95 <= ratio x previous p95 ...
    latency_p95_slack_ms: Annotated[float, Field(ge=0, le=60_000)] = 1.0  # ... or within this many ms of it
    latency_p95_max_ms: Positive | None = None  # absolute cap (also applies without a previous version)
    error_rate_increase: Share = 0.01  # new error rate <= previous + this
    fallback_rate_increase: Share = 0.05  # new fallback rate <= previous + this
    drift_share: Share = 0.5  # share of drifted input features that counts as dataset drift
    # Predicted-class drift on small samples (chi-squared): stricter than a single window's 0.05, because
    # the gate re-tests a growing sample on every engine tick (multiple testing).
    class_drift_p: Share = 0.001
    compare_window_s: Annotated[float, Field(gt=0, le=90 * 86400)] = 7 * 86400  # previous version's data


@dataclass(frozen=True)
class CohortHealth:
    """The numbers the gates compare."""

    n: int
    p95_ms: float | None
    error_rate: float
    fallback_rate: float
    drift: DriftReport | None

    @classmethod
    def of(cls, summary: TelemetrySummary, drift: DriftReport | None) -> CohortHealth:
        return cls(summary.n, quantile_ms(summary.latency_buckets, 0.95), summary.error_rate, summary.fallback_rate,
                   drift)  # fmt: skip


Finding = tuple[bool | None, str | None]  # True pass, False fail, None wait; with a reason


CacheKey = tuple[str, int, str, str]


@dataclass
class CohortCache:
    """The previous versions' cohorts across ticks (keyed by database too: tests run several hubs per process)."""

    ttl_s: float = PREVIOUS_TTL_S
    max_entries: int = 512
    entries: dict[tuple[str, CacheKey], tuple[datetime, CohortHealth | None]] = field(default_factory=dict)

    def get(self, key: tuple[str, CacheKey], now: datetime) -> tuple[bool, CohortHealth | None]:
        hit = self.entries.get(key)
        if hit is None or (now - hit[0]).total_seconds() > self.ttl_s:
            return False, None
        return True, hit[1]

    def put(self, key: tuple[str, CacheKey], now: datetime, value: CohortHealth | None) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[key] = (now, value)


@dataclass
class TelemetryView:
    """Telemetry lookups for one engine tick: devices fresh, previous-version cohorts through `shared`."""

    conn: Connection
    now: datetime
    shared: CohortCache | None = None
    _cache: dict[CacheKey, CohortHealth | None] = field(default_factory=dict)

    def device(self, model: str, version: int, device_id: str, profile: str | None,
               since: datetime | None) -> CohortHealth | None:  # fmt: skip
        cohort = Cohort(device_ids=frozenset({device_id}), since=since)
        return self._health(model, version, profile, cohort, ("device", device_id))

    def previous(self, model: str, version: int | None, profile: str | None,
                 limits: TelemetryLimits) -> CohortHealth | None:  # fmt: skip
        if version is None or profile is None:
            return None
        cohort = Cohort(profile=profile, since=self.now - timedelta(seconds=limits.compare_window_s))
        key = (str(self.conn.engine.url), (model, version, f"profile:{limits.compare_window_s:g}", profile))
        if self.shared is not None:
            found, value = self.shared.get(key, self.now)
            if found:
                return value
        value = self._health(model, version, profile, cohort, ("profile", profile))
        if self.shared is not None:
            self.shared.put(key, self.now, value)
        return value

    def _health(self, model: str, version: int, profile: str | None, cohort: Cohort,
                key: tuple[str, str]) -> CohortHealth | None:  # fmt: skip
        k: CacheKey = (model, version, *key)
        if k not in self._cache:
            merged = merged_telemetry(self.conn, model=model, version=version, cohort=cohort, limit=ROW_LIMIT)
            s = merged.summary
            base = baseline_for(self.conn, model=model, version=version, profile=profile)
            report = drift_report(base[1], s) if s is not None and base is not None and s.n else None
            self._cache[k] = CohortHealth.of(s, report) if s is not None else None
        return self._cache[k]


def judge(key: str, new: CohortHealth | None, old: CohortHealth | None, limits: TelemetryLimits,
          where: str) -> Finding:  # fmt: skip
    """One gate's verdict for a device's new-version telemetry against the previous version's cohort."""
    if new is None or new.n < limits.min_inferences:
        return None, f"{key}: waiting for telemetry ({new.n if new else 0}/{limits.min_inferences} inferences)"
    if key == "latency":
        if new.p95_ms is None:
            return None, "latency: no latency recorded yet"
        if limits.latency_p95_max_ms is not None and new.p95_ms > limits.latency_p95_max_ms:
            return False, f"latency: p95 {new.p95_ms:.3g} ms > limit {limits.latency_p95_max_ms:g} ms"
        if (
            old is not None
            and old.p95_ms is not None
            and new.p95_ms > limits.latency_p95_ratio * old.p95_ms
            and new.p95_ms - old.p95_ms > limits.latency_p95_slack_ms
        ):
            return False, (f"latency: p95 {new.p95_ms:.3g} ms > {limits.latency_p95_ratio:g} x "
                           f"{old.p95_ms:.3g} ms of {where}")  # fmt: skip
        return True, None
    if key == "error_rate":
        base = old.error_rate if old else 0.0
        if new.error_rate > base + limits.error_rate_increase:
            return False, f"error_rate: {new.error_rate:.2%} > {base:.2%} of {where} + {limits.error_rate_increase:.2%}"
        return True, None
    if key == "fallback_rate":
        base = old.fallback_rate if old else 0.0
        if new.fallback_rate > base + limits.fallback_rate_increase:
            return False, (f"fallback_rate: {new.fallback_rate:.2%} > {base:.2%} of {where} + "
                           f"{limits.fallback_rate_increase:.2%}")  # fmt: skip
        return True, None
    if key == "drift":
        if new.drift is None:
            return None, "drift: no baseline in the manifest"
        drifted, why = drift_verdict(new.drift, limits)
        if drifted and not (old is not None and old.drift is not None and drift_verdict(old.drift, limits)[0]):
            return False, f"drift: {why}; {where} does not drift"
        return True, None
    raise ValueError(f"not a telemetry gate: {key}")


def drift_verdict(report: DriftReport, limits: TelemetryLimits) -> tuple[bool, str]:
    """Dataset drift as the drift gate sees it: enough features drift, or the predicted classes clearly do."""
    names = report.drifted_features
    features = bool(report.features) and report.drifted_share >= limits.drift_share
    c = report.classes
    small_sample_ok = c is not None and c.chi2_p is not None and c.chi2_p < limits.class_drift_p
    classes = c is not None and c.drifted and (c.method == "js" or small_sample_ok)
    parts = [f"{len(names)}/{len(report.features)} features drifted" + (f" ({', '.join(names[:5])})" if names else "")]
    if classes and c is not None:
        parts.append(f"predicted classes drifted ({c.method}, js {c.js:.2f})")
    return features or classes, ", ".join(parts) + f", score {report.score:.2f}"
