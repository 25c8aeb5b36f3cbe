"""Small synchronous paho helpers for tests: connect, subscribe, collect, publish and wait for the ack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Collector:
    """A connected paho client that records every message it receives."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None, *,
                 client_id: str = "", protocol: int = mqtt.MQTTv5,
                 will: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.connect_reason: Any = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username:
            self.client.username_pw_set(username, password)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_reason = reason
        if not reason.is_failure:
            self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_connected(self, timeout: float = 10) -> Collector:
        assert self.connected.wait(timeout), f"not connected: {self.connect_reason}"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(10)
        return info

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
