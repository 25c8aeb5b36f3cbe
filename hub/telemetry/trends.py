"""Trends: a model version's telemetry per time bucket, with the rollout events on the same time axis.

Ranges up to RAW_RANGE are read from the raw device windows, in buckets of 10 s to 5 min; longer ranges
of the fleet or a profile from the hourly rollups (and the windows not rolled up yet) in buckets of whole
hours. Other cohorts (a group, tags, a device, a rollout's devices) always read raw windows: rollups keep
no device ids. A window lands in the bucket holding its window_start, as it lands in the rollup of the
hour holding it, and every source counts (accumulate.py, sources.py): device answers, cloud answers (also
those given while no version served on the device), failed requests.

Rollout events are the audit log's `rollout.*` entries of the model's rollouts (or of one rollout).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Connection, false, literal, select, union_all

from hub.db.schema import audit_log, rollouts, telemetry
from hub.telemetry.accumulate import Accumulator
from hub.telemetry.query import Cohort, baseline_for, device_ids, rollup_windows
from hub.telemetry.sources import source_counts
from hub.telemetry.stats import quantile_ms
from hub.telemetry.tables import telemetry_hourly
from protocol.drift import drift_report
from protocol.manifest import BaselineStats

STEPS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_POINTS = 96  # buckets a chosen step gives at most (a step asked for may give up to MAX_ASKED_POINTS)
MAX_ASKED_POINTS = 2000
RAW_RANGE = timedelta(hours=6)
MAX_WINDOWS = 50_000  # raw windows read at most (the newest): `truncated` says when more matched
HOUR_S = 3600


class TrendPoint(BaseModel):
    """One time bucket [start, end) of the cohort's telemetry; rates and statistics are None without data."""

    start: datetime
    end: datetime
    windows: int
    requests: int
    device: int  # answered on the device
    cloud: int  # answered by the cloud fallback
    failed: int
    error_rate: float | None
    fallback_rate: float | None
    p95_ms: float | None  # latency of the requests made on devices serving the version
    drift_score: float | None  # largest JS distance of a feature or the predicted classes to the baseline
    dataset_drift: bool | None
    accuracy: float | None  # from the delayed labels that arrived in the bucket
    labelled: int


class RolloutMark(BaseModel):
    """A rollout event from the audit log, to mark on the time axis."""

    id: int  # the audit entry
    ts: datetime
    rollout_id: str
    version: int
    action: str  # rollout.create | rollout.start | rollout.wave | rollout.pause | ... (the audit action)
    label: str  # created, started, wave 2 released, paused, resumed, aborted, rolled back, completed
    actor: str
    reason: str | None


class TelemetryTrend(BaseModel):
    """A cohort's telemetry of one model version over time, with the rollout events in the range."""

    model: str
    version: int
    profile: str | None
    group: str | None
    device: str | None
    tags: dict[str, str]
    rollout: str | None
    since: datetime  # the first bucket's start
    until: datetime
    step_s: int
    source: Literal["windows", "hourly"]
    points: list[TrendPoint]  # buckets with data, oldest first
    events: list[RolloutMark]
    windows: int
    skipped: int  # windows whose bins differ from their bucket's first (a re-binned baseline)
    truncated: bool


def bucket_start(t: datetime, step_s: int) -> datetime:
    """The start of the step_s bucket holding t (buckets are aligned to the Unix epoch, in UTC)."""
    seconds = int(t.timestamp()) // step_s * step_s
    return datetime.fromtimestamp(seconds, UTC)


def choose_step(since: datetime, until: datetime, cohort: Cohort) -> tuple[int, Literal["windows", "hourly"]]:
    """The smallest step giving at most MAX_POINTS buckets; whole hours from the rollups for long fleet ranges."""
    span = max((until - since).total_seconds(), 1.0)
    step = next((s for s in STEPS_S if span / s <= MAX_POINTS), STEPS_S[-1])
    if until - since > RAW_RANGE and not cohort.filters_devices:
        return max(step, HOUR_S), "hourly"
    return step, "windows"


