"""Load stored summaries for one model version and cohort (bounded by time range and a row limit) and merge them.

Rows are read newest first; at most `limit` of them, so a query over a long range answers from the
newest windows and says so (`truncated`). Summaries whose bins differ from the newest row's (a
re-binned baseline) are skipped and counted rather than failing the whole cohort (accumulate.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from hub.db.schema import devices, model_versions, telemetry
from hub.telemetry.accumulate import Accumulator
from protocol.manifest import BaselineStats, Manifest
from protocol.telemetry import TelemetrySummary

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000


@dataclass(frozen=True)
class Cohort:
    """Which devices and windows: every given criterion must match (nothing given = the whole fleet, all time)."""

    profile: str | None = None
    group: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    device_ids: frozenset[str] | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def filters_devices(self) -> bool:
        return bool(self.profile or self.group or self.tags or self.device_ids is not None)


@dataclass(frozen=True)
class Merged:
    """A cohort's merged summary (None without data) and how it was obtained."""

    summary: TelemetrySummary | None
    rows: int
    truncated: bool
    skipped: int = 0
    devices: int = 0


def device_ids(conn: Connection, cohort: Cohort) -> set[str]:
    """Ids of registered devices matching the cohort's profile, group and tags."""
    q = select(devices.c.id, devices.c.tags)
    if cohort.profile is not None:
        q = q.where(devices.c.profile == cohort.profile)
    if cohort.group is not None:
        q = q.where(devices.c.group_name == cohort.group)
    if cohort.device_ids is not None:
        q = q.where(devices.c.id.in_(sorted(cohort.device_ids)))
    return {r.id for r in conn.execute(q) if all((r.tags or {}).get(k) == v for k, v in cohort.tags.items())}


def load_rows(
    conn: Connection, *, model: str, version: int, cohort: Cohort, limit: int = DEFAULT_LIMIT
) -> tuple[list[dict[str, Any]], bool]:
    """Summaries (JSON) whose windows overlap [since, until], newest first; and whether `limit` cut them."""
    q = select(telemetry.c.summary).where(telemetry.c.model == model, telemetry.c.version == version)
    if cohort.since is not None:
        q = q.where(telemetry.c.window_end >= cohort.since)
    if cohort.until is not None:
        q = q.where(telemetry.c.window_start <= cohort.until)
    if cohort.filters_devices:
        ids = device_ids(conn, cohort)
        if not ids:
            return [], False
        q = q.where(telemetry.c.device_id.in_(sorted(ids)))
    q = q.order_by(telemetry.c.window_end.desc(), telemetry.c.id.desc()).limit(limit + 1)
    raw = [r.summary for r in conn.execute(q)]
    return raw[:limit], len(raw) > limit


def merged_from(rows: Iterable[dict[str, Any]], truncated: bool = False) -> Merged:
    """Add up stored summaries (JSON) into a `Merged`."""
    acc = Accumulator()
    for row in rows:
        acc.add(row)
    summary = acc.result()
    return Merged(summary, acc.rows + acc.skipped, truncated, acc.skipped, summary.devices if summary else 0)


def merged_telemetry(
    conn: Connection, *, model: str, version: int, cohort: Cohort, limit: int = DEFAULT_LIMIT
) -> Merged:
    """The cohort's telemetry of one model version, merged."""
    rows, truncated = load_rows(conn, model=model, version=version, cohort=cohort, limit=limit)
    return merged_from(rows, truncated)


def baseline_for(
    conn: Connection, *, model: str, version: int, profile: str | None
) -> tuple[str, BaselineStats] | None:
    """(profile, baseline) from the version's manifest: the given profile's, else the first profile's."""
    q = select(model_versions.c.profile, model_versions.c.manifest).where(
        model_versions.c.name == model, model_versions.c.version == version
    )
    rows = {r.profile: r.manifest for r in conn.execute(q)}
    chosen = profile if profile in rows else (min(rows) if rows and profile is None else None)
    if chosen is None:
        return None
    return chosen, Manifest.from_json(rows[chosen]).baseline


def version_exists(conn: Connection, *, model: str, version: int) -> bool:
    """True if the registry holds any profile of the version."""
    q = select(model_versions.c.id).where(model_versions.c.name == model, model_versions.c.version == version)
    return conn.execute(q.limit(1)).first() is not None


def device_cohorts(conn: Connection, ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """Device id -> (profile, group) for registered devices."""
    q = select(devices.c.id, devices.c.profile, devices.c.group_name).where(devices.c.id.in_(sorted(set(ids))))
    return {r.id: (r.profile, r.group_name) for r in conn.execute(q)}


def active_versions(conn: Connection, *, since: datetime, until: datetime | None, model: str | None = None,
                    limit: int = 200) -> list[dict[str, Any]]:  # fmt: skip
    """Model versions with telemetry in the range: stored windows, distinct devices, first and last window."""
    t = telemetry.c
    q = (
        select(t.model, t.version, func.count().label("rows"), func.count(t.device_id.distinct()).label("devices"),
               func.min(t.window_start).label("window_start"), func.max(t.window_end).label("window_end"))
        .where(t.window_end >= since)
        .group_by(t.model, t.version)
        .order_by(t.model, t.version.desc())
        .limit(limit)
    )  # fmt: skip
    if until is not None:
        q = q.where(t.window_start <= until)
    if model is not None:
        q = q.where(t.model == model)
    return [dict(r._mapping) for r in conn.execute(q)]
