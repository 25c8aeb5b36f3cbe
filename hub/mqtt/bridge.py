"""The MQTT bridge: ingests reported state, events and status into storage; publishes desired state.

Messages are queued by paho's network thread and stored in batches by one worker thread, so the
broker connection never waits on the database. A malformed payload is logged and counted, never fatal.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from sqlalchemy import Engine

from hub.metrics import HubMetrics
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.store import devices as device_store
from hub.tuf_repo import Clock
from protocol.messages import MAX_PAYLOAD_BYTES, Ack, DesiredState, DeviceStatus, Event, ReportedState
from protocol.telemetry import decode_message
from protocol.topics import Channel, device_topic, parse_device_topic, wildcard

log = logging.getLogger(__name__)
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
BATCH = 2000
RETRIES = 5
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason code
SUBSCRIBED = (Channel.REPORTED, Channel.EVENTS, Channel.STATUS, Channel.TELEMETRY)


class MqttBridge:
    """One paho client (MQTT 5, or 3.1.1 when asked) plus an ingest worker."""

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
        on_devices_changed: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.topic_root = topic_root
        self.engine = engine
        self.clock = clock
        self.metrics = metrics
        self.on_devices_changed = on_devices_changed
        self.processed = 0  # messages handled (stored or rejected): the ingest benchmark reads this
        self.connected = threading.Event()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._resync = threading.Event()
        self._worker = threading.Thread(target=self._work, name="hub-ingest", daemon=True)
        self._host, self._port = host, port
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
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
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
            log.error("MQTT connect refused: %s", reason)
            return
        subs = [(wildcard(ch, self.topic_root), 1) for ch in SUBSCRIBED]
        client.subscribe(subs)
        self.metrics.mqtt_connected.set(1)
        self.connected.set()
        self._resync.set()
        self._queue.put(("", b""))  # wake the worker to resync desired states

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.metrics.mqtt_connected.set(0)
        self.connected.clear()
        log.warning("MQTT disconnected: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put((msg.topic, bytes(msg.payload)))

    # ---- ingest worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
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
            if self._resync.is_set():
                self._resync.clear()
                self._republish_pending()

    def _handle_with_retry(self, items: list[tuple[str, bytes]]) -> None:
        """Store a batch; a storage failure is retried with backoff before the batch is counted as lost."""
        for attempt in range(RETRIES):
            try:
                self._handle(items, self.clock())
                break
            except Exception:
                log.exception("ingest batch of %d failed (attempt %d/%d)", len(items), attempt + 1, RETRIES)
                time.sleep(0.2 * 2**attempt)
        else:
            self.metrics.mqtt_rejected.labels("storage_error").inc(len(items))
        self.processed += sum(1 for topic, _ in items if topic)

    def _handle(self, items: list[tuple[str, bytes]], now: datetime) -> None:
        batch = IngestBatch()
        for topic, payload in items:
            if not topic:
                continue
            reason = self._parse(batch, topic, payload)
            if reason:
                self.metrics.mqtt_rejected.labels(reason).inc()
        with self.metrics.ingest_batch_seconds.time():
            stored = store_batch(engine=self.engine, batch=batch, now=now)
        for device_id, seqs in stored.events.items():
            ack = Ack(channel="events", ids=sorted(seqs))
            self.client.publish(device_topic(device_id, Channel.ACK, self.topic_root), ack.to_bytes(), qos=1)
        for device_id, ids in stored.telemetry.items():
            ack = Ack(channel="telemetry", ids=sorted(ids))
            self.client.publish(device_topic(device_id, Channel.ACK, self.topic_root), ack.to_bytes(), qos=1)
        changed = set(batch.reported) | set(stored.events) | set(batch.status)
        if changed and self.on_devices_changed:
            self.on_devices_changed(changed)

    def _parse(self, batch: IngestBatch, topic: str, payload: bytes) -> str | None:
        """Add one message to the batch; returns a rejection reason or None."""
        try:
            device_id, channel = parse_device_topic(topic, self.topic_root)
        except ValueError:
            return "bad_topic"
        if not payload:
            return None  # a cleared retained message
        if len(payload) > MAX_PAYLOAD_BYTES:
            return "too_large"
        try:
            if channel is Channel.REPORTED:
                reported = ReportedState.from_json(payload)
                if reported.device_id != device_id:
                    return "device_mismatch"
                batch.reported[device_id] = reported
            elif channel is Channel.EVENTS:
                event = Event.from_json(payload)
                if event.device_id != device_id:
                    return "device_mismatch"
                batch.events.append(event)
            elif channel is Channel.TELEMETRY:
                message = decode_message(payload)
                if message.device_id != device_id or message.summary.device_id != device_id:
                    return "device_mismatch"
                batch.telemetry.append(message)
            elif channel is Channel.STATUS:
                batch.status[device_id] = DeviceStatus.from_json(payload).status == "online"
            else:
                return "unexpected_channel"
        except ValidationError as e:
            log.warning("rejected %s: %s", topic, e.errors()[0].get("msg"))
            return "malformed"
        except ValueError as e:  # undecodable telemetry compression
            log.warning("rejected %s: %s", topic, e)
            return "malformed"
        self.metrics.mqtt_messages.labels(channel.value).inc()
        return None

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
