"""The MQTT bridge in-process against a private broker: ingest, dedup, acks, rejections, MQTT 3.1.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from hub.db.schema import telemetry
from hub.security import mosquitto_hash, sha256_hex
from hub.services import Hub
from hub.settings import HubSettings
from hub.store import devices as device_store
from hub.store import events as event_store
from protocol.messages import Ack, DeviceStatus, Event, EventKind, ReportedState
from protocol.telemetry import TelemetryMessage, TelemetrySummary, encode_message
from tests.hub.mqttc import Collector
from tests.support.amqtt import amqtt_broker
from tests.support.broker import Broker

pytestmark = pytest.mark.integration


def _until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_ingest_dedup_ack_and_rejections(
    tmp_path: Path, broker: Broker, unique_root: str, protocol: str, db_url: str
) -> None:
    settings = HubSettings(data_dir=tmp_path / "d", admin_token="t" * 20, mqtt_port=broker.port, database_url=db_url,
                           topic_root=unique_root, mqtt_protocol=protocol)  # fmt: skip
    hub = Hub(settings=settings)
    now = datetime.now(UTC)
    with hub.engine.begin() as conn:
        device_store.create_device(conn=conn, now=now, device_id="d1", profile="p", group=None, tags={},
                                   token_sha256=sha256_hex("x"), mqtt_password_hash=mosquitto_hash("y"),
                                   agent_version="t")  # fmt: skip
    hub.start()
    dev = Collector(broker.port, protocol=mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5).wait_connected()
    try:
        # Subscribed, not only connected: a message published before the broker granted the subscription is lost.
        assert hub.bridge is not None and hub.bridge.ingesting.wait(10)
        base = f"{unique_root}/devices/d1"
        dev.subscribe(f"{base}/ack")
        ev = Event(device_id="d1", seq=7, kind=EventKind.COMMITTED, ts=now, model="m", version=1)
        for _ in range(2):
            dev.publish(f"{base}/events", ev.to_bytes())
        dev.publish(f"{base}/events", b"{not json")
        dev.publish(f"{base}/reported", b'{"device_id": "d1"}')
        dev.publish(f"{base}/reported", ReportedState(device_id="other", profile="p", agent_version="t",
                                                      reported_at=now).to_bytes())  # fmt: skip
        dev.publish(f"{base}/reported", ReportedState(device_id="d1", profile="p", applied_generation=3,
                                                      agent_version="t", reported_at=now).to_bytes())  # fmt: skip
        dev.publish(f"{base}/status", DeviceStatus(status="offline").to_bytes())
        summary = TelemetrySummary(device_id="d1", model="m", version=1, profile="p", window_start=now,
                                   window_end=now, n=10)  # fmt: skip
        for _ in range(2):
            dev.publish(f"{base}/telemetry", encode_message(TelemetryMessage(id=42, device_id="d1", summary=summary)))
        assert _until(lambda: hub.bridge is not None and hub.bridge.processed >= 9)
        assert dev.wait_for(lambda m: any(Ack.from_json(p) == Ack(channel="telemetry", ids=[42]) for _t, p in m))
        assert dev.wait_for(lambda m: any(Ack.from_json(p).ids == [7] for _t, p in m))
        with hub.engine.connect() as conn:
            assert len(event_store.list_for_device(conn=conn, device_id="d1")) == 1
            assert conn.execute(select(func.count()).select_from(telemetry)).scalar_one() == 1
            row = device_store.get(conn=conn, device_id="d1")
        assert row is not None and row["applied_generation"] == 3 and row["online"] is False
        rejected = {s.labels["reason"]: s.value for m in hub.metrics.mqtt_rejected.collect() for s in m.samples
                    if s.name.endswith("_total")}  # fmt: skip
        assert rejected == {"malformed": 2.0, "device_mismatch": 1.0}
    finally:
        dev.close()
        hub.stop()


def test_auto_protocol_falls_back_to_mqtt_311(tmp_path: Path, unique_root: str) -> None:
    """amqtt speaks only MQTT 3.1.1 (tests/support/amqtt.py)."""
    with amqtt_broker(tmp_path) as port:
        hub = Hub(settings=HubSettings(data_dir=tmp_path / "d", admin_token="t" * 20, mqtt_port=port,
                                       topic_root=unique_root, mqtt_protocol="auto"))  # fmt: skip
        try:
            hub.start()
            assert hub.bridge is not None
            assert _until(lambda: hub.bridge is not None and hub.bridge.ingesting.is_set(), timeout=15)
            assert hub.bridge.protocol == "3.1.1"
            dev = Collector(port, protocol=mqtt.MQTTv311).wait_connected()
            dev.publish(f"{unique_root}/devices/d9/status", b"garbage")
            assert _until(lambda: hub.bridge is not None and hub.bridge.processed >= 1)
            dev.close()
        finally:
            hub.stop()
