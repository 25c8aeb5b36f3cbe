"""Rollouts and their per-device rows (state persisted before the action that could be interrupted)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from hub.db.schema import rollout_devices, rollouts
from hub.errors import Conflict, RolloutError
from hub.rollouts.machine import MAX_TRANSITIONS, RolloutState


def create(
    *,
    conn: Connection,
    now: datetime,
    rollout_id: str,
    model: str,
    version: int,
    spec: dict[str, Any],
    members: list[tuple[str, int, int | None]],
    kind: str = "model",
) -> None:
    """Insert a scheduled rollout and its (device, wave, previous version) rows."""
    if get(conn=conn, rollout_id=rollout_id) is not None:
        raise Conflict(f"rollout {rollout_id!r} exists")
    conn.execute(
        insert(rollouts).values(
            id=rollout_id,
            kind=kind,
            model=model,
            version=version,
            state=RolloutState.SCHEDULED.value,
            spec=spec,
            current_wave=0,
            transitions=0,
            created_at=now,
            updated_at=now,
        )
    )
    add_members(conn=conn, now=now, rollout_id=rollout_id, members=members)


def add_members(
    *, conn: Connection, now: datetime, rollout_id: str, members: list[tuple[str, int, int | None]]
) -> None:
    """Add devices (id, wave, previous version) to a rollout as pending."""
    if members:
        conn.execute(
            insert(rollout_devices),
            [
                {
                    "rollout_id": rollout_id,
                    "device_id": d,
                    "wave": w,
                    "state": "pending",
                    "previous_version": p,
                    "updated_at": now,
                }
                for d, w, p in members
            ],
        )


def get(*, conn: Connection, rollout_id: str, for_update: bool = False) -> dict[str, Any] | None:
    """One rollout row, or None; `for_update` locks it until the transaction ends (PostgreSQL: replicas queue)."""
    q = select(rollouts).where(rollouts.c.id == rollout_id)
    row = conn.execute(q.with_for_update() if for_update else q).first()
    return dict(row._mapping) if row else None


def list_rollouts(*, conn: Connection, states: list[str] | None = None) -> list[dict[str, Any]]:
    """Rollouts, oldest first, optionally in some states."""
    q = select(rollouts).order_by(rollouts.c.created_at, rollouts.c.id)
    if states is not None:
        q = q.where(rollouts.c.state.in_(states))
    return [dict(r._mapping) for r in conn.execute(q)]


def set_state(
    *,
    conn: Connection,
    now: datetime,
    rollout_id: str,
    state: RolloutState,
    reason: str | None,
    seen_transitions: int | None = None,
) -> None:
    """Persist a transition; refuses a rollout that has changed state MAX_TRANSITIONS times, and (optimistic
    concurrency) one whose `transitions` count is no longer `seen_transitions`: someone else moved it."""
    row = get(conn=conn, rollout_id=rollout_id)
    if row is None or row["transitions"] >= MAX_TRANSITIONS:
        raise RolloutError(f"rollout {rollout_id!r}: too many state changes, refusing more")
    q = update(rollouts).where(rollouts.c.id == rollout_id)
    if seen_transitions is not None:
        q = q.where(rollouts.c.transitions == seen_transitions)
    done = conn.execute(
        q.values(state=state.value, reason=reason, transitions=rollouts.c.transitions + 1, updated_at=now)
    )
    if done.rowcount != 1:
        raise Conflict(f"rollout {rollout_id!r} changed state meanwhile (another replica?); try again")


def set_spec(*, conn: Connection, now: datetime, rollout_id: str, spec: dict[str, Any]) -> None:
    """Replace the stored spec (used to record acknowledged failures on resume)."""
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(spec=spec, updated_at=now))


def set_wave(*, conn: Connection, now: datetime, rollout_id: str, wave: int) -> None:
    """Advance the current wave to `wave`, only from `wave - 1`: a wave is never advanced twice."""
    done = conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rollout_id, rollouts.c.current_wave == wave - 1)
        .values(current_wave=wave, updated_at=now)
    )
    if done.rowcount != 1:
        raise Conflict(f"rollout {rollout_id!r} is no longer in wave {wave - 1} (another replica?)")


def members(*, conn: Connection, rollout_id: str) -> list[dict[str, Any]]:
    """Every device row of a rollout, by wave then id."""
    q = (
        select(rollout_devices)
        .where(rollout_devices.c.rollout_id == rollout_id)
        .order_by(rollout_devices.c.wave, rollout_devices.c.device_id)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def rollouts_of_device(*, conn: Connection, device_id: str) -> set[str]:
    """Ids of rollouts a device belongs to."""
    q = select(rollout_devices.c.rollout_id).where(rollout_devices.c.device_id == device_id)
    return {r[0] for r in conn.execute(q)}


def update_members(*, conn: Connection, rollout_id: str, changes: list[dict[str, Any]]) -> None:
    """Batch-update member rows: each dict has device_id plus the columns to set (same keys in all)."""
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for ch in changes:
        by_keys.setdefault(tuple(sorted(ch)), []).append(ch)
    for keys, group in by_keys.items():
        cols = [k for k in keys if k != "device_id"]
        stmt = (
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == rollout_id,
                rollout_devices.c.device_id == bindparam("b_device"),
            )
            .values({c: bindparam(f"b_{c}") for c in cols})
        )
        conn.execute(stmt, [{f"b_{k}" if k != "device_id" else "b_device": v for k, v in ch.items()} for ch in group])


def with_unfinished_members(*, conn: Connection) -> set[str]:
    """Ids of rollouts that still have a member not yet healthy, failed or rolled back."""
    q = (
        select(rollout_devices.c.rollout_id)
        .where(rollout_devices.c.state.not_in(["healthy", "failed", "rolled_back"]))
        .distinct()
    )
    return {r[0] for r in conn.execute(q)}
