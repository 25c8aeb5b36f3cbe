"""The MQTT bridge: ingests reported state, events, telemetry and status into storage; publishes desired state.

Messages are queued by paho's network thread and stored in batches by one worker thread, so the
broker connection never waits on the database. A malformed payload is logged and counted, never fatal.
Events and telemetry are acknowledged (QoS 1, per device and channel) once committed; under load the acks of
consecutive batches are gathered for up to ACK_INTERVAL_S, so a device sending fast gets one ack, not one a batch.

Hub replicas on one broker (docs/hub.md, cluster). Over MQTT 5 every replica subscribes to events and
telemetry as shared subscriptions (`$share/<group>/...`): the broker hands each message to one replica, which
stores and acknowledges it (rows are keyed, so a resend landing elsewhere is stored once). Reported state and
status are different: each is the device's latest word, stored last-write-wins, so one replica must see them
in order; split between replicas, a burst of reports is stored out of order and an older one can win. The
leader takes them on a plain subscription, which also brings the broker's retained copies on every subscribe:
what devices reported while no leader listened (a shared subscription gets no retained messages). No plain
subscription overlaps a shared one (MQTT 5 would deliver both copies). Over MQTT 3.1.1, which has no shared
subscriptions, only the leader subscribes at all. `set_leader` moves the subscriptions when the lease moves.

A broker out of reach or refusing the hub is a warning in the log (`ConnectFailures`): once per distinct error,
and again every CONNECT_FAILURE_LOG_S while it lasts, so an operator sees why without a line per retry.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError
from sqlalchemy import Engine

from hub.metrics import HubMetrics
from hub.mqtt.ingest import IngestBatch, Stored, store_batch
from hub.store import devices as device_store
from hub.tuf_repo import Clock
from protocol.messages import MAX_PAYLOAD_BYTES, Ack, DesiredState, DeviceStatus, Event, EventKind, ReportedState
from protocol.shadow import ShadowSummary
from protocol.telemetry import decode_message
from protocol.topics import Channel, device_topic, parse_device_topic, shared_wildcard, wildcard

log = logging.getLogger(__name__)
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
BATCH = 2000
RETRIES = 5
# Under load, acks gather the ids stored for up to this long: one publish per device and channel, not per batch
# (an ack costs about what storing a message does). A message arriving after a quiet spell is acked at once.
ACK_INTERVAL_S = 0.5
ACK_MAX_IDS = 5000  # per ack message: well under the agent's MAX_PAYLOAD_BYTES
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason code
SUBSCRIBED = (Channel.REPORTED, Channel.EVENTS, Channel.STATUS, Channel.TELEMETRY)
KEYED = (Channel.EVENTS, Channel.TELEMETRY)  # rows stored once whoever stores them: shared over MQTT 5
STATE = (Channel.REPORTED, Channel.STATUS)  # retained, last write wins: the leader's, in order
NO_RETAINED_ON_SUBSCRIBE = 2  # MQTT 5 subscription option "Retain Handling" (Mosquitto 2.0 sends them otherwise)
CONNECT_FAILURE_LOG_S = 30.0  # a failure that goes on (same error) is logged again this often


class ConnectFailures:
    """Failed connect attempts to the broker: a warning once per distinct error, or every `every_s` while it lasts."""

    def __init__(self, broker: str, every_s: float = CONNECT_FAILURE_LOG_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.broker, self.every_s, self.monotonic = broker, every_s, monotonic
        self.attempts = 0  # failed in a row, since the last successful connect
        self._last: str | None = None
        self._logged_at = -math.inf
        self._unlogged = 0

    def failed(self, error: str) -> None:
        self.attempts += 1
        now = self.monotonic()
        if error == self._last and now - self._logged_at < self.every_s:
            self._unlogged += 1
            return
        n = self._unlogged
        also = f" ({n} more failed attempt{'s' * (n != 1)} since the last warning)" if n else ""
        log.warning("cannot connect to the MQTT broker at %s: %s; retrying%s", self.broker, error, also)
        self._last, self._logged_at, self._unlogged = error, now, 0

    def connected(self) -> None:
        if self.attempts:
            log.info("connected to the MQTT broker at %s after %d failed attempts", self.broker, self.attempts)
        self.attempts, self._last, self._logged_at, self._unlogged = 0, None, -math.inf, 0


class Rejected(Exception):
    """A message the bridge will not store; `reason` labels the rejection counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MqttBridge:
    """One paho client (MQTT 5, or 3.1.1 when asked) plus an ingest worker.

    A hub on its own is the leader (the default); replicas are told by `set_leader` when the lease moves.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        topic_root: str,
        engine: Engine,
        clock: Clock,
        metrics: HubMetrics,
        protocol: str = "5",
        share_group: str = "edgefleet-hub",
        on_devices_changed: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.topic_root = topic_root
        self.engine = engine
        self.clock = clock
        self.metrics = metrics
        self.share_group = share_group
        self.on_devices_changed = on_devices_changed
        self.processed = 0  # messages handled: stored, rejected, or lost to a storage failure
        self.stored = 0  # messages in committed batches (the ingest benchmark reads this)
        self.stored_by_channel: Counter[Channel] = Counter()
        self.connected = threading.Event()
        self.ingesting = threading.Event()  # the broker granted every ingest subscription this replica should hold
        self._lock = threading.Lock()  # leadership and the subscriptions that follow from it
        self._leader = True
        self._plain: tuple[Channel, ...] = ()  # channels on plain subscriptions now
        self._pending: set[int] = set()  # (un)subscribe requests the broker has not answered yet
        self._said_protocol = False
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._unacked = Stored()  # committed, not yet acknowledged (worker thread only)
        self._acked_at = -ACK_INTERVAL_S  # time.monotonic() of the last acks published
        self._resync = threading.Event()
        self._worker = threading.Thread(target=self._work, name="hub-ingest", daemon=True)
        self._host, self._port = host, port
        self.connect_failures = ConnectFailures(f"{host}:{port}")
        self._credentials = (username, password)
        # "auto": MQTT 5, and 3.1.1 once a broker answers "unsupported protocol version".
        self.protocol = "5" if protocol == "auto" else protocol
        self._may_downgrade = protocol == "auto"
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-hub-{uuid.uuid4().hex[:8]}",
            protocol=PROTOCOLS[self.protocol],
        )
        if self._credentials[0]:
            client.username_pw_set(*self._credentials)
        # No in-flight window for what the hub publishes (QoS 1 acks and desired states): paho rescans every
        # message in flight on each PUBACK while a window is set, which cost more than storing a message.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_acked
        client.on_unsubscribe = self._on_acked
        return client

    def start(self) -> None:
        """Connect in the background (retrying) and start the ingest worker."""
        self._worker.start()
        self._connect()

    def _connect(self) -> None:
        self.client.connect_async(self._host, self._port, keepalive=30)
        self.client.loop_start()

    def _downgrade(self) -> None:
        """The broker speaks only MQTT 3.1.1: replace the client (from a thread that is not paho's)."""
        old = self.client
        old.disconnect()
        old.loop_stop()
        self.protocol = "3.1.1"
        self.client = self._make_client()
        log.warning("broker refused MQTT 5; using MQTT 3.1.1")
        self._connect()

    def stop(self) -> None:
        """Disconnect and drain the ingest queue."""
        self.client.disconnect()
        self.client.loop_stop()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def set_leader(self, is_leader: bool) -> None:
        """This replica gained or lost the leader lease: take or give up the subscriptions only the leader holds."""
        with self._lock:
            if is_leader == self._leader:
                return
            self._leader = is_leader
            if not self.connected.is_set():
                return  # the next connect subscribes as the flag now says
            channels = ", ".join(ch.value for ch in self._leader_channels())
            log.info("%s: %s %s", "leader now" if is_leader else "no longer leader",
                     "subscribing to" if is_leader else "unsubscribing from", channels)  # fmt: skip
            self._follow_leadership(self.client)

    def publish_desired(self, states: list[DesiredState]) -> None:
        """Retained QoS 1; queued by paho while disconnected and resynced on every connect."""
        for state in states:
            topic = device_topic(state.device_id, Channel.DESIRED, self.topic_root)
            self.client.publish(topic, state.to_bytes(), qos=1, retain=True)
        self.metrics.desired_published.inc(len(states))

    def clear_desired(self, device_id: str) -> None:
        """Remove a decommissioned device's retained desired state from the broker."""
        self.client.publish(device_topic(device_id, Channel.DESIRED, self.topic_root), b"", qos=1, retain=True)

    # ---- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if self._may_downgrade and reason.value == UNSUPPORTED_PROTOCOL:
                self._may_downgrade = False
                threading.Thread(target=self._downgrade, name="hub-mqtt-downgrade", daemon=True).start()
                return
            self.connect_failures.failed(f"the broker refused the connection: {reason}")
            return
        self.connect_failures.connected()
        with self._lock:
            self._subscribe_ingest(client)
            self.connected.set()
        self.metrics.mqtt_connected.set(1)
        self._resync.set()
        self._queue.put(("", b""))  # wake the worker to resync desired states

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        """paho could not open the connection; it calls this inside its `except OSError`, so the error is current."""
        error = sys.exc_info()[1]
        self.connect_failures.failed((str(error) or type(error).__name__) if error is not None else "connection failed")

    def _leader_channels(self) -> tuple[Channel, ...]:
        return STATE if self.protocol == "5" else SUBSCRIBED

    def _subscribe_ingest(self, client: mqtt.Client) -> None:
        """After a connect (a clean session: nothing subscribed yet), subscribe as this replica should; lock held."""
        self._plain, self._pending = (), set()
        self.ingesting.clear()
        if self.protocol == "5":
            options = SubscribeOptions(qos=1, retainHandling=NO_RETAINED_ON_SUBSCRIBE)
            shared = [(shared_wildcard(ch, self.share_group, self.topic_root), options) for ch in KEYED]
            self._expect(client.subscribe(shared))
        if not self._said_protocol:
            self._said_protocol = True
            if self.protocol == "5":
                log.info("MQTT 5: events and telemetry through shared subscriptions ($share/%s/...), split between "
                         "replicas; reported state and status on the leader", self.share_group)  # fmt: skip
            else:
                log.info("MQTT 3.1.1 broker: no shared subscriptions, so only the leader replica ingests device "
                         "messages (this one is %s)", "the leader" if self._leader else "not the leader")  # fmt: skip
        self._follow_leadership(client)

    def _follow_leadership(self, client: mqtt.Client) -> None:
        """Hold the leader's plain subscriptions exactly while leader; lock held."""
        want = self._leader_channels() if self._leader else ()
        if want == self._plain:
            self._settle()
            return
        if want:
            self._expect(client.subscribe([(wildcard(ch, self.topic_root), 1) for ch in want]))
        else:
            self._expect(client.unsubscribe([wildcard(ch, self.topic_root) for ch in self._plain]))
        self._plain = want
        self.ingesting.clear()

    def _expect(self, sent: tuple[MQTTErrorCode, int | None]) -> None:
        """Wait for the broker's answer to a (un)subscribe request; lock held."""
        if sent[1] is not None:
            self._pending.add(sent[1])

    def _settle(self) -> None:
        """Nothing pending: `ingesting` says whether this replica now takes any device messages; lock held."""
        if not self._pending and (self.protocol == "5" or self._plain):
            self.ingesting.set()
        elif not self._pending:
            self.ingesting.clear()

    def _on_acked(self, _c: mqtt.Client, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        """SUBACK or UNSUBACK."""
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("the broker refused an ingest subscription change: %s", refused[0])
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
                self._settle()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.metrics.mqtt_connected.set(0)
        with self._lock:
            was_connected = self.connected.is_set()
            self.connected.clear()
            self.ingesting.clear()
        if was_connected:  # else the end of a refused attempt, logged by ConnectFailures
            log.warning("MQTT disconnected: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put((msg.topic, bytes(msg.payload)))

    # ---- ingest worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._acks_due_in())
            except queue.Empty:
                self._publish_acks()
                continue
            if item is None:
                self._publish_acks()
                return
            items = [item]
            while len(items) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            self.metrics.ingest_queue.set(self._queue.qsize())
            self._handle_with_retry(items)
            if time.monotonic() - self._acked_at >= ACK_INTERVAL_S:
                self._publish_acks()
            if self._resync.is_set():
                self._resync.clear()
                self._republish_pending()

    def _handle_with_retry(self, items: list[tuple[str, bytes]]) -> None:
        """Store a batch; a storage failure is retried with backoff before the batch is counted as lost."""
        batch, accepted = self._parse_all(items)
        for attempt in range(RETRIES):
            try:
                self._store(batch, accepted, self.clock())
                break
            except Exception:
                log.exception("ingest batch of %d failed (attempt %d/%d)", len(items), attempt + 1, RETRIES)
                time.sleep(0.2 * 2**attempt)
        else:
            self.metrics.mqtt_rejected.labels("storage_error").inc(sum(accepted.values()))
        self.processed += sum(1 for topic, _ in items if topic)

    def _parse_all(self, items: list[tuple[str, bytes]]) -> tuple[IngestBatch, Counter[Channel]]:
        """The batch to store and how many messages of each channel it holds; rejections counted."""
        batch, accepted = IngestBatch(), Counter[Channel]()
        for topic, payload in items:
            if not topic:
                continue
            try:
                channel = self._parse(batch, topic, payload)
            except Rejected as e:
                self.metrics.mqtt_rejected.labels(e.reason).inc()
                continue
            if channel is not None:
                accepted[channel] += 1
        for channel, n in accepted.items():
            self.metrics.mqtt_messages.labels(channel.value).inc(n)
        return batch, accepted

    def _store(self, batch: IngestBatch, accepted: Counter[Channel], now: datetime) -> None:
        """Commit the batch; its events and telemetry join the acks to publish: the replica that stored them acks."""
        with self.metrics.ingest_batch_seconds.time():
            stored = store_batch(engine=self.engine, batch=batch, now=now)
        for device_id, seqs in stored.events.items():
            self._unacked.events.setdefault(device_id, set()).update(seqs)
        for device_id, ids in stored.telemetry.items():
            self._unacked.telemetry.setdefault(device_id, set()).update(ids)
        self.stored_by_channel.update(accepted)
        self.stored += sum(accepted.values())
        changed = set(batch.reported) | set(stored.events) | set(batch.status)
        if changed and self.on_devices_changed:
            self.on_devices_changed(changed)

    def _acks_due_in(self) -> float | None:
        """Seconds until the gathered acks are due (None: nothing to acknowledge)."""
        if not (self._unacked.events or self._unacked.telemetry):
            return None
        return max(0.0, self._acked_at + ACK_INTERVAL_S - time.monotonic())

    def _publish_acks(self) -> None:
        """QoS 1 acks for everything stored since the last ones: per device and channel, ids in order."""
        if not (self._unacked.events or self._unacked.telemetry):
            return
        unacked, self._unacked = self._unacked, Stored()
        for channel, stored in (("events", unacked.events), ("telemetry", unacked.telemetry)):
            for device_id, ids in stored.items():
                topic = device_topic(device_id, Channel.ACK, self.topic_root)
                in_order = sorted(ids)
                for i in range(0, len(in_order), ACK_MAX_IDS):
                    ack = Ack(channel=channel, ids=in_order[i : i + ACK_MAX_IDS])
                    self.client.publish(topic, ack.to_bytes(), qos=1)
        self._acked_at = time.monotonic()

    def _parse(self, batch: IngestBatch, topic: str, payload: bytes) -> Channel | None:
        """Add one message to the batch and return its channel (None: a cleared retained message); or raise Rejected."""
        try:
            device_id, channel = parse_device_topic(topic, self.topic_root)
        except ValueError:
            raise Rejected("bad_topic") from None
        if channel in STATE and not self._leader:
            # Queued before this replica lost the lease: stored now it could overwrite a newer state the new
            # leader stored; that leader's subscription brought the broker's retained copy, the latest, anyway.
            return None
        if not payload:
            return None
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected("too_large")
        try:
            if channel is Channel.REPORTED:
                reported = ReportedState.from_json(payload)
                if reported.device_id != device_id:
                    raise Rejected("device_mismatch")
                batch.reported[device_id] = reported
            elif channel is Channel.EVENTS:
                event = Event.from_json(payload)
                if event.device_id != device_id:
                    raise Rejected("device_mismatch")
                _zoned(event.ts)
                if event.kind is EventKind.SHADOW and event.details:
                    _shadow_window(event)
                batch.events.append(event)
            elif channel is Channel.TELEMETRY:
                message = decode_message(payload)
                if message.device_id != device_id or message.summary.device_id != device_id:
                    raise Rejected("device_mismatch")
                _zoned(message.summary.window_start, message.summary.window_end)
                batch.telemetry.append(message)
            elif channel is Channel.STATUS:
                batch.status[device_id] = DeviceStatus.from_json(payload).status == "online"
            else:
                raise Rejected("unexpected_channel")
        except ValidationError as e:
            log.warning("rejected %s: %s", topic, e.errors()[0].get("msg"))
            raise Rejected("malformed") from None
        except ValueError as e:  # undecodable telemetry compression, a time without a zone, a stray shadow window
            log.warning("rejected %s: %s", topic, e)
            raise Rejected("malformed") from None
        return channel

    def _republish_pending(self) -> None:
        """After (re)connecting: publish desired states devices have not applied yet."""
        with self.engine.connect() as conn:
            pending = device_store.out_of_sync(conn=conn)
        states = []
        for row in pending:
            try:
                states.append(DesiredState.model_validate(row["desired"]))
            except ValidationError:
                log.exception("stored desired state of %s is invalid", row["id"])
        self.publish_desired(states)
        log.info("resynced %d desired states", len(states))


def _shadow_window(event: Event) -> None:
    """A shadow event's details must be one ShadowSummary of the candidate it names (hub/rollouts/shadow.py sums
    them): raises ValidationError or ValueError, so a bad window is refused here, never counted."""
    window = ShadowSummary.model_validate(event.details)
    if (window.model, window.version) != (event.model, event.version):
        raise ValueError(f"a shadow window of {window.model} v{window.version} in an event of {event.model} "
                         f"v{event.version}")  # fmt: skip


def _zoned(*times: datetime) -> None:
    """Times stored in UTC columns must carry a zone: a naive one would fail its whole batch at every retry."""
    for t in times:
        if t.tzinfo is None:
            raise ValueError("a time without a time zone")
