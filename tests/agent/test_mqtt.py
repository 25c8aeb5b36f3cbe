"""MQTT session against real Mosquitto: 3.1.1 fallback, reconnect after a broker restart, last will."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from agent.daemon import Agent
from agent.errors import EnrollmentError
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.ports import listen_port
from tests.agent.procs import kill9, start_agent, stop, write_config
from tests.support.broker import Broker
from tests.support.tlsfiles import tls_files

pytestmark = pytest.mark.integration


class Mqtt311Gate:
    """In front of the real broker, answers an MQTT 5 CONNECT the way a 3.1.1-only broker does (CONNACK rc=1)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = listen_port()
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




def _publish_v1(hub: HubStub, tmp_path: Path) -> str:
    art = onnx_linear(tmp_path / "lin_v1.onnx", seed=1)
    return hub.publish(make_manifest(art, name="demo", version=1), art)


def test_falls_back_to_mqtt_311_and_still_converges(
    tmp_path: Path, broker: Broker, hub: HubStub, observer: Observer, make_agent
) -> None:
    gate = Mqtt311Gate(broker.port)
    try:
        agent = make_agent(mqtt_port=gate.port)
        wait_for(lambda: agent.mqtt.connected.is_set(), what="connected through the 3.1.1 gate")
        assert gate.refused_v5 >= 1
        assert agent.mqtt.protocol is MQTTProtocolVersion.MQTTv311
        observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
        wait_for(lambda: observer.events("committed"), what="committed over MQTT 3.1.1")
        assert any(p["status"] == "online" for p in observer.payloads_status())
    finally:
        gate.close()


def test_mqtt5_persistent_session_and_reconnect_after_broker_restart(
    tmp_path: Path, broker: Broker, hub: HubStub, observer: Observer, make_agent, unique_root: str
) -> None:
    """The broker keeps the device's session while it is away, across a broker restart: QoS 1 commands published
    meanwhile (not retained, so nothing else would bring them) arrive when it comes back. A clean session loses
    them, having no subscriber when they were sent; the desired state alone would not tell (it is retained)."""
    from protocol.messages import CommandKind

    # Mosquitto keeps sessions and their queued messages over a restart only with persistence on.
    conf = broker.conf_path.read_text().splitlines()
    assert "persistence true" in conf and f"persistence_location {broker.workdir}/" in conf
    away = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    away.start()
    try:
        wait_for(lambda: away.mqtt.connected.is_set(), what="connected")
        assert away.mqtt.protocol is MQTTProtocolVersion.MQTTv5  # clean_start=False, session expiry a week
    finally:
        away.stop()  # a clean DISCONNECT: the session and its subscriptions stay on the broker
    # A rollback of a model the device does not have: the agent answers with a "failed" event naming it.
    observer.command("dev-1", CommandKind.ROLLBACK, model="sent-before-restart")
    broker.restart()  # SIGTERM: mosquitto writes mosquitto.db, and the new process reads it back
    assert (broker.workdir / "mosquitto.db").exists()
    observer.client.reconnect()
    wait_for(lambda: observer.client.is_connected(), what="observer back")
    observer.client.subscribe(f"{observer.root}/devices/+/#", qos=1)
    observer.command("dev-1", CommandKind.ROLLBACK, model="sent-after-restart")

    agent = make_agent()  # the same device id, so the same client id: it resumes the session
    sent_away = {"sent-before-restart", "sent-after-restart"}
    wait_for(lambda: {e.get("model") for e in observer.events("failed")} >= sent_away, what="the commands sent away")
    # An agent that stays up reconnects by itself after a broker restart, and converges.
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


