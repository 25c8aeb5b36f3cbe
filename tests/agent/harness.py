"""Test harness: an MQTT observer on the real broker, agent settings, desired-state helpers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.settings import AgentSettings
from protocol.messages import Ack, Command, CommandKind, DesiredModel, DesiredState
from protocol.topics import Channel, device_topic
from tests.agent.hubstub import ENROLL_TOKEN, HubStub
from tests.support.broker import Broker

if TYPE_CHECKING:
    from agent.daemon import Agent


class Observer:
    """A plain paho client that records everything under the test's topic root and publishes for the hub.

    Like the hub, it acknowledges events (so the agent's events outbox drains) unless `ack_events` is
    off, and `events()` lists each (device, seq) once: an agent resends what was not acknowledged.
    """

    def __init__(
        self,
        broker: Broker,
        root: str,
        username: str | None = None,
        password: str | None = None,
        ack_events: bool = True,
    ) -> None:
        self.root = root
        self.ack_events = ack_events
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        # A persistent session: the broker keeps our subscription and queues QoS 1 messages across restarts.
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:6]}", clean_session=False
        )
        self.client.on_message = self._on_message
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"{root}/devices/+/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
        if self.ack_events and msg.topic.endswith("/" + Channel.EVENTS.value) and msg.payload:
            device_id = msg.topic[len(self.root) + len("/devices/") :].split("/")[0]
            ack = Ack(channel="events", ids=[int(json.loads(msg.payload)["seq"])])
            self.client.publish(device_topic(device_id, Channel.ACK, self.root), ack.to_bytes(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def raw(self, channel: Channel) -> list[bytes]:
        """Payloads on `channel` as they came (telemetry is zlib-compressed)."""
        with self._lock:
            return [p for t, p in self.messages if t.endswith("/" + channel.value) and p]

    def payloads(self, channel: Channel) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t.endswith("/" + channel.value) and p]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in arrival order, each (device, seq) once."""
        seen: set[tuple[str, int]] = set()
        out = []
        for e in self.payloads(Channel.EVENTS):
            key = (e["device_id"], e["seq"])
            if key not in seen and (kind is None or e["kind"] == kind):
                out.append(e)
            seen.add(key)
        return out

    def events_when(
        self, kind: str, match: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Events of `kind` that `match`, once at least one has come: events go through the agent's outbox and can
        arrive after the reported state (published at once) already shows what they tell."""
        return wait_for(lambda: [e for e in self.events(kind) if match(e)], timeout, f"a {kind!r} event")  # type: ignore[no-any-return]

    def payloads_status(self) -> list[dict[str, Any]]:
        return self.payloads(Channel.STATUS)

    def last_reported(self) -> dict[str, Any] | None:
        reported = self.payloads(Channel.REPORTED)
        return reported[-1] if reported else None

    def publish(self, device_id: str, channel: Channel, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(device_topic(device_id, channel, self.root), payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)

    def desire(self, device_id: str, generation: int, models: list[tuple[str, int, str, bool]]) -> None:
        self.publish(device_id, Channel.DESIRED, desired_state(device_id, generation, models).to_bytes(), retain=True)

    def command(self, device_id: str, kind: CommandKind, model: str | None = None) -> None:
        cmd = Command(command_id=uuid.uuid4().hex[:8], kind=kind, model=model, issued_at=datetime.now(UTC))
        self.publish(device_id, Channel.CMD, cmd.to_bytes())


def desired_state(device_id: str, generation: int, models: list[tuple[str, int, str, bool]]) -> DesiredState:
    """A desired state of (name, version, manifest target, rollback) models, issued now."""
    return DesiredState(
        device_id=device_id,
        generation=generation,
        models=[DesiredModel(name=n, version=v, manifest_target=t, rollback=r) for n, v, t, r in models],
        issued_at=datetime.now(UTC),
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def agent_settings(data_dir: Path, hub: HubStub, root: str, **overrides: Any) -> AgentSettings:
    """Settings for a test agent: enrollment against the stub hub, no probation wait, fast retries."""
    values: dict[str, Any] = {
        "profile": "x86_gateway",
        "data_dir": data_dir,
        "hub_url": hub.url,
        "allow_insecure_http": hub.tls_files is None,  # the stub serves plain HTTP on loopback unless given a cert
        "enrollment_token": ENROLL_TOKEN,
        "device_id": "dev-1",
        "topic_root": root,
        "probation_s": 0.0,
        "retry_base_s": 0.05,
        "retry_attempts": 4,
        "retry_window_s": 0.0,  # fail fast: tests of a failed download need not wait out a real retry window
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "api_enabled": False,
        "latency_basis": "device",
    }
    values.update(overrides)
    return AgentSettings(**values)


@contextlib.contextmanager
def local_api(agent: Agent) -> Iterator[str]:
    """The agent's local API on a free loopback port, as `edgefleet agent run` serves it; its base URL."""
    from agent.httpserver import LocalApiServer, bind_tcp_socket
    from tests.agent.ports import listen_port

    port = listen_port()
    server = LocalApiServer(agent.local_api(), bind_tcp_socket("127.0.0.1", port))
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()

