"""The audit log: every operator action, who did it and to what."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from hub.db.schema import audit_log


def record(*, conn: Connection, now: datetime, actor: str, action: str, target: str, details: Any = None) -> None:
    """Append one audit entry."""
    conn.execute(insert(audit_log).values(ts=now, actor=actor, action=action, target=target, details=details or {}))


def list_entries(*, conn: Connection, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Newest first."""
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit).offset(offset))
    return [dict(r._mapping) for r in rows]
