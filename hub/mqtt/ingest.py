"""Store one batch of parsed MQTT messages in a single transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, bindparam, update

from hub.db.schema import devices
from hub.store import events as event_store
from protocol.messages import Event, ReportedState


@dataclass
class IngestBatch:
    """Latest reported state and status per device, and every event, from one drain of the queue."""

    reported: dict[str, ReportedState] = field(default_factory=dict)
    status: dict[str, bool] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def store_batch(*, engine: Engine, batch: IngestBatch, now: datetime) -> dict[str, set[int]]:
    """Write the batch; returns device id -> event seqs that were stored (new or already there)."""
    stored: dict[str, set[int]] = {}
    with engine.begin() as conn:
        if batch.reported:
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"))
                .values(reported=bindparam("b_rep"), applied_generation=bindparam("b_gen"), last_seen=now, online=True),
                [
                    {"b_id": d, "b_rep": r.model_dump(mode="json"), "b_gen": r.applied_generation}
                    for d, r in batch.reported.items()
                ],
            )
        if batch.status:
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"))
                .values(online=bindparam("b_online"), last_seen=now),
                [{"b_id": d, "b_online": online} for d, online in batch.status.items()],
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
                    "payload": e.model_dump(mode="json"),
                }
                for e in batch.events
            ]
            event_store.insert_new(conn=conn, rows=rows)
            for e in batch.events:
                stored.setdefault(e.device_id, set()).add(e.seq)
    return stored
