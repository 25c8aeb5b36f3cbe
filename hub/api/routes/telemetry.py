"""Telemetry: merged statistics of a model version per cohort and time range, its trend over time; drift alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from hub.api.deps import AdminDep, ConnDep, HubDep
from hub.errors import InvalidInput, NotFound
from hub.schemas import Message
from hub.store import rollouts as rollout_store
from hub.telemetry import alerts as alert_store
from hub.telemetry.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cohort,
    active_versions,
    baseline_for,
    merged_telemetry,
    version_exists,
)
from hub.telemetry.schemas import DriftAlertPublic, TelemetryVersionPublic
from hub.telemetry.sources import TelemetryStatsBySource, source_counts
from hub.telemetry.stats import cohort_stats
from hub.telemetry.trends import MAX_ASKED_POINTS, STEPS_S, TelemetryTrend, members_of, trend
from protocol.base import Identifier, ModelName, Version
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/telemetry",
    tags=["telemetry"],
    responses={401: {"model": Message}, 404: {"model": Message}, 422: {"model": Message}},
)
TagQuery = Annotated[str, Query(max_length=321, description="key=value; repeat for several tags")]


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _utc(value: datetime | None, name: str) -> datetime | None:
    """Timestamps without an offset are taken as UTC; refuses dates the hour arithmetic cannot hold."""
    if value is None:
        return None
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as e:
        raise InvalidInput(f"{name}: out of range") from e
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(f"{name}: must lie between 1970 and 9999")
    return value


def _tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"tag {item!r}: expected key=value")
        tags[key] = value
    return tags


def _range(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInput("since must not be after until")
    return since, until


@router.get("", response_model=list[TelemetryVersionPublic])
def list_versions(
    conn: ConnDep,
    hub: HubDep,
    _actor: AdminDep,
    model: ModelName | None = None,
    since: Annotated[datetime | None, Query(description="default: 24 hours ago")] = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[TelemetryVersionPublic]:
    """Model versions that sent telemetry in the range, with how many windows and devices."""
    since, until = _range(since, until)
    start = since or hub.clock() - timedelta(days=1)
    rows = active_versions(conn, since=start, until=until, model=model, limit=limit)
    return [TelemetryVersionPublic.model_validate(r) for r in rows]


@router.get("/alerts", response_model=list[DriftAlertPublic])
def list_drift_alerts(
    conn: ConnDep,
    _actor: AdminDep,
    model: ModelName | None = None,
    version: Version | None = None,
    state: Literal["open", "resolved"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DriftAlertPublic]:
    """Drift alerts per model version and cohort, newest first."""
    rows = alert_store.list_alerts(conn=conn, model=model, version=version, state=state, limit=limit)
    return [DriftAlertPublic.model_validate(r) for r in rows]


@router.get("/{model}/{version}", response_model=TelemetryStatsBySource)
def version_stats(
    model: ModelName,
    version: Version,
    conn: ConnDep,
    _actor: AdminDep,
    profile: Identifier | None = None,
    group: Identifier | None = None,
    device: Annotated[Identifier | None, Query(description="one device")] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="key=value; repeatable")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="newest summaries merged at most")] = DEFAULT_LIMIT,
) -> TelemetryStatsBySource:
    """Merged counts and statistics (latency, errors, fallback, labels, drift with histograms) for a cohort.

    Every source counts: windows of devices serving the version and windows of cloud answers given while no
    version served on the device; `sources` splits the requests by who answered them.
    """
    since, until = _range(since, until)
    if not version_exists(conn, model=model, version=version):
        raise NotFound(f"model {model} version {version} is not in the registry")
    ids = frozenset({device}) if device else None
    cohort = Cohort(profile=profile, group=group, tags=_tags(tag or []), device_ids=ids, since=since, until=until)
    merged = merged_telemetry(conn, model=model, version=version, cohort=cohort, limit=limit, every_source=True)
    baseline = baseline_for(conn, model=model, version=version, profile=profile)
    stats = cohort_stats(model=model, version=version, cohort=cohort, merged=merged, baseline=baseline)
    sources = source_counts(merged.summary, no_model_n=merged.no_model, no_model_rows=merged.no_model_rows)
    return TelemetryStatsBySource(**stats.model_dump(), sources=sources, hours_from_windows=merged.hours_from_windows)


@router.get("/{model}/{version}/trend", response_model=TelemetryTrend)
def version_trend(
    model: ModelName,
    version: Version,
    conn: ConnDep,
    hub: HubDep,
    _actor: AdminDep,
    profile: Identifier | None = None,
    group: Identifier | None = None,
    device: Annotated[Identifier | None, Query(description="one device")] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="key=value; repeatable")] = None,
    rollout: Annotated[Identifier | None, Query(description="the devices of this rollout, and only its events")] = None,
    since: Annotated[datetime | None, Query(description="default: 24 hours before until")] = None,
    until: Annotated[datetime | None, Query(description="default: now")] = None,
    step_s: Annotated[int | None, Query(ge=STEPS_S[0], le=STEPS_S[-1], description="bucket; default: chosen")] = None,
) -> TelemetryTrend:
    """Requests by source, error and fallback rates, p95 latency, drift score and live accuracy per time bucket,
    with the rollout events (audit log) in the range: the model's rollouts, or the given rollout's."""
    since, until = _range(since, until)
    until = until or hub.clock()
    since = since or until - timedelta(days=1)
    if since > until:
        raise InvalidInput("since must not be after until")
    if step_s is not None and (until - since).total_seconds() / step_s > MAX_ASKED_POINTS:
        raise InvalidInput(f"step_s {step_s} gives more than {MAX_ASKED_POINTS} buckets over this range")
    if not version_exists(conn, model=model, version=version):
        raise NotFound(f"model {model} version {version} is not in the registry")
    ids = frozenset({device}) if device else None
    if rollout is not None:
        if rollout_store.get(conn=conn, rollout_id=rollout) is None:
            raise NotFound(f"no rollout {rollout!r}")
        members = members_of(rollout_store.members(conn=conn, rollout_id=rollout))
        ids = members & ids if ids is not None else members
    cohort = Cohort(profile=profile, group=group, tags=_tags(tag or []), device_ids=ids)
    return trend(conn, model=model, version=version, cohort=cohort, since=since, until=until, step_s=step_s,
                 rollout_id=rollout)  # fmt: skip