def _password_line(user: str, password: str) -> str:
    import base64
    import hashlib
    import os

    salt, rounds = os.urandom(12), 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, 64)
    return f"{user}:$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def test_per_device_credentials_and_acl(tmp_path: Path, unique_root: str, caplog: pytest.LogCaptureFixture) -> None:
    from hub.tuf_repo import TufRepository
    from tests.support.broker import start_broker

    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "passwd").write_text(_password_line("dev-1", "s3cret") + "\n" + _password_line("hub", "hubpw") + "\n")
    (auth / "acl").write_text(f"user hub\ntopic readwrite #\n\npattern readwrite {unique_root}/devices/%u/#\n")
    secured = start_broker(
        tmp_path / "mosq", extra_conf=[f"password_file {auth / 'passwd'}", f"acl_file {auth / 'acl'}"]
    )
    hub = HubStub(
        TufRepository.create(tmp_path / "repo"), mqtt_port=secured.port, mqtt_username="dev-1", mqtt_password="s3cret"
    ).start()
    observer = Observer(secured, unique_root, username="hub", password="hubpw")
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    agent.start()
    try:
        wait_for(lambda: agent.mqtt.connected.is_set(), what="authenticated connect")
        observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
        wait_for(lambda: observer.events("committed"), what="committed with per-device credentials")
    finally:
        agent.stop()
        observer.close()
        hub.stop()
    # A wrong password is refused by the broker; the agent keeps retrying instead of crashing.
    ident = tmp_path / "device" / "identity.json"
    ident.write_text(ident.read_text().replace('"s3cret"', '"wrong"'))
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    agent.start()
    try:
        wait_for(lambda: caplog.text.count("mqtt connection refused: Not authorized") >= 2, what="refused twice")
        assert agent.mqtt.connects == 0 and agent.mqtt._thread.is_alive()
    finally:
        agent.stop()
        secured.stop()


def test_events_emitted_while_offline_are_delivered_after_reconnect(
    broker: Broker, hub: HubStub, observer: Observer, make_agent
) -> None:
    from protocol.messages import EventKind

    agent = make_agent()
    wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
    broker.stop()
    wait_for(lambda: not agent.mqtt.connected.is_set(), what="agent noticed the broker is gone")
    sent = agent.emit(EventKind.FAILED, reason="emitted while offline")
    broker.start()
    wait_for(lambda: agent.mqtt.connected.is_set(), timeout=30, what="reconnected")
    observer.client.reconnect()
    wait_for(lambda: any(e["seq"] == sent.seq for e in observer.events("failed")), timeout=30, what="offline event")


def test_reconnect_delay_stays_bounded_however_long_the_device_is_offline() -> None:
    import random

    from agent.mqtt import MqttSession

    session = MqttSession(device_id="dev-1", host="127.0.0.1", port=1, username=None, password=None, root="r",
                          on_message=lambda _c, _p: None, backoff=(1.0, 60.0), rng=random.Random(0))  # fmt: skip
    delays = {f: session.reconnect_delay(f) for f in (1, 2, 7, 1025, 1026, 10**6)}
    assert all(0.5 <= d <= 60.0 for d in delays.values()), delays
    assert delays[1] <= 1.0


def test_an_unexpected_error_in_the_session_does_not_end_it(broker: Broker, unique_root: str) -> None:
    import random

    from agent.mqtt import MqttSession

    session = MqttSession(device_id="dev-flaky", host="127.0.0.1", port=broker.port, username=None, password=None,
                          root=unique_root, on_message=lambda _c, _p: None, backoff=(0.05, 0.1),
                          rng=random.Random(0))  # fmt: skip
    connect, calls = session._connect, []

    def flaky() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("a bug somewhere below the session")
        connect()

    session._connect = flaky  # type: ignore[method-assign]
    session.start()
    try:
        assert session.connected.wait(15), "the session gave up after an unexpected error"
        assert len(calls) == 3
    finally:
        session.stop()


