"""Rollout membership changes: release a wave, hold or let go a group/device, roll members back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from hub.errors import NotFound
from hub.rollouts import planner
from hub.rollouts import shadow as shadow_phase
from hub.rollouts.machine import DeviceState, RolloutEvent, RolloutState
from hub.schemas import RolloutScope
from hub.store import devices as device_store
from hub.store import rollouts as rollout_store
from protocol.http import manifest_target
from protocol.messages import DesiredState
from protocol.shadow import DesiredShadow


def hold(
    conn: Connection, row: dict[str, Any], now: datetime, event: RolloutEvent, scope: RolloutScope, actor: str
) -> list[DesiredState]:
    """Pause/abort holds one group's or device's members (no new releases); resume lets them go again."""
    members = rollout_store.members(conn=conn, rollout_id=row["id"])
    ids = {scope.device_id} if scope.device_id else None
    if scope.group is not None:
        ids = {d["id"] for d in device_store.list_devices(conn=conn, group=scope.group)}
    chosen = [m for m in members if ids is not None and m["device_id"] in ids]
    if not chosen:
        raise NotFound(f"no member of rollout {row['id']!r} matches {scope.model_dump(exclude_none=True)}")
    held = event is not RolloutEvent.RESUME
    reason = f"{event.value} by {actor}" if held else None
    changes = [{"device_id": m["device_id"], "held": held, "reason": reason, "updated_at": now} for m in chosen]
    rollout_store.update_members(conn=conn, rollout_id=row["id"], changes=changes)
    return release(conn, row, now) if row["state"] == RolloutState.RUNNING.value else []


def acknowledge_failures(conn: Connection, row: dict[str, Any], now: datetime) -> None:
    """Resuming accepts the failures so far: they no longer count against the wave's thresholds."""
    failed = [m["device_id"] for m in rollout_store.members(conn=conn, rollout_id=row["id"])
              if m["state"] == DeviceState.FAILED.value]  # fmt: skip
    row["spec"] = {**row["spec"], "acknowledged_failures": sorted(failed)}
    rollout_store.set_spec(conn=conn, now=now, rollout_id=row["id"], spec=row["spec"])


def release(conn: Connection, row: dict[str, Any], now: datetime) -> list[DesiredState]:
    """Publish the new version to every member of a released wave that has not had it yet; in a wave whose shadow
    phase has not let it activate (hub/rollouts/shadow.py), publish the candidate as a shadow test instead."""
    members = rollout_store.members(conn=conn, rollout_id=row["id"])
    todo = [m for m in members if m["wave"] <= row["current_wave"] and m["released_at"] is None and not m["held"]]
    activating = {w: shadow_phase.activates(row, w) for w in {m["wave"] for m in todo}}  # once per wave, not member
    ready = [m for m in todo if activating[m["wave"]]]
    record = shadow_phase.wave_record(row, row["current_wave"])
    to_shadow = [m for m in todo if not activating[m["wave"]] and m["state"] != DeviceState.SHADOWING.value]
    if to_shadow and (record or {}).get("verdict", "collecting") == "collecting":
        return set_versions(conn, row, now, ready, rollback=False) + start_shadow(conn, row, now, to_shadow)
    return set_versions(conn, row, now, ready, rollback=False)


