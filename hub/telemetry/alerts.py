"""Drift alerts: one open alert per (model, version, cohort) while its merged drift statistic crosses the threshold.

An alert opens when a cohort with at least `min_n` inferences shows dataset drift (protocol.drift:
at least half the features drift, or the predicted classes do), is refreshed while it lasts (score,
n, drifted features, last_seen_at) and resolves when the statistic falls back. Re-evaluating the same
drift never opens a second alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from hub.telemetry.tables import drift_alerts
from protocol.drift import DriftReport

OPEN, RESOLVED = "open", "resolved"


@dataclass(frozen=True)
class AlertChange:
    """What one evaluation did: opened, refreshed, resolved, or nothing."""

    action: str  # opened | refreshed | resolved | none
    alert_id: int | None = None


def _reason(report: DriftReport) -> str:
    names = report.drifted_features
    parts = [f"{len(names)}/{len(report.features)} features drifted"]
    if names:
        parts.append("(" + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") + ")")
    if report.classes is not None and report.classes.drifted:
        parts.append(f"; predicted classes drifted ({report.classes.method})")
    return " ".join(parts) + f"; score {report.score:.3f} over {report.n} inferences"


def evaluate(*, conn: Connection, now: datetime, model: str, version: int, cohort: str,
             report: DriftReport | None) -> AlertChange:  # fmt: skip
    """Open, refresh or resolve the cohort's alert from its current drift report (None: no verdict)."""
    if report is None:
        return AlertChange("none")
    key = (drift_alerts.c.model == model, drift_alerts.c.version == version, drift_alerts.c.cohort == cohort)
    current = conn.execute(select(drift_alerts.c.id).where(*key, drift_alerts.c.state == OPEN)).first()
    values: dict[str, Any] = {"last_seen_at": now, "score": report.score, "n": report.n,
                              "drifted_features": report.drifted_features, "reason": _reason(report)}  # fmt: skip
    if report.dataset_drift:
        if current is not None:
            conn.execute(update(drift_alerts).where(drift_alerts.c.id == current.id).values(values))
            return AlertChange("refreshed", current.id)
        result = conn.execute(insert(drift_alerts).values(model=model, version=version, cohort=cohort, state=OPEN,
                                                          opened_at=now, **values))  # fmt: skip
        return AlertChange("opened", int(result.inserted_primary_key[0]))  # type: ignore[index]
    if current is not None:
        conn.execute(update(drift_alerts).where(drift_alerts.c.id == current.id).values(
            state=RESOLVED, resolved_at=now, last_seen_at=now))  # fmt: skip
        return AlertChange("resolved", current.id)
    return AlertChange("none")


def list_alerts(*, conn: Connection, model: str | None = None, version: int | None = None,
                state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
    """Alerts, newest first."""
    q = select(drift_alerts).order_by(drift_alerts.c.opened_at.desc(), drift_alerts.c.id.desc()).limit(limit)
    if model is not None:
        q = q.where(drift_alerts.c.model == model)
    if version is not None:
        q = q.where(drift_alerts.c.version == version)
    if state is not None:
        q = q.where(drift_alerts.c.state == state)
    return [dict(r._mapping) for r in conn.execute(q)]
