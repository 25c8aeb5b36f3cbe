"""Device events (and telemetry rows), deduplicated by (device, seq/id)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from hub.db.schema import events


def insert_new(
    *, conn: Connection, rows: list[dict[str, Any]], table: Table = events, key: tuple[str, str] = ("device_id", "seq")
) -> list[dict[str, Any]]:
    """Insert rows, skipping `key` pairs already stored (events, telemetry); returns the new ones."""
    if not rows:
        return []
    unique = {(r[key[0]], r[key[1]]): r for r in rows}
    cols = (table.c[key[0]], table.c[key[1]])
    existing = {tuple(r) for r in conn.execute(select(*cols).where(tuple_(*cols).in_(list(unique))))}
    fresh = [r for k, r in unique.items() if k not in existing]
    if not fresh:
        return []
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key))
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt, fresh)
    return fresh


def list_for_device(*, conn: Connection, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """A device's newest events first."""
    q = select(events).where(events.c.device_id == device_id).order_by(events.c.seq.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(q)]


def failures_for(*, conn: Connection, rollout_id: str, kinds: list[str]) -> dict[str, str]:
    """device id -> reason for devices that sent one of `kinds` during this rollout."""
    q = select(events.c.device_id, events.c.kind, events.c.payload).where(
        events.c.rollout_id == rollout_id, events.c.kind.in_(kinds)
    )
    return {r.device_id: str(r.payload.get("reason") or r.kind) for r in conn.execute(q)}
