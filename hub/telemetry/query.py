"""Load stored summaries for one model version and cohort (bounded by time range and a row limit) and merge them.

Rows are read newest first; at most `limit` of them, so a query over a long range answers from the
newest windows and says so (`truncated`). Summaries whose bins differ from the newest row's (a
re-binned baseline) are skipped and counted rather than failing the whole cohort (accumulate.py).

Windows of devices serving the version and cloud-only windows (cloud answers while no version served on the
device) are always both kept; `every_source` says which the merged `summary` counts: every source (the API
and the dashboard), or only the serving windows (the rollout gates: a cloud answer given before a version was
installed says nothing about the version). `Merged` carries the serving summary and the cloud-only counts
either way. An hourly rollup that left windows out (before issue 22, a cloud-only window arriving first
made it leave out the device windows) is read from its raw windows while they are kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, false, func, literal, select, union_all

from hub.db.schema import devices, model_versions, telemetry
from hub.telemetry.accumulate import Accumulator
from hub.telemetry.tables import telemetry_hourly
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

    summary: TelemetrySummary | None  # every source, or the serving windows only (see `every_source`)
    rows: int
    truncated: bool
    skipped: int = 0
    devices: int = 0
    no_model: int = 0  # requests in cloud-only windows (recorded while no version served on the device)
    no_model_rows: int = 0
    hours_from_windows: int = 0  # rollups that had left windows out, replaced by their raw windows
    serving: TelemetrySummary | None = None  # the windows of devices serving the version only


def _merged(acc: Accumulator, *, every_source: bool, rows: int, truncated: bool, skipped: int, devices: int | None,
            replaced: int = 0) -> Merged:  # fmt: skip
    summary, serving = acc.result() if every_source else acc.served(), acc.served()
    if devices is None:
        devices = summary.devices if summary else 0
    elif summary is not None:
        summary = summary.model_copy(update={"devices": devices})
    return Merged(summary, rows, truncated, skipped, devices, acc.cloud_only_n, acc.cloud_only_rows, replaced,
                  serving)  # fmt: skip


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


def _raw(model: str, version: int, cohort: Cohort) -> Select[Any]:
    """Raw windows of the version that overlap [since, until] (device filters applied by the caller)."""
    q = select(telemetry.c.summary, telemetry.c.window_end, literal(1).label("rows"), literal(0).label("skipped"),
               literal(0).label("rollup_id"))  # fmt: skip
    q = q.where(telemetry.c.model == model, telemetry.c.version == version)
    if cohort.since is not None:
        q = q.where(telemetry.c.window_end >= cohort.since)
    if cohort.until is not None:
        q = q.where(telemetry.c.window_start <= cohort.until)
    return q


def load_rows(
    conn: Connection, *, model: str, version: int, cohort: Cohort, limit: int = DEFAULT_LIMIT
) -> tuple[list[dict[str, Any]], bool]:
    """Raw summaries (JSON) whose windows overlap [since, until], newest first; and whether `limit` cut them."""
    q = _raw(model, version, cohort)
    if cohort.filters_devices:
        ids = device_ids(conn, cohort)
        if not ids:
            return [], False
        q = q.where(telemetry.c.device_id.in_(sorted(ids)))
    q = q.order_by(telemetry.c.window_end.desc()).limit(limit + 1)
    raw = [r.summary for r in conn.execute(q)]
    return raw[:limit], len(raw) > limit


def _whole_hours(cohort: Cohort) -> tuple[datetime | None, datetime | None]:
    """[first, end) of the hours lying wholly inside [since, until] (None = unbounded)."""
    first = None
    if cohort.since is not None:
        floor = cohort.since.replace(minute=0, second=0, microsecond=0)
        first = floor if floor == cohort.since else floor + timedelta(hours=1)
    end = cohort.until.replace(minute=0, second=0, microsecond=0) if cohort.until is not None else None
    return first, end


def merged_telemetry(
    conn: Connection, *, model: str, version: int, cohort: Cohort, limit: int = DEFAULT_LIMIT,
    every_source: bool = False,
) -> Merged:  # fmt: skip
    """The cohort's telemetry of one model version, merged.

    Fleet and profile cohorts read whole hours from the hourly rollups and raw windows only for the
    edges of the range and for rows not rolled up yet, in one statement (one snapshot, so a rollup
    committing meanwhile is seen either before or after, never twice). Other cohorts read raw windows.
    `every_source`: the summary counts every source, else only the serving windows (both are kept).
    """
    if cohort.group is not None or cohort.tags or cohort.device_ids is not None:
        rows, truncated = load_rows(conn, model=model, version=version, cohort=cohort, limit=limit)
        return merged_from(rows, truncated, every_source=every_source)
    h = telemetry_hourly.c
    first, end = _whole_hours(cohort)
    hourly = select(h.summary, h.window_end, h.rows, h.skipped, h.id.label("rollup_id"))
    hourly = hourly.where(h.model == model, h.version == version)
    raw = _raw(model, version, cohort)
    in_hours: list[ColumnElement[bool]] = [telemetry.c.rolled_up.is_(True)]
    if first is not None:
        hourly = hourly.where(h.hour >= first)
        in_hours.append(telemetry.c.window_start >= first)
    if end is not None:
        hourly = hourly.where(h.hour < end)
        in_hours.append(telemetry.c.window_start < end)
    raw = raw.where(~and_(*in_hours))
    if cohort.profile is not None:
        hourly = hourly.where(h.profile == cohort.profile)
        ids = device_ids(conn, cohort)
        raw = raw.where(telemetry.c.device_id.in_(sorted(ids))) if ids else raw.where(false())
    both = union_all(hourly, raw).subquery()
    q = select(both).order_by(both.c.window_end.desc()).limit(limit + 1)
    found = conn.execute(q).all()
    acc = Accumulator()
    windows = skipped = replaced = 0
    for r in found[:limit]:
        parts = rollup_windows(conn, r.rollup_id, r.rows + r.skipped) if every_source and r.skipped else None
        if parts is not None:
            replaced += 1
            windows += len(parts)
            for window in parts:
                acc.add(window)
            continue
        windows += r.rows + r.skipped
        skipped += r.skipped
        acc.add(r.summary, r.rows)
    devices = count_devices(conn, model=model, version=version, cohort=cohort) if acc.rows else 0
    return _merged(acc, every_source=every_source, rows=windows, truncated=len(found) > limit,
                   skipped=skipped + acc.skipped, devices=devices, replaced=replaced)  # fmt: skip


def rollup_windows(conn: Connection, rollup_id: int, expected: int) -> list[dict[str, Any]] | None:
    """The raw windows an hourly rollup folded (also those it left out), if every one of them is still kept."""
    h = telemetry_hourly.c
    rollup = conn.execute(select(h.model, h.version, h.profile, h.hour).where(h.id == rollup_id)).first()
    if rollup is None:
        return None
    t = telemetry.c
    q = select(t.summary).where(
        t.model == rollup.model,
        t.version == rollup.version,
        t.rolled_up.is_(True),
        t.window_start >= rollup.hour,
        t.window_start < rollup.hour + timedelta(hours=1),
    )
    rows = [r.summary for r in conn.execute(q.order_by(t.window_end.desc())) if r.summary["profile"] == rollup.profile]
    return rows if len(rows) == expected else None  # some are past the raw retention: keep the rollup


def count_devices(conn: Connection, *, model: str, version: int, cohort: Cohort) -> int:
    """Distinct devices with windows in the range (raw rows: rollups do not keep device ids)."""
    q = select(func.count(telemetry.c.device_id.distinct())).where(telemetry.c.model == model,
                                                                   telemetry.c.version == version)  # fmt: skip
    if cohort.since is not None:
        q = q.where(telemetry.c.window_end >= cohort.since)
    if cohort.until is not None:
        q = q.where(telemetry.c.window_start <= cohort.until)
    if cohort.filters_devices:
        q = q.where(telemetry.c.device_id.in_(sorted(device_ids(conn, cohort)) or [""]))
    return int(conn.execute(q).scalar_one())


def merged_from(rows: Iterable[dict[str, Any]], truncated: bool = False, *, every_source: bool = False) -> Merged:
    """Add up stored summaries (JSON) into a `Merged`; `every_source`: the summary counts the cloud-only windows."""
    acc = Accumulator()
    for row in rows:
        acc.add(row)
    return _merged(acc, every_source=every_source, rows=acc.rows + acc.skipped, truncated=truncated,
                   skipped=acc.skipped, devices=None)  # fmt: skip


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
