"""The MQTT bridge in-process against a private broker: ingest, dedup, acks, rejections, MQTT 3.1.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from hub.db.engine import make_engine
from hub.db.schema import events, telemetry
from hub.metrics import HubMetrics
from hub.mqtt import bridge as bridge_module
from hub.mqtt.bridge import MqttBridge
from hub.security import mosquitto_hash, sha256_hex
from hub.services import Hub
from hub.settings import HubSettings
from hub.store import devices as device_store
from hub.store import events as event_store
from hub.tuf_repo import utcnow
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


def _hub_with_device(tmp_path: Path, broker: Broker, root: str, db_url: str, device_id: str) -> Hub:
    settings = HubSettings(data_dir=tmp_path / "d", admin_token="t" * 20, mqtt_port=broker.port, database_url=db_url,
                           topic_root=root)  # fmt: skip
    hub = Hub(settings=settings)
    with hub.engine.begin() as conn:
        device_store.create_device(conn=conn, now=datetime.now(UTC), device_id=device_id, profile="p", group=None,
                                   tags={}, token_sha256=sha256_hex(device_id), mqtt_password_hash="-",
                                   agent_version="t")  # fmt: skip
    return hub


def test_a_burst_is_acked_after_storing_in_few_acks(tmp_path: Path, broker: Broker, unique_root: str,
                                                    db_url: str) -> None:  # fmt: skip
    """Acks of consecutive batches are gathered (ACK_INTERVAL_S): every seq acked once, each only once stored."""
    hub = _hub_with_device(tmp_path, broker, unique_root, db_url, "d1")
    hub.start()
    acked: list[list[int]] = []
    unstored: list[int] = []

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ids = Ack.from_json(msg.payload).ids
        with hub.engine.connect() as conn:
            have = {r.seq for r in conn.execute(select(events.c.seq).where(events.c.device_id == "d1"))}
        unstored.extend(set(ids) - have)
        acked.append(ids)

    dev = Collector(broker.port).wait_connected()
    try:
        assert hub.bridge is not None and hub.bridge.ingesting.wait(10)
        base = f"{unique_root}/devices/d1"
        dev.subscribe(f"{base}/ack")
        dev.client.on_message = on_ack
        now = datetime.now(UTC)
        burst = range(1, 301)
        for seq in burst:
            ev = Event(device_id="d1", seq=seq, kind=EventKind.HEALTH, ts=now, model="m", version=1)
            dev.client.publish(f"{base}/events", ev.to_bytes(), qos=1)
        assert _until(lambda: sorted(i for ids in acked for i in ids) == list(burst)), acked
        assert not unstored
        assert all(ids == sorted(ids) for ids in acked)
        assert len(acked) < len(burst) // 10, [len(ids) for ids in acked]  # not one per message, nor per batch
    finally:
        dev.close()
        hub.stop()


def test_a_time_without_a_zone_is_rejected_not_fatal_to_its_batch(tmp_path: Path, broker: Broker, unique_root: str,
                                                                  db_url: str) -> None:  # fmt: skip
    """A naive timestamp cannot go into a UTC column: refused as malformed, the good messages beside it stored."""
    hub = _hub_with_device(tmp_path, broker, unique_root, db_url, "d1")
    hub.start()
    dev = Collector(broker.port).wait_connected()
    try:
        assert hub.bridge is not None and hub.bridge.ingesting.wait(10)
        base = f"{unique_root}/devices/d1"
        dev.subscribe(f"{base}/ack")
        naive = datetime(2025, 1, 1, 12, 0)
        now = datetime.now(UTC)
        good = Event(device_id="d1", seq=2, kind=EventKind.HEALTH, ts=now)
        summary = TelemetrySummary(device_id="d1", model="m", version=1, profile="p", window_start=naive,
                                   window_end=naive, n=1)  # fmt: skip
        for payload, channel in [(Event(device_id="d1", seq=1, kind=EventKind.HEALTH, ts=naive).to_bytes(), "events"),
                                 (encode_message(TelemetryMessage(id=1, device_id="d1", summary=summary)), "telemetry"),
                                 (good.to_bytes(), "events")]:  # fmt: skip
            dev.client.publish(f"{base}/{channel}", payload, qos=1)
        assert _until(lambda: hub.bridge is not None and hub.bridge.processed >= 3)
        assert dev.wait_for(lambda m: any(Ack.from_json(p) == Ack(channel="events", ids=[2]) for _t, p in m))
        with hub.engine.connect() as conn:
            assert [r["seq"] for r in event_store.list_for_device(conn=conn, device_id="d1")] == [2]
            assert conn.execute(select(func.count()).select_from(telemetry)).scalar_one() == 0
        rejected = {s.labels["reason"]: s.value for m in hub.metrics.mqtt_rejected.collect() for s in m.samples
                    if s.name.endswith("_total")}  # fmt: skip
        assert rejected == {"malformed": 2.0}
    finally:
        dev.close()
        hub.stop()


def test_shadow_windows_are_checked_at_ingest(tmp_path: Path, broker: Broker, unique_root: str, db_url: str) -> None:
    """A shadow event's details must be a valid ShadowSummary of the candidate the event names: the rollout engine
    adds them up, so a bad one is refused as malformed here, the good one stored."""
    hub = _hub_with_device(tmp_path, broker, unique_root, db_url, "d1")
    hub.start()
    dev = Collector(broker.port).wait_connected()
    try:
        assert hub.bridge is not None and hub.bridge.ingesting.wait(10)
        base = f"{unique_root}/devices/d1"
        now = datetime.now(UTC)
        window = {"model": "m", "version": 2, "kind": "classifier", "samples": 10, "agreed": 9}

        def shadow(seq: int, **details: object) -> bytes:
            return Event(device_id="d1", seq=seq, kind=EventKind.SHADOW, ts=now, model="m", version=2,
                         details={**window, **details}).to_bytes()  # fmt: skip

        for payload in (shadow(1, agreed=11), shadow(2, version=3), shadow(3, serving_ms_sum=-1.0), shadow(4)):
            dev.client.publish(f"{base}/events", payload, qos=1)
        assert _until(lambda: hub.bridge is not None and hub.bridge.processed >= 4)
        assert _until(lambda: hub.bridge is not None and hub.bridge.stored >= 1)
        with hub.engine.connect() as conn:
            assert [r["seq"] for r in event_store.list_for_device(conn=conn, device_id="d1")] == [4]
        rejected = {s.labels["reason"]: s.value for m in hub.metrics.mqtt_rejected.collect() for s in m.samples
                    if s.name.endswith("_total")}  # fmt: skip
        assert rejected == {"malformed": 3.0}
    finally:
        dev.close()
        hub.stop()


def test_acks_are_split_to_stay_under_the_payload_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many ids gathered for one device, each ack message holds at most ACK_MAX_IDS of them, in order."""
    monkeypatch.setattr(bridge_module, "ACK_MAX_IDS", 3)
    sent: list[tuple[str, Ack]] = []

    class Recorder:
        def publish(self, topic: str, payload: bytes, qos: int) -> None:
            assert qos == 1
            sent.append((topic, Ack.from_json(payload)))

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    bridge = MqttBridge(host="127.0.0.1", port=1, username=None, password=None, topic_root="r/v1", engine=engine,
                        clock=utcnow, metrics=HubMetrics())  # fmt: skip
    bridge.client = Recorder()  # type: ignore[assignment]
    bridge._unacked.events["d1"] = {7, 1, 5, 3, 9}
    bridge._unacked.telemetry["d2"] = {4}
    bridge._publish_acks()
    assert sent == [("r/v1/devices/d1/ack", Ack(channel="events", ids=[1, 3, 5])),
                    ("r/v1/devices/d1/ack", Ack(channel="events", ids=[7, 9])),
                    ("r/v1/devices/d2/ack", Ack(channel="telemetry", ids=[4]))]  # fmt: skip
    bridge._publish_acks()
    assert len(sent) == 3  # nothing gathered since
    engine.dispose()


