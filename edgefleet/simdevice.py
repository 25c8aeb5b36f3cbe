"""A lightweight simulated device (paho): reconciles desired state and reports state and events like the agent.

Used by `edgefleet simulate`, the demo, the fleet benchmark and the hub tests. It installs nothing: it
reports the lifecycle events a healthy (or, for `failing` versions, a self-test-failing) agent would.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from protocol.http import EnrollResponse
from protocol.messages import (
    DesiredState,
    DeviceStatus,
    Event,
    EventKind,
    LifecycleState,
    ReportedModel,
    ReportedState,
)
from protocol.topics import Channel, device_topic


def now() -> datetime:
    return datetime.now(UTC)


class SimDevice:
    """Reconciles toward its retained desired state; `failing` versions fail their self-test and roll back."""

    def __init__(self, enrollment: EnrollResponse, profile: str, root: str, failing: set[int] | None = None) -> None:
        self.id = enrollment.device_id
        self.profile = profile
        self.root = root
        self.creds = enrollment.mqtt
        self.failing = failing or set()
        self.active: dict[str, int] = {}
        self.previous: dict[str, int] = {}
        self.generation = 0
        self.seq = 0
        self.desired_seen: list[DesiredState] = []
        self.changed = threading.Condition()
        self.client: mqtt.Client | None = None
        self.failed: tuple[str, int] | None = None
        self.rejected = 0

    def topic(self, channel: Channel) -> str:
        return device_topic(self.id, channel, self.root)

    def connect(self) -> SimDevice:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.creds.username, self.creds.password)
        c.will_set(self.topic(Channel.STATUS), DeviceStatus(status="offline").to_bytes(), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        self.client = c  # before connecting: callbacks use it
        c.connect_async(self.creds.host, self.creds.port, keepalive=5)
        c.loop_start()
        return self

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the last will (offline)."""
        if self.client is not None:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()
            self.client = None

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(self.topic(Channel.DESIRED), qos=1)
        client.publish(self.topic(Channel.STATUS), DeviceStatus(status="online", ts=now()).to_bytes(), 1, True)
        self._report()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.topic(Channel.DESIRED) or not msg.payload:
            return
        try:
            desired = DesiredState.from_json(bytes(msg.payload))
        except ValidationError:
            self.rejected += 1  # a malformed desired state is counted, never fatal
            return
        if desired.generation <= self.generation:
            return
        self.desired_seen.append(desired)
        for m in desired.models:
            if self.active.get(m.name) != m.version:
                self._install(m.name, m.version, m.rollout_id)
        self.generation = desired.generation
        self._report()
        with self.changed:
            self.changed.notify_all()

    def _install(self, name: str, version: int, rollout_id: str | None) -> None:
        for kind in (EventKind.DOWNLOAD_STARTED, EventKind.DOWNLOADED, EventKind.VERIFIED, EventKind.ACTIVATED):
            self._event(kind, name, version, rollout_id)
        if version in self.failing:
            self._event(EventKind.SELF_TEST_FAILED, name, version, rollout_id, reason="golden case 0 off by 0.4")
            self._event(EventKind.ROLLED_BACK, name, version, rollout_id, reason="self-test failed")
            self.failed = (name, version)
            return
        self._event(EventKind.SELF_TEST_PASSED, name, version, rollout_id)
        self.failed = None
        self._event(EventKind.COMMITTED, name, version, rollout_id)
        if name in self.active:
            self.previous[name] = self.active[name]
        self.active[name] = version

    def _event(
        self, kind: EventKind, name: str, version: int, rollout_id: str | None, reason: str | None = None
    ) -> None:
        self.seq += 1
        ev = Event(device_id=self.id, seq=self.seq, kind=kind, ts=now(), model=name, version=version,
                   rollout_id=rollout_id, reason=reason)  # fmt: skip
        if self.client is not None:
            self.client.publish(self.topic(Channel.EVENTS), ev.to_bytes(), qos=1)

    def _report(self) -> None:
        models = []
        failed = self.failed
        for name, version in sorted(self.active.items()):
            models.append(ReportedModel(name=name, active_version=version, previous_version=self.previous.get(name),
                                        target_version=version, state=LifecycleState.COMMITTED,
                                        serving_since=now(), self_test_passed=True))  # fmt: skip
        if failed and failed[0] not in self.active:
            models.append(ReportedModel(name=failed[0], target_version=failed[1], state=LifecycleState.ROLLED_BACK,
                                        reason="self-test failed", self_test_passed=False))  # fmt: skip
        elif failed:
            models = [m if m.name != failed[0] else m.model_copy(update={
                "target_version": failed[1], "state": LifecycleState.ROLLED_BACK, "reason": "self-test failed",
                "self_test_passed": False}) for m in models]  # fmt: skip
        state = ReportedState(device_id=self.id, profile=self.profile, applied_generation=self.generation,
                              models=models, agent_version="sim", reported_at=now())  # fmt: skip
        if self.client is not None:
            self.client.publish(self.topic(Channel.REPORTED), state.to_bytes(), qos=1, retain=True)
