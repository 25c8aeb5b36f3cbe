"""`store_batch` on SQLite and PostgreSQL: every key stored once however often it arrives, JSON stored as the model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from hub.db.engine import make_engine, upgrade
from hub.db.schema import events, telemetry
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.store import events as event_store
from protocol.messages import Event, EventKind
from protocol.telemetry import TelemetryMessage, TelemetrySummary

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()


def _event(device_id: str, seq: int) -> Event:
    return Event(device_id=device_id, seq=seq, kind=EventKind.FAILED, ts=NOW, model="m", version=2,
                 reason="naïve → ünïcode", details={"attempt": seq, "nested": [1.5, None, "x"]})  # fmt: skip


def _telemetry(device_id: str, msg_id: int) -> TelemetryMessage:
    summary = TelemetrySummary(device_id=device_id, model="m", version=2, profile="p", n=msg_id,
                               window_start=NOW - timedelta(minutes=1), window_end=NOW)  # fmt: skip
    return TelemetryMessage(id=msg_id, device_id=device_id, summary=summary)


def _count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_duplicates_within_and_across_batches_are_stored_once_and_acked(engine: Engine) -> None:
    first = IngestBatch(events=[_event("d2", 1), _event("d1", 2), _event("d1", 1), _event("d1", 2)],
                        telemetry=[_telemetry("d1", 7), _telemetry("d1", 7), _telemetry("d2", 7)])  # fmt: skip
    stored = store_batch(engine=engine, batch=first, now=NOW)
    assert stored.events == {"d1": {1, 2}, "d2": {1}}
    assert stored.telemetry == {"d1": {7}, "d2": {7}}
    assert _count(engine, events) == 3 and _count(engine, telemetry) == 2

    # A resend (the ack was lost) next to new messages: the copies are skipped, and acked again.
    again = IngestBatch(events=[_event("d1", 2), _event("d1", 3)], telemetry=[_telemetry("d2", 7)])
    stored = store_batch(engine=engine, batch=again, now=NOW)
    assert stored.events == {"d1": {2, 3}} and stored.telemetry == {"d2": {7}}
    assert _count(engine, events) == 4 and _count(engine, telemetry) == 2

    with engine.connect() as conn:
        row = conn.execute(select(events).where(events.c.device_id == "d1", events.c.seq == 2)).one()
        tel = conn.execute(select(telemetry).where(telemetry.c.device_id == "d2")).one()
    # JSON columns read back as the model's JSON form, whatever way it was written.
    assert row.payload == _event("d1", 2).model_dump(mode="json")
    assert (row.kind, row.ts, row.model, row.version) == ("failed", NOW, "m", 2)
    assert tel.summary == _telemetry("d2", 7).summary.model_dump(mode="json")
    assert (tel.msg_id, tel.window_start, tel.window_end) == (7, NOW - timedelta(minutes=1), NOW)


def test_insert_new_takes_json_as_objects_or_text_and_refuses_naive_times(engine: Engine) -> None:
    row = {"device_id": "d1", "kind": "health", "ts": NOW, "model": None, "version": None, "rollout_id": None}
    with engine.begin() as conn:
        event_store.insert_new(conn=conn, rows=[{**row, "seq": 1, "payload": {"as": "object", "n": [1, 2.5]}}])
        event_store.insert_new(conn=conn, rows=[{**row, "seq": 2, "payload": '{"as": "text"}'}], json_text=("payload",))
    with engine.connect() as conn:
        assert [r["payload"] for r in event_store.list_for_device(conn=conn, device_id="d1")] == [
            {"as": "text"}, {"as": "object", "n": [1, 2.5]}]  # fmt: skip
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        naive = {**row, "seq": 3, "ts": NOW.replace(tzinfo=None), "payload": {}}
        event_store.insert_new(conn=conn, rows=[naive])
    assert _count(engine, events) == 2


@pytest.mark.postgres
def test_replicas_storing_the_same_keys_at_once_neither_deadlock_nor_duplicate(pg: Engine) -> None:
    """Two replicas (threads here) store the same keys at the same moment, each got them in another order."""
    rounds, devices, per_device = 20, 20, 10
    start = threading.Barrier(2, timeout=30)
    failures: list[BaseException] = []

    def replica(reverse: bool) -> None:
        try:
            for r in range(rounds):
                keys = [(f"d{d:02d}", r * per_device + s) for s in range(per_device) for d in range(devices)]
                order = keys[::-1] if reverse else keys
                batch = IngestBatch(events=[_event(d, s) for d, s in order],
                                    telemetry=[_telemetry(d, s) for d, s in order])  # fmt: skip
                start.wait()
                store_batch(engine=pg, batch=batch, now=NOW)
        except BaseException as e:  # PostgreSQL breaks a deadlock by failing one transaction
            failures.append(e)
            start.abort()

    threads = [threading.Thread(target=replica, args=(reverse,)) for reverse in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert _count(pg, events) == _count(pg, telemetry) == rounds * devices * per_device
