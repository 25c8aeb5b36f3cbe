"""MQTT session against real Mosquitto: 3.1.1 fallback, reconnect after a broker restart, last will."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from agent.daemon import Agent
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.procs import kill9, start_agent, stop, write_config
from tests.support.broker import Broker, free_port

pytestmark = pytest.mark.integration


class Mqtt311Gate:
    """In front of the real broker, answers an MQTT 5 CONNECT the way a 3.1.1-only broker does (CONNACK rc=1)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.refused_v5 = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(4096)
        i = 1
        while first[i] & 0x80:
            i += 1
        level = first[i + 1 + 2 + 4]
        if level == 5:
            self.refused_v5 += 1
            client.sendall(b"\x20\x02\x00\x01")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.broker_port))
        upstream.sendall(first)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(16384):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def agent_factory(tmp_path: Path, hub: HubStub, unique_root: str) -> Iterator[object]:
    made: list[Agent] = []

    def make(**kw: object) -> Agent:
        a = Agent(agent_settings(tmp_path / "device", hub, unique_root, **kw))
        a.start()
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


def _publish_v1(hub: HubStub, tmp_path: Path) -> str:
    art = onnx_linear(tmp_path / "lin_v1.onnx", seed=1)
    return hub.publish(make_manifest(art, name="demo", version=1), art)


def test_falls_back_to_mqtt_311_and_still_converges(
    tmp_path: Path, broker: Broker, hub: HubStub, observer: Observer, agent_factory
) -> None:
    gate = Mqtt311Gate(broker.port)
    try:
        agent = agent_factory(mqtt_port=gate.port)
        wait_for(lambda: agent.mqtt.connected.is_set(), what="connected through the 3.1.1 gate")
        assert gate.refused_v5 >= 1
        assert agent.mqtt.protocol is MQTTProtocolVersion.MQTTv311
        observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
        wait_for(lambda: observer.events("committed"), what="committed over MQTT 3.1.1")
        assert any(p["status"] == "online" for p in observer.payloads_status())
    finally:
        gate.close()


def test_mqtt5_persistent_session_and_reconnect_after_broker_restart(
    tmp_path: Path, broker: Broker, hub: HubStub, observer: Observer, agent_factory
) -> None:
    agent = agent_factory()
    wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
    assert agent.mqtt.protocol is MQTTProtocolVersion.MQTTv5
    broker.restart()
    wait_for(lambda: agent.mqtt.connects >= 2, timeout=30, what="reconnect after broker restart")
    observer.client.reconnect()
    wait_for(lambda: observer.client.is_connected(), what="observer back")
    observer.client.subscribe(f"{observer.root}/devices/+/#", qos=1)
    observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
    wait_for(lambda: observer.events("committed"), what="converged after the restart")


def test_last_will_offline_after_kill9(tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root, keepalive_s=5)
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: any(p["status"] == "online" for p in observer.payloads_status()), timeout=60, what="online")
        kill9(proc)
        wait_for(lambda: observer.payloads_status()[-1]["status"] == "offline", timeout=20, what="last will")
    finally:
        stop(proc)
