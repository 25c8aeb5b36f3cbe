"""Store one batch of parsed MQTT messages in a single transaction.

Replicas store events and telemetry concurrently (MQTT 5 shared subscriptions), a resent message possibly on
another replica than the first copy: rows are keyed, inserted in key order (one lock order for every replica,
so two batches never deadlock on PostgreSQL) and skipped when already there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, bindparam, select, update

from hub.db.schema import devices, telemetry
from hub.store import events as event_store
from protocol.messages import Event, ReportedState
from protocol.telemetry import TelemetryMessage, telemetry_key


@dataclass
class IngestBatch:
    """Latest reported state and status per device, and every event, from one drain of the queue."""

    reported: dict[str, ReportedState] = field(default_factory=dict)
    status: dict[str, bool] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    telemetry: list[TelemetryMessage] = field(default_factory=list)


@dataclass
class Stored:
    """What to acknowledge: device id -> event seqs and telemetry outbox ids now in the database."""

    events: dict[str, set[int]] = field(default_factory=dict)
    telemetry: dict[str, set[int]] = field(default_factory=dict)


def store_batch(*, engine: Engine, batch: IngestBatch, now: datetime) -> Stored:
    """Write the batch in one transaction; duplicates (same device and seq/id) are stored once."""
    stored = Stored()
    with engine.begin() as conn:
        touched = sorted(set(batch.reported) | set(batch.status))
        if touched and conn.dialect.name == "postgresql":
            # Device rows locked in id order before any update: the reported and status passes below, another
            # replica's batch and the rollout engine's desired states (also in id order) never deadlock.
            conn.execute(select(devices.c.id).where(devices.c.id.in_(touched)).order_by(devices.c.id).with_for_update())
        if batch.reported:
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"))
                .values(reported=bindparam("b_rep"), applied_generation=bindparam("b_gen"), last_seen=now, online=True),
                [
                    {"b_id": d, "b_rep": r.model_dump(mode="json"), "b_gen": r.applied_generation}
                    for d, r in sorted(batch.reported.items())
                ],
            )
        if batch.status:
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"))
                .values(online=bindparam("b_online"), last_seen=now),
                [{"b_id": d, "b_online": online} for d, online in sorted(batch.status.items())],
            )
        if batch.events:
            rows = [
                {
                    "device_id": e.device_id,
                    "seq": e.seq,
                    "kind": e.kind.value,
                    "ts": e.ts,
                    "model": e.model,
                    "version": e.version,
                    "rollout_id": e.rollout_id,
                    "payload": e.model_dump_json(),
                }
                for e in sorted(batch.events, key=lambda e: (e.device_id, e.seq))
            ]
            event_store.insert_new(conn=conn, rows=rows, json_text=("payload",))
            for e in batch.events:
                stored.events.setdefault(e.device_id, set()).add(e.seq)
        if batch.telemetry:
            rows = [
                {
                    "device_id": t.device_id,
                    "msg_id": t.id,
                    "model": telemetry_key(t.summary.unit, t.summary.model),
                    "version": t.summary.version,
                    "window_start": t.summary.window_start,
                    "window_end": t.summary.window_end,
                    "summary": t.summary.model_dump_json(),
                }
                for t in sorted(batch.telemetry, key=lambda t: (t.device_id, t.id))
            ]
            key = ("device_id", "msg_id")
            event_store.insert_new(conn=conn, rows=rows, table=telemetry, key=key, json_text=("summary",))
            for t in batch.telemetry:
                stored.telemetry.setdefault(t.device_id, set()).add(t.id)
    return stored
