"""Hourly rollups: fold raw telemetry rows into one summary per (model, version, profile, hour of window_start).

The monitor runs `roll_up` every pass. Each call takes the oldest rows not yet rolled up (at most
`batch`), adds them to their hour's rollup (Accumulator), and marks them, in one transaction, so a
row is counted either raw or in its rollup, never both. A rollup keeps every source: the windows of devices
serving the version and the cloud-only windows, whose counts it stores beside the merge (accumulate.py), so
the gates and the API split a rolled-up hour the way they split its raw windows. Queries over whole hours
then read one row per profile and hour instead of every device window (query.py); raw rows stay for device,
group and tag cohorts and for the edges of a range. On PostgreSQL, rows are locked (SKIP LOCKED) so hub
replicas rolling up at the same time take different rows.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from hub.db.schema import telemetry
from hub.telemetry.accumulate import Accumulator
from hub.telemetry.tables import telemetry_hourly

BATCH = 5000


def hour_of(t: datetime) -> datetime:
    """The start of the hour holding `t`."""
    return t.replace(minute=0, second=0, microsecond=0)


def roll_up(conn: Connection, *, batch: int = BATCH) -> int:
    """Fold up to `batch` raw rows into their hourly rollups; returns how many rows were folded."""
    q = (
        select(telemetry.c.id, telemetry.c.model, telemetry.c.version, telemetry.c.window_start, telemetry.c.summary)
        .where(telemetry.c.rolled_up.is_(False))
        .order_by(telemetry.c.id)
        .limit(batch)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    groups: dict[tuple[str, int, str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r.model, r.version, r.summary["profile"], hour_of(r.window_start))].append(r.summary)
    for (model, version, profile, hour), summaries in groups.items():
        key = (telemetry_hourly.c.model == model, telemetry_hourly.c.version == version,
               telemetry_hourly.c.profile == profile, telemetry_hourly.c.hour == hour)  # fmt: skip
        existing = conn.execute(select(telemetry_hourly).where(*key)).first()
        acc = Accumulator()
        if existing is not None:
            acc.add(existing.summary, existing.rows)
        before = acc.rows
        for s in summaries:
            acc.add(s)
        merged = acc.rollup()
        assert merged is not None  # at least one summary was added
        folded = acc.rows - before
        values = {"window_start": datetime.fromisoformat(merged["window_start"]),
                  "window_end": datetime.fromisoformat(merged["window_end"]), "summary": merged}  # fmt: skip
        if existing is None:
            conn.execute(insert(telemetry_hourly).values(model=model, version=version, profile=profile, hour=hour,
                                                         rows=folded, skipped=acc.skipped, **values))  # fmt: skip
        else:
            conn.execute(update(telemetry_hourly).where(telemetry_hourly.c.id == existing.id).values(
                rows=existing.rows + folded, skipped=existing.skipped + acc.skipped, **values))  # fmt: skip
    ids = [r.id for r in rows]
    for start in range(0, len(ids), 1000):
        conn.execute(update(telemetry).where(telemetry.c.id.in_(ids[start : start + 1000])).values(rolled_up=True))
    return len(rows)
