"""Hub fan-out benchmark: 10,000 registered devices, one rollout to all of them.

Measures the time from the rollout start (the same call POST /api/v1/rollouts makes) until a
wildcard MQTT subscriber has received every device's retained QoS 1 desired state, through a real
private Mosquitto. Baseline in the same run: raw paho publishing the same number of messages.
Prints one JSON object: `devices`, `fanout_s` (target <= 10), `raw_paho_publish_s`, `create_s`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import insert

from hub.db.schema import devices
from hub.registry import push_folder
from hub.schemas import RolloutCreate
from hub.services import Hub
from hub.settings import HubSettings
from tests.hub.support import write_folder
from tests.support.broker import start_broker

DEVICES = 10_000
ROOT = "bench-fanout/v1"


class Counter:
    """A wildcard subscriber that counts distinct devices per topic suffix."""

    def __init__(self, port: int, topic: str, expected: int) -> None:
        self.seen: set[str] = set()
        self.expected = expected
        self.done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.seen.add(msg.topic)
        if len(self.seen) >= self.expected:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def raw_baseline(port: int) -> float:
    """Raw paho: publish DEVICES retained QoS 1 messages of similar size, until a subscriber got all."""
    counter = Counter(port, "bench-raw/devices/+/desired", DEVICES)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    payload = b"x" * 220
    start = time.perf_counter()
    for i in range(DEVICES):
        pub.publish(f"bench-raw/devices/dev-{i:05d}/desired", payload, qos=1, retain=True)
    counter.done.wait(120)
    elapsed = time.perf_counter() - start
    pub.disconnect()
    pub.loop_stop()
    counter.close()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-fanout-") as tmp:
        work = Path(tmp)
        broker = start_broker(work / "mosq", persistence=False)
        hub = Hub(settings=HubSettings(data_dir=work / "hub", admin_token="bench-token-000000",
                                       mqtt_port=broker.port, topic_root=ROOT, rollout_tick_s=0.5))  # fmt: skip
        try:
            now = datetime.now(UTC)
            push_folder(folder=write_folder(work / "out", "digits", 1, ["raspberry_pi_4"]), engine=hub.engine,
                        repo=hub.repo, now=now)  # fmt: skip
            with hub.engine.begin() as conn:
                conn.execute(insert(devices), [
                    {"id": f"dev-{i:05d}", "profile": "raspberry_pi_4", "group_name": "fleet", "tags": {},
                     "token_sha256": f"{i:064d}", "mqtt_password_hash": "-", "agent_version": "bench",
                     "online": False, "desired_generation": 0, "applied_generation": 0, "enrolled_at": now}
                    for i in range(DEVICES)])  # fmt: skip
            raw_s = raw_baseline(broker.port)
            hub.start()
            assert hub.bridge is not None and hub.bridge.connected.wait(10)
            counter = Counter(broker.port, f"{ROOT}/devices/+/desired", DEVICES)
            start = time.perf_counter()
            hub.rollouts.create(RolloutCreate(id="fanout", model="digits", version=1, canary_percent=0,
                                              stages=[100]), actor="bench")  # fmt: skip
            create_s = time.perf_counter() - start
            got_all = counter.done.wait(120)
            fanout_s = time.perf_counter() - start
            counter.close()
        finally:
            hub.stop()
            broker.stop()
    print(json.dumps({"devices": DEVICES, "fanout_s": round(fanout_s, 3), "all_received": got_all,
                      "create_s": round(create_s, 3), "raw_paho_publish_s": round(raw_s, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
