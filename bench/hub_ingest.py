"""Hub ingest benchmark: simulated devices publish reported state and events; how fast does the hub store them?

A publisher in a separate process (so it does not share the hub's GIL) sends MESSAGES QoS 1 messages
(half reported states, half events) from DEVICES devices through a private Mosquitto. Baseline in
the same run: a raw paho wildcard subscriber receiving the same stream.

`hub_stored_msgs_per_s` counts only stored messages: those in batches the bridge committed to the database
(SQLite, WAL; `bridge.stored`, which leaves out rejected messages and batches that failed to store), over the
time from the first publish to the last store, also when the run timed out. The database is checked too:
every event is a row, and every device's row holds its last reported state.
Prints one JSON object: `hub_stored_msgs_per_s` (target >= 5000), `raw_paho_msgs_per_s`, `hub_to_raw`,
`messages_sent`, `messages_stored`, `stored_equals_sent`, `events_sent`, `event_rows`,
`devices_at_last_report`, `timed_out`, `devices`.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, insert, select

from hub.db.schema import devices, events
from hub.services import Hub
from hub.settings import HubSettings
from protocol.messages import Event, EventKind, LifecycleState, ReportedModel, ReportedState
from tests.support.broker import start_broker

DEVICES = 500
MESSAGES = 40_000
TIMEOUT_S = 300.0


def payloads(root: str) -> list[tuple[str, bytes]]:
    """Alternating reported state and event per device, as the agent sends them."""
    now = datetime.now(UTC)
    out = []
    for i in range(MESSAGES // 2):
        d = f"dev-{i % DEVICES:04d}"
        seq = i // DEVICES + 1
        model = ReportedModel(name="digits", active_version=1, state=LifecycleState.COMMITTED, self_test_passed=True)
        rep = ReportedState(device_id=d, profile="raspberry_pi_4", applied_generation=seq, models=[model],
                            agent_version="bench", reported_at=now)  # fmt: skip
        ev = Event(device_id=d, seq=seq, kind=EventKind.HEALTH, ts=now, model="digits", version=1)
        out.append((f"{root}/devices/{d}/reported", rep.to_bytes()))
        out.append((f"{root}/devices/{d}/events", ev.to_bytes()))
    return out


def publish(port: int, root: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Child process: publish every payload as fast as QoS 1 allows."""
    msgs = payloads(root)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait()
    infos = [client.publish(t, p, qos=1) for t, p in msgs]
    for info in infos[-100:]:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def run_publisher(port: int, root: str) -> multiprocessing.Process:
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=publish, args=(port, root, ready))
    proc.start()
    time.sleep(1.0)  # let the child build its payloads and connect before the clock starts
    ready.set()
    return proc


def raw_rate(port: int) -> float:
    """Messages per second a bare paho wildcard subscriber receives."""
    got, done, first = [0], threading.Event(), [0.0]

    def on_message(*_a: object) -> None:
        if got[0] == 0:
            first[0] = time.perf_counter()
        got[0] += 1
        if got[0] >= MESSAGES:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe([("raw/devices/+/reported", 1), ("raw/devices/+/events", 1)])
    sub.loop_start()
    time.sleep(0.3)
    proc = run_publisher(port, "raw")
    done.wait(300)
    elapsed = time.perf_counter() - first[0]
    proc.join()
    sub.disconnect()
    sub.loop_stop()
    return MESSAGES / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as tmp:
        work = Path(tmp)
        broker = start_broker(work / "mosq", persistence=False)
        try:
            raw = raw_rate(broker.port)
            hub = Hub(settings=HubSettings(data_dir=work / "hub", admin_token="bench-token-000000",
                                           mqtt_port=broker.port, topic_root="hub"))  # fmt: skip
            now = datetime.now(UTC)
            with hub.engine.begin() as conn:
                conn.execute(insert(devices), [
                    {"id": f"dev-{i:04d}", "profile": "raspberry_pi_4", "group_name": None, "tags": {},
                     "token_sha256": f"{i:064d}", "mqtt_password_hash": "-", "agent_version": "bench",
                     "online": False, "desired_generation": 0, "applied_generation": 0, "enrolled_at": now}
                    for i in range(DEVICES)])  # fmt: skip
            hub.start()
            assert hub.bridge is not None and hub.bridge.ingesting.wait(10)
            proc = run_publisher(broker.port, "hub")
            start = time.perf_counter()
            stored, last_store, handled = 0, start, False
            # Until every message is handled (stored, rejected or lost to a storage failure), or the timeout;
            # the clock stops at the last store seen (polled every 5 ms).
            while not handled and time.perf_counter() - start < TIMEOUT_S:
                time.sleep(0.005)
                handled = hub.bridge.processed >= MESSAGES  # read first: the worker counts stored before processed
                if hub.bridge.stored != stored:
                    stored, last_store = hub.bridge.stored, time.perf_counter()
            timed_out = not handled
            proc.join()
            at_last_report = devices.c.applied_generation == MESSAGES // 2 // DEVICES
            with hub.engine.connect() as conn:
                event_rows = conn.execute(select(func.count()).select_from(events)).scalar_one()
                current = conn.execute(select(func.count()).select_from(devices).where(at_last_report)).scalar_one()
            hub.stop()
        finally:
            broker.stop()
    rate = stored / (last_store - start) if stored else 0.0
    print(json.dumps({"hub_stored_msgs_per_s": round(rate), "raw_paho_msgs_per_s": round(raw),
                      "hub_to_raw": round(rate / raw, 2), "messages_sent": MESSAGES, "messages_stored": stored,
                      "stored_equals_sent": stored == MESSAGES and event_rows == MESSAGES // 2 and current == DEVICES,
                      "events_sent": MESSAGES // 2, "event_rows": event_rows, "devices_at_last_report": current,
                      "timed_out": timed_out, "devices": DEVICES}))  # fmt: skip


if __name__ == "__main__":
    main()