def start_shadow(
    conn: Connection, row: dict[str, Any], now: datetime, members: list[dict[str, Any]]
) -> list[DesiredState]:
    """Give members the candidate as a shadow test (the wave's shadow phase starts with the first of them)."""
    spec = shadow_phase.spec_of(row)
    assert spec is not None
    wave = row["current_wave"]
    if shadow_phase.wave_record(row, wave) is None:
        stored = shadow_phase.set_wave_record(row, wave, started_at=now.isoformat(), verdict="collecting")
        rollout_store.set_spec(conn=conn, now=now, rollout_id=row["id"], spec=stored)
    fleet = {d["id"]: d for d in device_store.list_devices(conn=conn, ids=[m["device_id"] for m in members])}
    states, changes = [], []
    for m in members:
        device = fleet.get(m["device_id"])
        if device is None:
            continue
        target = manifest_target(row["model"], row["version"], device["profile"])
        shadow = DesiredShadow(name=row["model"], version=row["version"], manifest_target=target,
                               fraction=spec.fraction, rollout_id=row["id"])  # fmt: skip
        states.append(planner.shadow_desired(device, model=row["model"], shadow=shadow, now=now))
        changes.append({"device_id": m["device_id"], "state": DeviceState.SHADOWING.value, "reason": None,
                        "updated_at": now})  # fmt: skip
    _store_desired(conn, row, states, changes)
    return states


def end_shadow(conn: Connection, row: dict[str, Any], now: datetime, reason: str) -> list[DesiredState]:
    """Take the shadow test off every member still running it (the phase failed, or the rollout stopped)."""
    members = [m for m in rollout_store.members(conn=conn, rollout_id=row["id"])
               if m["state"] == DeviceState.SHADOWING.value]  # fmt: skip
    if not members:
        return []
    fleet = {d["id"]: d for d in device_store.list_devices(conn=conn, ids=[m["device_id"] for m in members])}
    states = [planner.shadow_desired(fleet[m["device_id"]], model=row["model"], shadow=None, now=now)
              for m in members if m["device_id"] in fleet]  # fmt: skip
    changes = [{"device_id": m["device_id"], "state": DeviceState.PENDING.value, "reason": reason, "updated_at": now}
               for m in members]  # fmt: skip
    _store_desired(conn, row, states, changes)
    return states


def _store_desired(
    conn: Connection, row: dict[str, Any], states: list[DesiredState], changes: list[dict[str, Any]]
) -> None:
    device_store.set_desired_many(
        conn=conn, states=[(s.device_id, s.model_dump(mode="json"), s.generation) for s in states]
    )
    rollout_store.update_members(conn=conn, rollout_id=row["id"], changes=changes)


def rollback_members(
    conn: Connection,
    row: dict[str, Any],
    now: datetime,
    group: str | None = None,
    device_id: str | None = None,
) -> list[DesiredState]:
    members = [
        m
        for m in rollout_store.members(conn=conn, rollout_id=row["id"])
        if m["released_at"] is not None and m["state"] != DeviceState.ROLLED_BACK.value
    ]
    if device_id is not None:
        members = [m for m in members if m["device_id"] == device_id]
        if not members:
            raise NotFound(f"device {device_id!r} has no released update in rollout {row['id']!r}")
    if group is not None:
        in_group = {d["id"] for d in device_store.list_devices(conn=conn, group=group)}
        members = [m for m in members if m["device_id"] in in_group]
    return set_versions(conn, row, now, members, rollback=True)


def set_versions(
    conn: Connection,
    row: dict[str, Any],
    now: datetime,
    members: list[dict[str, Any]],
    *,
    rollback: bool,
) -> list[DesiredState]:
    if not members:
        return []
    fleet = {d["id"]: d for d in device_store.list_devices(conn=conn, ids=[m["device_id"] for m in members])}
    states: list[DesiredState] = []
    changes: list[dict[str, Any]] = []
    for m in members:
        device = fleet.get(m["device_id"])
        if device is None:
            continue
        version = m["previous_version"] if rollback else row["version"]
        states.append(
            planner.next_desired(
                device,
                model=row["model"],
                version=version,
                rollout_id=row["id"],
                rollback=rollback,
                now=now,
                kind=row.get("kind") or "model",
            )
        )
        if rollback:
            changes.append({"device_id": m["device_id"], "state": DeviceState.ROLLED_BACK.value, "updated_at": now})
        else:
            changes.append({"device_id": m["device_id"], "released_at": now, "state": DeviceState.PENDING.value,
                            "updated_at": now})  # fmt: skip
    _store_desired(conn, row, states, changes)
    return states
