"""The telemetry monitor: every few seconds, fold new windows into the hourly rollups, merge each recently
active model version's telemetry per cohort (the fleet, each profile, each group), export the statistics
as Prometheus gauges and open or resolve drift alerts. Bounded: only windows of the last `window_s`, at
most `limit` summaries per version and MAX_SERIES label sets; gauges of quiet versions are removed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import Connection, Engine, select

from hub.db.schema import telemetry
from hub.metrics import HubMetrics
from hub.telemetry import alerts
from hub.telemetry.query import DEFAULT_LIMIT, Cohort, baseline_for, device_cohorts, load_rows, merged_from
from hub.telemetry.retention import Retention
from hub.telemetry.rollup import BATCH, roll_up
from hub.telemetry.stats import quantile_ms
from hub.tuf_repo import Clock
from protocol.drift import drift_report
from protocol.manifest import BaselineStats
from protocol.telemetry import TelemetrySummary

log = logging.getLogger(__name__)
MAX_VERSIONS = 50
MAX_SERIES = 200
MAX_ROLLUP_BATCHES = 20  # per pass: 100,000 windows, ~3,000 windows/s at the default 30 s interval
QUANTILES = {"0.5": 0.5, "0.95": 0.95, "0.99": 0.99}


@dataclass
class TelemetryMonitor:
    """Periodic cohort statistics -> gauges and drift alerts."""

    engine: Engine
    metrics: HubMetrics
    clock: Clock
    window_s: float = 3600.0
    alert_min_n: int = 500
    limit: int = DEFAULT_LIMIT
    retention: Retention = field(default_factory=Retention)
    _series: set[tuple[str, str, str]] = field(default_factory=set)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Evaluate until `stop` is set; a failed pass is logged and retried next interval."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("telemetry monitor pass failed; retrying next interval")
            stop.wait(interval_s)

    def run_once(self) -> list[alerts.AlertChange]:
        """One pass over every model version with telemetry in the window; returns the alert changes."""
        for _ in range(MAX_ROLLUP_BATCHES):
            with self.engine.begin() as conn:
                if roll_up(conn) < BATCH:
                    break
        now = self.clock()
        with self.engine.begin() as conn:
            pruned = self.retention.prune(conn, now)
        for table, count in pruned.items():
            if count:
                self.metrics.retention_deleted.labels(table).inc(count)
                log.info("retention: deleted %d %s rows", count, table)
        since = now - timedelta(seconds=self.window_s)
        with self.engine.connect() as conn:
            q = select(telemetry.c.model, telemetry.c.version).where(telemetry.c.window_end >= since)
            versions = sorted({(r.model, r.version) for r in conn.execute(q.distinct().limit(MAX_VERSIONS))})
        series: set[tuple[str, str, str]] = set()
        changes = []
        for model, version in versions:
            with self.engine.begin() as conn:
                changes += self._version(conn, now, model, version, Cohort(since=since), series)
        for stale in self._series - series:
            self._remove(stale)
        self._series = series
        return changes

    def _version(self, conn: Connection, now: datetime, model: str, version: int, cohort: Cohort,
                 series: set[tuple[str, str, str]]) -> list[alerts.AlertChange]:  # fmt: skip
        rows, _truncated = load_rows(conn, model=model, version=version, cohort=cohort, limit=self.limit)
        groups = {d: g for d, (_p, g) in device_cohorts(conn, {s["device_id"] for s in rows}).items()}
        parts: dict[str, list[dict[str, Any]]] = {"fleet": rows}
        for s in rows:
            parts.setdefault(f"profile:{s['profile']}", []).append(s)
            if groups.get(s["device_id"]):
                parts.setdefault(f"group:{groups[s['device_id']]}", []).append(s)
        baselines: dict[str | None, tuple[str, BaselineStats] | None] = {}
        changes = []
        for key, part in parts.items():
            # Counts of every source, as the API gives them; drift of the windows of devices serving the version
            found = merged_from(part, every_source=True)
            merged, serving = found.summary, found.serving
            if merged is None:
                continue
            profile = key.removeprefix("profile:") if key.startswith("profile:") else None
            if profile not in baselines:
                baselines[profile] = baseline_for(conn, model=model, version=version, profile=profile)
            base = baselines[profile]
            report = drift_report(base[1], serving) if base is not None and serving is not None and serving.n else None
            if key == "fleet" or profile is not None:
                labels = (model, str(version), profile or "*")
                if labels in series or len(series) < MAX_SERIES:
                    series.add(labels)
                    self._export(labels, merged, report.score if report else None,
                                 report.dataset_drift if report else None)  # fmt: skip
            change = alerts.evaluate(conn=conn, now=now, model=model, version=version, cohort=key,
                                     report=report if report and report.n >= self.alert_min_n else None)  # fmt: skip
            if change.action == "opened":
                self.metrics.drift_alerts.labels(model, str(version), key.split(":")[0]).inc()
                log.warning("drift alert %s v%d %s: %s", model, version, key, report and report.drifted_features)
            changes.append(change)
        return changes

    def _gauges(self) -> Iterable[Gauge]:
        m = self.metrics
        return (m.telemetry_inferences, m.telemetry_error_rate, m.telemetry_fallback_rate, m.telemetry_drift_score,
                m.telemetry_dataset_drift, m.telemetry_accuracy)  # fmt: skip

    def _export(self, labels: tuple[str, str, str], s: TelemetrySummary, score: float | None,
                dataset_drift: bool | None) -> None:  # fmt: skip
        m = self.metrics
        m.telemetry_inferences.labels(*labels).set(s.n)
        m.telemetry_error_rate.labels(*labels).set(s.error_rate)
        m.telemetry_fallback_rate.labels(*labels).set(s.fallback_rate)
        optional: list[tuple[Gauge, Any]] = [(m.telemetry_drift_score, score), (m.telemetry_accuracy, s.accuracy()),
                                             (m.telemetry_dataset_drift, dataset_drift)]  # fmt: skip
        for gauge, value in optional:
            if value is None:
                _discard(gauge, labels)
            else:
                gauge.labels(*labels).set(float(value))
        for name, q in QUANTILES.items():
            value = quantile_ms(s.latency_buckets, q)
            if value is None:
                _discard(m.telemetry_latency_ms, (*labels, name))
            else:
                m.telemetry_latency_ms.labels(*labels, name).set(value)

    def _remove(self, labels: tuple[str, str, str]) -> None:
        for gauge in self._gauges():
            _discard(gauge, labels)
        for name in QUANTILES:
            _discard(self.metrics.telemetry_latency_ms, (*labels, name))


def _discard(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never set, or already gone
        gauge.remove(*labels)
