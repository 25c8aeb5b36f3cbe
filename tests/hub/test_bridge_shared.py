"""Hub replicas on one broker: MQTT 5 shared subscriptions split ingest, each message stored and acked once.

Two real `MqttBridge`s (what two `edgefleet hub serve` replicas run) share one database and one real broker:
Mosquitto for MQTT 5, amqtt for MQTT 3.1.1, where only the leader ingests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import Engine, func, select

from hub.db.engine import make_engine, upgrade
from hub.db.schema import devices, events, telemetry
from hub.metrics import HubMetrics
from hub.mqtt.bridge import MqttBridge
from hub.security import sha256_hex
from hub.store import devices as device_store
from hub.tuf_repo import utcnow
from protocol.http import EnrollResponse, MqttCredentials
from protocol.messages import Ack, DesiredModel, DesiredState, DeviceStatus, Event, EventKind, ReportedState
from protocol.telemetry import TelemetryMessage, TelemetrySummary, encode_message
from protocol.topics import Channel, device_topic
from tests.hub.mqttc import Collector
from tests.hub.simdevice import SimDevice, now
from tests.support.amqtt import amqtt_broker
from tests.support.broker import Broker

pytestmark = pytest.mark.integration
DEVICES = 50
TELEMETRY_PER_DEVICE = 4
INSTALL_EVENTS = 6  # a healthy SimDevice install: download_started ... committed
REPORT_BURST = 10


def _until(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """One database both replicas use (SQLite file, or a PostgreSQL schema)."""
    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()


def _enroll(engine: Engine, ids: list[str]) -> None:
    with engine.begin() as conn:
        for d in ids:
            device_store.create_device(conn=conn, now=now(), device_id=d, profile="p", group=None, tags={},
                                       token_sha256=sha256_hex(d), mqtt_password_hash="-",
                                       agent_version="t")  # fmt: skip


@contextmanager
def _replicas(port: int, engine: Engine, root: str, protocol: str = "5",
              leaders: tuple[bool, ...] = (True, True)) -> Iterator[list[MqttBridge]]:  # fmt: skip
    """Started bridges sharing `engine`, one per entry of `leaders` (each told whether it is the leader)."""
    made: list[MqttBridge] = []
    try:
        for leader in leaders:
            bridge = MqttBridge(host="127.0.0.1", port=port, username=None, password=None, topic_root=root,
                                engine=engine, clock=utcnow, metrics=HubMetrics(), protocol=protocol)  # fmt: skip
            bridge.set_leader(leader)
            bridge.start()
            made.append(bridge)
        yield made
    finally:
        for bridge in made:
            bridge.stop()


def _rows(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _device_rows(engine: Engine) -> dict[str, tuple[int, bool]]:
    """device id -> (applied generation, online)."""
    with engine.connect() as conn:
        rows = conn.execute(select(devices.c.id, devices.c.applied_generation, devices.c.online))
        return {r.id: (r.applied_generation, r.online) for r in rows}


def _acked(observer: Collector, root: str) -> set[tuple[str, str, int]]:
    """(device, channel, id) for every ack the hub published."""
    out = set()
    with observer.cond:
        messages = list(observer.messages)
    for topic, payload in messages:
        device = topic[len(f"{root}/devices/") :].split("/")[0]
        ack = Ack.from_json(payload)
        out |= {(device, ack.channel, i) for i in ack.ids}
    return out


def _summary(device_id: str, n: int) -> TelemetrySummary:
    t = now()
    return TelemetrySummary(device_id=device_id, model="m", version=1, profile="p", window_start=t, window_end=t, n=n)


def _stable(read: Callable[[], object], want: object) -> bool:
    """`read()` reaches `want` and still equals it half a second later (no late duplicate arrives)."""
    if not _until(lambda: read() == want):
        return False
    time.sleep(0.5)
    return read() == want


def _report_burst(sims: list[SimDevice], generations: range) -> None:
    """Each device reports every generation in `generations` back to back (retained, as the agent does)."""
    for s in sims:
        assert s.client is not None
        for generation in generations:
            state = ReportedState(device_id=s.id, profile="p", applied_generation=generation, agent_version="sim",
                                  reported_at=now())  # fmt: skip
            s.client.publish(s.topic(Channel.REPORTED), state.to_bytes(), qos=1, retain=True)


def test_mqtt5_replicas_split_ingest_store_each_message_once_and_ack_it(
    broker: Broker, unique_root: str, engine: Engine
) -> None:
    ids = [f"sim-{i:02d}" for i in range(DEVICES)]
    _enroll(engine, ids)
    acks = Collector(broker.port).wait_connected()
    acks.subscribe(f"{unique_root}/devices/+/ack")
    sims: list[SimDevice] = []
    with _replicas(broker.port, engine, unique_root, leaders=(True, False)) as (a, b):
        try:
            assert _until(lambda: a.ingesting.is_set() and b.ingesting.is_set())
            creds = MqttCredentials(host="127.0.0.1", port=broker.port, username="sim", password="-")
            for d in ids:
                enrolled = EnrollResponse(device_id=d, device_token="-", mqtt=creds, hub_url="http://x", tuf_root="{}")
                sims.append(SimDevice(enrolled, "p", unique_root).connect())
            assert _until(lambda: all(s.client is not None and s.client.is_connected() for s in sims))
            # A desired state makes every device install: six events and a reported state each.
            model = DesiredModel(name="m", version=1, manifest_target="m/1/p/manifest.json")
            a.publish_desired([DesiredState(device_id=d, generation=1, models=[model], issued_at=now()) for d in ids])
            assert _until(lambda: all(s.generation == 1 for s in sims))
            for s in sims:
                assert s.client is not None
                for i in range(1, TELEMETRY_PER_DEVICE + 1):
                    message = TelemetryMessage(id=i, device_id=s.id, summary=_summary(s.id, i))
                    s.client.publish(s.topic(Channel.TELEMETRY), encode_message(message), qos=1)
            sent_events, sent_telemetry = DEVICES * INSTALL_EVENTS, DEVICES * TELEMETRY_PER_DEVICE

            # Stored exactly once: the rows, and the two replicas' counts add up to what was sent (no copies).
            assert _until(lambda: _rows(engine, events) == sent_events and _rows(engine, telemetry) == sent_telemetry)
            assert _stable(lambda: a.stored_by_channel[Channel.EVENTS] + b.stored_by_channel[Channel.EVENTS],
                           sent_events)  # fmt: skip
            assert _stable(lambda: a.stored_by_channel[Channel.TELEMETRY] + b.stored_by_channel[Channel.TELEMETRY],
                           sent_telemetry)  # fmt: skip
            assert _rows(engine, events) == sent_events and _rows(engine, telemetry) == sent_telemetry
            # Both replicas ingested a share.
            for bridge in (a, b):
                assert bridge.stored_by_channel[Channel.EVENTS] > 0
                assert bridge.stored_by_channel[Channel.TELEMETRY] > 0
            # Every event and every telemetry message acknowledged (by the replica that stored it).
            expected = {(d, "events", seq) for d in ids for seq in range(1, INSTALL_EVENTS + 1)}
            expected |= {(d, "telemetry", i) for d in ids for i in range(1, TELEMETRY_PER_DEVICE + 1)}
            assert _until(lambda: _acked(acks, unique_root) >= expected), expected - _acked(acks, unique_root)
            assert _device_rows(engine) == dict.fromkeys(ids, (1, True))

            # Reported state and status are the leader's alone, in order: the last of a burst wins.
            _report_burst(sims, range(2, REPORT_BURST + 2))
            assert _stable(lambda: _device_rows(engine), dict.fromkeys(ids, (REPORT_BURST + 1, True)))
            assert a.stored_by_channel[Channel.REPORTED] > DEVICES * REPORT_BURST  # each once, and then some
            assert b.stored_by_channel[Channel.REPORTED] == b.stored_by_channel[Channel.STATUS] == 0
            assert a.processed == a.stored and b.processed == b.stored  # nothing rejected, nothing lost

            # The lease moves: the new leader takes the device state over, starting with the retained copies.
            before = b.stored_by_channel[Channel.REPORTED], a.stored_by_channel[Channel.REPORTED]
            a.set_leader(False)
            b.set_leader(True)
            assert _until(lambda: b.stored_by_channel[Channel.REPORTED] == DEVICES)  # retained, on subscribe
            assert _until(lambda: b.stored_by_channel[Channel.STATUS] == DEVICES)
            assert _until(lambda: a.ingesting.is_set() and b.ingesting.is_set())
            _report_burst(sims, range(REPORT_BURST + 2, 2 * REPORT_BURST + 2))
            assert _stable(lambda: _device_rows(engine), dict.fromkeys(ids, (2 * REPORT_BURST + 1, True)))
            assert b.stored_by_channel[Channel.REPORTED] == DEVICES + DEVICES * REPORT_BURST
            assert a.stored_by_channel[Channel.REPORTED] == before[1]
        finally:
            for s in sims:
                s.disconnect()
            acks.close()


def test_mqtt5_leader_reads_retained_device_state_at_start(broker: Broker, unique_root: str, engine: Engine) -> None:
    """What devices reported while no hub listened is stored at start: the leader's plain subscription."""
    ids = [f"dev-{i:02d}" for i in range(DEVICES)]
    _enroll(engine, ids)
    device = Collector(broker.port).wait_connected()
    try:
        for i, d in enumerate(ids):
            state = ReportedState(device_id=d, profile="p", applied_generation=7, agent_version="t", reported_at=now())
            device.publish(device_topic(d, Channel.REPORTED, unique_root), state.to_bytes(), retain=True)
            status = DeviceStatus(status="online" if i % 2 else "offline")
            device.publish(device_topic(d, Channel.STATUS, unique_root), status.to_bytes(), retain=True)
            # A device that (wrongly) retains an event: shared subscriptions ask for no retained copies.
            event = Event(device_id=d, seq=1, kind=EventKind.HEALTH, ts=now())
            device.publish(device_topic(d, Channel.EVENTS, unique_root), event.to_bytes(), retain=True)
    finally:
        device.close()
    with _replicas(broker.port, engine, unique_root, leaders=(True, False)) as (a, b):
        assert _until(lambda: _device_rows(engine) == {d: (7, bool(i % 2)) for i, d in enumerate(ids)})
        assert _stable(lambda: (a.stored_by_channel[Channel.REPORTED], a.stored_by_channel[Channel.STATUS]),
                       (DEVICES, DEVICES))  # fmt: skip
        assert b.stored == 0 and a.stored_by_channel[Channel.EVENTS] == 0 and _rows(engine, events) == 0


