"""Retention: how long the hub keeps raw device windows, hourly rollups and device events.

Raw windows (one row per device and window) are what device, group and tag cohorts and the edges of
a time range read; they are the bulk of the database. Once a raw row is folded into its hourly rollup
(rollup.py) and is older than `raw_s`, it is deleted: fleet and profile statistics over whole hours
stay exact (they come from the rollups), while per-device detail older than that is gone. Rows not
rolled up yet are never deleted. Rollups are kept `hourly_s`, events `events_s`.

The hub drops a resent telemetry id or event seq because the first copy is stored; once a row is
deleted a resend would count again. Devices delete a row when the hub acknowledges it and expire
unacknowledged rows after their outbox's `outbox_max_age_s` (7 days by default), so `raw_s` and
`events_s` must stay above that; the defaults (14 and 90 days) do, and the settings refuse less
than one day.

Each call deletes at most `batch` rows per table (short transactions on a busy hub); the monitor calls
it every pass, so a backlog after a long pause clears over a few passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, ColumnElement, Connection, Table, delete, select

from hub.db.schema import events, telemetry
from hub.telemetry.tables import telemetry_hourly

BATCH = 5000


@dataclass(frozen=True)
class Retention:
    raw_s: float = 14 * 86400
    hourly_s: float = 400 * 86400
    events_s: float = 90 * 86400

    def prune(self, conn: Connection, now: datetime, batch: int = BATCH) -> dict[str, int]:
        """Delete what is past its retention (at most `batch` rows per table); counts per table."""
        second = timedelta(seconds=1)
        return {
            "telemetry": _delete(conn, telemetry, telemetry.c.window_end, now - self.raw_s * second, batch,
                                 telemetry.c.rolled_up.is_(True)),
            "telemetry_hourly": _delete(conn, telemetry_hourly, telemetry_hourly.c.window_end,
                                        now - self.hourly_s * second, batch),
            "events": _delete(conn, events, events.c.ts, now - self.events_s * second, batch),
        }  # fmt: skip


def _delete(conn: Connection, table: Table, stamp: Column[datetime], cutoff: datetime, batch: int,
            *extra: ColumnElement[bool]) -> int:  # fmt: skip
    ids = select(table.c.id).where(stamp < cutoff, *extra).order_by(stamp).limit(batch)
    doomed = [r[0] for r in conn.execute(ids)]
    for start in range(0, len(doomed), 1000):
        conn.execute(delete(table).where(table.c.id.in_(doomed[start : start + 1000])))
    return len(doomed)