def _bridge_to(tmp_path: Path, port: int, username: str | None = None, password: str | None = None) -> MqttBridge:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    return MqttBridge(host="127.0.0.1", port=port, username=username, password=password, topic_root="r/v1",
                      engine=engine, clock=utcnow, metrics=HubMetrics())  # fmt: skip


def _connect_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == bridge_module.__name__ and r.levelname == "WARNING" and "cannot connect" in r.getMessage()
    ]


def test_a_broker_out_of_reach_is_a_warning_once_per_distinct_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the port: paho retries every 1-5 s; the operator reads why once, not once a retry."""
    from tests.support.broker import free_port

    caplog.set_level("INFO", logger=bridge_module.__name__)
    port = free_port()
    bridge = _bridge_to(tmp_path, port)
    bridge.start()
    try:
        assert _until(lambda: bridge.connect_failures.attempts >= 3, timeout=30)
    finally:
        bridge.stop()
        bridge.engine.dispose()
    assert not bridge.connected.is_set()
    (warning,) = _connect_warnings(caplog)
    assert f"cannot connect to the MQTT broker at 127.0.0.1:{port}: " in warning and "refused" in warning, warning
    assert not [r for r in caplog.records if "MQTT disconnected" in r.getMessage()]


def test_a_refused_connack_is_a_warning_that_says_why(tmp_path: Path, unique_root: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The broker answers but refuses the hub's credentials (a password file the hub's does not match)."""
    from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
    from tests.support.broker import start_broker

    auth = MosquittoAuth(password_file=tmp_path / "auth" / "passwd", acl_file=tmp_path / "auth" / "acl",
                         pid_file=tmp_path / "mosquitto.pid", topic_root=unique_root)  # fmt: skip
    auth.apply({HUB_USERNAME: mosquitto_hash("the-right-password")})
    broker = start_broker(
        tmp_path / "mosq",
        extra_conf=[f"password_file {auth.password_file}", f"acl_file {auth.acl_file}", f"pid_file {auth.pid_file}"],
    )
    caplog.set_level("INFO", logger=bridge_module.__name__)
    bridge = _bridge_to(tmp_path, broker.port, HUB_USERNAME, "a-stale-password")
    try:
        bridge.start()
        assert _until(lambda: bridge.connect_failures.attempts >= 2, timeout=30)
    finally:
        bridge.stop()
        bridge.engine.dispose()
        broker.stop()
    (warning,) = _connect_warnings(caplog)
    assert f"127.0.0.1:{broker.port}: the broker refused the connection: " in warning, warning
    assert any(word in warning for word in ("Not authorized", "Bad user name or password")), warning


