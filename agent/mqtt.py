"""The device's MQTT session: persistent session, last will, jittered reconnect, v5 -> 3.1.1 fallback.

paho is driven by hand (`loop()` in this session's own thread), and in that mode its `publish()` writes to the
socket from the calling thread. Over TLS that is two threads on one SSL connection at once (reading here,
writing there), which OpenSSL does not allow: under load the connection broke now and then ("Unspecified
error", a reconnect). So every call into paho happens in the network thread: `publish()` only queues, the
thread hands the queue to paho between short `loop()` waits (LOOP_WAIT_S)."""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.tls import client_context, tls_failure
from protocol.messages import DeviceStatus
from protocol.topics import Channel, device_topic

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 7 * 24 * 3600
UNSUPPORTED_PROTOCOL = ("Unsupported protocol version",)
Handler = Callable[[Channel, bytes], None]
_VERSION = {MQTTProtocolVersion.MQTTv5: "5", MQTTProtocolVersion.MQTTv311: "3.1.1"}
LOOP_WAIT_S = 0.05  # the longest a queued publish waits for the network thread
OFFLINE_WAIT_S = 2.0  # on stop, how long the `offline` status may take to leave


class MqttSession:
    """Owns one paho client and its network thread; hands desired/cmd/ack payloads to `on_message`."""

    def __init__(
        self,
        *,
        device_id: str,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        root: str,
        on_message: Handler,
        on_connected: Callable[[], None] | None = None,
        keepalive_s: int = 30,
        backoff: tuple[float, float] = (1.0, 60.0),
        rng: random.Random | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
        client_cert_file: Path | None = None,
        client_key_file: Path | None = None,
        connack_timeout_s: float = 10.0,
    ) -> None:
        self.device_id = device_id
        self.host, self.port = host, port
        self.tls, self.ca_file = tls, ca_file
        self.client_cert_file, self.client_key_file = client_cert_file, client_key_file
        self._failure: str | None = None  # the last connection failure logged as a warning (each reason once)
        self._socket_error: str | None = None  # what paho saw on the socket before a CONNACK (it logs, not raises)
        self.connack_timeout_s = connack_timeout_s
        self._connack = False
        self.username, self.password = username, password
        self.root = root
        self.on_message = on_message
        self.on_connected = on_connected
        self.keepalive_s = keepalive_s
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.protocol = MQTTProtocolVersion.MQTTv5
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._fallback = False
        self._outgoing: queue.SimpleQueue[tuple[str, bytes, bool]] = queue.SimpleQueue()
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self.connects = 0

    def topic(self, channel: Channel) -> str:
        return device_topic(self.device_id, channel, self.root)

    def _make_client(self) -> paho.Client:
        v5 = self.protocol is MQTTProtocolVersion.MQTTv5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=self.protocol,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(10_000)
        if self.tls:
            # Verified TLS (certificate chain and host name), 1.2 or newer; the password never travels in clear.
            client.tls_set_context(client_context(self.ca_file, self.client_cert_file, self.client_key_file))
            # A broker that refuses the device's certificate says so after the handshake, in an alert paho
            # logs rather than raises: listen to its log until the CONNACK (then stop: it formats every line).
            client.on_log = self._on_log
        if self.username:
            client.username_pw_set(self.username, self.password)
        offline = DeviceStatus(status="offline").to_bytes()
        client.will_set(self.topic(Channel.STATUS), offline, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, disconnect cleanly and join the network thread (which does both)."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def publish(self, channel: Channel, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, from any thread: queued for the network thread, which hands it to paho (paho keeps it
        while disconnected and sends it after reconnecting)."""
        self._outgoing.put((self.topic(channel), payload, retain))

    def _hand_to_paho(self) -> None:
        while True:
            try:
                topic, payload, retain = self._outgoing.get_nowait()
            except queue.Empty:
                return
            self._client.publish(topic, payload, qos=1, retain=retain)

    def _go_offline(self) -> None:
        """In the network thread, on stop: what is queued, then `offline` (retained), then DISCONNECT."""
        self._hand_to_paho()
        status = DeviceStatus(status="offline", ts=datetime.now(UTC)).to_bytes()
        info = self._client.publish(self.topic(Channel.STATUS), status, qos=1, retain=True)
        deadline = time.monotonic() + OFFLINE_WAIT_S
        while not info.is_published() and time.monotonic() < deadline:
            if self._client.loop(timeout=LOOP_WAIT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if not info.is_published():
            log.warning("could not publish offline status before stopping")
        self._client.disconnect()
        self._client.loop(timeout=LOOP_WAIT_S)  # let the DISCONNECT go out

    def _connect(self) -> None:
        if self.protocol is MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.connect(self.host, self.port, self.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.connect(self.host, self.port, self.keepalive_s)

    def _run(self) -> None:
        failures = 0
        unanswered = 0  # connections in a row the broker took but never answered with a CONNACK
        while not self._stop.is_set():
            before = self.connects
            opened = False
            self._connack = False
            self._socket_error = None
            try:
                self._connect()
                opened, sent = True, time.monotonic()
                while not self._stop.is_set() and not self._fallback:
                    self._hand_to_paho()
                    if self._client.loop(timeout=LOOP_WAIT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        self._refused_after_handshake()
                        break
                    if not self._connack and time.monotonic() - sent > self.connack_timeout_s:
                        log.info("mqtt broker %s:%s sent no CONNACK in %.0f s", self.host, self.port,
                                 self.connack_timeout_s)  # fmt: skip
                        self._client.disconnect()
                        break
            except ssl.SSLError as e:  # a certificate the device does not trust: say so louder than a refusal
                self._tls_failed(self._tls_reason(e) or str(e))
            except (OSError, ValueError) as e:
                log.info("mqtt connect to %s:%s failed: %s", self.host, self.port, e)
            except Exception:  # a bug in a callback or in paho must not end the session for good: log, back off
                log.exception("mqtt session error; reconnecting")
            if self._stop.is_set():
                if self.connected.is_set():
                    self._go_offline()
                self.connected.clear()
                return
            self.connected.clear()
            # Some 3.1.1-only brokers (amqtt) cannot parse an MQTT 5 CONNECT and drop it without a CONNACK:
            # after two such connections try the other version (and back, should that one fare no better).
            unanswered = 0 if self._connack or not opened else unanswered + 1
            if unanswered >= 2:
                unanswered = 0
                other = (MQTTProtocolVersion.MQTTv311 if self.protocol is MQTTProtocolVersion.MQTTv5
                         else MQTTProtocolVersion.MQTTv5)  # fmt: skip
                log.warning("broker %s:%s answers no MQTT %s CONNECT; trying MQTT %s", self.host, self.port,
                            _VERSION[self.protocol], _VERSION[other])  # fmt: skip
                self.protocol = other
                self._client = self._make_client()
            if self._fallback:
                log.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
                self._fallback = False
                self.protocol = MQTTProtocolVersion.MQTTv311
                self._client = self._make_client()
                continue
            failures = 1 if self.connects > before else failures + 1
            self._stop.wait(self.reconnect_delay(failures))

    def _tls_reason(self, error: BaseException | str) -> str | None:
        return tls_failure(error, peer="broker", ca_setting="mqtt_ca_file", ca_file=self.ca_file,
                           client_cert=self.client_cert_file is not None)  # fmt: skip

    def _tls_failed(self, reason: str) -> None:
        """Log a failed TLS connection: a warning the first time for each reason, then quietly on each retry."""
        level = logging.INFO if reason == self._failure else logging.WARNING
        self._failure = reason
        log.log(level, "mqtt TLS connection to %s:%s failed: %s; retrying with backoff", self.host, self.port,
                reason)  # fmt: skip

    def _refused_after_handshake(self) -> None:
        """The broker hung up before its CONNACK with a TLS alert (a device certificate missing or refused)."""
        if self.tls and not self._connack and self._socket_error:
            reason = self._tls_reason(self._socket_error)
            if reason is not None:
                self._tls_failed(reason)

    def _on_log(self, client: paho.Client, _u: object, level: int, message: str) -> None:
        if self._connack:
            client.on_log = None
        elif level == paho.MQTT_LOG_ERR and "socket: " in message:
            self._socket_error = message.split("socket: ", 1)[1]

    def reconnect_delay(self, failures: int) -> float:
        """Full-jitter exponential backoff between reconnect attempts."""
        low, high = self.backoff
        # The exponent is capped: a device offline for days counts thousands of failures (2.0 ** 1100 overflows).
        return self.rng.uniform(low / 2, min(high, low * 2.0 ** min(failures - 1, 64)))

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._connack = True
        client.on_log = None
        if getattr(reason, "is_failure", False):
            if str(reason) in UNSUPPORTED_PROTOCOL and self.protocol is MQTTProtocolVersion.MQTTv5:
                self._fallback = True
            log.warning("mqtt connection refused: %s", reason)
            return
        self.connects += 1
        self._failure = None
        client.subscribe([(self.topic(Channel.DESIRED), 1), (self.topic(Channel.CMD), 1), (self.topic(Channel.ACK), 1)])
        online = DeviceStatus(status="online", ts=datetime.now(UTC)).to_bytes()
        client.publish(self.topic(Channel.STATUS), online, qos=1, retain=True)
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self.connected.clear()
        log.info("mqtt disconnected: %s", reason)

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        for channel in (Channel.DESIRED, Channel.CMD, Channel.ACK):
            if message.topic == self.topic(channel):
                self.on_message(channel, bytes(message.payload))
                return
