"""Telemetry: merged statistics of a model version per cohort and time range; drift alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from hub.api.deps import AdminDep, ConnDep, HubDep
from hub.errors import InvalidInput, NotFound
from hub.schemas import Message
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
from hub.telemetry.schemas import DriftAlertPublic, TelemetryStats, TelemetryVersionPublic
from hub.telemetry.stats import cohort_stats
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


@router.get("/{model}/{version}", response_model=TelemetryStats)
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
) -> TelemetryStats:
    """Merged counts and statistics (latency, errors, fallback, labels, drift with histograms) for a cohort."""
    since, until = _range(since, until)
    if not version_exists(conn, model=model, version=version):
        raise NotFound(f"model {model} version {version} is not in the registry")
    ids = frozenset({device}) if device else None
    cohort = Cohort(profile=profile, group=group, tags=_tags(tag or []), device_ids=ids, since=since, until=until)
    merged = merged_telemetry(conn, model=model, version=version, cohort=cohort, limit=limit)
    baseline = baseline_for(conn, model=model, version=version, profile=profile)
    return cohort_stats(model=model, version=version, cohort=cohort, merged=merged, baseline=baseline)