def _rows(conn: Connection, *, model: str, version: int, cohort: Cohort, since: datetime, until: datetime,
          hourly: bool) -> tuple[list[Any], bool]:  # fmt: skip
    """(at, summary, rows, skipped, rollup_id) of the windows starting in [since, until), newest first, at most
    MAX_WINDOWS; `hourly`: the rollups of the hours and the windows not rolled up yet, in one statement (one
    snapshot: a rollup committing meanwhile is seen before or after, never twice)."""
    t = telemetry.c
    raw = select(t.window_start.label("at"), t.summary, literal(1).label("rows"), literal(0).label("skipped"),
                 literal(0).label("rollup_id"))  # fmt: skip
    raw = raw.where(t.model == model, t.version == version, t.window_start >= since, t.window_start < until)
    if cohort.filters_devices:
        ids = device_ids(conn, cohort)
        raw = raw.where(t.device_id.in_(sorted(ids))) if ids else raw.where(false())
    if hourly:
        h = telemetry_hourly.c
        rollups = select(h.hour.label("at"), h.summary, h.rows, h.skipped, h.id.label("rollup_id"))
        rollups = rollups.where(h.model == model, h.version == version, h.hour >= since, h.hour < until)
        if cohort.profile is not None:
            rollups = rollups.where(h.profile == cohort.profile)
        both = union_all(rollups, raw.where(t.rolled_up.is_(False))).subquery()
        q = select(both).order_by(both.c.at.desc())
    else:
        q = raw.order_by(t.window_start.desc())
    found = conn.execute(q.limit(MAX_WINDOWS + 1)).all()
    return list(found[:MAX_WINDOWS]), len(found) > MAX_WINDOWS


class _Buckets:
    """One Accumulator per bucket."""

    def __init__(self, step_s: int) -> None:
        self.step_s = step_s
        self.merges: dict[datetime, Accumulator] = {}
        self.windows: dict[datetime, int] = {}
        self.rollups_skipped = 0  # windows the hourly rollups left out (rollups written before issue 22)

    @property
    def skipped(self) -> int:
        """Windows left out: by the rollups, or here because their bins differ from their bucket's."""
        return self.rollups_skipped + sum(m.skipped for m in self.merges.values())

    def add(self, t: datetime, summary: dict[str, Any], windows: int = 1, skipped: int = 0) -> None:
        key = bucket_start(t, self.step_s)
        self.merges.setdefault(key, Accumulator()).add(summary, windows)
        self.rollups_skipped += skipped
        self.windows[key] = self.windows.get(key, 0) + windows

    def points(self, baseline: BaselineStats | None) -> list[TrendPoint]:
        return [self._point(key, merge, baseline) for key, merge in sorted(self.merges.items())]

    def _point(self, start: datetime, merge: Accumulator, baseline: BaselineStats | None) -> TrendPoint:
        s = merge.result()
        assert s is not None  # a bucket exists once a summary was added
        counts = source_counts(s)
        report = drift_report(baseline, s) if baseline is not None and s.n else None
        measured = report is not None and (report.features or report.classes is not None)
        labelled = sum(map(sum, s.confusion)) if s.confusion else 0
        return TrendPoint(
            start=start, end=start + timedelta(seconds=self.step_s), windows=self.windows[start], requests=s.n,
            device=counts.device, cloud=counts.cloud, failed=counts.failed,
            error_rate=s.errors / s.n if s.n else None, fallback_rate=s.fallback_rate if s.n else None,
            p95_ms=quantile_ms(s.latency_buckets, 0.95), drift_score=report.score if report and measured else None,
            dataset_drift=report.dataset_drift if report and measured else None,
            accuracy=s.accuracy(), labelled=labelled,
        )  # fmt: skip