def test_tls_everywhere_with_a_private_ca(tmp_path: Path, unique_root: str, caplog: pytest.LogCaptureFixture) -> None:
    """The hub over HTTPS (verified with `hub_ca_file`), enrollment saying `tls`, the broker verified with
    `mqtt_ca_file`: an update converges over a TLS-only device listener. A broker certificate from a CA the
    device does not trust is never used; without the private CA enrollment stops with one readable line."""
    import random
    from types import SimpleNamespace
    from typing import cast

    from agent.mqtt import MqttSession
    from hub.tuf_repo import TufRepository
    from tests.support.broker import free_port, start_broker

    files = tls_files(tmp_path)
    plain = free_port()  # the observer (the hub's side) connects on loopback without TLS, as in deploy/
    broker = start_broker(tmp_path / "broker", extra_conf=[
        f"certfile {files['cert']}", f"keyfile {files['key']}", "tls_version tlsv1.2",
        f"listener {plain} 127.0.0.1",
    ])  # fmt: skip
    hub = HubStub(TufRepository.create(tmp_path / "tufrepo"), mqtt_port=broker.port, mqtt_tls=True,
                  tls_files=(files["cert"], files["key"])).start()  # fmt: skip
    assert hub.url.startswith("https://")
    unverified = r"cannot reach the hub at https://127\.0\.0\.1:\d+: .*CERTIFICATE_VERIFY_FAILED"
    with pytest.raises(EnrollmentError, match=unverified):
        Agent(agent_settings(tmp_path / "untrusting", hub, unique_root, mqtt_ca_file=files["ca"]))
    observer = Observer(cast(Broker, SimpleNamespace(port=plain)), unique_root)
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root, mqtt_ca_file=files["ca"],
                                 hub_ca_file=files["ca"]))  # fmt: skip
    untrusting = MqttSession(device_id="dev-x", host="127.0.0.1", port=broker.port, username=None, password=None,
                             root=unique_root, on_message=lambda _c, _p: None, backoff=(0.05, 0.2),
                             rng=random.Random(0), tls=True, ca_file=files["other_ca"])  # fmt: skip
    cleartext = MqttSession(device_id="dev-y", host="127.0.0.1", port=broker.port, username=None, password=None,
                            root=unique_root, on_message=lambda _c, _p: None, backoff=(0.05, 0.2),
                            rng=random.Random(0))  # fmt: skip
    try:
        assert agent.identity.mqtt.tls and agent.mqtt.tls
        agent.start()
        observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what="committed over TLS")
        assert agent.mqtt.connected.is_set()
        assert any("/tuf/targets/" in r for r in hub.requests)  # the artifact came over HTTPS

        with caplog.at_level("WARNING", logger="agent.mqtt"):
            untrusting.start()
            cleartext.start()
            wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, timeout=20, what="verification failure")
        assert not untrusting.connected.is_set() and untrusting.connects == 0
        assert not cleartext.connected.is_set() and cleartext.connects == 0
    finally:
        for session in (untrusting, cleartext):
            session.stop(timeout=2)
        agent.stop()
        observer.close()
        hub.stop()
        broker.stop()


