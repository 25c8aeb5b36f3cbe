"""MQTT topic names (wire version 1). Every device publishes and subscribes only under its own tree."""

from __future__ import annotations

import re
from enum import StrEnum

ROOT = "edgefleet/v1"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Channel(StrEnum):
    """The last topic level under `edgefleet/v1/devices/{id}/`."""

    DESIRED = "desired"  # hub -> device, retained, QoS 1
    REPORTED = "reported"  # device -> hub, retained, QoS 1
    EVENTS = "events"  # device -> hub, QoS 1
    TELEMETRY = "telemetry"  # device -> hub, QoS 1 (summaries from the outbox)
    ACK = "ack"  # hub -> device, QoS 1 (acknowledges telemetry/event ids)
    CMD = "cmd"  # hub -> device, QoS 1, not retained
    STATUS = "status"  # device -> hub, retained; last will "offline"


def device_topic(device_id: str, channel: Channel, root: str = ROOT) -> str:
    """`edgefleet/v1/devices/{id}/{channel}`; refuses ids that would escape the device's tree."""
    if not DEVICE_ID_RE.match(device_id):
        raise ValueError(f"invalid device id {device_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return f"{root}/devices/{device_id}/{channel.value}"


def wildcard(channel: Channel, root: str = ROOT) -> str:
    """Subscription for one channel of every device, e.g. `edgefleet/v1/devices/+/reported`."""
    return f"{root}/devices/+/{channel.value}"


def shared_wildcard(channel: Channel, group: str = "hub", root: str = ROOT) -> str:
    """MQTT 5 shared subscription so hub replicas split the load, e.g. `$share/hub/edgefleet/v1/devices/+/events`.

    The broker hands each message to one member of `group`, in no order across members: fit for keyed messages
    (events, telemetry), not for last-write-wins state (reported, status), and it brings no retained messages.
    """
    return f"$share/{group}/{wildcard(channel, root)}"


def parse_device_topic(topic: str, root: str = ROOT) -> tuple[str, Channel]:
    """Split a device topic into (device id, channel); ValueError if it is not one."""
    prefix = f"{root}/devices/"
    if not topic.startswith(prefix):
        raise ValueError(f"not a device topic: {topic!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not DEVICE_ID_RE.match(parts[0]):
        raise ValueError(f"not a device topic: {topic!r}")
    try:
        return parts[0], Channel(parts[1])
    except ValueError as e:
        raise ValueError(f"unknown channel in topic {topic!r}") from e