def trend(conn: Connection, *, model: str, version: int, cohort: Cohort, since: datetime, until: datetime,
          step_s: int | None = None, rollout_id: str | None = None) -> TelemetryTrend:  # fmt: skip
    """The cohort's telemetry per bucket over [since, until) and the rollout events in it."""
    chosen, source = choose_step(since, until, cohort)
    step = step_s or chosen
    if source == "hourly" and step % HOUR_S:
        source = "windows"  # an asked-for step inside the hour needs the raw windows
    start = bucket_start(since, step)
    buckets = _Buckets(step)
    windows = 0
    found, truncated = _rows(conn, model=model, version=version, cohort=cohort, since=start, until=until,
                             hourly=source == "hourly")  # fmt: skip
    for r in found:
        parts = rollup_windows(conn, r.rollup_id, r.rows + r.skipped) if r.rollup_id and r.skipped else None
        if parts is None:  # a raw window, a complete rollup, or one whose windows are past the raw retention
            buckets.add(r.at, r.summary, r.rows, r.skipped)
            windows += r.rows
            continue
        for summary in parts:  # a rollup that left windows out, read from its raw windows
            buckets.add(datetime.fromisoformat(summary["window_start"]), summary)
        windows += len(parts)
    base = baseline_for(conn, model=model, version=version, profile=cohort.profile)
    return TelemetryTrend(
        model=model, version=version, profile=cohort.profile, group=cohort.group,
        device=next(iter(cohort.device_ids)) if rollout_id is None and cohort.device_ids and len(cohort.device_ids) == 1
        else None,
        tags=dict(cohort.tags), rollout=rollout_id, since=start, until=until, step_s=step, source=source,
        points=buckets.points(base[1] if base else None),
        events=rollout_marks(conn, model=model, since=start, until=until, rollout_id=rollout_id),
        windows=windows, skipped=buckets.skipped, truncated=truncated,
    )  # fmt: skip


LABELS = {
    "rollout.create": "created", "rollout.start": "started", "rollout.pause": "paused", "rollout.resume": "resumed",
    "rollout.abort": "aborted", "rollout.rollback": "rolled back", "rollout.auto_rollback": "rolled back (auto)",
    "rollout.error_threshold": "paused (error threshold)", "rollout.all_waves_passed": "completed",
}  # fmt: skip


def mark_label(action: str, details: dict[str, Any]) -> str:
    """What an audit entry of a rollout says, in the dashboard's words (waves counted from 0, as everywhere)."""
    if action == "rollout.wave" and isinstance(details.get("to"), int):
        return f"wave {details['to']} released"
    label = LABELS.get(action, action.removeprefix("rollout."))
    scope = details.get("group") or details.get("device_id")
    return f"{label} ({scope})" if scope else label


def rollout_marks(conn: Connection, *, model: str, since: datetime, until: datetime,
                  rollout_id: str | None = None) -> list[RolloutMark]:  # fmt: skip
    """The `rollout.*` audit entries of the model's rollouts (or one rollout) in [since, until], oldest first."""
    q = select(rollouts.c.id, rollouts.c.version).where(rollouts.c.model == model, rollouts.c.kind == "model")
    if rollout_id is not None:
        q = q.where(rollouts.c.id == rollout_id)
    versions = {r.id: r.version for r in conn.execute(q)}
    if not versions:
        return []
    a = audit_log.c
    entries = conn.execute(
        select(audit_log).where(a.target.in_(sorted(versions)), a.action.like("rollout.%"), a.ts >= since,
                                a.ts <= until).order_by(a.ts, a.id)
    )  # fmt: skip
    return [_mark(e._mapping, versions[e.target]) for e in entries]


def _mark(e: Any, version: int) -> RolloutMark:
    details = e["details"] if isinstance(e["details"], dict) else {}
    reason = details.get("reason")
    return RolloutMark(id=e["id"], ts=e["ts"], rollout_id=e["target"], version=version, action=e["action"],
                       label=mark_label(e["action"], details), actor=e["actor"],
                       reason=reason if isinstance(reason, str) else None)  # fmt: skip


def members_of(rows: Iterable[dict[str, Any]]) -> frozenset[str]:
    """The device ids of a rollout's member rows."""
    return frozenset(r["device_id"] for r in rows)
