"""Derive each released device's rollout state from its reported state, its events, gates and the clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from hub.db.schema import devices, events
from hub.rollouts.gates import TELEMETRY_GATES, GateInput, Verdict, build_gates
from hub.rollouts.machine import TERMINAL_DEVICE_STATES, DeviceState
from hub.rollouts.planner import UNIT_LISTS
from hub.telemetry.health import CohortCache, TelemetryLimits, TelemetryView
from protocol.telemetry import telemetry_key

FAILURE_EVENTS = ["failed", "self_test_failed", "refused", "rolled_back"]
# The previous versions' telemetry cohorts, shared across ticks (one engine tick thread; TTL-bounded).
PREVIOUS_COHORTS = CohortCache()
# The agent's lifecycle state -> the hub's view of an update in flight.
IN_FLIGHT = {
    "downloading": DeviceState.DOWNLOADING,
    "verifying": DeviceState.VERIFYING,
    "staged": DeviceState.ACTIVATING,
    "activating": DeviceState.ACTIVATING,
    "self_test": DeviceState.ACTIVATING,
}


def evaluate_members(
    conn: Connection, row: dict[str, Any], members: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Changes (device_id, state, reason, serving_seen_at, updated_at) for members whose state moved."""
    live = [m for m in members if m["released_at"] is not None and m["state"] not in TERMINAL_DEVICE_STATES]
    if not live:
        return []
    ids = [m["device_id"] for m in live]
    reported, profiles = {}, {}
    for r in conn.execute(select(devices.c.id, devices.c.reported, devices.c.profile).where(devices.c.id.in_(ids))):
        reported[r.id], profiles[r.id] = r.reported, r.profile
    failures: dict[str, dict[str, str]] = {}
    # Failures of this rollout; events without a rollout id count if they name this model version.
    this_rollout = or_(
        events.c.rollout_id == row["id"],
        and_(events.c.rollout_id.is_(None), events.c.model == row["model"], events.c.version == row["version"]),
    )
    if (row.get("kind") or "model") == "pipeline":  # pipeline events carry their rollout's id (model is empty)
        this_rollout = events.c.rollout_id == row["id"]
    q = select(events.c.device_id, events.c.kind, events.c.payload).where(
        events.c.kind.in_(FAILURE_EVENTS), events.c.device_id.in_(ids), this_rollout
    )
    for r in conn.execute(q):
        failures.setdefault(r.device_id, {})[r.kind] = str((r.payload or {}).get("reason") or r.kind)
    spec = row["spec"]
    gates = build_gates(spec["gates"])
    limits = TelemetryLimits.model_validate(spec.get("gate_limits") or {})
    view = TelemetryView(conn, now, PREVIOUS_COHORTS) if TELEMETRY_GATES & set(spec["gates"]) else None
    probation = timedelta(seconds=spec["probation_s"])
    timeout = timedelta(seconds=spec["timeout_s"])
    changes = []
    for m in live:
        model = _reported_unit(reported.get(m["device_id"]), row["model"], row.get("kind") or "model")
        context = GateContext(profiles.get(m["device_id"]), limits, view)
        state, reason, seen = _device_state(m, model, failures.get(m["device_id"], {}), row, gates, now, probation,
                                            context)  # fmt: skip
        serving = state in TERMINAL_DEVICE_STATES or state is DeviceState.PROBATION
        if not serving and now - m["released_at"] > timeout:
            state, reason = DeviceState.FAILED, f"no healthy report within {spec['timeout_s']:g}s"
        if state.value != m["state"] or seen != m["serving_seen_at"] or reason != m["reason"]:
            changes.append(
                {"device_id": m["device_id"], "state": state.value, "reason": reason, "serving_seen_at": seen,
                 "updated_at": now}
            )  # fmt: skip
    return changes


@dataclass(frozen=True)
class GateContext:
    """What telemetry gates need beyond the reported state: the device's profile, the limits, the tick's view."""

    profile: str | None
    limits: TelemetryLimits
    view: TelemetryView | None


def _reported_unit(reported: dict[str, Any] | None, name: str, kind: str) -> dict[str, Any] | None:
    """The reported entry of a model, or of a pipeline (`kind`), by name."""
    for m in (reported or {}).get(UNIT_LISTS[kind], []):
        if m.get("name") == name:
            return dict(m)
    return None


def _device_state(
    member: dict[str, Any],
    model: dict[str, Any] | None,
    failures: dict[str, str],
    row: dict[str, Any],
    gates: list[Any],
    now: datetime,
    probation: timedelta,
    context: GateContext,
) -> tuple[DeviceState, str | None, datetime | None]:
    version = row["version"]
    if failures and "self_test_failed" not in failures:
        kind, reason = next(iter(failures.items()))
        return DeviceState.FAILED, f"{kind}: {reason}" if reason != kind else kind, member["serving_seen_at"]
    if model is None:
        return DeviceState.PENDING, None, None
    agent_state = model.get("state") or "idle"
    if model.get("target_version") == version and agent_state in ("failed", "rolling_back", "rolled_back"):
        return DeviceState.FAILED, model.get("reason") or agent_state, member["serving_seen_at"]
    if model.get("active_version") == version and agent_state not in ("failed", "rolled_back"):
        # A pipeline's gates read its end-to-end windows, filed under its telemetry key (protocol/telemetry.py).
        name = telemetry_key(row.get("kind") or "model", row["model"])
        data = GateInput(member["device_id"], name, version, model, failures, profile=context.profile,
                         previous_version=member["previous_version"], released_at=member["released_at"],
                         limits=context.limits, telemetry=context.view)  # fmt: skip
        verdicts = [g.evaluate(data) for g in gates]
        failed = [r for v, r in verdicts if v is Verdict.FAIL]
        if failed:
            return DeviceState.FAILED, failed[0], member["serving_seen_at"]
        seen = member["serving_seen_at"] or now
        if all(v is Verdict.PASS for v, _ in verdicts) and now - seen >= probation:
            return DeviceState.HEALTHY, None, seen
        waiting = "; ".join(r for v, r in verdicts if v is Verdict.WAIT and r)
        return DeviceState.PROBATION, waiting or None, seen
    if "self_test_failed" in failures:
        return (
            DeviceState.FAILED,
            f"self-test failed: {failures['self_test_failed']}",
            member["serving_seen_at"],
        )
    if model.get("target_version") == version and agent_state in IN_FLIGHT:
        return IN_FLIGHT[agent_state], None, None
    return DeviceState.PENDING, None, None