def test_mqtt311_only_the_leader_ingests_and_leadership_moves_it(
    tmp_path: Path, unique_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """amqtt speaks only MQTT 3.1.1: no shared subscriptions, so the leader alone subscribes."""
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(engine)
    ids = [f"d{i}" for i in range(10)]
    caplog.set_level(logging.INFO, logger="hub.mqtt.bridge")
    with amqtt_broker(tmp_path) as port, _replicas(port, engine, unique_root, "3.1.1", (True, False)) as (a, b):
        acks = Collector(port, protocol=mqtt.MQTTv311).wait_connected()
        acks.subscribe(f"{unique_root}/devices/+/ack")
        device = Collector(port, protocol=mqtt.MQTTv311).wait_connected()
        try:
            assert _until(lambda: a.ingesting.is_set() and b.connected.is_set())

            def send(seqs: range) -> None:
                for d in ids:
                    for seq in seqs:
                        ev = Event(device_id=d, seq=seq, kind=EventKind.HEALTH, ts=now(), model="m", version=1)
                        device.publish(device_topic(d, Channel.EVENTS, unique_root), ev.to_bytes())

            send(range(1, 4))
            assert _until(lambda: _rows(engine, events) == 30)
            assert _stable(lambda: (a.stored_by_channel[Channel.EVENTS], b.stored_by_channel[Channel.EVENTS]), (30, 0))
            assert not b.ingesting.is_set()

            a.set_leader(False)
            b.set_leader(True)
            assert _until(lambda: b.ingesting.is_set() and not a.ingesting.is_set())
            send(range(4, 7))
            assert _until(lambda: _rows(engine, events) == 60)
            assert _stable(lambda: (a.stored_by_channel[Channel.EVENTS], b.stored_by_channel[Channel.EVENTS]),
                           (30, 30))  # fmt: skip
            want = {(d, "events", seq) for d in ids for seq in range(1, 7)}
            assert _until(lambda: _acked(acks, unique_root) >= want)
        finally:
            device.close()
            acks.close()
    engine.dispose()
    said = [r for r in caplog.records if "no shared subscriptions" in r.getMessage()]
    assert len(said) == 2, said  # once per replica, not again on a change of leader
    assert "this one is the leader" in said[0].getMessage() + said[1].getMessage()