def test_connect_failures_are_logged_once_per_error_and_again_every_30_s(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger=bridge_module.__name__)
    now = [0.0]
    failures = bridge_module.ConnectFailures("broker:1883", monotonic=lambda: now[0])
    for _ in range(5):  # paho's retries, 1-5 s apart
        failures.failed("[Errno 111] Connection refused")
        now[0] += 5
    failures.failed("[Errno 113] No route to host")  # another error: at once
    now[0] += 5
    failures.failed("[Errno 113] No route to host")
    now[0] += 30
    failures.failed("[Errno 113] No route to host")  # the same one, 30 s on: again, with what went unsaid
    where = "cannot connect to the MQTT broker at broker:1883"
    assert _connect_warnings(caplog) == [
        f"{where}: [Errno 111] Connection refused; retrying",
        f"{where}: [Errno 113] No route to host; retrying (4 more failed attempts since the last warning)",
        f"{where}: [Errno 113] No route to host; retrying (1 more failed attempt since the last warning)",
    ]
    failures.connected()
    assert failures.attempts == 0
    assert caplog.records[-1].getMessage() == "connected to the MQTT broker at broker:1883 after 8 failed attempts"
    failures.failed("[Errno 111] Connection refused")  # a new outage: said at once
    assert len(_connect_warnings(caplog)) == 4