def test_daemon_shows_its_client_certificate_to_a_broker_that_requires_one(tmp_path: Path, unique_root: str) -> None:
    """mTLS on MQTT through the whole daemon: a broker listener with `require_certificate true` accepts the
    agent holding `client_cert_file`/`client_key_file` from its CA, and an update converges over it."""
    from types import SimpleNamespace
    from typing import cast

    from hub.tuf_repo import TufRepository
    from tests.support.broker import free_port, start_broker
    from tests.support.tls import make_pki

    pki = make_pki(tmp_path / "pki")
    plain = free_port()
    broker = start_broker(tmp_path / "broker", extra_conf=[
        f"certfile {pki.server.cert}", f"keyfile {pki.server.key}", f"cafile {pki.ca}", "require_certificate true",
        f"listener {plain} 127.0.0.1",
    ])  # fmt: skip
    hub = HubStub(TufRepository.create(tmp_path / "tufrepo"), mqtt_port=broker.port, mqtt_tls=True,
                  tls_files=(pki.server.cert, pki.server.key)).start()  # fmt: skip
    observer = Observer(cast(Broker, SimpleNamespace(port=plain)), unique_root)
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root, mqtt_ca_file=pki.ca, hub_ca_file=pki.ca,
                                 client_cert_file=pki.client.cert, client_key_file=pki.client.key))  # fmt: skip
    try:
        agent.start()
        observer.desire("dev-1", 1, [("demo", 1, _publish_v1(hub, tmp_path), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what="committed over mutual TLS")
        assert agent.mqtt.connects >= 1  # its only way to the broker is the listener that requires a certificate
    finally:
        agent.stop()
        observer.close()
        hub.stop()
        broker.stop()


def test_publishing_from_many_threads_over_tls_keeps_the_connection(tmp_path: Path, unique_root: str) -> None:
    """Three threads publishing 9,000 events while the broker floods the device's cmd topic, over TLS: one
    connection throughout, everything delivered. Every paho call now happens in the network thread; before,
    publish() wrote to the SSL socket from the caller's thread while the network thread read it, which broke
    the connection ("Unspecified error") in 2 of 5 runs of a 60,000-publish version of this (too slow for the
    suite; at this size the old code did not fail in 4 runs, so this checks the property, not the old bug)."""
    import random

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.mqtt import MqttSession
    from protocol.topics import Channel
    from tests.support.broker import free_port, start_broker

    files = tls_files(tmp_path)
    plain = free_port()
    broker = start_broker(tmp_path / "broker", extra_conf=[f"certfile {files['cert']}", f"keyfile {files['key']}",
                                                           f"listener {plain} 127.0.0.1"])  # fmt: skip
    received = []
    session = MqttSession(device_id="dev-1", host="127.0.0.1", port=broker.port, username=None, password=None,
                          root=unique_root, on_message=lambda _c, p: received.append(len(p)), backoff=(0.05, 0.2),
                          rng=random.Random(0), tls=True, ca_file=files["ca"])  # fmt: skip
    hub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    events: list[bytes] = []
    hub.on_message = lambda _c, _u, m: events.append(m.payload)
    hub.connect("127.0.0.1", plain)
    hub.subscribe(f"{unique_root}/devices/dev-1/events", qos=1)
    hub.loop_start()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            hub.publish(f"{unique_root}/devices/dev-1/cmd", b"x" * 2000, qos=1)
            time.sleep(0.001)

    try:
        session.start()
        assert session.connected.wait(10)
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        senders = [threading.Thread(target=lambda: [session.publish(Channel.EVENTS, b"y" * 3000) for _ in range(3000)])
                   for _ in range(3)]  # fmt: skip
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        deadline = time.monotonic() + 30
        while len(events) < 9000 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        flooder.join(5)
        assert len(events) == 9000 and received
        assert session.connects == 1 and session.connected.is_set()
    finally:
        stop.set()
        session.stop(timeout=3)
        hub.loop_stop()
        broker.stop()


def test_falls_back_to_mqtt_311_against_a_real_311_only_broker(tmp_path: Path, unique_root: str) -> None:
    """amqtt speaks only MQTT 3.1.1: the session ends up on 3.1.1, subscribed, and receives its desired state."""
    import random

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.mqtt import MqttSession
    from protocol.topics import Channel, device_topic
    from tests.support.amqtt import amqtt_broker

    got: list[tuple[Channel, bytes]] = []
    with amqtt_broker(tmp_path) as port:
        session = MqttSession(device_id="dev-311", host="127.0.0.1", port=port, username=None, password=None,
                              root=unique_root, on_message=lambda c, p: got.append((c, p)), backoff=(0.05, 0.2),
                              rng=random.Random(0), connack_timeout_s=2.0)  # fmt: skip
        try:
            session.start()
            wait_for(session.connected.is_set, timeout=20, what="connected to amqtt")
            assert session.protocol is MQTTProtocolVersion.MQTTv311
            hub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
            hub.connect("127.0.0.1", port)
            hub.loop_start()
            topic = device_topic("dev-311", Channel.DESIRED, unique_root)
            wait_for(lambda: hub.publish(topic, b"{}", qos=1).rc == 0 and got, timeout=20, what="desired received")
            hub.loop_stop()
            hub.disconnect()
            assert got[0] == (Channel.DESIRED, b"{}")
        finally:
            session.stop(timeout=2)


def test_a_command_sent_while_the_agent_is_offline_arrives_when_it_is_back(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    """clean_start off + session expiry: the broker queues a QoS 1 command for the stopped agent."""
    from protocol.messages import CommandKind
    from tests.agent.procs import write_config

    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root)
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        for version in (1, 2):
            art = onnx_linear(tmp_path / f"lin_v{version}.onnx", seed=version)
            target = hub.publish(make_manifest(art, name="demo", version=version), art)
            observer.desire("dev-1", version, [("demo", version, target, False)])
            wait_for(lambda v=version: any(e["version"] == v for e in observer.events("committed")), timeout=60,
                     what=f"v{version}")  # fmt: skip
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        observer.command("dev-1", CommandKind.ROLLBACK, "demo")  # nobody is subscribed right now
        proc = start_agent(config, tmp_path / "agent.log")
        wait_for(lambda: observer.events("rolled_back"), timeout=60, what="the queued command carried out")
        assert "manual rollback (command" in observer.events("rolled_back")[-1]["reason"]
    finally:
        stop(proc)
