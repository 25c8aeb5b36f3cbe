"""Device events (and telemetry rows), deduplicated by (device, seq/id)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Connection, Table, Text, bindparam, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeEngine

from hub.db.schema import events


def insert_new(
    *,
    conn: Connection,
    rows: list[dict[str, Any]],
    table: Table = events,
    key: tuple[str, str] = ("device_id", "seq"),
    json_text: tuple[str, ...] = (),
) -> None:
    """Insert rows in the order given, skipping `key` pairs already stored (events, telemetry, and repeats in `rows`).

    No read first: `ON CONFLICT DO NOTHING` makes a key another transaction holds uncommitted wait for it, then
    skips it, so callers that insert in key order never deadlock one another. Columns named in `json_text` take
    JSON already serialised (pydantic's `model_dump_json`), stored as it is rather than encoded again.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_new(conn, rows, table, key, json_text)
        return
    # SQLite keeps JSON as text: a text bind stores it as it is (CAST(... AS JSON) would mean NUMERIC affinity).
    stmt = sqlite.insert(table).values({c: bindparam(c, type_=Text) for c in json_text})
    conn.execute(stmt.on_conflict_do_nothing(index_elements=list(key)), rows)


def _copy_new(
    conn: Connection, rows: list[dict[str, Any]], table: Table, key: tuple[str, str], json_text: tuple[str, ...]
) -> None:
    """PostgreSQL: COPY the rows into the session's temporary table, then insert them in order, skipping stored keys.

    Measured on ingest batches, an `executemany` of one `INSERT ... ON CONFLICT` per row cost the hub about twice
    the CPU of psycopg's COPY (which SQLAlchemy does not wrap) plus one `INSERT ... SELECT ... ORDER BY`.
    """
    preparer = conn.dialect.identifier_preparer
    target, staging = preparer.format_table(table), preparer.quote(f"ef_incoming_{table.name}")
    names = list(rows[0])
    columns = ", ".join(preparer.quote(n) for n in names)
    convert = [(n, None if n in json_text else _bind(table.c[n].type, conn)) for n in names]
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.cursor() as cursor:
        # Made once per session (a temporary table is the session's own), emptied at every commit or rollback.
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
                       f"SELECT 0 AS ef_order, * FROM {target} WITH NO DATA")  # fmt: skip
        with cursor.copy(f"COPY {staging} (ef_order, {columns}) FROM STDIN") as copy:
            for i, row in enumerate(rows):
                copy.write_row([i, *[row[n] if f is None else f(row[n]) for n, f in convert]])
        cursor.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {staging} ORDER BY ef_order "
                       f"ON CONFLICT ({', '.join(preparer.quote(k) for k in key)}) DO NOTHING")  # fmt: skip


def _bind(column_type: TypeEngine[Any], conn: Connection) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value before the driver sees it (UtcDateTime: refuse a naive time, convert to UTC;
    JSON: encode), or None when nothing."""
    return json.dumps if isinstance(column_type, JSON) else column_type.bind_processor(conn.dialect)


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
