"""Device events, deduplicated by (device, seq)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from hub.db.schema import events


def insert_new(*, conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert events, skipping (device_id, seq) pairs already stored; returns the new ones."""
    if not rows:
        return []
    unique = {(r["device_id"], r["seq"]): r for r in rows}
    existing = set(
        conn.execute(
            select(events.c.device_id, events.c.seq).where(tuple_(events.c.device_id, events.c.seq).in_(list(unique)))
        )
    )
    fresh = [r for key, r in unique.items() if key not in existing]
    if not fresh:
        return []
    dialect = conn.dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(events).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    else:
        stmt = sqlite.insert(events).on_conflict_do_nothing(index_elements=["device_id", "seq"])
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
